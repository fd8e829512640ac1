//! The TCP accept loop: connection cap (shared with in-memory sessions), real refusals while a
//! "down" fault holds (the listening socket is closed, so connects get ECONNREFUSED), graceful stop.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::MockMta;

/// How often a refusing listener checks whether it may listen again.
const REFUSE_POLL: Duration = Duration::from_millis(100);
/// How long [`MockServer::shutdown`] waits for sessions to end before aborting them.
const DRAIN: Duration = Duration::from_secs(5);

/// A running TCP listener.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    mta: MockMta,
}

impl MockServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The mock it serves.
    pub fn mta(&self) -> &MockMta {
        &self.mta
    }

    /// Stop accepting, ask open sessions to end (421), wait for them (5 s at most).
    pub async fn shutdown(self) {
        self.mta.stop();
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

pub(crate) async fn listen(mta: MockMta, addr: SocketAddr) -> std::io::Result<MockServer> {
    let listener = bind(addr)?;
    let addr = listener.local_addr()?;
    let (stop, mut stop_rx) = watch::channel(false);
    let m = mta.clone();
    let task = tokio::spawn(async move {
        let mut sessions = JoinSet::new();
        let mut listener = Some(listener);
        loop {
            while sessions.try_join_next().is_some() {}
            if *stop_rx.borrow() {
                break;
            }
            if m.is_refusing() {
                // Close the socket so clients see a real refusal; reopen when the outage ends.
                listener = None;
                tokio::select! {
                    _ = tokio::time::sleep(REFUSE_POLL) => {}
                    _ = stop_rx.changed() => {}
                }
                continue;
            }
            let l = match listener.take() {
                Some(l) => l,
                None => match bind(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!("mock-mta: cannot listen again on {addr}: {e}");
                        tokio::time::sleep(REFUSE_POLL).await;
                        continue;
                    }
                },
            };
            tokio::select! {
                r = l.accept() => match r {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let s = m.clone();
                        sessions.spawn(async move {
                            s.serve_stream_at(stream, peer, addr).await;
                        });
                    }
                    Err(e) => {
                        tracing::warn!("mock-mta: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = stop_rx.changed() => {}
                // Re-check the schedule now and then even when nobody connects.
                _ = tokio::time::sleep(REFUSE_POLL) => {}
            }
            listener = Some(l);
        }
        drop(listener);
        let drained = tokio::time::timeout(DRAIN, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            sessions.abort_all();
        }
    });
    Ok(MockServer {
        addr,
        stop,
        task,
        mta,
    })
}

impl MockMta {
    /// The open-connection count (for tests of the cap).
    pub fn current_connections(&self) -> u64 {
        self.shared()
            .stats
            .current
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}
