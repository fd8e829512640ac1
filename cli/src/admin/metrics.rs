//! `GET /metrics`: Prometheus text format 0.0.4 (the series are described in docs/metrics.md).

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use smtpw_engine::spool::Spool;

use super::{AdminState, Reply};

/// How old the queue's gauges may be: the spool's figures are read at most once per this, so
/// a scraper polling every 100 ms does not query the database (and hold up claims) each time.
pub const QUEUE_FIGURES_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn get<S: Spool>(state: &AdminState<S>) -> Reply {
    // The queue's gauges come from the spool; when it cannot be read, the counters are still
    // served (and the queue series are left out rather than shown as zero).
    let queue = {
        let mut cache = state.queue_cache.lock().await;
        match &*cache {
            Some((at, q)) if at.elapsed() < QUEUE_FIGURES_MAX_AGE => Some(q.clone()),
            _ => match state.engine.spool().stats().await {
                Ok(q) => {
                    *cache = Some((std::time::Instant::now(), q.clone()));
                    Some(q)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: cannot read the queue");
                    None
                }
            },
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(state.metrics.render(queue.as_ref()))));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
