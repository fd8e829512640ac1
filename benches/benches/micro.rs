//! Criterion micro-benches of the hot pure parts (issue 7).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smtpw::config::{Pool, RateLimits};
use smtpw::ratelimit::RateLimiter;

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

criterion_group!(benches, limiter);
criterion_main!(benches);
