//! `GET /api/v1/queue`: per pool (depth per state, oldest age) and per relay (last error,
//! next retry).

use hyper::StatusCode;
use smtpw_engine::spool::Spool;

use super::{error, json, AdminState, Reply};

pub async fn get<S: Spool>(state: &AdminState<S>) -> Reply {
    let stats = match state.engine.spool().stats().await {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the queue: {e}"),
            )
        }
    };
    let relays = state.metrics.relays();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "queue": stats,
            "relays": relays,
            "suspended": state.engine.suspensions().active(state.engine.clock().now()),
        }),
    )
}
