//! Benchmark support (see issue 7): the workloads shared by the criterion micro-benches and the
//! end-to-end harness (`cargo xtask bench`, through the `bench-load` binary).

use std::io::{self, Write};

use smtpw::job::JobWriter;

/// Envelope sender of every bench job.
pub const BENCH_FROM: &str = "bench-owner@bench.example";

/// Recipient number `i`: distinct addresses spread over 50 domains.
pub fn rcpt(i: u64) -> String {
    format!("u{i:07}@d{:02}.bench.example", i % 50)
}

/// A message of exactly `size` bytes (CRLF, headers then a body of 76-character lines), or the
/// headers alone when `size` is smaller than them.
pub fn message(size: usize, serial: u64) -> Vec<u8> {
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

/// Write `jobs` jobs of `rcpts` recipients each (recipient numbers continue across jobs) with
/// `size`-byte messages, as one BSMTP stream. Returns the bytes of messages written.
pub fn write_jobs<W: Write>(out: W, jobs: u64, rcpts: u64, size: usize) -> io::Result<W> {
    let mut w = JobWriter::new(out);
    w.helo("BENCH.EXAMPLE").map_err(io::Error::other)?;
    let msg = message(size, 0);
    for j in 0..jobs {
        let first = j * rcpts;
        w.job(
            BENCH_FROM,
            None,
            (first..first + rcpts).map(rcpt),
            msg.as_slice(),
        )
        .map_err(io::Error::other)?;
    }
    w.finish().map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_the_asked_size() {
        for size in [200, 2048, 20_480, 204_800, 1000, 1001] {
            assert_eq!(message(size, 7).len(), size, "size {size}");
        }
    }

    #[test]
    fn jobs_read_back() {
        let buf = write_jobs(Vec::new(), 3, 5, 2048).unwrap();
        let jobs = smtpw::job::read_all(buf.as_slice(), 1 << 20).unwrap();
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[2].rcpts[4], rcpt(14));
        assert_eq!(jobs[0].message.len(), 2048);
    }
}
