//! The scenario registry and the runner.
//!
//! A [`Scenario`] is a name, the modes it runs in, and an async function `Ctx -> Result<Outcome,
//! Failure>`. Adding one is a small function plus one line in `scenarios::all()`:
//!
//! ```ignore
//! async fn two_to_one_split(ctx: Ctx) -> Result<Outcome, Failure> {
//!     // ctx.mode() says how to run; ctx.bin(Bin::Smtpw) gives the binary in real time.
//!     Ok(Outcome::new("split 2.00:1, 3 connections"))
//! }
//! Scenario::new("workers-2A-B", BOTH, two_to_one_split).needs(&[Bin::Smtpw, Bin::MockMta])
//! ```
//!
//! [`run`] executes each selected (scenario, mode) pair one after the other, on its own thread:
//! virtual mode on a fresh current-thread tokio runtime with paused time, real-time mode on a
//! multi-thread runtime. A panic is a FAIL carrying its message; a scenario that runs past its
//! wall-clock limit is a FAIL (its thread is abandoned); in virtual mode a scenario that waits
//! past its virtual-time limit (a deadlock, under paused time) is cancelled and fails too.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{mpsc, Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use crate::report::{CaseResult, Chart, Mode};

/// Both modes, virtual first.
pub const BOTH: &[Mode] = &[Mode::Virtual, Mode::RealTime];
pub const VIRTUAL_ONLY: &[Mode] = &[Mode::Virtual];
pub const REAL_TIME_ONLY: &[Mode] = &[Mode::RealTime];

/// What a passing scenario reports: its key figure and the charts to draw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub figure: String,
    pub charts: Vec<Chart>,
}

impl Outcome {
    pub fn new(figure: impl Into<String>) -> Self {
        Self {
            figure: figure.into(),
            charts: Vec::new(),
        }
    }
    pub fn chart(mut self, c: Chart) -> Self {
        self.charts.push(c);
        self
    }
}

/// Why a scenario failed: what was expected and what happened, both concrete.
pub use smtpw_testkit::Failure;

pub type ScenarioResult = Result<Outcome, Failure>;

type BoxFuture = Pin<Box<dyn Future<Output = ScenarioResult> + Send + 'static>>;
type RunFn = Arc<dyn Fn(Ctx) -> BoxFuture + Send + Sync + 'static>;

/// A binary a real-time scenario runs as a separate process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bin {
    Smtpw,
    MockMta,
}

impl Bin {
    pub const ALL: [Bin; 2] = [Bin::Smtpw, Bin::MockMta];

    /// The environment variable that names it (set by `cargo xtask conformance`).
    pub fn env_var(self) -> &'static str {
        match self {
            Bin::Smtpw => "SMTPW_BIN",
            Bin::MockMta => "MOCK_MTA_BIN",
        }
    }
    /// Its cargo package and binary name.
    pub fn name(self) -> &'static str {
        match self {
            Bin::Smtpw => "smtpw",
            Bin::MockMta => "mock-mta",
        }
    }
    fn slot(self) -> usize {
        match self {
            Bin::Smtpw => 0,
            Bin::MockMta => 1,
        }
    }
}

/// What a scenario gets when it runs.
#[derive(Debug, Clone)]
pub struct Ctx {
    mode: Mode,
    name: String,
    bins: Vec<(Bin, PathBuf)>,
    /// In [`Mode::RealTimePg`]: the PostgreSQL server the sites' spools go in.
    database: Option<Arc<smtpw_testkit::postgres::Postgres>>,
}

impl Ctx {
    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// In [`Mode::RealTimePg`], the server whose fresh databases the sites use as spools.
    pub fn database(&self) -> Option<&Arc<smtpw_testkit::postgres::Postgres>> {
        self.database.as_ref()
    }
    /// The path of a binary the scenario declared with [`Scenario::needs`] (real-time mode).
    pub fn bin(&self, b: Bin) -> Result<&Path, Failure> {
        self.bins
            .iter()
            .find(|(x, _)| *x == b)
            .map(|(_, p)| p.as_path())
            .ok_or_else(|| {
                Failure::new(
                    format!(
                        "the {} binary, declared with Scenario::needs, in {} mode",
                        b.name(),
                        self.mode
                    ),
                    "it was not declared or this is virtual mode",
                )
            })
    }
}

/// One named scenario.
#[derive(Clone)]
pub struct Scenario {
    pub name: String,
    pub modes: Vec<Mode>,
    /// Wall-clock limit per mode.
    pub time_limit: Duration,
    /// Virtual-mode limit in paused (tokio) time.
    pub virtual_limit: Duration,
    /// Binaries the real-time run needs (built or located before the clock starts).
    pub needs: Vec<Bin>,
    /// Its real-time run goes again with a PostgreSQL spool ([`Mode::RealTimePg`]).
    pub both_spools: bool,
    run: RunFn,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("modes", &self.modes)
            .field("time_limit", &self.time_limit)
            .field("needs", &self.needs)
            .finish_non_exhaustive()
    }
}

impl Scenario {
    /// Default wall-clock limit per run.
    pub const TIME_LIMIT: Duration = Duration::from_secs(60);
    /// Default paused-time limit in virtual mode: two virtual days.
    pub const VIRTUAL_LIMIT: Duration = Duration::from_secs(2 * 24 * 3600);

    pub fn new<F, Fut>(name: impl Into<String>, modes: &[Mode], run: F) -> Self
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ScenarioResult> + Send + 'static,
    {
        Self {
            name: name.into(),
            modes: modes.to_vec(),
            time_limit: Self::TIME_LIMIT,
            virtual_limit: Self::VIRTUAL_LIMIT,
            needs: Vec::new(),
            both_spools: false,
            run: Arc::new(move |ctx| Box::pin(run(ctx))),
        }
    }
    pub fn time_limit(mut self, d: Duration) -> Self {
        self.time_limit = d;
        self
    }
    pub fn virtual_limit(mut self, d: Duration) -> Self {
        self.virtual_limit = d;
        self
    }
    pub fn needs(mut self, bins: &[Bin]) -> Self {
        self.needs.extend_from_slice(bins);
        self
    }
    /// Its real-time run (through [`crate::site::ProcessSite`]) also goes with a PostgreSQL
    /// spool, as [`Mode::RealTimePg`].
    pub fn both_spools(mut self) -> Self {
        self.both_spools = true;
        self
    }
}

/// Which cases to run.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Run only scenarios whose name contains this (case-insensitive).
    pub filter: Option<String>,
    pub virtual_mode: bool,
    pub real_time: bool,
    /// The real-time runs of the scenarios marked `both_spools` again on PostgreSQL (skipped,
    /// said loudly, where PostgreSQL is not installed).
    pub postgres: bool,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            filter: None,
            virtual_mode: true,
            real_time: true,
            postgres: true,
        }
    }
}

impl Selection {
    pub fn wants(&self, s: &Scenario, m: Mode) -> bool {
        let mode_ok = match m {
            Mode::Virtual => self.virtual_mode && s.modes.contains(&m),
            Mode::RealTime => self.real_time && s.modes.contains(&m),
            Mode::RealTimePg => {
                self.real_time
                    && self.postgres
                    && s.both_spools
                    && s.modes.contains(&Mode::RealTime)
            }
        };
        let name_ok = self
            .filter
            .as_ref()
            .is_none_or(|f| s.name.to_lowercase().contains(&f.to_lowercase()));
        mode_ok && name_ok
    }
}

/// Runs every selected case, in registry order, every virtual run first (so the fast, exact
/// runs report before the slower real-time ones). `progress` is called after each case.
pub fn run(
    scenarios: &[Scenario],
    sel: &Selection,
    mut progress: impl FnMut(&CaseResult),
) -> Vec<CaseResult> {
    let mut out = Vec::new();
    for mode in [Mode::Virtual, Mode::RealTime, Mode::RealTimePg] {
        let cases: Vec<&Scenario> = scenarios.iter().filter(|s| sel.wants(s, mode)).collect();
        if cases.is_empty() {
            continue;
        }
        let database = if mode == Mode::RealTimePg {
            // Without PostgreSQL these cases are skipped, and the kit says so loudly.
            match smtpw_testkit::postgres::Postgres::shared("conformance real-time-pg cases") {
                Some(pg) => Some(pg),
                None => continue,
            }
        } else {
            None
        };
        for s in cases {
            let r = run_case_on(s, mode, database.clone());
            progress(&r);
            out.push(r);
        }
    }
    out
}

/// Runs one scenario in one mode (a [`Mode::RealTimePg`] case starts or shares testkit's
/// PostgreSQL; without it the case fails saying so).
pub fn run_case(s: &Scenario, mode: Mode) -> CaseResult {
    let database = if mode == Mode::RealTimePg {
        smtpw_testkit::postgres::Postgres::shared(&s.name)
    } else {
        None
    };
    if mode == Mode::RealTimePg && database.is_none() {
        return CaseResult {
            scenario: s.name.clone(),
            mode,
            passed: false,
            figure: String::new(),
            failure: Some("PostgreSQL is not installed (apt-get install postgresql)".into()),
            took: Duration::ZERO,
            charts: Vec::new(),
        };
    }
    run_case_on(s, mode, database)
}

fn run_case_on(
    s: &Scenario,
    mode: Mode,
    database: Option<Arc<smtpw_testkit::postgres::Postgres>>,
) -> CaseResult {
    install_panic_hook();
    let fail = |f: Failure, took: Duration| CaseResult {
        scenario: s.name.clone(),
        mode,
        passed: false,
        figure: String::new(),
        failure: Some(f.to_string()),
        took,
        charts: Vec::new(),
    };
    let mut bins = Vec::new();
    if mode.is_real_time() {
        for b in &s.needs {
            match locate(*b) {
                Ok(p) => bins.push((*b, p)),
                Err(e) => {
                    return fail(
                        Failure::new(format!("the {} binary", b.name()), e),
                        Duration::ZERO,
                    )
                }
            }
        }
    }
    let ctx = Ctx {
        mode,
        name: s.name.clone(),
        bins,
        database,
    };
    let (tx, rx) = mpsc::channel();
    let run = s.run.clone();
    let virtual_limit = s.virtual_limit;
    let wall_limit = s.time_limit;
    let started = Instant::now();
    let spawned = std::thread::Builder::new()
        .name(format!("{THREAD_PREFIX}{}", s.name))
        .spawn(move || {
            let r = run_on_runtime(run, ctx, mode, virtual_limit, wall_limit);
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return fail(
            Failure::new("a thread to run the scenario", e.to_string()),
            Duration::ZERO,
        );
    }
    // A little grace over the limit so that the in-runtime timeout, which cancels cleanly
    // (and kills child processes), normally fires first.
    let grace = (wall_limit / 10).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let r = rx.recv_timeout(wall_limit + grace);
    let took = started.elapsed();
    match r {
        Ok(Ok(o)) => CaseResult {
            scenario: s.name.clone(),
            mode,
            passed: true,
            figure: o.figure,
            failure: None,
            took,
            charts: o.charts,
        },
        Ok(Err(f)) => fail(f, took),
        Err(_) => fail(
            Failure::new(
                format!("to finish within {} s (wall clock)", wall_limit.as_secs()),
                format!(
                    "still running after {:.1} s; abandoned (a blocking call or a busy loop)",
                    took.as_secs_f64()
                ),
            ),
            took,
        ),
    }
}

const THREAD_PREFIX: &str = "scenario:";

fn run_on_runtime(
    run: RunFn,
    ctx: Ctx,
    mode: Mode,
    virtual_limit: Duration,
    wall_limit: Duration,
) -> ScenarioResult {
    let rt = match mode {
        Mode::Virtual => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build(),
        Mode::RealTime | Mode::RealTimePg => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
    };
    let rt = rt.map_err(|e| Failure::new("a tokio runtime", e.to_string()))?;
    let limit = match mode {
        Mode::Virtual => virtual_limit,
        Mode::RealTime | Mode::RealTimePg => wall_limit,
    };
    let fut = (run)(ctx);
    PANIC_AT.with(|p| p.borrow_mut().take());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async move { tokio::time::timeout(limit, fut).await })
    }));
    rt.shutdown_timeout(Duration::from_secs(2));
    match r {
        Ok(Ok(r)) => r,
        Ok(Err(_elapsed)) => Err(Failure::new(
            format!(
                "to finish within {} s of {} time",
                limit.as_secs(),
                if mode == Mode::Virtual {
                    "paused (virtual)"
                } else {
                    "wall-clock"
                }
            ),
            "it was still waiting at the limit and was cancelled",
        )),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-text payload".to_string());
            let at = PANIC_AT
                .with(|p| p.borrow_mut().take())
                .map(|l| format!(" at {l}"))
                .unwrap_or_default();
            Err(Failure::new(
                "the scenario to run to its end",
                format!("it panicked{at}: {msg}"),
            ))
        }
    }
}

thread_local! {
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// On scenario threads, remember where a panic happened instead of printing it (the runner
/// reports it); elsewhere keep the default behaviour.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ours = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with(THREAD_PREFIX));
            if ours {
                PANIC_AT.with(|p| *p.borrow_mut() = info.location().map(|l| l.to_string()));
            } else {
                prev(info);
            }
        }));
    });
}

// ---- locating the binaries ----------------------------------------------------------------

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

static BUILT: [OnceLock<Result<PathBuf, String>>; 2] = [OnceLock::new(), OnceLock::new()];
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// The path of a binary: `$SMTPW_BIN` / `$MOCK_MTA_BIN` when set, else `cargo build -p <pkg>
/// --bins --quiet` once per process and `<target dir>/debug/<name>`.
pub fn locate(b: Bin) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(b.env_var()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{}={} names no file (set by cargo xtask conformance?)",
                b.env_var(),
                p.display()
            ))
        };
    }
    BUILT[b.slot()]
        .get_or_init(|| {
            let _g = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            build(b)
        })
        .clone()
}

fn cargo() -> std::process::Command {
    let c = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(c);
    cmd.current_dir(workspace_root());
    cmd
}

fn build(b: Bin) -> Result<PathBuf, String> {
    let out = cargo()
        .args(["build", "-p", b.name(), "--bins", "--quiet"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build -p {} --bins` failed ({}): {}",
            b.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let path =
        target_dir()?
            .join("debug")
            .join(format!("{}{}", b.name(), std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "cargo built {} but {} is missing",
            b.name(),
            path.display()
        ))
    }
}

/// The cargo target directory (respects CARGO_TARGET_DIR and cargo config).
pub fn target_dir() -> Result<PathBuf, String> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("cargo metadata gave no JSON: {e}"))?;
    v.get("target_directory")
        .and_then(|t| t.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata has no target_directory".to_string())
}

// ---- helpers for real-time scenarios ------------------------------------------------------

/// A fresh temporary directory, removed when dropped.
pub fn temp_dir() -> Result<tempfile::TempDir, Failure> {
    tempfile::tempdir().map_err(|e| Failure::new("a temporary directory", e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn results(s: Scenario) -> Vec<CaseResult> {
        run(&[s], &Selection::default(), |_| {})
    }

    #[test]
    fn a_panic_is_a_failure_with_its_message_and_place() {
        let r = results(Scenario::new("boom", VIRTUAL_ONLY, |_ctx| async {
            let v: Vec<u32> = Vec::new();
            if v.is_empty() {
                panic!("the ledger lost recipient 7");
            }
            Ok(Outcome::new("never"))
        }));
        assert_eq!(r.len(), 1);
        assert!(!r[0].passed);
        let f = r[0].failure.as_deref().unwrap();
        assert!(f.contains("panicked at"), "{f}");
        assert!(f.contains("runner.rs"), "{f}");
        assert!(f.contains("the ledger lost recipient 7"), "{f}");
    }

    #[test]
    fn virtual_mode_runs_on_paused_time_and_a_deadlock_hits_the_virtual_limit() {
        let r = results(
            Scenario::new("sleeps a virtual day", VIRTUAL_ONLY, |_ctx| async {
                let t0 = tokio::time::Instant::now();
                tokio::time::sleep(Duration::from_secs(86_400)).await;
                Ok(Outcome::new(format!("{} s", t0.elapsed().as_secs())))
            })
            .time_limit(Duration::from_secs(5)),
        );
        assert!(r[0].passed, "{:?}", r[0].failure);
        assert_eq!(r[0].figure, "86400 s");
        assert!(r[0].took < Duration::from_secs(5));

        let r = results(
            Scenario::new("waits forever", VIRTUAL_ONLY, |_ctx| async {
                std::future::pending::<()>().await;
                Ok(Outcome::new("never"))
            })
            .virtual_limit(Duration::from_secs(3600)),
        );
        assert!(!r[0].passed);
        let f = r[0].failure.as_deref().unwrap();
        assert!(f.contains("within 3600 s of paused (virtual) time"), "{f}");
    }

    #[test]
    fn a_blocking_scenario_is_abandoned_at_the_wall_clock_limit() {
        let r = results(
            Scenario::new("blocks", REAL_TIME_ONLY, |_ctx| async {
                std::thread::sleep(Duration::from_secs(9));
                Ok(Outcome::new("late"))
            })
            .time_limit(Duration::from_millis(200)),
        );
        assert!(!r[0].passed);
        assert!(r[0].failure.as_deref().unwrap().contains("abandoned"));
        assert!(r[0].took < Duration::from_secs(8));
    }

    #[test]
    fn each_mode_gets_its_runtime() {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let s = Scenario::new("flavour", BOTH, |ctx| async move {
            let flavor = Handle::current().runtime_flavor();
            let wall = Instant::now();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let slept_for_real = wall.elapsed() >= Duration::from_millis(300);
            match (ctx.mode(), flavor, slept_for_real) {
                (Mode::Virtual, RuntimeFlavor::CurrentThread, false)
                | (Mode::RealTime, RuntimeFlavor::MultiThread, true) => Ok(Outcome::new("ok")),
                other => Err(Failure::new(
                    "paused current-thread / real multi-thread",
                    format!("{other:?}"),
                )),
            }
        });
        let r = run(&[s], &Selection::default(), |_| {});
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|r| r.passed), "{r:?}");
        assert_eq!((r[0].mode, r[1].mode), (Mode::Virtual, Mode::RealTime));
    }

    #[test]
    fn selection_filters_by_name_and_mode() {
        let s = Scenario::new("config-case03", BOTH, |ctx| async move {
            Ok(Outcome::new(ctx.mode().to_string()))
        });
        let sel = Selection {
            filter: Some("CASE03".into()),
            virtual_mode: false,
            real_time: true,
            postgres: true,
        };
        let r = run(std::slice::from_ref(&s), &sel, |_| {});
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].mode, r[0].figure.as_str()),
            (Mode::RealTime, "real-time")
        );
        let sel = Selection {
            filter: Some("case04".into()),
            ..Selection::default()
        };
        assert!(run(&[s], &sel, |_| {}).is_empty());
    }
}
