//! `POST /api/v1/resume {pool? | relay?}`: end a suspension before its time (OPS-5).

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use smtpw_engine::spool::Spool;

use super::{body_json, error, json, text_field, AdminState, Reply};

pub async fn post<S: Spool>(state: &AdminState<S>, req: Request<Incoming>) -> Reply {
    let body = match body_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let pool = text_field(&body, "pool").map(|p| p.to_ascii_uppercase());
    let relay = text_field(&body, "relay");
    if pool.is_some() == relay.is_some() {
        return error(StatusCode::BAD_REQUEST, "name a pool or a relay to resume");
    }
    match state.engine.suspensions().resume(
        pool.as_deref(),
        relay.as_deref(),
        state.engine.clock().now(),
    ) {
        Ok(true) => {
            tracing::info!(pool = ?pool, relay = ?relay, "resumed by the operator");
            state.engine.spool().notify().notify_waiters();
            json(StatusCode::OK, &serde_json::json!({ "resumed": true }))
        }
        Ok(false) => error(StatusCode::NOT_FOUND, "no such suspension"),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("not resumed: {e}"),
        ),
    }
}
