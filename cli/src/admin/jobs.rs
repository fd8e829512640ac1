//! `GET /api/v1/jobs?pool=P&state=S&limit=N`: the queued jobs, oldest first, with their counts.
//! `state` = `deferred` keeps the jobs with deferred recipients, `queued` (default) all.

use hyper::StatusCode;
use smtpw_engine::config::Pool;
use smtpw_engine::spool::Spool;

use super::{error, json, one_line, AdminState, Reply};

const LIMIT_DEFAULT: usize = 100;
const LIMIT_MAX: usize = 10_000;

pub async fn get<S: Spool>(state: &AdminState<S>, query: &str) -> Reply {
    let (mut pool, mut only_deferred, mut limit) = (None, false, LIMIT_DEFAULT);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "pool" if !v.is_empty() => {
                let mut c = v.chars();
                match (c.next().and_then(Pool::from_char), c.next()) {
                    (Some(p), None) => pool = Some(p),
                    _ => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("pool={} is not a pool", one_line(v)),
                        )
                    }
                }
            }
            "state" => match v {
                "queued" | "" => only_deferred = false,
                "deferred" => only_deferred = true,
                _ => return error(StatusCode::BAD_REQUEST, "state is queued or deferred"),
            },
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=LIMIT_MAX).contains(&n) => limit = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("limit is 1 to {LIMIT_MAX}"),
                    )
                }
            },
            _ => {}
        }
    }
    match state.engine.spool().jobs(pool, limit).await {
        Ok(mut jobs) => {
            if only_deferred {
                jobs.retain(|j| j.deferred > 0);
            }
            json(StatusCode::OK, &serde_json::json!({ "jobs": jobs }))
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the jobs: {e}"),
        ),
    }
}
