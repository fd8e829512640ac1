//! Criterion micro-benches of the hot pure parts (issue 7): SITE.CFG parse, BSMTP job parse
//! (a streamed 1,000,000-recipient job), chunking, SMTP reply parsing and classification, the
//! limiter's reserve path, and the spool's enqueue / claim / complete cycle.
//!
//! `cargo bench -p benches --bench micro` (add `-- --quick` for a fast pass, or a filter such as
//! `-- job`).

use std::hint::black_box;
use std::io::BufWriter;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use smtpw_engine::chunk::{chunk, SortMode};
use smtpw_engine::clock::SystemClock;
use smtpw_engine::config::{Pool, PoolSet, RateLimits};
use smtpw_engine::job::JobReader;
use smtpw_engine::ratelimit::RateLimiter;
use smtpw_engine::smtp::{classify_rcpt, parse_reply};
use smtpw_engine::spool::{CopyResult, Spool, SpoolOptions, SqliteSpool, INCOMING};
use smtpw_testkit::workload::{all_delivered, bench_rcpt, write_bench_jobs};

fn limiter(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let a = Pool::from_char('A').expect("pool");
    let limits = RateLimits {
        overall_bps: Some(12 << 20),
        pools: [(a, 3 << 19)].into_iter().collect(),
    };
    let rl = RateLimiter::new(&limits, Duration::from_millis(100));
    let mut g = c.benchmark_group("ratelimit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("reserve pool+overall", |b| {
        b.iter(|| {
            let now = tokio::time::Instant::now();
            black_box(rl.reserve(black_box(a), 20_480, now))
        })
    });
    g.bench_function("reserve overall only", |b| {
        b.iter(|| {
            let now = tokio::time::Instant::now();
            black_box(rl.reserve(black_box(Pool::DEFAULT), 20_480, now))
        })
    });
    g.finish();
}

/// A realistic SITE.CFG: comments, workers with windows and failover, pools, rates, DIST.
const SITE_CFG: &str = "\
* SITE.CFG - bench
NODE=LISTSERV.EXAMPLE.ORG
SMTP_FORWARD=MAIL.EXAMPLE.ORG:25
SMTP_FORWARD_1=2*MAIL.EXAMPLE.ORG;BACKUP.EXAMPLE.ORG
SMTP_FORWARD_2=NIGHT.EXAMPLE.ORG(00:00-05:00,22:00-24:00);BACKUP.EXAMPLE.ORG:2525;POOL=-
SMTP_FORWARD_3=BULK.EXAMPLE.ORG:50025;POOL=A
SMTP_FORWARD_4=192.0.2.10(08:00-18:00);POOL=B
SMTP_FORWARD_5=16*10.0.0.5:25;10.0.0.6:25;POOL=C
DEFAULT_LIST_POOL=A -
SMTP_RATE_LIMIT=12Mbps AB:1.5Mbps C:4Mbps
MAXBSMTP=100
SORT_RECIPIENTS=0
EMBEDDED_MAIL_MERGE=1
DIST_FORWARD=0*SELF DIST1.EXAMPLE.ORG 2*DIST2.EXAMPLE.ORG
DIST_BACKGROUND_POOL_PRIORITY=A*B
";

fn config(c: &mut Criterion) {
    let mut g = c.benchmark_group("config");
    g.throughput(Throughput::Bytes(SITE_CFG.len() as u64));
    g.bench_function("parse SITE.CFG", |b| {
        b.iter(|| {
            smtpw_engine::config::parse_str(black_box(SITE_CFG), "SITE.CFG")
                .expect("valid SITE.CFG")
        })
    });
    g.finish();
}

fn job_parse(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let buf = write_bench_jobs(Vec::new(), 1, N, 20_480).expect("job");
    let mut g = c.benchmark_group("job");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    g.bench_function("parse 1M-recipient job (streamed)", |b| {
        b.iter(|| {
            let mut r = JobReader::new(black_box(buf.as_slice()), 64 << 20);
            let mut n = 0u64;
            let mut bytes = 0usize;
            while let Some(h) = r.next_job().expect("job") {
                black_box(&h);
                while let Some(a) = r.next_rcpt().expect("rcpt") {
                    bytes += a.len();
                    n += 1;
                }
                bytes += r.read_message().expect("message").len();
            }
            assert_eq!(n, N);
            bytes
        })
    });
    g.finish();
}

fn chunking(c: &mut Criterion) {
    let rcpts: Vec<String> = (0..100_000).map(bench_rcpt).collect();
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Elements(rcpts.len() as u64));
    g.sample_size(20);
    for (name, mode) in [
        ("100k rcpts, MAXBSMTP 100, unsorted", SortMode::Unsorted),
        ("100k rcpts, MAXBSMTP 100, sorted", SortMode::Sorted),
        (
            "100k rcpts, MAXBSMTP 100, domain-grouped",
            SortMode::DomainGrouped,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(chunk(black_box(&rcpts), 100, mode)).len())
        });
    }
    g.finish();
}

fn replies(c: &mut Criterion) {
    let one = b"250 2.1.5 Ok\r\n".as_slice();
    let ehlo = b"250-mock-iis.example.org Hello [127.0.0.1]\r\n250-TURN\r\n250-SIZE 2097152\r\n\
250-ETRN\r\n250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-8bitmime\r\n\
250-BINARYMIME\r\n250-CHUNKING\r\n250-VRFY\r\n250 OK\r\n"
        .as_slice();
    // 100 pipelined RCPT replies in one buffer, as a worker reads them.
    let batch: Vec<u8> = (0..100)
        .flat_map(|i| {
            if i % 10 == 9 {
                b"452 4.5.3 Too many recipients\r\n".to_vec()
            } else {
                b"250 2.1.5 Recipient ok\r\n".to_vec()
            }
        })
        .collect();
    let mut g = c.benchmark_group("reply");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse 250 one line", |b| {
        b.iter(|| parse_reply(black_box(one)).expect("reply"))
    });
    g.bench_function("parse EHLO (12 lines)", |b| {
        b.iter(|| parse_reply(black_box(ehlo)).expect("reply"))
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse+classify 100 pipelined RCPT replies", |b| {
        b.iter(|| {
            let mut rest = black_box(batch.as_slice());
            let mut accepted = 0u32;
            while let Some((r, used)) = parse_reply(rest).expect("reply") {
                if matches!(classify_rcpt(&r), smtpw_engine::smtp::RcptVerdict::Accepted) {
                    accepted += 1;
                }
                rest = &rest[used..];
            }
            assert_eq!(accepted, 90);
            accepted
        })
    });
    g.finish();
}

/// A spool in a fresh temporary directory holding `jobs` jobs of `rcpts` recipients (one copy
/// each), ingested.
fn loaded_spool(jobs: u64, rcpts: u64, size: usize) -> (tempfile::TempDir, SqliteSpool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let incoming = dir.path().join(INCOMING);
    std::fs::create_dir_all(&incoming).expect("incoming");
    let f = std::fs::File::create(incoming.join("bench.MAIL")).expect("job file");
    write_bench_jobs(BufWriter::new(f), jobs, rcpts, size).expect("write jobs");
    let opts = SpoolOptions {
        max_bsmtp: u32::try_from(rcpts).expect("rcpts"),
        ..SpoolOptions::default()
    };
    let spool = SqliteSpool::open(dir.path(), opts, SystemClock::shared()).expect("spool");
    (dir, spool)
}

fn delivered(n: usize) -> CopyResult {
    all_delivered("127.0.0.1:25", n, "250 2.1.5 Ok")
}

fn spool(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("spool");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    // Enqueue: ingest a job file (parse, split, commit with a sync), per recipient.
    for (jobs, rcpts) in [(2000u64, 1u64), (200, 100), (1, 20_000)] {
        g.throughput(Throughput::Elements(jobs * rcpts));
        g.bench_function(format!("ingest {jobs} jobs x {rcpts} rcpts"), |b| {
            b.iter_batched(
                || loaded_spool(jobs, rcpts, 2048),
                |(dir, s)| {
                    let r = s.ingest_blocking().expect("ingest");
                    assert_eq!(r.recipients, jobs * rcpts);
                    (dir, s)
                },
                BatchSize::PerIteration,
            )
        });
    }
    // Claim + complete (durable: ledger fdatasync per batch), `inflight` copies at a time as
    // that many workers would; per copy.
    for (rcpts, inflight) in [(1u64, 1usize), (1, 32), (100, 1), (100, 32)] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(
            format!("claim+complete, {rcpts} rcpt/copy, {inflight} in flight"),
            |b| {
                b.iter_custom(|iters| {
                    let (_dir, s) = loaded_spool(iters, rcpts, 2048);
                    s.ingest_blocking().expect("ingest");
                    let t = Instant::now();
                    rt.block_on(async {
                        let mut set = tokio::task::JoinSet::new();
                        for _ in 0..inflight {
                            let s = s.clone();
                            set.spawn(async move {
                                while let Some(cp) = s.claim(PoolSet::ALL).await.expect("claim") {
                                    let n = cp.rcpts.len();
                                    s.complete(cp.copy_id, delivered(n))
                                        .await
                                        .expect("complete");
                                }
                            });
                        }
                        while set.join_next().await.is_some() {}
                    });
                    let e = t.elapsed();
                    assert_eq!(s.queued_copies(), 0);
                    e
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, limiter, config, job_parse, chunking, replies, spool);
criterion_main!(benches);
