//! The PostgreSQL spool (CLU-1..CLU-6): several `smtpw run` nodes share one queue in a
//! PostgreSQL database, each named by SITE.CFG's `NODE=`.
//!
//! Tables (see `schema.rs`, versioned): `jobs` (the message once per job, its counters),
//! `copies` (at most MAXBSMTP recipients each; `assigned_to` the node whose DIST_FORWARD share it
//! is, `claimed_by` the node that holds it), `failures`, `totals` (per pool), `delivered_by` (per
//! node), `ingested` (files committed but perhaps not yet removed, per node), `nodes` (name,
//! heartbeat).
//!
//! - Claims (CLU-2) take a batch of the oldest claimable copies in one statement (`FOR UPDATE
//!   SKIP LOCKED`, so nodes never wait for each other) and mark them `claimed_by` this node; the
//!   batch waits in memory for the workers. A copy is claimable when nobody holds it or its
//!   holder is dead, and it is nobody's share, this node's, or a dead node's.
//! - Leases (CLU-3): a node renews its `nodes.heartbeat` every few seconds; one silent for longer
//!   than `[cluster] node_timeout` is dead, and what it held or was given is claimable by the
//!   live nodes. A node holds a session-level advisory lock on its name for as long as it runs,
//!   so a second live node with the same name is refused, while a restart after a crash (whose
//!   connection the server has dropped) takes its own work back at once.
//! - Completions are batched by a writer thread exactly as in the SQLite spool (QUEUE-1): the
//!   ledger lines are appended and synced, then one transaction records the whole batch; a
//!   worker hears of its completion only after the commit.
//! - Ingest commits a file's jobs and copies (and an `ingested` record) in one transaction
//!   before the file is removed.

use std::collections::{BTreeMap, HashMap};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_postgres::{Client, NoTls, Statement};

use super::index::JobInfo;
use super::ingest::{open_job, quarantine, OpenError};
use super::policy::{self, Attempt, Fate};
use super::sqlite::{lock, ms};
use super::{
    list_incoming, ClaimedCopy, CopyResult, CopyState, EntryKind, IngestReport, PoolStats,
    QueueStats, Spool, SpoolError, SpoolOptions, INCOMING, LEDGER_FILE,
};
use crate::chunk::{chunk, SortMode};
use crate::clock::SharedClock;
use crate::config::{DistEntry, Pool, PoolSet};
use crate::job::{JobError, JobReader};
use crate::ledger::Ledger;

pub mod copy;
pub mod limit;
pub mod schema;
pub mod share;

/// Is `s` a database URL (rather than a spool directory)?
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

pub(crate) fn pg_error(e: tokio_postgres::Error) -> SpoolError {
    SpoolError::Postgres(schema::describe(&e))
}

/// How a node joins the cluster.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (never logged).
    pub url: String,
    /// This node's name (SITE.CFG's `NODE=`).
    pub node: String,
    /// A node silent for longer than this is dead: its work goes to the live nodes.
    pub node_timeout: Duration,
    /// DIST_FORWARD: how this node shares out the copies of the jobs it ingests.
    pub dist_forward: Vec<DistEntry>,
    /// DIST_FORWARD_THRESHOLD and _MINSIZE (DIST-3).
    pub dist_limits: share::DistLimits,
    /// This node's own directory: `DIR/incoming/` (jobs it ingests), `DIR/quarantine/`, and the
    /// ledger by default. `None`: the node ingests nothing from files.
    pub local_dir: Option<PathBuf>,
    /// Copies taken per claim statement.
    pub claim_batch: i64,
    /// Workers of this node (shown by `smtpw queue`).
    pub workers: i32,
}

impl PgOptions {
    /// Whether this node takes over the work of dead nodes: every node that delivers does; a
    /// primary whose DIST_FORWARD says `0*SELF` delivers nothing of the shares, not even a dead
    /// node's (DIST-4).
    pub fn takes_over(&self) -> bool {
        !self
            .dist_forward
            .iter()
            .any(|e| e.host.eq_ignore_ascii_case(crate::config::SELF) && e.weight == 0)
    }
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &crate::settings::redact_url(&self.url))
            .field("node", &self.node)
            .field("node_timeout", &self.node_timeout)
            .finish_non_exhaustive()
    }
}

impl PgOptions {
    /// Options for the database at `url`, as node `node` (SITE.CFG's NODE=), with the defaults.
    pub fn new(url: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            node: node.into(),
            node_timeout: Duration::from_secs(60),
            dist_forward: Vec::new(),
            dist_limits: share::DistLimits::default(),
            local_dir: None,
            claim_batch: 16,
            workers: 0,
        }
    }

    /// How often the heartbeat is renewed: six times per node_timeout, between 200 ms and 10 s.
    fn beat(&self) -> Duration {
        (self.node_timeout / 6).clamp(Duration::from_millis(200), Duration::from_secs(10))
    }
}

async fn connect(url: &str) -> Result<Client, SpoolError> {
    let cfg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        SpoolError::Postgres(format!(
            "the spool URL {} is not valid: {}",
            crate::settings::redact_url(url),
            schema::describe(&e)
        ))
    })?;
    let (client, conn) = cfg.connect(NoTls).await.map_err(|e| {
        SpoolError::Postgres(format!(
            "cannot connect to {}: {}",
            crate::settings::redact_url(url),
            schema::describe(&e)
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %schema::describe(&e), "a spool database connection ended");
        }
    });
    Ok(client)
}

/// A copy claimed from the database, waiting for a worker or with one.
#[derive(Debug, Clone)]
struct Held {
    job_id: i64,
    pool: Pool,
    rcpts: Vec<String>,
    attempts: u32,
}

#[derive(Default)]
struct State {
    /// Claimed in the database, not yet handed to a worker (oldest first).
    buffer: BTreeMap<i64, Held>,
    /// Handed to a worker.
    in_flight: HashMap<i64, (Held, Timestamp, bool)>,
    jobs: HashMap<i64, Arc<JobInfo>>,
    /// Copies this node may deliver (from the database, kept current between counts).
    queued: u64,
    /// Per pool, the earliest retry time (ms) of a deferred copy this node may deliver, as far
    /// as it knows (its own deferrals, and each recount): idle workers wake for it, and once it
    /// has passed a claim makes the due copies ready first.
    due: [Option<i64>; Pool::COUNT],
    /// Per pool, a retry time that passed before the copies due were made ready was replaced
    /// in `due` by a later one: the next claim makes them ready all the same.
    overdue: [bool; Pool::COUNT],
}

impl State {
    /// A copy of `pool` falls due at `at` (ms); times already past are forgotten.
    fn note_due(&mut self, pool: Pool, at: i64, now: i64) {
        let slot = &mut self.due[pool.index()];
        *slot = match *slot {
            Some(d) if d > now => Some(d.min(at)),
            Some(_) => {
                self.overdue[pool.index()] = true;
                Some(at)
            }
            None => Some(at),
        };
    }

    /// Whether a deferred copy of `pools` is known to be due by `now` (ms): then a claim first
    /// makes the due copies ready ([`PROMOTE`]).
    fn any_due(&self, pools: PoolSet, now: i64) -> bool {
        pools
            .iter()
            .any(|p| self.overdue[p.index()] || self.due[p.index()].is_some_and(|d| d <= now))
    }

    /// The copies due by `now` were made ready (of every pool: [`PROMOTE`] takes them all):
    /// forget their retry times (those to come stay; the next recount finds any other).
    fn forget_due(&mut self, now: i64) {
        self.overdue = [false; Pool::COUNT];
        for slot in &mut self.due {
            if slot.is_some_and(|d| d <= now) {
                *slot = None;
            }
        }
    }

    /// The earliest known retry time of `pools` still to come after `now` (ms).
    fn next_due(&self, pools: PoolSet, now: i64) -> Option<i64> {
        pools
            .iter()
            .filter_map(|p| self.due[p.index()])
            .filter(|d| *d > now)
            .min()
    }
}

/// A worker's group of completions (one answer for all of them).
struct Request {
    items: Vec<(i64, CopyResult)>,
    now: Timestamp,
    reply: super::group::Answer,
}

struct Shared {
    opts: SpoolOptions,
    pg: PgOptions,
    clock: SharedClock,
    state: Mutex<State>,
    /// Bumped at every local change of `queued`: a count read meanwhile is stale.
    generation: AtomicU64,
    claim_db: tokio::sync::Mutex<ClaimDb>,
    ingest_db: tokio::sync::Mutex<Client>,
    notify: Arc<Notify>,
    recording_error: Mutex<Option<String>>,
    stalled: AtomicBool,
    /// The last heartbeat that reached the database.
    last_beat: Mutex<Instant>,
    ledger_path: PathBuf,
    /// Recipients this node has shared out to each node (lower-case name) since it started
    /// (DIST-4): each job's split continues from them.
    share_given: Mutex<HashMap<String, u64>>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: Option<mpsc::UnboundedSender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.tx.take();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

/// The PostgreSQL spool of one node. Cheap to clone.
#[derive(Clone)]
pub struct PgSpool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSpool")
            .field("node", &self.inner.shared.pg.node)
            .finish()
    }
}

/// The claim: the oldest ready copies (`not_before = 0`: never deferred, or deferred and made
/// ready by [`PROMOTE`] once due) of the pools `$2`, at most `$4`, marked held by node `$1`.
/// With `$5`, also those a dead node (heartbeat older than `$3` seconds) held or was given. The
/// ready copies have an index of their own (`copies_ready`), walked in id order: a claim never
/// walks past deferred copies, however many are queued before the ready ones. The ids go
/// through an array so that the update finds its rows by the primary key whatever the table's
/// size (a join with the selecting CTE let the planner hash-join a scan of every copy, once
/// per claim). Each job's message comes with the first of its copies, unless its id is in `$6`
/// (the jobs whose messages this node has already): one round trip per claim. The lateral join
/// finds a job by its primary key whatever the planner knows of the table.
const CLAIM: &str = "WITH dead AS (SELECT name FROM nodes \
       WHERE heartbeat < clock_timestamp() - make_interval(secs => $3)), \
     claimed AS (UPDATE copies SET claimed_by = $1 WHERE id = ANY(ARRAY(SELECT id FROM copies \
       WHERE pool = ANY($2) AND not_before = 0 \
       AND (claimed_by IS NULL OR ($5 AND claimed_by IN (SELECT name FROM dead))) \
       AND (assigned_to IS NULL OR assigned_to = $1 OR ($5 AND assigned_to IN (SELECT name FROM dead))) \
       ORDER BY id LIMIT $4 FOR UPDATE OF copies SKIP LOCKED)) \
     RETURNING id, job_id, pool, rcpts, attempts), \
     c AS (SELECT *, row_number() OVER (PARTITION BY job_id ORDER BY id) AS k FROM claimed) \
     SELECT c.id, c.job_id, c.pool, c.rcpts, c.attempts, j.mail_from, j.message, j.created FROM c \
     LEFT JOIN LATERAL (SELECT mail_from, message, created FROM jobs WHERE jobs.id = c.job_id) j \
       ON c.k = 1 AND NOT (c.job_id = ANY($6))";

/// Deferred copies due by `$1` (ms) become ready (`not_before = 0`), whichever node deferred
/// them, so that [`CLAIM`] finds them among the ready ones, in their place by id (FIFO by
/// creation, SPEC A7). Sent only when this node knows of a due copy (its own deferrals, each
/// recount's earliest retry time), in the same round trip as the claim (the connection
/// pipelines the two statements, this one first); through `copies_deferred` it is an index
/// range scan of the due copies.
const PROMOTE: &str = "UPDATE copies SET not_before = 0 WHERE not_before > 0 AND not_before <= $1";

/// The claim connection and its statements, prepared once: each claim is then one round trip
/// (bind and execute) and no parse, where a statement given as text is prepared every time.
struct ClaimDb {
    client: Client,
    stmts: Option<Arc<ClaimStatements>>,
}

struct ClaimStatements {
    claim: Statement,
    promote: Statement,
    jobs: Statement,
}

impl ClaimDb {
    fn new(client: Client) -> ClaimDb {
        ClaimDb {
            client,
            stmts: None,
        }
    }

    async fn statements(&mut self) -> Result<Arc<ClaimStatements>, SpoolError> {
        if let Some(s) = &self.stmts {
            return Ok(s.clone());
        }
        let s = Arc::new(ClaimStatements {
            claim: self.client.prepare(CLAIM).await.map_err(pg_error)?,
            promote: self.client.prepare(PROMOTE).await.map_err(pg_error)?,
            jobs: self
                .client
                .prepare("SELECT id, mail_from, message, created FROM jobs WHERE id = ANY($1)")
                .await
                .map_err(pg_error)?,
        });
        self.stmts = Some(s.clone());
        Ok(s)
    }
}

impl std::ops::Deref for ClaimDb {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl PgSpool {
    /// Join the cluster as `pg.node`: migrate the schema, refuse if a live node has the name,
    /// take back what this node held before a crash, start the heartbeat and the writer.
    pub async fn open(
        opts: SpoolOptions,
        pg: PgOptions,
        clock: SharedClock,
    ) -> Result<Self, SpoolError> {
        let mut node_db = connect(&pg.url).await?;
        schema::migrate(&mut node_db).await?;
        let key = format!("smtpw-node:{}", pg.node);
        let got: bool = node_db
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&key],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        if !got {
            return Err(SpoolError::NodeTaken(pg.node.clone()));
        }
        let profile = serde_json::to_string(&Profile::of(&opts, &pg)).unwrap_or_default();
        node_db
            .execute(
                "INSERT INTO nodes(name, heartbeat, started, workers, profile) \
                 VALUES ($1, clock_timestamp(), clock_timestamp(), $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET heartbeat = clock_timestamp(), \
                 started = clock_timestamp(), workers = $2, profile = $3",
                &[&pg.node, &pg.workers, &profile],
            )
            .await
            .map_err(pg_error)?;
        // What this node held when it stopped is claimable again, by itself first (its shares).
        let back = node_db
            .execute(
                "UPDATE copies SET claimed_by = NULL WHERE claimed_by = $1",
                &[&pg.node],
            )
            .await
            .map_err(pg_error)?;
        if back > 0 {
            tracing::info!(node = %pg.node, copies = back, "took back the copies this node held when it stopped");
        }
        if let Some(d) = &pg.local_dir {
            for sub in [INCOMING, super::QUARANTINE] {
                let p = d.join(sub);
                std::fs::create_dir_all(&p)
                    .map_err(|e| SpoolError::io(format!("creating {}", p.display()), e))?;
            }
        }
        let ledger_path = opts
            .ledger_path
            .clone()
            .or_else(|| pg.local_dir.as_ref().map(|d| d.join(LEDGER_FILE)))
            .unwrap_or_else(|| PathBuf::from(format!("ledger-{}.jsonl", pg.node)));
        let ledger = Ledger::open(&ledger_path)
            .map_err(|e| SpoolError::io(format!("opening ledger {}", ledger_path.display()), e))?
            .with_node(&pg.node);
        let claim_db = connect(&pg.url).await?;
        let ingest_db = connect(&pg.url).await?;
        let writer_db = connect(&pg.url).await?;
        let shared = Arc::new(Shared {
            opts,
            pg,
            clock,
            state: Mutex::new(State::default()),
            generation: AtomicU64::new(0),
            claim_db: tokio::sync::Mutex::new(ClaimDb::new(claim_db)),
            ingest_db: tokio::sync::Mutex::new(ingest_db),
            notify: Arc::new(Notify::new()),
            recording_error: Mutex::new(None),
            stalled: AtomicBool::new(false),
            last_beat: Mutex::new(Instant::now()),
            ledger_path,
            share_given: Mutex::new(HashMap::new()),
        });
        recount(&shared, &node_db).await?;
        let queued = lock(&shared.state).queued;
        refresh_statistics(&node_db, queued).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let w = shared.clone();
        let writer = std::thread::Builder::new()
            .name("smtpw-pg-writer".into())
            .spawn(move || writer_thread(w, writer_db, ledger, rx))
            .map_err(|e| SpoolError::io("starting the spool writer", e))?;
        let heartbeat = tokio::spawn(heartbeat(shared.clone(), node_db));
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                writer: Some(writer),
                heartbeat,
            }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.shared().pg.node
    }

    /// Where this node's ledger is written.
    pub fn ledger_path(&self) -> &Path {
        &self.shared().ledger_path
    }

    /// Give back what this node holds and has not sent (the claimed batch waiting for workers):
    /// call after the engine has stopped, so that other nodes need not wait for the grace.
    pub async fn close(&self) -> Result<(), SpoolError> {
        let sh = self.shared();
        let ids: Vec<i64> = {
            let mut st = lock(&sh.state);
            let mut ids: Vec<i64> = st.buffer.keys().copied().collect();
            st.buffer.clear();
            ids.extend(
                st.in_flight
                    .iter()
                    .filter(|(_, (_, _, completing))| !completing)
                    .map(|(id, _)| *id),
            );
            ids
        };
        let db = sh.claim_db.lock().await;
        db.execute(
            "UPDATE copies SET claimed_by = NULL WHERE id = ANY($1) AND claimed_by = $2",
            &[&ids, &sh.pg.node],
        )
        .await
        .map_err(pg_error)?;
        Ok(())
    }

    /// Queue a job as if `via` (a node name) had ingested it: its copies are shared out by this
    /// node's DIST_FORWARD (as `via` would, when `via` is this node). One transaction; returns
    /// the job's id once committed.
    pub async fn submit_job(
        &self,
        mail_from: &str,
        pool: Option<Pool>,
        rcpts: Vec<String>,
        message: Vec<u8>,
        source: &str,
    ) -> Result<i64, SpoolError> {
        let sh = self.shared();
        let mut db = sh.ingest_db.lock().await;
        let tx = db.transaction().await.map_err(pg_error)?;
        let mut split = splitter(sh, &tx).await?;
        let now = sh.clock.now();
        let (job_id, mine, copies) = insert_job(
            sh,
            &tx,
            &mut split,
            mail_from,
            pool.unwrap_or(sh.opts.default_pool),
            &rcpts,
            message,
            source,
            now,
        )
        .await?;
        tx.commit().await.map_err(pg_error)?;
        split.remember(&mut lock(&sh.share_given));
        add_queued(sh, mine);
        sh.notify.notify_waiters();
        if copies >= STATS_CHECK_MIN {
            let queued = lock(&sh.state).queued;
            refresh_statistics(&db, queued.max(copies)).await;
        }
        Ok(job_id)
    }
}

fn add_queued(sh: &Shared, copies: u64) {
    if copies > 0 {
        sh.generation.fetch_add(1, Ordering::SeqCst);
        lock(&sh.state).queued += copies;
    }
}

/// The live nodes' names (heartbeat within node_timeout).
async fn live_nodes(
    sh: &Shared,
    db: &impl tokio_postgres::GenericClient,
) -> Result<Vec<String>, SpoolError> {
    let secs = sh.pg.node_timeout.as_secs_f64();
    let rows = db
        .query(
            "SELECT name FROM nodes WHERE heartbeat >= clock_timestamp() - make_interval(secs => $1)",
            &[&secs],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The DIST_FORWARD splitter for a job ingested now; the nodes left out are logged.
async fn splitter(
    sh: &Shared,
    db: &impl tokio_postgres::GenericClient,
) -> Result<share::Splitter, SpoolError> {
    let live = if sh.pg.dist_forward.is_empty() {
        Vec::new()
    } else {
        live_nodes(sh, db).await?
    };
    let (nodes, left_out) = share::sharers(&sh.pg.dist_forward, &sh.pg.node, |n| {
        live.iter().any(|l| l.eq_ignore_ascii_case(n))
    });
    for n in &left_out {
        tracing::warn!(
            node = %n,
            "DIST_FORWARD node {n} gets no share: it has never started or has been silent for longer than node_timeout ({:?})",
            sh.pg.node_timeout
        );
    }
    if nodes.is_empty() {
        tracing::warn!("no node of DIST_FORWARD is alive to take a share: the copies go to whichever node claims them first");
    }
    Ok(
        share::Splitter::with_limits(nodes, sh.pg.node.clone(), sh.pg.dist_limits)
            .continuing(&lock(&sh.share_given)),
    )
}

/// Insert a job and its copies (within the caller's transaction). Returns the job's id, how
/// many of its copies this node may deliver, and how many copies it has.
#[allow(clippy::too_many_arguments)]
async fn insert_job(
    sh: &Shared,
    tx: &tokio_postgres::Transaction<'_>,
    split: &mut share::Splitter,
    mail_from: &str,
    pool: Pool,
    rcpts: &[String],
    message: Vec<u8>,
    source: &str,
    now: Timestamp,
) -> Result<(i64, u64, u64), SpoolError> {
    let pool_i = pool_index(pool);
    let n = rcpts.len() as i64;
    let job_id: i64 = tx
        .query_one(
            "INSERT INTO jobs(pool, mail_from, message, created, source, node, rcpts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &pool_i,
                &mail_from,
                &message,
                &ms(now),
                &source,
                &sh.pg.node,
                &n,
            ],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    let plan = chunk(
        rcpts,
        sh.opts.split_size(),
        SortMode::from_setting(sh.opts.sort_recipients),
    );
    let mut ns: Vec<i32> = Vec::with_capacity(plan.len());
    let mut lists: Vec<String> = Vec::with_capacity(plan.len());
    let sizes: Vec<u64> = plan.iter().map(|c| c.len() as u64).collect();
    let to = split.split_job(&sizes);
    let mut mine = 0u64;
    for (c, who) in plan.iter().zip(&to) {
        let mut list = String::new();
        for (k, &i) in c.iter().enumerate() {
            if k > 0 {
                list.push('\n');
            }
            list.push_str(&rcpts[i]);
        }
        if who.as_deref().is_none_or(|w| w == sh.pg.node) {
            mine += 1;
        }
        ns.push(i32::try_from(c.len()).unwrap_or(i32::MAX));
        lists.push(list);
    }
    tx.execute(
        "INSERT INTO copies(job_id, pool, n, rcpts, assigned_to) \
         SELECT $1, $2, n, r, a FROM unnest($3::int4[], $4::text[], $5::text[]) AS v(n, r, a)",
        &[&job_id, &pool_i, &ns, &lists, &to],
    )
    .await
    .map_err(pg_error)?;
    Ok((job_id, mine, plan.len() as u64))
}

fn pool_index(p: Pool) -> i16 {
    i16::try_from(p.index()).unwrap_or(0)
}

fn pool_of(i: i16) -> Pool {
    usize::try_from(i)
        .ok()
        .and_then(Pool::from_index)
        .unwrap_or(Pool::DEFAULT)
}

/// Count the copies this node may deliver, unless a local change came meanwhile.
/// Fewest copies inserted at once for which the planner's statistics are checked.
const STATS_CHECK_MIN: u64 = 1000;

/// Refresh the planner's statistics of `copies` and `jobs` when the table holds many more copies
/// than they say (`copies_now` is a lower bound of its rows). Without them, after a large ingest
/// into a fresh or small table, PostgreSQL plans every claim as a scan and sort of all copies
/// (17 ms per claim at 30,000 copies, growing with the queue) until autovacuum analyzes the table,
/// which may be a minute later; with them, as the walk of the primary key it is (0.5 ms).
/// ANALYZE reads a bounded sample, so it costs about the same at any size (0.1 s).
pub(crate) async fn refresh_statistics(db: &Client, copies_now: u64) {
    let known = match db
        .query_one(
            "SELECT reltuples::float8 FROM pg_class WHERE oid = 'copies'::regclass",
            &[],
        )
        .await
    {
        Ok(r) => r.get::<_, f64>(0).max(0.0),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the spool's table statistics");
            return;
        }
    };
    if (copies_now as f64) <= 2.0 * known + STATS_CHECK_MIN as f64 {
        return;
    }
    match db.batch_execute("ANALYZE copies, jobs").await {
        Ok(()) => tracing::debug!(
            copies = copies_now,
            "refreshed the spool's table statistics"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot refresh the spool's table statistics"),
    }
}

async fn recount(sh: &Shared, db: &Client) -> Result<(), SpoolError> {
    let gen = sh.generation.load(Ordering::SeqCst);
    let secs = sh.pg.node_timeout.as_secs_f64();
    let sql =
        "WITH dead AS (SELECT name FROM nodes WHERE heartbeat < clock_timestamp() - make_interval(secs => $2)) \
         SELECT count(*) FROM copies WHERE \
         (claimed_by IS NULL OR claimed_by = $1 OR ($3 AND claimed_by IN (SELECT name FROM dead))) AND \
         (assigned_to IS NULL OR assigned_to = $1 OR ($3 AND assigned_to IN (SELECT name FROM dead)))";
    let n: i64 = db
        .query_one(sql, &[&sh.pg.node, &secs, &sh.pg.takes_over()])
        .await
        .map_err(pg_error)?
        .get(0);
    // The earliest retry time per pool of the deferred copies this node may deliver, those due
    // already included (the next claim makes them ready).
    let due_sql =
        "WITH dead AS (SELECT name FROM nodes WHERE heartbeat < clock_timestamp() - make_interval(secs => $2)) \
         SELECT pool, min(not_before) FROM copies WHERE not_before > 0 AND \
         (claimed_by IS NULL OR claimed_by = $1 OR ($3 AND claimed_by IN (SELECT name FROM dead))) AND \
         (assigned_to IS NULL OR assigned_to = $1 OR ($3 AND assigned_to IN (SELECT name FROM dead))) \
         GROUP BY pool";
    let rows = db
        .query(due_sql, &[&sh.pg.node, &secs, &sh.pg.takes_over()])
        .await
        .map_err(pg_error)?;
    let mut due = [None; Pool::COUNT];
    for r in rows {
        let pool: i16 = r.get(0);
        if let Some(slot) = usize::try_from(pool).ok().and_then(|i| due.get_mut(i)) {
            *slot = Some(r.get::<_, i64>(1));
        }
    }
    let mut st = lock(&sh.state);
    if sh.generation.load(Ordering::SeqCst) == gen {
        let held = (st.buffer.len() + st.in_flight.len()) as u64;
        st.queued = u64::try_from(n).unwrap_or(0).max(held);
        st.due = due;
    }
    Ok(())
}

/// Renew this node's lease, recount its work, wake the workers when there is some, and fold
/// jobs left without copies (two nodes finishing a job's last copies at once each see the
/// other's copy).
async fn heartbeat(sh: Arc<Shared>, db: Client) {
    let beat = sh.pg.beat();
    let mut failing: Option<String> = None;
    // The profile as written at start; rewritten when a reload changes it (MAXBSMTP).
    let mut profile = serde_json::to_string(&Profile::of(&sh.opts, &sh.pg)).unwrap_or_default();
    loop {
        tokio::time::sleep(beat).await;
        let renewed = db
            .execute(
                "UPDATE nodes SET heartbeat = clock_timestamp(), workers = $2 WHERE name = $1",
                &[&sh.pg.node, &sh.pg.workers],
            )
            .await;
        match renewed {
            Ok(_) => {
                *lock(&sh.last_beat) = Instant::now();
                if failing.take().is_some() {
                    tracing::warn!(node = %sh.pg.node, "the heartbeat reaches the spool database again");
                }
            }
            Err(e) => {
                let e = schema::describe(&e);
                if failing.as_deref() != Some(e.as_str()) {
                    tracing::error!(node = %sh.pg.node, error = %e, "cannot renew this node's lease; it claims nothing more until it can");
                    failing = Some(e);
                }
                continue;
            }
        }
        let now_profile = serde_json::to_string(&Profile::of(&sh.opts, &sh.pg)).unwrap_or_default();
        if now_profile != profile {
            match db
                .execute(
                    "UPDATE nodes SET profile = $2 WHERE name = $1",
                    &[&sh.pg.node, &now_profile],
                )
                .await
            {
                Ok(_) => profile = now_profile,
                Err(e) => {
                    tracing::warn!(error = %schema::describe(&e), "cannot record this node's new profile (submit --via splits as before until it can)");
                }
            }
        }
        let before = lock(&sh.state).queued;
        if let Err(e) = recount(&sh, &db).await {
            tracing::warn!(error = %e, "cannot count the queue");
        }
        let _ = db
            .execute(
                "WITH d AS (DELETE FROM jobs j WHERE NOT EXISTS (SELECT 1 FROM copies c WHERE c.job_id = j.id) \
                   AND j.created < $1 RETURNING pool, delivered, failed) \
                 INSERT INTO totals(pool, delivered, failed) SELECT pool, sum(delivered), sum(failed) FROM d GROUP BY pool \
                 ON CONFLICT (pool) DO UPDATE SET delivered = totals.delivered + excluded.delivered, failed = totals.failed + excluded.failed",
                &[&(ms(sh.clock.now()) - 60_000)],
            )
            .await;
        if lock(&sh.state).queued > 0 || before > 0 {
            sh.notify.notify_waiters();
        }
    }
}

impl Spool for PgSpool {
    fn ingest_incoming(
        &self,
    ) -> impl std::future::Future<Output = Result<IngestReport, SpoolError>> + Send {
        let me = self.clone();
        async move {
            let sh = me.shared();
            let Some(dir) = sh.pg.local_dir.clone() else {
                return Ok(IngestReport::default());
            };
            ingest_dir(sh, &dir).await
        }
    }

    fn claim(
        &self,
        pools: PoolSet,
    ) -> impl std::future::Future<Output = Result<Option<ClaimedCopy>, SpoolError>> + Send {
        let me = self.clone();
        async move { Ok(me.claim_many(pools, 1, usize::MAX).await?.pop()) }
    }

    fn claim_many(
        &self,
        pools: PoolSet,
        n: usize,
        max_rcpts: usize,
    ) -> impl std::future::Future<Output = Result<Vec<ClaimedCopy>, SpoolError>> + Send {
        let me = self.clone();
        async move {
            let sh = me.shared();
            if n == 0
                || sh.stalled.load(Ordering::SeqCst)
                || lock(&sh.last_beat).elapsed() > sh.pg.node_timeout / 2
            {
                return Ok(Vec::new());
            }
            // The buffer knows each copy's recipients: the budget is kept as copies are taken.
            let mut budget = Budget::new(max_rcpts);
            let mut out = take_many(sh, pools, n, &mut budget);
            if out.len() >= n || budget.full {
                return Ok(out);
            }
            // One claim statement at a time; a worker that waited may find the batch another
            // one fetched.
            let mut db = sh.claim_db.lock().await;
            out.extend(take_many(sh, pools, n - out.len(), &mut budget));
            if out.len() >= n || budget.full {
                return Ok(out);
            }
            match me.fetch(&mut db, pools, n - out.len()).await {
                Ok(()) => {}
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "claim failed");
                    return Ok(out);
                }
            }
            drop(db);
            out.extend(take_many(sh, pools, n - out.len(), &mut budget));
            Ok(out)
        }
    }

    fn complete(
        &self,
        copy_id: i64,
        result: CopyResult,
    ) -> impl std::future::Future<Output = Result<(), SpoolError>> + Send {
        let me = self.clone();
        async move {
            me.complete_many(vec![(copy_id, result)])
                .await
                .pop()
                .unwrap_or(Err(SpoolError::WriterGone))
        }
    }

    fn complete_many(
        &self,
        results: Vec<(i64, CopyResult)>,
    ) -> impl std::future::Future<Output = Vec<Result<(), SpoolError>>> + Send {
        let me = self.clone();
        async move {
            let sh = me.shared();
            let mut out: Vec<Option<Result<(), SpoolError>>> =
                results.iter().map(|_| None).collect();
            let mut items = Vec::with_capacity(results.len());
            let mut slots = Vec::with_capacity(results.len());
            {
                let mut st = lock(&sh.state);
                for (slot, (copy_id, result)) in results.into_iter().enumerate() {
                    let Some((h, _, completing)) = st.in_flight.get_mut(&copy_id) else {
                        out[slot] = Some(Err(SpoolError::NotClaimed(copy_id)));
                        continue;
                    };
                    if h.rcpts.len() != result.rcpts.len() {
                        out[slot] = Some(Err(SpoolError::OutcomeCount {
                            copy: copy_id,
                            expected: h.rcpts.len(),
                            got: result.rcpts.len(),
                        }));
                        continue;
                    }
                    *completing = true;
                    items.push((copy_id, result));
                    slots.push(slot);
                }
            }
            if !items.is_empty() {
                let (reply, rx) = oneshot::channel();
                let sent = me.inner.tx.as_ref().is_some_and(|tx| {
                    tx.send(Request {
                        items,
                        now: sh.clock.now(),
                        reply,
                    })
                    .is_ok()
                });
                let answer = if sent {
                    rx.await.unwrap_or(Err(SpoolError::WriterGone))
                } else {
                    Err(SpoolError::WriterGone)
                };
                super::group::place(&mut out, slots, answer);
            }
            super::group::finish(out)
        }
    }

    fn release(&self, copy_id: i64) {
        let sh = self.shared();
        let mut st = lock(&sh.state);
        if let Some((h, _, completing)) = st.in_flight.remove(&copy_id) {
            if completing {
                st.in_flight
                    .insert(copy_id, (h, Timestamp::UNIX_EPOCH, true));
            } else {
                st.buffer.insert(copy_id, h);
            }
        }
        drop(st);
        sh.notify.notify_waiters();
    }

    fn has_expired(&self, job_created: Timestamp, now: Timestamp) -> bool {
        self.shared().opts.expired(job_created, now)
    }

    fn set_max_bsmtp(&self, n: u32) {
        self.shared()
            .opts
            .reloaded_max_bsmtp
            .store(n, Ordering::Relaxed);
    }

    /// The earliest retry time this node knows of (its own deferrals, and each heartbeat's
    /// count of the copies it may deliver): an idle worker wakes then rather than at its next
    /// `idle_poll`. Copies other nodes defer or share out are seen at the next count.
    fn next_due(&self, pools: PoolSet) -> Option<Timestamp> {
        let sh = self.shared();
        if sh.stalled.load(Ordering::SeqCst) {
            return None;
        }
        let now = ms(sh.clock.now());
        lock(&sh.state)
            .next_due(pools, now)
            .and_then(|d| Timestamp::from_millisecond(d).ok())
    }

    fn notify(&self) -> Arc<Notify> {
        self.shared().notify.clone()
    }

    fn queued_copies(&self) -> u64 {
        let st = lock(&self.shared().state);
        st.queued.max((st.buffer.len() + st.in_flight.len()) as u64)
    }

    fn recording_error(&self) -> Option<String> {
        lock(&self.shared().recording_error).clone()
    }

    fn stats(&self) -> impl std::future::Future<Output = Result<QueueStats, SpoolError>> + Send {
        let me = self.clone();
        async move {
            let sh = me.shared();
            let db = sh.ingest_db.lock().await;
            let mut s = stats_from_db(&db, sh.clock.now()).await?;
            if let Some(d) = &sh.pg.local_dir {
                s.incoming_files = list_incoming(&d.join(INCOMING))
                    .map(|v| v.len() as u64)
                    .unwrap_or(0);
            }
            Ok(s)
        }
    }

    /// One transaction per job (PostgreSQL's own group commit joins concurrent ones; this
    /// spool serialises them on its ingest connection), committed before the answer.
    fn accept(
        &self,
        job: crate::spool::NewJob,
    ) -> impl std::future::Future<Output = Result<i64, SpoolError>> + Send {
        let me = self.clone();
        async move {
            me.submit_job(
                &job.mail_from,
                job.pool,
                job.rcpts,
                job.message.to_vec(),
                &job.source,
            )
            .await
        }
    }

    fn flush(
        &self,
        pools: PoolSet,
    ) -> impl std::future::Future<Output = Result<u64, SpoolError>> + Send {
        let me = self.clone();
        async move {
            let sh = me.shared();
            let pool_list: Vec<i16> = pools.iter().map(pool_index).collect();
            let now = ms(sh.clock.now());
            let db = sh.claim_db.lock().await;
            let n = db
                .execute(
                    "UPDATE copies SET not_before = 0 \
                     WHERE pool = ANY($1) AND not_before > $2 AND claimed_by IS NULL \
                     AND (assigned_to IS NULL OR assigned_to = $3)",
                    &[&pool_list, &now, &sh.pg.node],
                )
                .await
                .map_err(pg_error)?;
            drop(db);
            sh.notify.notify_waiters();
            Ok(n)
        }
    }

    fn claim_job(
        &self,
        job_id: i64,
    ) -> impl std::future::Future<Output = Result<(Vec<ClaimedCopy>, u64), SpoolError>> + Send {
        let me = self.clone();
        async move {
            let sh = me.shared();
            // A copy of the job a worker here holds is recorded (and its row unlocked) before it
            // leaves `in_flight`: until then, leave the whole job alone and say how many are
            // held (the caller asks again once they are back).
            let held_here = lock(&sh.state)
                .in_flight
                .values()
                .filter(|(h, _, _)| h.job_id == job_id)
                .count() as u64;
            if held_here > 0 {
                return Ok((Vec::new(), held_here));
            }
            let db = sh.claim_db.lock().await;
            // Copies no node holds (or a dead node held) become this node's; rows another
            // node's writer is committing are waited for (no SKIP LOCKED: a cancel is rare).
            let secs = sh.pg.node_timeout.as_secs_f64();
            let sql = "WITH dead AS (SELECT name FROM nodes \
                   WHERE heartbeat < clock_timestamp() - make_interval(secs => $3)), \
                 c AS (SELECT id FROM copies \
                   WHERE job_id = $2 AND (claimed_by IS NULL OR claimed_by IN (SELECT name FROM dead)) \
                   FOR UPDATE OF copies) \
                 UPDATE copies SET claimed_by = $1 FROM c WHERE copies.id = c.id \
                 RETURNING copies.id, copies.pool, copies.rcpts, copies.attempts";
            let rows = db
                .query(sql, &[&sh.pg.node, &job_id, &secs])
                .await
                .map_err(pg_error)?;
            let others: i64 = db
                .query_one(
                    "SELECT count(*) FROM copies WHERE job_id = $1 AND claimed_by IS NOT NULL \
                     AND claimed_by <> $2",
                    &[&job_id, &sh.pg.node],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            let job = db
                .query_opt(
                    "SELECT mail_from, message, created FROM jobs WHERE id = $1",
                    &[&job_id],
                )
                .await
                .map_err(pg_error)?;
            drop(db);
            let mut st = lock(&sh.state);
            let info = match (st.jobs.get(&job_id), job) {
                (Some(j), _) => j.clone(),
                (None, Some(r)) => {
                    let message: Vec<u8> = r.get(1);
                    let j = Arc::new(JobInfo {
                        mail_from: r.get(0),
                        message: Bytes::from(message),
                        created: Timestamp::from_millisecond(r.get(2))
                            .unwrap_or(Timestamp::UNIX_EPOCH),
                    });
                    st.jobs.insert(job_id, j.clone());
                    j
                }
                (None, None) => return Ok((Vec::new(), 0)),
            };
            let mut held: Vec<(i64, Held)> = rows
                .iter()
                .map(|r| {
                    let rcpts: String = r.get(2);
                    (
                        r.get::<_, i64>(0),
                        Held {
                            job_id,
                            pool: pool_of(r.get(1)),
                            rcpts: rcpts.split('\n').map(str::to_owned).collect(),
                            attempts: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
                        },
                    )
                })
                .collect();
            // This node's buffered copies of the job (claimed, no worker has them yet).
            let buffered: Vec<i64> = st
                .buffer
                .iter()
                .filter(|(_, h)| h.job_id == job_id)
                .map(|(id, _)| *id)
                .collect();
            for id in buffered {
                if let Some(h) = st.buffer.remove(&id) {
                    held.push((id, h));
                }
            }
            let in_flight = st
                .in_flight
                .values()
                .filter(|(h, _, _)| h.job_id == job_id)
                .count() as u64
                + u64::try_from(others).unwrap_or(0);
            let mut out = Vec::with_capacity(held.len());
            for (id, h) in held {
                out.push(ClaimedCopy {
                    copy_id: id,
                    job_id,
                    pool: h.pool,
                    mail_from: info.mail_from.clone(),
                    rcpts: h.rcpts.clone(),
                    message: info.message.clone(),
                    attempts: h.attempts,
                    job_created: info.created,
                });
                st.in_flight.insert(id, (h, info.created, false));
            }
            Ok((out, in_flight))
        }
    }

    fn jobs(
        &self,
        pool: Option<Pool>,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Vec<crate::spool::JobSummary>, SpoolError>> + Send
    {
        let me = self.clone();
        async move {
            let sh = me.shared();
            let now = ms(sh.clock.now());
            let pool_i: Option<i16> = pool.map(pool_index);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let db = sh.ingest_db.lock().await;
            let rows = db
                .query(
                    "SELECT j.id, j.pool, j.mail_from, j.created, j.rcpts, j.delivered, j.failed, \
                       count(c.id), \
                       coalesce(sum(array_length(string_to_array(c.rcpts, E'\\n'), 1)), 0)::BIGINT, \
                       coalesce(sum(CASE WHEN c.not_before > $1 \
                         THEN array_length(string_to_array(c.rcpts, E'\\n'), 1) ELSE 0 END), 0)::BIGINT \
                     FROM jobs j JOIN copies c ON c.job_id = j.id \
                     WHERE ($2::SMALLINT IS NULL OR j.pool = $2) \
                     GROUP BY j.id ORDER BY j.id LIMIT $3",
                    &[&now, &pool_i, &limit],
                )
                .await
                .map_err(pg_error)?;
            let n = |v: i64| u64::try_from(v).unwrap_or(0);
            Ok(rows
                .iter()
                .map(|r| crate::spool::JobSummary {
                    id: r.get(0),
                    pool: pool_of(r.get(1)),
                    mail_from: r.get(2),
                    created: Timestamp::from_millisecond(r.get(3)).unwrap_or(Timestamp::UNIX_EPOCH),
                    recipients: n(r.get(4)),
                    delivered: n(r.get(5)),
                    failed: n(r.get(6)),
                    copies: n(r.get(7)),
                    queued: n(r.get(8)),
                    deferred: n(r.get(9)),
                })
                .collect())
        }
    }
}

impl PgSpool {
    /// Claim in the database the oldest claimable copies of `pools` (at least the configured
    /// `claim_batch`, or `n` if more) in one statement and put them in the buffer, their jobs'
    /// messages fetched (one statement for the jobs not cached). `db` is the claim connection,
    /// held by the caller.
    async fn fetch(&self, db: &mut ClaimDb, pools: PoolSet, n: usize) -> Result<(), SpoolError> {
        let sh = self.shared();
        let pool_list: Vec<i16> = pools.iter().map(pool_index).collect();
        let now = ms(sh.clock.now());
        let secs = sh.pg.node_timeout.as_secs_f64();
        let stmts = db.statements().await?;
        let known: Vec<i64> = lock(&sh.state).jobs.keys().copied().collect();
        let limit = sh.pg.claim_batch.max(i64::try_from(n).unwrap_or(i64::MAX));
        let takes_over = sh.pg.takes_over();
        let claim_params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&sh.pg.node, &pool_list, &secs, &limit, &takes_over, &known];
        let due = lock(&sh.state).any_due(pools, now);
        let rows = if due {
            // Both sent before either answer is read (tokio-postgres pipelines requests polled
            // together, in the order polled): the promotion runs first, then the claim, which
            // sees the copies it made ready. A failed promotion only delays them.
            let promote_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&now];
            let (promoted, rows) = tokio::join!(
                db.client.execute(&stmts.promote, &promote_params),
                db.client.query(&stmts.claim, &claim_params)
            );
            match promoted {
                Ok(_) => lock(&sh.state).forget_due(now),
                Err(e) => tracing::warn!(error = %schema::describe(&e),
                    "cannot make the deferred copies that are due ready; the next claim tries again"),
            }
            rows
        } else {
            db.client.query(&stmts.claim, &claim_params).await
        }
        .map_err(pg_error)?;
        if rows.is_empty() {
            return Ok(());
        }
        // Into the buffer first: from then on the writer keeps their jobs' messages cached
        // (it forgets only those of jobs no held copy refers to). A job known when the claim
        // was sent may have been forgotten since: its message is read below.
        let missing: Vec<i64> = {
            let mut st = lock(&sh.state);
            for r in &rows {
                if let Some(message) = r.get::<_, Option<Vec<u8>>>(6) {
                    st.jobs.entry(r.get::<_, i64>(1)).or_insert_with(|| {
                        Arc::new(JobInfo {
                            mail_from: r.get(5),
                            message: Bytes::from(message),
                            created: Timestamp::from_millisecond(r.get(7))
                                .unwrap_or(Timestamp::UNIX_EPOCH),
                        })
                    });
                }
                let rcpts: String = r.get(3);
                st.buffer.insert(
                    r.get::<_, i64>(0),
                    Held {
                        job_id: r.get(1),
                        pool: pool_of(r.get(2)),
                        rcpts: rcpts.split('\n').map(str::to_owned).collect(),
                        attempts: u32::try_from(r.get::<_, i32>(4)).unwrap_or(0),
                    },
                );
            }
            let mut m: Vec<i64> = st
                .buffer
                .values()
                .map(|h| h.job_id)
                .filter(|j| !st.jobs.contains_key(j))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            let found = db
                .client
                .query(&stmts.jobs, &[&missing])
                .await
                .map_err(pg_error)?;
            let mut st = lock(&sh.state);
            for r in found {
                let message: Vec<u8> = r.get(2);
                st.jobs.insert(
                    r.get::<_, i64>(0),
                    Arc::new(JobInfo {
                        mail_from: r.get(1),
                        message: Bytes::from(message),
                        created: Timestamp::from_millisecond(r.get(3))
                            .unwrap_or(Timestamp::UNIX_EPOCH),
                    }),
                );
            }
            let orphans: Vec<i64> = st
                .buffer
                .iter()
                .filter(|(_, h)| !st.jobs.contains_key(&h.job_id))
                .map(|(id, _)| *id)
                .collect();
            for id in orphans {
                if let Some(h) = st.buffer.remove(&id) {
                    tracing::error!(
                        copy = id,
                        job = h.job_id,
                        "a copy refers to a job that is missing; left aside"
                    );
                }
            }
        }
        Ok(())
    }
}

/// Hand up to `n` of the oldest buffered copies of `pools` to a worker.
fn take_many(sh: &Shared, pools: PoolSet, n: usize, budget: &mut Budget) -> Vec<ClaimedCopy> {
    let mut out = Vec::new();
    while out.len() < n && !budget.full {
        match take(sh, pools, budget) {
            Some(c) => out.push(c),
            None => break,
        }
    }
    out
}

/// The recipients a [`Spool::claim_many`] may still take ([`usize::MAX`]: no budget).
struct Budget {
    room: usize,
    /// The next copy was over the budget: the claim ends.
    full: bool,
}

impl Budget {
    fn new(room: usize) -> Self {
        Self { room, full: false }
    }
}

/// Hand the oldest buffered copy of `pools` to a worker, if its recipients fit `budget`.
fn take(sh: &Shared, pools: PoolSet, budget: &mut Budget) -> Option<ClaimedCopy> {
    let mut st = lock(&sh.state);
    let (id, k) = st
        .buffer
        .iter()
        .find(|(_, h)| pools.contains(h.pool) && st.jobs.contains_key(&h.job_id))
        .map(|(id, h)| (*id, h.rcpts.len()))?;
    if k > budget.room {
        budget.full = true;
        return None;
    }
    budget.room -= k;
    let h = st.buffer.remove(&id)?;
    let job = st.jobs.get(&h.job_id)?.clone();
    let claimed = ClaimedCopy {
        copy_id: id,
        job_id: h.job_id,
        pool: h.pool,
        mail_from: job.mail_from.clone(),
        rcpts: h.rcpts.clone(),
        message: job.message.clone(),
        attempts: h.attempts,
        job_created: job.created,
    };
    st.in_flight.insert(id, (h, job.created, false));
    Some(claimed)
}

/// One ingest pass over `DIR/incoming/`: each file's jobs in one transaction (with its
/// `ingested` record), committed before the file is removed.
async fn ingest_dir(sh: &Shared, dir: &Path) -> Result<IngestReport, SpoolError> {
    let incoming = dir.join(INCOMING);
    let entries = list_incoming(&incoming)
        .map_err(|e| SpoolError::io(format!("listing {}", incoming.display()), e))?;
    let mut report = IngestReport::default();
    if entries.is_empty() {
        return Ok(report);
    }
    let now = sh.clock.now();
    let mut db = sh.ingest_db.lock().await;
    for f in entries {
        let reject = |why: String, line: u64, report: &mut IngestReport| match quarantine(
            dir, &f, &why, line, now,
        ) {
            Ok(q) => report.quarantined.push(q),
            Err(e) => {
                tracing::error!(file = %f.name, error = %e, "{why}; it cannot be moved to quarantine either")
            }
        };
        if let EntryKind::Odd(why) = &f.kind {
            reject(why.clone(), 0, &mut report);
            continue;
        }
        let size = i64::try_from(f.size).unwrap_or(i64::MAX);
        let seen = db
            .query_opt(
                "SELECT 1 FROM ingested WHERE node = $1 AND name = $2 AND mtime_ns = $3 AND size = $4",
                &[&sh.pg.node, &f.name, &f.mtime_ns, &size],
            )
            .await
            .map_err(pg_error)?
            .is_some();
        if !seen {
            let file = match open_job(&f.path) {
                Ok(file) => file,
                Err(OpenError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(OpenError::Io(e)) => {
                    reject(format!("cannot be read: {e}"), 0, &mut report);
                    continue;
                }
                Err(OpenError::NotRegular(what)) => {
                    reject(format!("{what}, not a job file"), 0, &mut report);
                    continue;
                }
            };
            // Parsed whole before the transaction: a malformed file leaves nothing behind.
            let mut reader = JobReader::new(
                BufReader::with_capacity(256 * 1024, file),
                sh.opts.max_message_bytes,
            );
            let mut jobs = Vec::new();
            let parsed: Result<(), JobError> = (|| {
                while let Some(h) = reader.next_job()? {
                    let mut rcpts = Vec::new();
                    while let Some(r) = reader.next_rcpt()? {
                        rcpts.push(r.to_owned());
                    }
                    let message = reader.read_message()?;
                    jobs.push((h, rcpts, message));
                }
                Ok(())
            })();
            match parsed {
                Ok(()) => {}
                Err(JobError::Io(e)) => {
                    reject(format!("cannot be read: {e}"), 0, &mut report);
                    continue;
                }
                Err(e) => {
                    let line = match &e {
                        JobError::Malformed { line, .. } | JobError::TooLarge { line, .. } => *line,
                        JobError::Io(_) => 0,
                    };
                    reject(e.to_string(), line, &mut report);
                    continue;
                }
            }
            let tx = db.transaction().await.map_err(pg_error)?;
            let mut split = splitter(sh, &tx).await?;
            let mut mine = 0;
            for (h, rcpts, message) in jobs {
                let pool = h.pool.unwrap_or(sh.opts.default_pool);
                let n = rcpts.len() as u64;
                let (_, m, copies) = insert_job(
                    sh,
                    &tx,
                    &mut split,
                    &h.mail_from,
                    pool,
                    &rcpts,
                    message,
                    &f.name,
                    now,
                )
                .await?;
                mine += m;
                report.jobs += 1;
                report.recipients += n;
                report.copies += copies;
            }
            tx.execute(
                "INSERT INTO ingested(node, name, mtime_ns, size) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&sh.pg.node, &f.name, &f.mtime_ns, &size],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            split.remember(&mut lock(&sh.share_given));
            add_queued(sh, mine);
            sh.notify.notify_waiters();
            report.files += 1;
        }
        match std::fs::remove_file(&f.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SpoolError::io(format!("removing {}", f.path.display()), e)),
        }
        db.execute(
            "DELETE FROM ingested WHERE node = $1 AND name = $2 AND mtime_ns = $3 AND size = $4",
            &[&sh.pg.node, &f.name, &f.mtime_ns, &size],
        )
        .await
        .map_err(pg_error)?;
    }
    if report.copies >= STATS_CHECK_MIN {
        let queued = lock(&sh.state).queued;
        refresh_statistics(&db, queued.max(report.copies)).await;
    }
    Ok(report)
}

/// The whole cluster's queue (the same shape as the SQLite spool's).
async fn stats_from_db(db: &Client, now: Timestamp) -> Result<QueueStats, SpoolError> {
    let now_ms = ms(now);
    let mut s = QueueStats::default();
    let rows = db
        .query(
            "SELECT c.pool, CASE WHEN c.claimed_by IS NOT NULL THEN 2 WHEN c.not_before > $1 THEN 1 ELSE 0 END, \
             count(*), sum(c.n)::int8, min(j.created) FROM copies c JOIN jobs j ON j.id = c.job_id GROUP BY 1, 2",
            &[&now_ms],
        )
        .await
        .map_err(pg_error)?;
    let age = |created: i64| u64::try_from((now_ms - created) / 1000).unwrap_or(0);
    let mut oldest: Option<i64> = None;
    for r in rows {
        let copies = u64::try_from(r.get::<_, i64>(2)).unwrap_or(0);
        let rcpts = u64::try_from(r.get::<_, i64>(3)).unwrap_or(0);
        let created: i64 = r.get(4);
        oldest = Some(oldest.map_or(created, |o| o.min(created)));
        s.copies += copies;
        s.queued += rcpts;
        s.pools.push(PoolStats {
            pool: pool_of(r.get(0)),
            state: match r.get::<_, i32>(1) {
                2 => CopyState::InFlight,
                1 => CopyState::Deferred,
                _ => CopyState::Ready,
            },
            copies,
            recipients: rcpts,
            oldest_age_secs: age(created),
        });
    }
    s.oldest_age_secs = oldest.map_or(0, age);
    let r = db
        .query_one(
            "SELECT (COALESCE(sum(delivered), 0) + (SELECT COALESCE(sum(delivered), 0) FROM totals))::int8, \
                    (COALESCE(sum(failed), 0) + (SELECT COALESCE(sum(failed), 0) FROM totals))::int8, count(*) FROM jobs",
            &[],
        )
        .await
        .map_err(pg_error)?;
    s.delivered = u64::try_from(r.get::<_, i64>(0)).unwrap_or(0);
    s.failed = u64::try_from(r.get::<_, i64>(1)).unwrap_or(0);
    s.jobs = u64::try_from(r.get::<_, i64>(2)).unwrap_or(0);
    s.failure_reasons = db
        .query(
            "SELECT reply, count(*) FROM failures GROUP BY reply ORDER BY 2 DESC, 1 LIMIT 20",
            &[],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| super::FailureReason {
            reply: r.get(0),
            recipients: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
        })
        .collect();
    s.pools.sort_by_key(|p| (p.pool, p.state));
    Ok(s)
}

/// One node as `smtpw queue` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeStats {
    /// Its NODE= name.
    pub name: String,
    /// Whether its heartbeat is younger than the node time-out.
    pub alive: bool,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_secs: f64,
    /// Its number of workers (from its SITE.CFG).
    pub workers: i32,
    /// Copies it holds now.
    pub claimed: u64,
    /// Copies still queued that are its DIST_FORWARD share.
    pub assigned: u64,
    /// Recipients it has delivered and failed.
    pub delivered: u64,
    /// Recipients it has failed.
    pub failed: u64,
}

/// The cluster as `smtpw queue --spool URL` shows it: the queue, and each node.
pub async fn cluster_stats(
    url: &str,
    node_timeout: Duration,
    now: Timestamp,
) -> Result<(QueueStats, Vec<NodeStats>), SpoolError> {
    let mut db = connect(url).await?;
    schema::migrate(&mut db).await?;
    let stats = stats_from_db(&db, now).await?;
    let rows = db
        .query(
            "SELECT n.name, extract(epoch FROM clock_timestamp() - n.heartbeat)::float8, n.workers, \
               (SELECT count(*) FROM copies c WHERE c.claimed_by = n.name), \
               (SELECT count(*) FROM copies c WHERE c.assigned_to = n.name), \
               COALESCE(d.delivered, 0), COALESCE(d.failed, 0) \
             FROM nodes n LEFT JOIN delivered_by d ON d.node = n.name ORDER BY n.name",
            &[],
        )
        .await
        .map_err(pg_error)?;
    let nodes = rows
        .iter()
        .map(|r| {
            let age: f64 = r.get(1);
            NodeStats {
                name: r.get(0),
                alive: age <= node_timeout.as_secs_f64(),
                heartbeat_age_secs: age,
                workers: r.get(2),
                claimed: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
                assigned: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                delivered: u64::try_from(r.get::<_, i64>(5)).unwrap_or(0),
                failed: u64::try_from(r.get::<_, i64>(6)).unwrap_or(0),
            }
        })
        .collect();
    Ok((stats, nodes))
}

/// What `smtpw submit --via NODE` needs of a node to split a job as it would: kept in
/// `nodes.profile` by each node when it starts.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Profile {
    dist_forward: Vec<(String, u32)>,
    max_bsmtp: u32,
    sort_recipients: u8,
    default_pool: usize,
    node_timeout_ms: u64,
    /// Absent in the profiles of nodes from before DIST-3 was applied: no limits.
    #[serde(default)]
    dist_limits: share::DistLimits,
}

impl Profile {
    fn of(opts: &SpoolOptions, pg: &PgOptions) -> Self {
        Self {
            dist_forward: pg
                .dist_forward
                .iter()
                .map(|e| (e.host.clone(), e.weight))
                .collect(),
            // As a reload last set it (OPS-8): `submit --via` splits as the node does now.
            max_bsmtp: opts.split_size(),
            sort_recipients: opts.sort_recipients,
            default_pool: opts.default_pool.index(),
            node_timeout_ms: u64::try_from(pg.node_timeout.as_millis()).unwrap_or(u64::MAX),
            dist_limits: pg.dist_limits,
        }
    }
}

/// A job to queue directly in the database.
#[derive(Debug)]
pub struct DirectJob {
    /// Envelope sender.
    pub mail_from: String,
    /// Its delivery pool (`None`: DEFAULT_LIST_POOL's).
    pub pool: Option<Pool>,
    /// Its recipients.
    pub rcpts: Vec<String>,
    /// The message, unstuffed, CRLF line endings.
    pub message: Vec<u8>,
}

/// Queue a job without running a node (`smtpw submit --spool URL --via NODE`): as if `via` had
/// ingested it, split by `via`'s DIST_FORWARD, MAXBSMTP and SORT_RECIPIENTS (as it recorded them
/// when it last started). One transaction; returns the job's id and its copies once committed.
pub async fn submit_via(
    url: &str,
    via: &str,
    clock: SharedClock,
    job: DirectJob,
) -> Result<(i64, u64), SpoolError> {
    let mut db = connect(url).await?;
    schema::migrate(&mut db).await?;
    let profile: Option<String> = db
        .query_opt("SELECT profile FROM nodes WHERE name = $1", &[&via])
        .await
        .map_err(pg_error)?
        .map(|r| r.get(0));
    let Some(profile) = profile else {
        return Err(SpoolError::Postgres(format!(
            "no node named {via} has ever joined this spool; start it once (smtpw run with \
             NODE={via}) so that its DIST_FORWARD and MAXBSMTP are known"
        )));
    };
    let profile: Profile = serde_json::from_str(&profile)
        .map_err(|e| SpoolError::Corrupt(format!("node {via}'s profile in the database: {e}")))?;
    let opts = SpoolOptions {
        max_bsmtp: profile.max_bsmtp,
        sort_recipients: profile.sort_recipients,
        default_pool: Pool::from_index(profile.default_pool).unwrap_or(Pool::DEFAULT),
        ..SpoolOptions::default()
    };
    let mut pg = PgOptions::new(url, via);
    pg.dist_forward = profile
        .dist_forward
        .into_iter()
        .map(|(host, weight)| DistEntry { host, weight })
        .collect();
    pg.node_timeout = Duration::from_millis(profile.node_timeout_ms);
    pg.dist_limits = profile.dist_limits;
    let sh = Shared {
        opts,
        pg,
        clock,
        state: Mutex::new(State::default()),
        generation: AtomicU64::new(0),
        claim_db: tokio::sync::Mutex::new(ClaimDb::new(connect(url).await?)),
        ingest_db: tokio::sync::Mutex::new(connect(url).await?),
        notify: Arc::new(Notify::new()),
        recording_error: Mutex::new(None),
        stalled: AtomicBool::new(false),
        last_beat: Mutex::new(Instant::now()),
        ledger_path: PathBuf::new(),
        share_given: Mutex::new(HashMap::new()),
    };
    let tx = db.transaction().await.map_err(pg_error)?;
    let mut split = splitter(&sh, &tx).await?;
    let (id, _, copies) = insert_job(
        &sh,
        &tx,
        &mut split,
        &job.mail_from,
        job.pool.unwrap_or(sh.opts.default_pool),
        &job.rcpts,
        job.message,
        "submit",
        sh.clock.now(),
    )
    .await?;
    tx.commit().await.map_err(pg_error)?;
    if copies >= STATS_CHECK_MIN {
        refresh_statistics(&db, copies).await;
    }
    Ok((id, copies))
}

// ---- the writer ----

/// What the writer records for one completion.
struct Plan {
    copy_id: i64,
    job_id: i64,
    rcpts: usize,
    delivered: i64,
    failed: Vec<(String, String, bool)>,
    deferred: Vec<(String, String)>,
    not_before: i64,
    now: i64,
    /// The copy's pool and its job's age at `now` (seconds): for the metrics.
    pool: Pool,
    age_secs: f64,
    reply: super::group::Done,
}

/// One copy's completion, as the writer plans it.
struct Item {
    copy_id: i64,
    result: CopyResult,
    now: Timestamp,
    reply: super::group::Done,
}

/// Most completions (copies) taken from the queue into one batch.
const BATCH_MAX: usize = 8192;
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

fn writer_thread(
    sh: Arc<Shared>,
    db: Client,
    mut ledger: Ledger,
    mut rx: mpsc::UnboundedReceiver<Request>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the spool writer's runtime");
            return;
        }
    };
    rt.block_on(async move {
        let mut db = db;
        let mut stmts = None;
        while let Some(first) = rx.recv().await {
            let mut copies = first.items.len();
            let mut batch = vec![first];
            while copies < BATCH_MAX {
                match rx.try_recv() {
                    Ok(r) => {
                        copies += r.items.len();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            let mut plans = Vec::with_capacity(batch.len());
            plan_batch(&sh, &mut ledger, batch, &mut plans);
            let mut wait = RETRY_FIRST;
            let mut logged: Option<String> = None;
            loop {
                match write_batch(&sh, &mut db, &mut stmts, &mut ledger, &plans).await {
                    Ok(()) => {
                        if logged.is_some() {
                            *lock(&sh.recording_error) = None;
                            sh.stalled.store(false, Ordering::SeqCst);
                            sh.notify.notify_waiters();
                            tracing::warn!("the spool records outcomes again; delivery resumes");
                        }
                        finish(&sh, plans);
                        break;
                    }
                    Err(e) => {
                        let text = e.to_string();
                        sh.stalled.store(true, Ordering::SeqCst);
                        *lock(&sh.recording_error) = Some(text.clone());
                        if logged.as_deref() != Some(text.as_str()) {
                            tracing::error!(copies = plans.len(), "cannot record delivery outcomes: {text}; delivery is paused until the spool can record again; the outcomes are kept and retried");
                            logged = Some(text.clone());
                        }
                        if rx.is_closed() {
                            for p in plans {
                                p.reply.send(Err(SpoolError::Unrecorded(p.copy_id, text.clone())));
                            }
                            break;
                        }
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RETRY_MAX);
                        let mut more = Vec::new();
                        while let Ok(r) = rx.try_recv() {
                            more.push(r);
                        }
                        plan_batch(&sh, &mut ledger, more, &mut plans);
                    }
                }
            }
        }
    });
}

fn plan_batch(sh: &Shared, ledger: &mut Ledger, batch: Vec<Request>, plans: &mut Vec<Plan>) {
    let mut work = Vec::with_capacity(batch.len());
    {
        let st = lock(&sh.state);
        // A copy completed twice counts once.
        let mut in_batch: std::collections::HashSet<i64> =
            plans.iter().map(|p| p.copy_id).collect();
        for req in batch {
            let now = req.now;
            let places = super::group::Done::group(req.items.len(), req.reply);
            for ((copy_id, result), done) in req.items.into_iter().zip(places) {
                match st.in_flight.get(&copy_id) {
                    Some((h, created, _)) if in_batch.insert(copy_id) => {
                        let h = h.clone();
                        let created = *created;
                        work.push((
                            Item {
                                copy_id,
                                result,
                                now,
                                reply: done,
                            },
                            (h, created),
                        ));
                    }
                    _ => done.send(Err(SpoolError::NotClaimed(copy_id))),
                }
            }
        }
    }
    for (req, (h, job_created)) in work {
        let decision = policy::decide(
            &sh.opts,
            Attempt {
                outcomes: &req.result.rcpts,
                previous_attempts: h.attempts,
                job_created,
                now: req.now,
            },
        );
        let pool_name = h.pool.to_string();
        let mut plan = Plan {
            copy_id: req.copy_id,
            job_id: h.job_id,
            rcpts: 0,
            delivered: 0,
            failed: Vec::new(),
            deferred: Vec::new(),
            not_before: 0,
            now: ms(req.now),
            pool: h.pool,
            age_secs: req.now.duration_since(job_created).as_secs_f64(),
            reply: req.reply,
        };
        let mut line_error = None;
        for (rcpt, r) in h.rcpts.iter().zip(decision.recipients()) {
            match r.fate {
                Fate::Delivered => plan.delivered += 1,
                Fate::Failed => plan.failed.push((rcpt.clone(), r.reply.to_owned(), false)),
                Fate::Expired => plan.failed.push((rcpt.clone(), r.reply.to_owned(), true)),
                Fate::Deferred { retry_at } => {
                    plan.deferred.push((rcpt.clone(), r.reply.to_owned()));
                    plan.not_before = ms(retry_at);
                }
            }
            plan.rcpts += 1;
            let line =
                decision.ledger_line(r, rcpt, (h.job_id, req.copy_id, &pool_name), &req.result);
            if let Err(e) = ledger.push(&line) {
                line_error = Some(e);
                break;
            }
        }
        if let Some(e) = line_error {
            tracing::error!(copy = plan.copy_id, error = %e, "cannot write a ledger line");
            plan.reply
                .send(Err(SpoolError::io("writing a ledger line", e)));
            continue;
        }
        plans.push(plan);
    }
}

/// Each job's delivered and failed counters move by a batch's outcomes.
const JOBS_ADD: &str = "UPDATE jobs j SET delivered = j.delivered + v.d, failed = j.failed + v.f \
     FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS v(id, d, f) WHERE j.id = v.id";
/// The batch's failed recipients.
const FAILURES_ADD: &str = "INSERT INTO failures(job_id, copy_id, rcpt, reply, time, expired, node) \
     SELECT j, c, r, p, ti, e, $7 FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::bool[]) AS v(j, c, r, p, ti, e)";
/// Copies done with.
const COPIES_DELETE: &str = "DELETE FROM copies WHERE id = ANY($1)";
/// Copies with deferred recipients: what is left of them, due again later, held by nobody.
const COPIES_DEFER: &str = "UPDATE copies c SET rcpts = v.r, replies = v.p, n = v.n, attempts = c.attempts + 1, \
     not_before = v.nb, claimed_by = NULL \
     FROM unnest($1::int8[], $2::text[], $3::text[], $4::int4[], $5::int8[]) AS v(id, r, p, n, nb) WHERE c.id = v.id";
/// This node's delivered and failed counters.
const NODE_ADD: &str = "INSERT INTO delivered_by(node, delivered, failed) VALUES ($1, $2, $3) \
     ON CONFLICT (node) DO UPDATE SET delivered = delivered_by.delivered + excluded.delivered, \
     failed = delivered_by.failed + excluded.failed";
/// Jobs left without copies move their counters into the per-pool totals.
const JOBS_FOLD: &str = "WITH d AS (DELETE FROM jobs j WHERE j.id = ANY($1) \
       AND NOT EXISTS (SELECT 1 FROM copies c WHERE c.job_id = j.id) RETURNING pool, delivered, failed) \
     INSERT INTO totals(pool, delivered, failed) SELECT pool, sum(delivered), sum(failed) FROM d GROUP BY pool \
     ON CONFLICT (pool) DO UPDATE SET delivered = totals.delivered + excluded.delivered, failed = totals.failed + excluded.failed";

/// The writer's statements, prepared once on its connection (a statement given as text is
/// parsed and planned again at every batch, a round trip more each).
struct WriterStatements {
    jobs_add: Statement,
    failures_add: Statement,
    copies_delete: Statement,
    copies_defer: Statement,
    node_add: Statement,
    jobs_fold: Statement,
}

impl WriterStatements {
    async fn prepare(db: &Client) -> Result<WriterStatements, SpoolError> {
        let (jobs_add, failures_add, copies_delete, copies_defer, node_add, jobs_fold) =
            tokio::try_join!(
                db.prepare(JOBS_ADD),
                db.prepare(FAILURES_ADD),
                db.prepare(COPIES_DELETE),
                db.prepare(COPIES_DEFER),
                db.prepare(NODE_ADD),
                db.prepare(JOBS_FOLD),
            )
            .map_err(pg_error)?;
        Ok(WriterStatements {
            jobs_add,
            failures_add,
            copies_delete,
            copies_defer,
            node_add,
            jobs_fold,
        })
    }
}

/// The ledger (synced), then one transaction for the whole batch.
async fn write_batch(
    sh: &Shared,
    db: &mut Client,
    stmts: &mut Option<WriterStatements>,
    ledger: &mut Ledger,
    plans: &[Plan],
) -> Result<(), SpoolError> {
    if plans.is_empty() {
        return Ok(());
    }
    ledger.commit().map_err(|e| {
        SpoolError::io(
            format!("appending to the ledger {}", ledger.path().display()),
            e,
        )
    })?;
    // Per job: delivered and failed (a job's counters move once per batch).
    let mut per_job: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let (mut f_job, mut f_copy, mut f_rcpt, mut f_reply, mut f_time, mut f_exp) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut done: Vec<i64> = vec![];
    let (mut d_id, mut d_rcpts, mut d_replies, mut d_n, mut d_nb) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut delivered, mut failed) = (0i64, 0i64);
    for p in plans {
        let e = per_job.entry(p.job_id).or_default();
        e.0 += p.delivered;
        e.1 += p.failed.len() as i64;
        delivered += p.delivered;
        failed += p.failed.len() as i64;
        for (rcpt, reply, expired) in &p.failed {
            f_job.push(p.job_id);
            f_copy.push(p.copy_id);
            f_rcpt.push(rcpt.clone());
            f_reply.push(reply.clone());
            f_time.push(p.now);
            f_exp.push(*expired);
        }
        if p.deferred.is_empty() {
            done.push(p.copy_id);
        } else {
            d_id.push(p.copy_id);
            d_rcpts.push(
                p.deferred
                    .iter()
                    .map(|(r, _)| r.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            let replies: Vec<&str> = p.deferred.iter().map(|(_, r)| r.as_str()).collect();
            d_replies.push(serde_json::to_string(&replies).unwrap_or_default());
            d_n.push(i32::try_from(p.deferred.len()).unwrap_or(i32::MAX));
            d_nb.push(p.not_before);
        }
    }
    let jobs: Vec<i64> = per_job.keys().copied().collect();
    let jd: Vec<i64> = per_job.values().map(|v| v.0).collect();
    let jf: Vec<i64> = per_job.values().map(|v| v.1).collect();
    let st: &WriterStatements = match stmts {
        Some(st) => st,
        None => stmts.insert(WriterStatements::prepare(db).await?),
    };
    let tx = db.transaction().await.map_err(pg_error)?;
    // Independent statements (different rows and tables), sent together on the one connection:
    // tokio-postgres does not promise the order in which pipelined statements run, so the step
    // that depends on them (folding finished jobs) waits for them all.
    let t = &tx;
    tokio::try_join!(
        async { t.execute(&st.jobs_add, &[&jobs, &jd, &jf]).await },
        async {
            if f_job.is_empty() {
                return Ok(0);
            }
            t.execute(
                &st.failures_add,
                &[
                    &f_job,
                    &f_copy,
                    &f_rcpt,
                    &f_reply,
                    &f_time,
                    &f_exp,
                    &sh.pg.node,
                ],
            )
            .await
        },
        async {
            if done.is_empty() {
                return Ok(0);
            }
            t.execute(&st.copies_delete, &[&done]).await
        },
        async {
            if d_id.is_empty() {
                return Ok(0);
            }
            t.execute(
                &st.copies_defer,
                &[&d_id, &d_rcpts, &d_replies, &d_n, &d_nb],
            )
            .await
        },
        async {
            t.execute(&st.node_add, &[&sh.pg.node, &delivered, &failed])
                .await
        },
    )
    .map_err(pg_error)?;
    // Once the counters are added and the copies gone: the jobs left without copies move their
    // counters into the per-pool totals.
    t.execute(&st.jobs_fold, &[&jobs]).await.map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    Ok(())
}

/// The batch is durable: its copies leave flight and their workers hear so.
fn finish(sh: &Shared, plans: Vec<Plan>) {
    let mut st = lock(&sh.state);
    let mut gone = 0u64;
    for p in &plans {
        st.in_flight.remove(&p.copy_id);
        if p.deferred.is_empty() {
            gone += 1;
        } else {
            st.note_due(p.pool, p.not_before, p.now);
        }
    }
    // Forget the messages of jobs this node holds no copy of any more.
    let held: std::collections::HashSet<i64> = st
        .buffer
        .values()
        .map(|h| h.job_id)
        .chain(st.in_flight.values().map(|(h, _, _)| h.job_id))
        .collect();
    st.jobs.retain(|id, _| held.contains(id));
    st.queued = st.queued.saturating_sub(gone);
    let held = (st.buffer.len() + st.in_flight.len()) as u64;
    st.queued = st.queued.max(held);
    drop(st);
    sh.generation.fetch_add(1, Ordering::SeqCst);
    // Counted once durable, as the ledger has them (OPS-3), as the SQLite spool does.
    for p in &plans {
        sh.opts.metrics.recorded_copy(
            &p.pool.to_string(),
            usize::try_from(p.delivered).unwrap_or(0),
            p.failed.len(),
            p.deferred.len(),
            p.age_secs,
        );
    }
    for p in plans {
        p.reply.send(Ok(()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_retry_time_still_to_come_per_pool() {
        let mut st = State::default();
        let (a, b) = (Pool::from_char('A').unwrap(), Pool::from_char('B').unwrap());
        assert_eq!(st.next_due(PoolSet::ALL, 0), None);
        st.note_due(a, 5_000, 1_000);
        st.note_due(a, 9_000, 1_000);
        st.note_due(b, 3_000, 1_000);
        assert_eq!(st.next_due(PoolSet::ALL, 1_000), Some(3_000));
        assert_eq!(
            st.next_due([a].into_iter().collect::<PoolSet>(), 1_000),
            Some(5_000)
        );
        // A time gone by is no reason to wake: only what is still to come counts.
        assert_eq!(st.next_due(PoolSet::ALL, 4_000), Some(5_000));
        assert_eq!(st.next_due(PoolSet::ALL, 6_000), None);
        // Past it, a later deferral replaces it instead of losing to the stale minimum.
        st.note_due(a, 20_000, 6_000);
        assert_eq!(
            st.next_due([a].into_iter().collect::<PoolSet>(), 6_000),
            Some(20_000)
        );
    }

    /// A claim makes deferred copies ready once one is known to be due, and not before; a due
    /// time replaced by a later deferral is not forgotten until they are made ready.
    #[test]
    fn a_claim_makes_the_due_copies_ready_once_one_is_known_due() {
        let mut st = State::default();
        let (a, b) = (Pool::from_char('A').unwrap(), Pool::from_char('B').unwrap());
        let only = |p: Pool| [p].into_iter().collect::<PoolSet>();
        assert!(!st.any_due(PoolSet::ALL, 1_000));
        st.note_due(a, 5_000, 1_000);
        assert!(!st.any_due(PoolSet::ALL, 4_999));
        assert!(st.any_due(PoolSet::ALL, 5_000));
        assert!(
            !st.any_due(only(b), 5_000),
            "another pool's copies are not due"
        );
        // Past it, a later deferral takes the slot: the copies due at 5,000 still are.
        st.note_due(a, 20_000, 6_000);
        assert!(st.any_due(only(a), 6_000));
        st.forget_due(6_000);
        assert!(
            !st.any_due(only(a), 6_000),
            "made ready: nothing due until 20,000"
        );
        assert_eq!(st.next_due(only(a), 6_000), Some(20_000));
        assert!(st.any_due(only(a), 20_000));
    }
}
