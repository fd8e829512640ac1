//! `GET /metrics`: Prometheus text format 0.0.4 (the series are described in docs/metrics.md).

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use smtpw_engine::spool::Spool;

use super::{AdminState, Reply};

pub async fn get(state: &AdminState) -> Reply {
    // The queue's gauges come from the spool; when it cannot be read, the counters are still
    // served (and the queue series are left out rather than shown as zero).
    let queue = match state.engine.spool.stats().await {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the queue");
            None
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(state.metrics.render(queue.as_ref()))));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
