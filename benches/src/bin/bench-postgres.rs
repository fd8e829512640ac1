//! `bench-postgres`: the private PostgreSQL of `cargo xtask bench`'s `postgres` variant.
//!
//! Starts the test kit's server ([`smtpw_testkit::postgres::Postgres`]: `SMTPW_TEST_DATABASE_URL`
//! if set, else `initdb` + `pg_ctl start` of Debian's package on a free loopback port, as the
//! `postgres` user when run as root), prints one JSON line
//! `{"url":"postgres://postgres@127.0.0.1:PORT","data":"/tmp/.../data"}` (or
//! `{"skipped":"why"}`), then waits for its standard input to close: the xtask holds the pipe, so
//! the server is stopped (`pg_ctl -m immediate stop`, by the data directory's postmaster.pid) and
//! removed when the xtask lets go of it or exits, however it exits.
//!
//! The xtask does not start the server itself because the test kit already knows how (one place),
//! and the xtask stays free of the engine's dependency tree (it is a debug build run often).

use std::io::Read;
use std::process::ExitCode;

use smtpw_testkit::postgres::Postgres;

fn main() -> ExitCode {
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
