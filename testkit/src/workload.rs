//! Workloads: messages, recipients, BSMTP job streams, and a seeded pseudo-random sequence (no
//! randomness in tests).

use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use smtpw_engine::job::JobWriter;
use smtpw_engine::spool::{CopyResult, Outcome, RcptOutcome};

/// The envelope sender of the jobs of a [`crate::topology::Topology`] and of the conformance
/// suite's real-time sites.
pub const MAIL_FROM: &str = "owner-list@lists.example.org";

/// An RFC 5322 message of at least `size` bytes (CRLF line ends, at least one body line).
pub fn message(size: usize) -> String {
    let mut m = String::from(
        "From: owner-list@lists.example.org\r\nTo: list@lists.example.org\r\nSubject: test\r\n\r\n",
    );
    let line = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij\r\n";
    loop {
        m.push_str(line);
        if m.len() >= size {
            return m;
        }
    }
}

/// `n` distinct addresses over 97 domains (`r{i}@d{i % 97}.example`).
pub fn recipients(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("r{i}@d{}.example", i % 97))
        .collect()
}

/// Envelope sender of every bench job.
pub const BENCH_FROM: &str = "bench-owner@bench.example";

/// Bench recipient number `i`: distinct addresses spread over 50 domains.
pub fn bench_rcpt(i: u64) -> String {
    format!("u{i:07}@d{:02}.bench.example", i % 50)
}

/// A bench message of exactly `size` bytes (CRLF, headers then a body of 76-character lines), or
/// the headers alone when `size` is smaller than them.
pub fn bench_message(size: usize, serial: u64) -> Vec<u8> {
    let mut m = format!(
        "From: bench@bench.example\r\nTo: list@bench.example\r\nSubject: bench {serial}\r\n\
         Message-ID: <{serial}@bench.example>\r\n\r\n"
    )
    .into_bytes();
    let line = [b'x'; 76];
    while m.len() + 78 <= size {
        m.extend_from_slice(&line);
        m.extend_from_slice(b"\r\n");
    }
    if m.len() + 2 < size {
        let rest = size - m.len() - 2;
        m.extend(std::iter::repeat_n(b'y', rest));
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// Write `jobs` bench jobs of `rcpts` recipients each (recipient numbers continue across jobs)
/// with `size`-byte messages, as one BSMTP stream.
pub fn write_bench_jobs<W: Write>(out: W, jobs: u64, rcpts: u64, size: usize) -> io::Result<W> {
    let mut w = JobWriter::new(out);
    w.helo("BENCH.EXAMPLE").map_err(io::Error::other)?;
    let msg = bench_message(size, 0);
    for j in 0..jobs {
        let first = j * rcpts;
        w.job(
            BENCH_FROM,
            None,
            (first..first + rcpts).map(bench_rcpt),
            msg.as_slice(),
        )
        .map_err(io::Error::other)?;
    }
    w.finish().map_err(io::Error::other)
}

/// A valid one-job `.MAIL` file with `n` recipients `u{i}@{domain}`.
pub fn job_text(n: usize, domain: &str) -> String {
    let mut t = String::from("MAIL FROM:<owner@l.example>\r\n");
    for i in 0..n {
        t.push_str(&format!("RCPT TO:<u{i}@{domain}>\r\n"));
    }
    t.push_str("DATA\r\nSubject: j\r\n\r\nbody\r\n.\r\n");
    t
}

/// Every kind of odd entry named `*.MAIL` in `SPOOL/incoming/` (the names in [`ODD_ENTRIES`]),
/// and two jobs: `real.MAIL` (3 recipients at real.example) and `linked.MAIL`, a link to a file
/// outside `incoming/` (2 recipients at linked.example). Returns the path of the link's target.
pub fn odd_incoming(spool: &Path) -> PathBuf {
    let inc = spool.join("incoming");
    std::fs::create_dir_all(&inc).unwrap();
    std::fs::write(inc.join("real.MAIL"), job_text(3, "real.example")).unwrap();
    let outside = spool.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = outside.join("job.txt");
    std::fs::write(&target, job_text(2, "linked.example")).unwrap();
    symlink(&target, inc.join("linked.MAIL")).unwrap();
    std::fs::create_dir(inc.join("dir.MAIL")).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(inc.join("fifo.MAIL"))
        .status()
        .unwrap();
    assert!(st.success());
    let sock = std::os::unix::net::UnixListener::bind(inc.join("sock.MAIL")).unwrap();
    std::mem::forget(sock); // the socket file stays; the listener is never used
    symlink("nowhere.txt", inc.join("dangling.MAIL")).unwrap();
    symlink("loop.MAIL", inc.join("loop.MAIL")).unwrap();
    symlink("/dev/null", inc.join("device.MAIL")).unwrap();
    // A link to another job in incoming would queue that job twice.
    symlink("real.MAIL", inc.join("twice.MAIL")).unwrap();
    target
}

/// The odd entries [`odd_incoming`] makes, sorted.
pub const ODD_ENTRIES: [&str; 7] = [
    "dangling.MAIL",
    "device.MAIL",
    "dir.MAIL",
    "fifo.MAIL",
    "loop.MAIL",
    "sock.MAIL",
    "twice.MAIL",
];

/// What a relay that took every one of a copy's `n` recipients gives the spool: each
/// delivered with `reply`.
pub fn all_delivered(relay: &str, n: usize, reply: &str) -> CopyResult {
    CopyResult {
        relay: Some(relay.into()),
        tls: None,
        rcpts: vec![
            RcptOutcome {
                outcome: Outcome::Delivered,
                reply: reply.into(),
            };
            n
        ],
    }
}

/// A deterministic pseudo-random sequence (PCG-style LCG), for kill delays and message sizes.
pub struct Lcg(pub u64);

impl Lcg {
    #[allow(clippy::should_implement_trait)] // not an iterator: it never ends
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in `lo..=hi` (roughly).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// A deterministic spread of `n` message sizes in `[lo, hi]`.
pub fn sizes(n: usize, lo: usize, hi: usize, seed: u64) -> Vec<usize> {
    let mut g = Lcg(seed);
    g.next();
    (0..n)
        .map(|_| g.between(lo as u64, hi as u64) as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_message_has_the_asked_size() {
        for size in [200, 2048, 20_480, 204_800, 1000, 1001] {
            assert_eq!(bench_message(size, 7).len(), size, "size {size}");
        }
    }

    #[test]
    fn bench_jobs_read_back() {
        let buf = write_bench_jobs(Vec::new(), 3, 5, 2048).unwrap();
        let jobs = smtpw_engine::job::read_all(buf.as_slice(), 1 << 20).unwrap();
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[2].rcpts[4], bench_rcpt(14));
        assert_eq!(jobs[0].message.len(), 2048);
    }

    #[test]
    fn message_is_at_least_the_asked_size_with_a_body() {
        for size in [0, 100, 1000, 5000] {
            let m = message(size);
            assert!(
                m.len() >= size && m.len() < size.max(81 + 68) + 68,
                "{size}: {}",
                m.len()
            );
            assert!(m.ends_with("abcdefghij\r\n"));
        }
    }

    /// The sizes are the sequence the rate tests were written against (the LCG's first value
    /// skipped, then one per message).
    #[test]
    fn sizes_follow_the_seeded_sequence() {
        let mut x = 9u64
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let want: Vec<usize> = (0..20)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                1000 + ((x >> 33) as usize) % (5000 - 1000 + 1)
            })
            .collect();
        assert_eq!(sizes(20, 1000, 5000, 9), want);
    }
}
