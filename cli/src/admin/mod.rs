//! The admin endpoint (`[admin]` in smtpw.toml, or `smtpw run --admin ADDR:PORT`): HTTP/1.1 on
//! hyper, `GET /metrics` and the JSON API under `/api/v1/`, one handler per file (OPS-1).
//!
//! Loopback only unless a token is set; with a token, every request needs
//! `Authorization: Bearer <token>` (else 401). Nothing here reads message bodies or secrets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::{info, warn};

use smtpw_engine::engine::Engine;
use smtpw_engine::metrics::Metrics;
use smtpw_engine::settings::Secret;
use smtpw_engine::spool::Spool;

mod cancel;
mod flush;
mod jobs;
mod metrics;
mod queue;
mod reload;
mod resume;
mod suspend;

/// What every handler can reach.
pub struct AdminState<S: Spool> {
    pub engine: Arc<Engine<S>>,
    pub metrics: Arc<Metrics>,
    pub token: Option<Secret>,
    pub reloader: Arc<crate::reload::Reloader<S>>,
    /// The spool's queue figures of the last scrape, and when they were read.
    pub queue_cache:
        tokio::sync::Mutex<Option<(std::time::Instant, smtpw_engine::spool::QueueStats)>>,
}

pub type Reply = Response<Full<Bytes>>;

/// Largest request body the API reads.
const BODY_MAX: usize = 64 * 1024;

/// Bind `addr` (refused when it is not loopback and there is no token), then serve until the
/// engine stops. Returns the address bound (a port 0 is resolved).
pub async fn start<S: Spool>(
    addr: SocketAddr,
    state: Arc<AdminState<S>>,
) -> anyhow::Result<SocketAddr> {
    if !addr.ip().is_loopback() && state.token.is_none() {
        anyhow::bail!(
            "the admin address {addr} is not a loopback address and no [admin] token_file is \
             set: anyone who can reach it could control the engine; use 127.0.0.1 or ::1, or \
             set token_file in smtpw.toml's [admin]"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on the admin address {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let stop = state.engine.shutdown().clone();
    info!(address = %bound, token = state.token.is_some(), "admin endpoint listening");
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = stop.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "admin endpoint: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

/// A JSON reply.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// An error reply: `{"error": message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// Whether `req` carries the token (always true without one). Compared in constant time.
fn authorized(token: Option<&Secret>, req: &Request<Incoming>) -> bool {
    let Some(token) = token else { return true };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), token.expose().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's JSON body (`{}` when empty).
pub async fn body_json(req: Request<Incoming>) -> Result<serde_json::Value, Reply> {
    let bytes = Limited::new(req.into_body(), BODY_MAX)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })
}

async fn handle<S: Spool>(state: &AdminState<S>, req: Request<Incoming>) -> Reply {
    if !authorized(state.token.as_ref(), &req) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer <token>",
        );
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let get = method == Method::GET;
    let post = method == Method::POST;
    match path.as_str() {
        "/metrics" if get => metrics::get(state).await,
        "/api/v1/queue" if get => queue::get(state).await,
        "/api/v1/jobs" if get => jobs::get(state, &query).await,
        "/api/v1/suspend" if post => suspend::post(state, req).await,
        "/api/v1/resume" if post => resume::post(state, req).await,
        "/api/v1/flush" if post => flush::post(state, req).await,
        "/api/v1/reload" if post => reload::post(state).await,
        p if post && p.starts_with("/api/v1/jobs/") && p.ends_with("/cancel") => {
            let id = &p["/api/v1/jobs/".len()..p.len() - "/cancel".len()];
            match id.parse::<i64>() {
                Ok(id) => cancel::post(state, id, req).await,
                Err(_) => error(StatusCode::NOT_FOUND, format!("{id:?} is not a job number")),
            }
        }
        "/metrics" | "/api/v1/queue" | "/api/v1/jobs" => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        }
        "/api/v1/suspend" | "/api/v1/resume" | "/api/v1/flush" | "/api/v1/reload" => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use POST")
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

/// A text field of a JSON body (`None` when absent or empty).
pub fn text_field(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// An operator's free text (a reason, a name) as it may go into a reply, a file or the log:
/// one line, control characters escaped, at most 200 characters.
pub fn one_line(s: &str) -> String {
    smtpw_engine::text::escape_controls(s)
        .chars()
        .take(200)
        .collect()
}

/// The pools a `{pool}` or `{relay}` body names: one pool; the pools of the workers using a
/// relay (every pool when SMTP_FORWARD names it); all pools when neither is given.
pub fn pools_named<S: Spool>(
    state: &AdminState<S>,
    body: &serde_json::Value,
) -> Result<smtpw_engine::config::PoolSet, Reply> {
    use smtpw_engine::config::{Pool, PoolSet};
    match (text_field(body, "pool"), text_field(body, "relay")) {
        (Some(_), Some(_)) => Err(error(
            StatusCode::BAD_REQUEST,
            "give a pool or a relay, not both",
        )),
        (Some(p), None) => {
            let mut c = p.chars();
            match (c.next().and_then(Pool::from_char), c.next()) {
                (Some(pool), None) => Ok(std::iter::once(pool).collect()),
                _ => Err(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{} is not a pool: A to Z, or - for the default pool",
                        one_line(&p)
                    ),
                )),
            }
        }
        (None, Some(r)) => {
            let cfg = state.engine.current_config();
            let names = |h: &smtpw_engine::config::HostPort| {
                r.eq_ignore_ascii_case(&h.to_string()) || r.eq_ignore_ascii_case(&h.host)
            };
            if cfg.sync_forward.as_ref().is_some_and(names) {
                return Ok(PoolSet::ALL);
            }
            let pools: PoolSet = cfg
                .workers
                .iter()
                .filter(|w| names(&w.primary) || w.failover.as_ref().is_some_and(names))
                .flat_map(|w| w.pools.iter())
                .collect();
            if pools.is_empty() {
                return Err(error(
                    StatusCode::NOT_FOUND,
                    format!("no worker uses the relay {}", one_line(&r)),
                ));
            }
            Ok(pools)
        }
        (None, None) => Ok(PoolSet::ALL),
    }
}
