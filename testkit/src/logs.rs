//! `tracing` output captured for assertions: of the current thread ([`LogCapture`]), or of the
//! whole test process ([`process_log`]).

use std::sync::{Arc, Mutex, OnceLock};

/// Captures `tracing` output (INFO and above) of the current thread; paused-time tests run
/// every task on it.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Install for the current thread until the guard drops.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        self.install_at(tracing::Level::INFO)
    }

    /// [`LogCapture::install`] at `level` and above (TRACE: every line there is).
    pub fn install_at(&self, level: tracing::Level) -> tracing::subscriber::DefaultGuard {
        let sub = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(level)
            .finish();
        tracing::subscriber::set_default(sub)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Captures every `tracing` line (INFO and above) of this test process, threads of its own
/// included (such as the spool's writer, which a thread-local capture would miss): the first
/// call installs the process-wide subscriber, so a test binary that calls it must not install
/// another. Threads with a [`LogCapture`] installed log there instead.
pub fn process_log() -> &'static LogCapture {
    static LOG: OnceLock<LogCapture> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = LogCapture::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(sub).expect("no global subscriber yet");
        log
    })
}

/// The lines of [`process_log`] that mention `needle`.
pub fn process_log_lines(needle: &str) -> Vec<String> {
    process_log()
        .text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}
