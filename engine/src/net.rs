//! Connectors: how a worker gets a byte stream to a relay.
//!
//! [`TcpConnector`] in production (DNS through `tokio::net::lookup_host`, a connect time-out of 60 s
//! by default, WRK-6); [`MemoryConnector`] hands out `tokio::io::duplex` streams to
//! in-process servers, for paused-time tests and the demo (docs/architecture.md: paused-time tests never use
//! real sockets).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};

use crate::config::HostPort;

/// A bidirectional byte stream a client can own.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + ?Sized> AsyncStream for T {}

/// A boxed [`AsyncStream`].
pub type BoxStream = Box<dyn AsyncStream>;
/// A boxed, sendable future (what object-safe async methods return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens connections to relays.
pub trait Connector: Send + Sync + 'static {
    /// Opens a connection to `target`.
    fn connect<'a>(&'a self, target: &'a HostPort) -> BoxFuture<'a, io::Result<BoxStream>>;
}

impl<C: Connector + ?Sized> Connector for Arc<C> {
    fn connect<'a>(&'a self, target: &'a HostPort) -> BoxFuture<'a, io::Result<BoxStream>> {
        (**self).connect(target)
    }
}

/// TCP to the real relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpConnector {
    /// Bound on name resolution plus connecting (all addresses together).
    pub connect_timeout: Duration,
}

impl Default for TcpConnector {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(60),
        }
    }
}

impl TcpConnector {
    /// A connector whose connection attempts (every address together) end after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self { connect_timeout }
    }

    async fn connect_any(target: &HostPort) -> io::Result<tokio::net::TcpStream> {
        let addrs = tokio::net::lookup_host((target.host.as_str(), target.port)).await?;
        let mut last_err = None;
        for addr in addrs {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Command groups are written whole; do not let Nagle hold back the next one.
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(e) => {
                    tracing::debug!(%target, %addr, error = %e, "connect failed");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no address found", target.host),
            )
        }))
    }
}

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, target: &'a HostPort) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            match tokio::time::timeout(self.connect_timeout, Self::connect_any(target)).await {
                Ok(Ok(stream)) => Ok(Box::new(stream) as BoxStream),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connect to {target} timed out after {:?}",
                        self.connect_timeout
                    ),
                )),
            }
        })
    }
}

type Handler = Arc<dyn Fn(DuplexStream) -> io::Result<()> + Send + Sync + 'static>;

#[derive(Default)]
struct Routes {
    handlers: HashMap<(String, u16), Handler>,
    connects: HashMap<(String, u16), u64>,
}

/// In-memory connections to in-process servers. Cloning shares the routes.
#[derive(Clone)]
pub struct MemoryConnector {
    routes: Arc<Mutex<Routes>>,
    capacity: usize,
}

impl Default for MemoryConnector {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryConnector")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

fn key(target: &HostPort) -> (String, u16) {
    (target.host.to_ascii_lowercase(), target.port)
}

impl MemoryConnector {
    /// Duplex buffers of 64 KiB each way.
    pub fn new() -> Self {
        Self::with_capacity(64 * 1024)
    }

    /// Duplex buffers of `capacity` bytes each way.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            routes: Arc::new(Mutex::new(Routes::default())),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        // A handler never runs under the lock, so a poisoned lock only means a panicking test.
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connections to `target` (host compared case-insensitively) get a fresh duplex; `handler`
    /// gets the server half (typically spawning a server task on it) and may refuse with `Err`,
    /// which `connect` then returns. Unknown targets: `ConnectionRefused`. A later `route` for the
    /// same target replaces the handler.
    pub fn route(
        &self,
        target: HostPort,
        handler: impl Fn(DuplexStream) -> io::Result<()> + Send + Sync + 'static,
    ) {
        self.lock().handlers.insert(key(&target), Arc::new(handler));
    }

    /// Remove a route; later connections are refused.
    pub fn unroute(&self, target: &HostPort) {
        self.lock().handlers.remove(&key(target));
    }

    /// Connection attempts made to `target` so far (refused ones included).
    pub fn connects(&self, target: &HostPort) -> u64 {
        self.lock().connects.get(&key(target)).copied().unwrap_or(0)
    }
}

impl Connector for MemoryConnector {
    fn connect<'a>(&'a self, target: &'a HostPort) -> BoxFuture<'a, io::Result<BoxStream>> {
        let handler = {
            let mut routes = self.lock();
            *routes.connects.entry(key(target)).or_insert(0) += 1;
            routes.handlers.get(&key(target)).cloned()
        };
        let capacity = self.capacity;
        Box::pin(async move {
            let Some(handler) = handler else {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("{target}: no in-memory server"),
                ));
            };
            let (client, server) = tokio::io::duplex(capacity);
            handler(server)?;
            Ok(Box::new(client) as BoxStream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn memory_routes_refuses_and_counts() {
        let c = MemoryConnector::new();
        let mx = HostPort::new("MX.Example.org", 25);
        let down = HostPort::new("down.example.org", 25);
        c.route(mx.clone(), |mut s| {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 hi\r\n").await;
            });
            Ok(())
        });
        c.route(down.clone(), |_| {
            Err(io::Error::new(io::ErrorKind::ConnectionRefused, "down"))
        });
        let mut s = c
            .connect(&HostPort::new("mx.example.ORG", 25))
            .await
            .unwrap();
        let mut buf = vec![0; 8];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, b"220 hi\r\n");
        let e = c.connect(&down).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let e = c
            .connect(&HostPort::new("nowhere", 25))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        c.unroute(&mx);
        assert!(c.connect(&mx).await.is_err());
        assert_eq!(c.connects(&mx), 2);
        assert_eq!(c.connects(&down), 1);
    }
}
