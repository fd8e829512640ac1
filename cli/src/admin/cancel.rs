//! `POST /api/v1/jobs/{id}/cancel {reason, by?}`: the job's undelivered recipients fail with a
//! local reply naming the reason and the operator, recorded like any failure (ledger lines).
//! Copies in flight finish their transaction first; the rest of them is cancelled after (OPS-7).

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use smtpw_engine::spool::{CopyResult, Outcome, RcptOutcome, Spool};

use super::{body_json, error, json, one_line, text_field, AdminState, Reply};

/// How long a cancel waits for the job's copies in flight to come back.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(60);

/// The local reply a cancelled recipient fails with.
pub fn cancel_reply(by: &str, reason: &str) -> String {
    format!("554 5.7.0 Cancelled by the operator {by}: {reason}")
}

pub async fn post<S: Spool>(state: &AdminState<S>, job: i64, req: Request<Incoming>) -> Reply {
    let body = match body_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(reason) = text_field(&body, "reason") else {
        return error(StatusCode::BAD_REQUEST, "a cancel needs a reason");
    };
    let by = one_line(&text_field(&body, "by").unwrap_or_else(|| "operator".into()));
    let reply = cancel_reply(&by, &one_line(&reason));
    let spool = &state.engine.spool();
    let (mut copies, mut recipients, mut seen) = (0u64, 0u64, false);
    let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
    let in_flight = loop {
        let (claimed, held) = match spool.claim_job(job).await {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cancel failed: {e}"),
                )
            }
        };
        seen |= !claimed.is_empty() || held > 0;
        for c in claimed {
            let rcpts = c
                .rcpts
                .iter()
                .map(|_| RcptOutcome {
                    outcome: Outcome::Failed,
                    reply: reply.clone(),
                })
                .collect();
            let n = c.rcpts.len() as u64;
            match spool
                .complete(
                    c.copy_id,
                    CopyResult {
                        relay: None,
                        tls: None,
                        rcpts,
                    },
                )
                .await
            {
                Ok(()) => {
                    copies += 1;
                    recipients += n;
                }
                Err(e) => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("cancel failed after {copies} copies: {e}"),
                    )
                }
            }
        }
        if held == 0 || tokio::time::Instant::now() >= deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !seen {
        return error(
            StatusCode::NOT_FOUND,
            format!("job {job} has nothing queued"),
        );
    }
    tracing::warn!(job, copies, recipients, by = %by, reason = %one_line(&reason),
        "job cancelled by the operator");
    json(
        StatusCode::OK,
        &serde_json::json!({
            "job": job,
            "cancelled_copies": copies,
            "cancelled_recipients": recipients,
            "copies_still_in_flight": in_flight,
            "reply": reply,
        }),
    )
}
