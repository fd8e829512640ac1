//! `bench-load`: prepares the workloads of `cargo xtask bench`.
//!
//! - `bench-load preload --spool DIR --jobs M --rcpts R --size BYTES`: writes M jobs of R
//!   recipients and BYTES-byte messages into DIR/incoming as one file, ingests them into the spool
//!   (MAXBSMTP = R, so one copy per job), and prints one JSON line with the write and ingest times.
//! - `bench-load job --out FILE --rcpts N --size BYTES`: writes one job of N recipients to FILE
//!   (through a temporary name, so a running engine never sees it half-written).

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use smtpw_engine::clock::SystemClock;
use smtpw_engine::spool::{SpoolOptions, SqliteSpool};
use smtpw_testkit::workload::write_bench_jobs;

fn usage() -> ExitCode {
    eprintln!(
        "usage: bench-load preload --spool DIR --jobs M --rcpts R --size BYTES\n       \
         bench-load job --out FILE --rcpts N --size BYTES"
    );
    ExitCode::from(2)
}

#[derive(Default)]
struct Opts {
    spool: Option<PathBuf>,
    out: Option<PathBuf>,
    jobs: u64,
    rcpts: u64,
    size: usize,
}

fn parse(args: &[String]) -> Option<Opts> {
    let mut o = Opts {
        jobs: 1,
        ..Opts::default()
    };
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let v = it.next()?;
        match k.as_str() {
            "--spool" => o.spool = Some(PathBuf::from(v)),
            "--out" => o.out = Some(PathBuf::from(v)),
            "--jobs" => o.jobs = v.parse().ok()?,
            "--rcpts" => o.rcpts = v.parse().ok()?,
            "--size" => o.size = v.parse().ok()?,
            _ => return None,
        }
    }
    (o.rcpts > 0 && o.jobs > 0).then_some(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        return usage();
    };
    let Some(o) = parse(rest) else {
        return usage();
    };
    let r = match (cmd.as_str(), &o.spool, &o.out) {
        ("preload", Some(dir), _) => preload(dir.clone(), &o),
        ("job", _, Some(out)) => job(out.clone(), &o),
        _ => return usage(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-load: {e}");
            ExitCode::from(1)
        }
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

fn write_file(out: &std::path::Path, o: &Opts) -> Res {
    let tmp = out.with_extension("tmp");
    let f = File::create(&tmp)?;
    let w = write_bench_jobs(
        BufWriter::with_capacity(1 << 20, f),
        o.jobs,
        o.rcpts,
        o.size,
    )?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

fn job(out: PathBuf, o: &Opts) -> Res {
    let t = Instant::now();
    write_file(&out, o)?;
    println!(
        "{{\"write_secs\":{:.3},\"recipients\":{}}}",
        t.elapsed().as_secs_f64(),
        o.jobs * o.rcpts
    );
    Ok(())
}

fn preload(dir: PathBuf, o: &Opts) -> Res {
    let incoming = dir.join(smtpw_engine::spool::INCOMING);
    std::fs::create_dir_all(&incoming)?;
    let t = Instant::now();
    write_file(&incoming.join("bench.MAIL"), o)?;
    let write_secs = t.elapsed().as_secs_f64();
    let opts = SpoolOptions {
        max_bsmtp: u32::try_from(o.rcpts)?,
        ..SpoolOptions::default()
    };
    let t = Instant::now();
    let spool = SqliteSpool::open(&dir, opts, SystemClock::shared())?;
    let report = spool.ingest_blocking()?;
    let ingest_secs = t.elapsed().as_secs_f64();
    drop(spool);
    if report.recipients != o.jobs * o.rcpts || !report.quarantined.is_empty() {
        return Err(format!(
            "ingested {} recipients of {} ({} files quarantined)",
            report.recipients,
            o.jobs * o.rcpts,
            report.quarantined.len()
        )
        .into());
    }
    println!(
        "{{\"write_secs\":{write_secs:.3},\"ingest_secs\":{ingest_secs:.3},\"jobs\":{},\"copies\":{},\"recipients\":{}}}",
        report.jobs, report.copies, report.recipients
    );
    Ok(())
}
