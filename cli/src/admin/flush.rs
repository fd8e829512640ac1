//! `POST /api/v1/flush {pool?, relay?}`: the deferred copies (of a pool, of the pools a relay
//! serves, or all) become due now (OPS-6).

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use smtpw_engine::spool::Spool;

use super::{body_json, error, json, pools_named, AdminState, Reply};

pub async fn post<S: Spool>(state: &AdminState<S>, req: Request<Incoming>) -> Reply {
    let body = match body_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let pools = match pools_named(state, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match state.engine.spool().flush(pools).await {
        Ok(n) => {
            tracing::info!(pools = %pools, copies = n, "flush: deferred copies are due now");
            json(
                StatusCode::OK,
                &serde_json::json!({ "flushed_copies": n, "pools": pools.to_string() }),
            )
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("flush failed: {e}"),
        ),
    }
}
