//! `POST /api/v1/suspend {pool? | relay?, reason, duration, by?}`: nothing is delivered to the
//! pool or relay until the duration is over (or a resume); kept across restarts (OPS-5).

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use smtpw_engine::settings::parse_duration;
use smtpw_engine::spool::Spool;
use smtpw_engine::suspend::Suspension;

use super::{body_json, error, json, one_line, pools_named, text_field, AdminState, Reply};

pub async fn post<S: Spool>(state: &AdminState<S>, req: Request<Incoming>) -> Reply {
    let body = match body_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Checks the pool or relay names something.
    if let Err(r) = pools_named(state, &body) {
        return r;
    }
    let (pool, relay) = (text_field(&body, "pool"), text_field(&body, "relay"));
    if pool.is_none() && relay.is_none() {
        return error(StatusCode::BAD_REQUEST, "name a pool or a relay to suspend");
    }
    let Some(reason) = text_field(&body, "reason") else {
        return error(StatusCode::BAD_REQUEST, "a suspension needs a reason");
    };
    let Some(duration) = text_field(&body, "duration") else {
        return error(
            StatusCode::BAD_REQUEST,
            "a suspension needs a duration, such as 15m",
        );
    };
    let duration = match parse_duration(&duration) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "the duration must be more than 0"),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("duration: {e}")),
    };
    let since = state.engine.clock().now();
    let Some(until) = jiff::SignedDuration::try_from(duration)
        .ok()
        .and_then(|d| since.checked_add(d).ok())
    else {
        return error(StatusCode::BAD_REQUEST, "the duration is too long");
    };
    let s = Suspension {
        pool: pool.map(|p| p.to_ascii_uppercase()),
        relay: relay.map(|r| one_line(&r)),
        reason: one_line(&reason),
        by: one_line(&text_field(&body, "by").unwrap_or_else(|| "operator".into())),
        since,
        until,
    };
    if let Err(e) = state.engine.suspensions().suspend(s.clone()) {
        return error(StatusCode::BAD_REQUEST, format!("not suspended: {e}"));
    }
    tracing::warn!(pool = ?s.pool, relay = ?s.relay, until = %s.until, by = %s.by,
        reason = %s.reason, "suspended by the operator");
    // Workers look again (an open connection to a suspended relay is closed there).
    state.engine.spool().notify().notify_waiters();
    json(StatusCode::OK, &serde_json::json!({ "suspended": s }))
}
