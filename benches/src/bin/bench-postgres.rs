//! `bench-postgres`: the private PostgreSQL of `cargo xtask bench`'s `postgres` variant.
//!
//! Starts the test kit's server ([`smtpw_testkit::postgres::Postgres`]: `SMTPW_TEST_DATABASE_URL`
//! if set, else `initdb` + `pg_ctl start` of Debian's package on a free loopback port, as the
//! `postgres` user when run as root), prints one JSON line
//! `{"url":"postgres://postgres@127.0.0.1:PORT","data":"/tmp/.../data"}` (or
//! `{"skipped":"why"}`), then waits for its standard input to close: the xtask holds the pipe, so
//! the server is stopped (`pg_ctl -m immediate stop`, by the data directory's postmaster.pid) and
//! removed when the xtask lets go of it or exits, however it exits. It ignores SIGINT, SIGTERM
//! and SIGHUP: a Ctrl-C in the terminal (or a kill of the whole process group) reaches every
//! process of the group, and dying of it here would leave the cluster running (pg_ctl detaches
//! it); the xtask handles those signals, exits, and so closes the pipe.
//!
//! The xtask does not start the server itself because the test kit already knows how (one place),
//! and the xtask stays free of the engine's dependency tree (it is a debug build run often).

use std::io::Read;
use std::process::ExitCode;

use smtpw_testkit::postgres::Postgres;

/// SIGINT, SIGTERM and SIGHUP ignored: only the end of standard input stops this process.
#[allow(unsafe_code)]
fn ignore_interrupts() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler; nothing else in
    // this process has touched signals yet.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

fn main() -> ExitCode {
    ignore_interrupts();
    let Some(pg) = Postgres::start("cargo xtask bench (postgres variant)") else {
        println!(
            "{{\"skipped\":\"PostgreSQL is not installed (apt-get install postgresql) and {} is not set\"}}",
            smtpw_testkit::postgres::URL_VAR
        );
        return ExitCode::SUCCESS;
    };
    // The server's base URL: that of a database of ours, less the database.
    let url = pg.database("bench_probe");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    let data = pg
        .data_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({ "url": base, "data": data, "private": pg.data_dir().is_some() })
    );
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    drop(pg);
    ExitCode::SUCCESS
}
