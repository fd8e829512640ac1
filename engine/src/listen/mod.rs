//! The SMTP listener (LISTEN-1..LISTEN-7): list managers that speak SMTP (Mailman, listmonk,
//! Discourse...) hand their mail to smtpw here. [`session`] is the protocol, pure; this module
//! only moves bytes between a socket and a session, stores jobs through [`Spool::accept`], and
//! keeps the connection cap and the idle time-out.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::settings::ListenSettings;
use crate::spool::{NewJob, Spool};
use crate::text::escape_controls;

pub mod session;

pub use session::{Received, Session, SessionConfig, Step, StoreError};

/// What the listener did since it started; read by the operations endpoint (counts of
/// `smtpw_ingest_jobs_total{source="smtp"}` are `jobs` and `refused`...).
#[derive(Debug, Default)]
pub struct ListenStats {
    /// Connections taken (under the cap, from an allowed client).
    pub connections: AtomicU64,
    /// Connections refused: client outside `allow`.
    pub refused_clients: AtomicU64,
    /// Connections refused: over `max_connections`.
    pub over_cap: AtomicU64,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Jobs committed to the spool (each answered 250).
    pub jobs: AtomicU64,
    /// Their recipients.
    pub recipients: AtomicU64,
    /// Messages the spool could not store (each answered 451).
    pub store_failures: AtomicU64,
    /// Where jobs are also counted for `GET /metrics`
    /// (`smtpw_ingest_jobs_total{source="smtp"}`), when the engine has one.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Why the listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        error: std::io::Error,
    },
    /// A thread's event loop could not be made.
    #[error("cannot make the event loop of a listener thread: {0}")]
    Loop(std::io::Error),
}

/// Bound sockets, ready to serve.
pub struct Listener {
    sockets: Vec<TcpListener>,
    cfg: SessionConfig,
    stats: Arc<ListenStats>,
    loops: Loops,
}

/// The event loops of the listener's threads (`[listen] threads`), made when it binds so that a
/// failure stops the start. A connection lives on one thread: its reads, replies and stores
/// wake no other (on a runtime shared with the delivery engine, two workers hand tasks and
/// wake-ups to each other: about a fifth more CPU per message; docs/PERFORMANCE.md).
struct Loops(Vec<tokio::runtime::Runtime>);

impl Drop for Loops {
    fn drop(&mut self) {
        // A listener dropped unserved, maybe inside another runtime (where dropping one
        // blocks, which tokio refuses).
        for rt in self.0.drain(..) {
            rt.shutdown_background();
        }
    }
}

impl Listener {
    /// Bind every address of `settings` (nothing is served before [`Listener::serve`]).
    pub async fn bind(settings: ListenSettings, hostname: String) -> Result<Self, ListenError> {
        let mut sockets = Vec::new();
        for &addr in &settings.addresses {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|error| ListenError::Bind { addr, error })?;
            sockets.push(l);
        }
        let mut loops = Loops(Vec::new());
        for _ in 0..settings.threads.max(1) {
            loops.0.push(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(ListenError::Loop)?,
            );
        }
        Ok(Listener {
            sockets,
            cfg: SessionConfig {
                hostname,
                settings: Arc::new(settings),
            },
            stats: Arc::new(ListenStats::default()),
            loops,
        })
    }

    /// The addresses bound (with the ports the system chose for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Live counters of what it has accepted and refused.
    pub fn stats(&self) -> Arc<ListenStats> {
        self.stats.clone()
    }

    /// Also count the jobs it takes in `metrics` (`source="smtp"`: `accepted` for a 250,
    /// `rejected` for a 451). Call before [`Listener::serve`].
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.stats = Arc::new(ListenStats {
            metrics: Some(metrics),
            ..ListenStats::default()
        });
        self
    }

    /// Serve until `shutdown`: then stop accepting, tell idle clients `421` and wait for the
    /// messages being stored. Each of the `[listen] threads` accepts on every address; the
    /// system hands a new connection to one of them, which serves it to the end.
    pub async fn serve<S: Spool>(mut self, spool: Arc<S>, shutdown: CancellationToken) {
        let threads = self.loops.0.len();
        for a in self.local_addrs() {
            info!(address = %a, threads, "listening for SMTP submissions");
        }
        // Each thread gets its own handle of every socket, registered with its own loop.
        let mut std_sockets = Vec::new();
        for sock in std::mem::take(&mut self.sockets) {
            match sock.into_std() {
                Ok(s) => std_sockets.push(s),
                Err(e) => {
                    warn!(error = %e, "a listening socket cannot be handed to the listener threads; it is closed")
                }
            }
        }
        let mut done = Vec::new();
        for (i, rt) in std::mem::take(&mut self.loops.0).into_iter().enumerate() {
            let socks: Vec<std::net::TcpListener> = std_sockets
                .iter()
                .filter_map(|s| match s.try_clone() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        warn!(error = %e, thread = i, "cannot share a listening socket with a listener thread");
                        None
                    }
                })
                .collect();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let work = serve_sockets(
                socks,
                self.cfg.clone(),
                spool.clone(),
                self.stats.clone(),
                shutdown.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("smtpw-listen-{i}"))
                .spawn(move || {
                    crate::spool::mark_own_loop();
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        rt.block_on(work);
                        // Its connections' tasks are all done; the loop goes before the answer.
                        drop(rt);
                    }));
                    if served.is_err() {
                        // A bug: said loudly, when it happens. The other threads, and the
                        // engine, go on.
                        tracing::error!(
                            thread = i,
                            "a listener thread stopped unexpectedly (a panic); it takes no more connections"
                        );
                    }
                    let _ = tx.send(());
                });
            match spawned {
                Ok(_) => done.push(rx),
                Err(e) => warn!(error = %e, thread = i, "cannot start a listener thread"),
            }
        }
        if done.is_empty() {
            // No thread could start: serve here, on the caller's runtime, rather than not at all.
            serve_sockets(std_sockets, self.cfg, spool, self.stats, shutdown).await;
            return;
        }
        drop(std_sockets);
        for rx in done {
            // An error: the thread is gone without answering; nothing to wait for.
            let _ = rx.await;
        }
    }
}

/// Accept on every one of `sockets` until `shutdown`, and serve what they accept, on the
/// current runtime; returns once every connection has ended.
async fn serve_sockets<S: Spool>(
    sockets: Vec<std::net::TcpListener>,
    cfg: SessionConfig,
    spool: Arc<S>,
    stats: Arc<ListenStats>,
    shutdown: CancellationToken,
) {
    let mut accepts = tokio::task::JoinSet::new();
    for sock in sockets {
        let sock = match sock
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(sock))
        {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "a listening socket cannot be served");
                continue;
            }
        };
        accepts.spawn(accept_loop(
            sock,
            cfg.clone(),
            spool.clone(),
            stats.clone(),
            shutdown.clone(),
        ));
    }
    while let Some(r) = accepts.join_next().await {
        if r.is_err_and(|e| e.is_panic()) {
            // A bug: said loudly, when it happens.
            tracing::error!("an SMTP listener's accept loop stopped unexpectedly (a panic); its address takes no more connections on this thread");
        }
    }
}

async fn accept_loop<S: Spool>(
    sock: TcpListener,
    cfg: SessionConfig,
    spool: Arc<S>,
    stats: Arc<ListenStats>,
    shutdown: CancellationToken,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = sock.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let open = stats.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(stats.clone());
        if open >= cfg.settings.max_connections as usize {
            stats.over_cap.fetch_add(1, Ordering::Relaxed);
            warn!(client = %peer, max_connections = cfg.settings.max_connections, "connection refused: at the connection cap");
            conns.spawn(async move {
                let mut stream = stream;
                let _ = stream
                    .write_all(Session::too_many_connections().as_bytes())
                    .await;
                let _ = stream.shutdown().await;
                drop(guard);
            });
            continue;
        }
        let (cfg, spool, stats, shutdown) =
            (cfg.clone(), spool.clone(), stats.clone(), shutdown.clone());
        conns.spawn(async move {
            connection(stream, peer, cfg, spool, stats, shutdown).await;
            drop(guard);
        });
    }
    while conns.join_next().await.is_some() {}
}

/// Messages being received by this process's SMTP listeners now (a client between its DATA's
/// 354 or first BDAT chunk and the end of its message): the jobs a commit about to start may
/// wait for. Raised and lowered by [`Receiving`].
static RECEIVING: AtomicUsize = AtomicUsize::new(0);

/// Counts one message being received in [`RECEIVING`] while it lives.
#[derive(Debug, Default)]
struct Receiving(bool);

impl Receiving {
    /// Say whether a message is being received now (idempotent).
    fn set(&mut self, receiving: bool) {
        if receiving != self.0 {
            if receiving {
                RECEIVING.fetch_add(1, Ordering::SeqCst);
            } else {
                RECEIVING.fetch_sub(1, Ordering::SeqCst);
            }
            self.0 = receiving;
        }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// How many messages this process's listeners are receiving now (see [`Receiving`]).
pub(crate) fn receiving() -> usize {
    RECEIVING.load(Ordering::SeqCst)
}

/// Counts an open connection until dropped.
struct OpenGuard(Arc<ListenStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Messages a connection may have being stored at once: a pipelining client's messages are
/// stored together up to this many, then their replies are written before more are taken.
const MAX_PENDING_STORES: usize = 64;

/// A message being stored: the spool's future, polled in place by the connection's task (no
/// task of its own: no spawn, no hop to another worker and back per message).
type StoreFuture<'a> =
    Pin<Box<dyn Future<Output = Result<i64, crate::spool::SpoolError>> + Send + 'a>>;

/// The replies of a connection, in order: text, and the places of replies still waiting for
/// the spool.
#[derive(Default)]
struct Replies<'a> {
    segments: Vec<Segment<'a>>,
    stores: usize,
}

enum Segment<'a> {
    Text(Vec<u8>),
    /// A message being stored: its recipients, and the store (its answer once it came).
    Store(u64, Store<'a>),
}

enum Store<'a> {
    Pending(StoreFuture<'a>),
    Done(Result<i64, crate::spool::SpoolError>),
}

impl Store<'_> {
    /// Poll a pending store; whether it has its answer.
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            Store::Done(_) => true,
            Store::Pending(f) => match f.as_mut().poll(cx) {
                Poll::Ready(r) => {
                    *self = Store::Done(r);
                    true
                }
                Poll::Pending => false,
            },
        }
    }
}

impl<'a> Replies<'a> {
    fn text(&mut self, r: &str) {
        match self.segments.last_mut() {
            Some(Segment::Text(t)) => t.extend_from_slice(r.as_bytes()),
            _ => self.segments.push(Segment::Text(r.as_bytes().to_vec())),
        }
    }

    fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Start storing a message: polled once now, so the spool has it (and groups it with
    /// whatever else arrives) while the session reads on; its reply keeps its place.
    async fn store(&mut self, rcpts: u64, fut: StoreFuture<'a>) {
        let mut store = Store::Pending(fut);
        std::future::poll_fn(|cx| {
            store.poll(cx);
            Poll::Ready(())
        })
        .await;
        self.segments.push(Segment::Store(rcpts, store));
        self.stores += 1;
    }

    /// Wait for the stores (all at once: their commits are grouped), and write every reply
    /// in order. Err: the client has gone.
    async fn flush(
        &mut self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        stats: &ListenStats,
    ) -> std::io::Result<()> {
        if self.stores > 0 {
            let segments = &mut self.segments;
            std::future::poll_fn(|cx| {
                let mut all = true;
                for seg in segments.iter_mut() {
                    if let Segment::Store(_, s) = seg {
                        all &= s.poll(cx);
                    }
                }
                if all {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
        let mut out = Vec::new();
        for seg in self.segments.drain(..) {
            match seg {
                Segment::Text(t) => out.extend_from_slice(&t),
                Segment::Store(rcpts, Store::Done(result)) => {
                    out.extend_from_slice(answer(result, rcpts, peer, stats).as_bytes());
                }
                // Not reached: every store was polled to its end above.
                Segment::Store(rcpts, Store::Pending(f)) => {
                    let result = f.await;
                    out.extend_from_slice(answer(result, rcpts, peer, stats).as_bytes());
                }
            }
        }
        self.stores = 0;
        stream.write_all(&out).await
    }
}

/// The reply to a stored message, counted and (when it failed) logged.
fn answer(
    result: Result<i64, crate::spool::SpoolError>,
    rcpts: u64,
    peer: SocketAddr,
    stats: &ListenStats,
) -> String {
    let answer = match result {
        Ok(id) => {
            stats.jobs.fetch_add(1, Ordering::Relaxed);
            stats.recipients.fetch_add(rcpts, Ordering::Relaxed);
            if let Some(m) = &stats.metrics {
                m.ingested("smtp", "accepted", 1);
            }
            debug!(client = %peer, job = id, recipients = rcpts, "job accepted");
            Ok(id)
        }
        Err(e) => {
            stats.store_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &stats.metrics {
                m.ingested("smtp", "rejected", 1);
            }
            warn!(client = %peer, recipients = rcpts, error = %escape_controls(&e.to_string()), "a message could not be stored; the client was told to try again later (451)");
            Err(if e.is_disk_full() {
                StoreError::DiskFull
            } else {
                StoreError::Other
            })
        }
    };
    Session::stored(answer)
}

/// What one read may take: the session consumes everything but a partial line, so the buffer
/// stays about this size.
const READ_SIZE: usize = 64 * 1024;

/// Read what the client sent onto the end of `buf` (straight into its spare room: no copy).
async fn read_more(stream: &mut TcpStream, buf: &mut bytes::BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        // Reclaims the consumed front when it can (the session drops lines from the front).
        buf.reserve(READ_SIZE);
    }
    stream.read_buf(buf).await
}

/// One client, from greeting to close.
async fn connection<S: Spool>(
    mut stream: TcpStream,
    peer: SocketAddr,
    cfg: SessionConfig,
    spool: Arc<S>,
    stats: Arc<ListenStats>,
    shutdown: CancellationToken,
) {
    let allowed = cfg.settings.allows(peer.ip());
    let idle = cfg.settings.idle_timeout;
    let mut session = Session::new(cfg);
    let mut out = Replies::default();
    let mut buf = bytes::BytesMut::with_capacity(READ_SIZE);
    let source = format!("smtp:{peer}");
    match session.greeting(allowed, &peer.ip().to_string()) {
        Step::Reply(r) => out.text(&r),
        Step::Close(r) => {
            stats.refused_clients.fetch_add(1, Ordering::Relaxed);
            warn!(client = %peer, "connection refused: the client is not in [listen] allow");
            let _ = stream.write_all(r.as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
        _ => {}
    }
    stats.connections.fetch_add(1, Ordering::Relaxed);
    debug!(client = %peer, "connected");
    // Whether this client is sending a message now: a commit may wait for it.
    let mut receiving = Receiving::default();
    loop {
        let step = session.step(&mut buf);
        receiving.set(session.in_message());
        match step {
            Step::Reply(r) => out.text(&r),
            Step::Store(rcv) => {
                let rcpts = rcv.rcpts.len() as u64;
                debug!(client = %peer, recipients = rcpts, pool = %rcv.pool.map_or('-', |p| p.as_char()), pool_by = rcv.pool_by, "storing a message");
                let message = match crate::job::fold_long_lines(&rcv.message) {
                    None => rcv.message,
                    Some((folded, lines)) => {
                        // As ingest does for .MAIL files (JOB rules): relays refuse lines over
                        // 1000 octets.
                        warn!(client = %peer, lines, "message lines longer than 998 bytes folded");
                        folded
                    }
                };
                let job = NewJob {
                    mail_from: rcv.mail_from,
                    pool: rcv.pool,
                    rcpts: rcv.rcpts,
                    message: bytes::Bytes::from(message),
                    source: source.clone(),
                };
                if buf.is_empty() && out.stores == 0 {
                    // Nothing more is buffered: the client waits for this reply, so there is
                    // nothing to store alongside; wait here (no task to hand it to).
                    let result = spool.accept(job).await;
                    out.text(&answer(result, rcpts, peer, &stats));
                    continue;
                }
                out.store(rcpts, Box::pin(spool.accept(job))).await;
                if out.stores >= MAX_PENDING_STORES
                    && out.flush(&mut stream, peer, &stats).await.is_err()
                {
                    return;
                }
            }
            Step::Close(r) => {
                out.text(&r);
                let _ = out.flush(&mut stream, peer, &stats).await;
                let _ = stream.shutdown().await;
                return;
            }
            Step::NeedInput => {
                if !out.is_empty() {
                    if out.stores > 0 {
                        // Nothing more comes from this client before its replies are out: no
                        // commit is to wait for it meanwhile.
                        receiving.set(false);
                    }
                    if out.flush(&mut stream, peer, &stats).await.is_err() {
                        return;
                    }
                    receiving.set(session.in_message());
                }
                let read = tokio::select! {
                    _ = shutdown.cancelled(), if !session.in_message() => {
                        let r = session.shutting_down();
                        let _ = stream.write_all(r.as_bytes()).await;
                        let _ = stream.shutdown().await;
                        return;
                    }
                    r = tokio::time::timeout(idle, read_more(&mut stream, &mut buf)) => r,
                };
                match read {
                    Err(_) => {
                        let r = session.idle_timeout();
                        debug!(client = %peer, "idle time-out");
                        let _ = stream.write_all(r.as_bytes()).await;
                        let _ = stream.shutdown().await;
                        return;
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        session.eof();
                        return;
                    }
                    Ok(Ok(_)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
