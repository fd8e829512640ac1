//! The admin endpoint (`[admin]` in smtpw.toml, or `smtpw run --admin ADDR:PORT`): HTTP/1.1 on
//! hyper, `GET /metrics` and the JSON API under `/api/v1/`, one handler per file (OPS-1).
//!
//! Loopback only unless a token is set; with a token, every request needs
//! `Authorization: Bearer <token>` (else 401). Nothing here reads message bodies or secrets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::{info, warn};

use smtpw_engine::engine::Engine;
use smtpw_engine::metrics::Metrics;
use smtpw_engine::settings::Secret;
use smtpw_engine::spool::SqliteSpool;

mod metrics;
mod queue;

/// What every handler can reach.
pub struct AdminState {
    pub engine: Arc<Engine<SqliteSpool>>,
    pub metrics: Arc<Metrics>,
    pub token: Option<Secret>,
}

pub type Reply = Response<Full<Bytes>>;

/// Bind `addr` (refused when it is not loopback and there is no token), then serve until the
/// engine stops. Returns the address bound (a port 0 is resolved).
pub async fn start(addr: SocketAddr, state: Arc<AdminState>) -> anyhow::Result<SocketAddr> {
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
    let stop = state.engine.shutdown.clone();
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

async fn handle(state: &AdminState, req: Request<Incoming>) -> Reply {
    if !authorized(state.token.as_ref(), &req) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer <token>",
        );
    }
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/metrics") => metrics::get(state).await,
        (Method::GET, "/api/v1/queue") => queue::get(state).await,
        (_, "/metrics" | "/api/v1/queue") => error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}
