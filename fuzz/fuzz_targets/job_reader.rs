//! The `.MAIL` job reader, streaming. The first two bytes choose the reading (the largest message
//! allowed, where reading of recipients stops early, the buffer size and the split points of the
//! underlying reads); the rest is the file. Checked:
//! - the result does not depend on how the file arrives: read whole, or through reads of random
//!   sizes (with `Interrupted` errors between them) behind a small buffer, the jobs and the error
//!   (with its line number) are the same;
//! - skipping the rest of a job's recipients (`read_message` after a few `next_rcpt`) gives the
//!   same message and the same error as reading them all;
//! - a good file's jobs are well formed (at least one valid recipient, a CRLF message within the
//!   maximum), and writing them with `JobWriter` and reading that back gives the same jobs;
//! - an error's line number lies within the file.
#![no_main]

use std::io::{self, BufRead, BufReader, Read};

use libfuzzer_sys::fuzz_target;
use smtpw_engine::job::{read_all, valid_address, Job, JobError, JobReader, JobWriter};

/// A reader that hands out the data in pieces of pseudo-random size, sometimes failing with
/// `Interrupted` first (a signal arriving during a read).
struct Chunked<'a> {
    data: &'a [u8],
    rng: u64,
}

impl Chunked<'_> {
    fn next(&mut self) -> u64 {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.rng >> 33
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.next().is_multiple_of(7) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = (1 + self.next() as usize % 23)
            .min(buf.len())
            .min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Read every job; after `stop_after` recipients of a job (when set), skip to its message.
fn read<R: BufRead>(r: R, max: u64, stop_after: Option<usize>) -> Result<Vec<Job>, String> {
    let mut reader = JobReader::new(r, max);
    let mut jobs = Vec::new();
    let shown = |e: JobError| e.to_string();
    while let Some(h) = reader.next_job().map_err(shown)? {
        let mut rcpts = Vec::new();
        while stop_after.is_none_or(|k| rcpts.len() < k) {
            match reader.next_rcpt().map_err(shown)? {
                Some(r) => rcpts.push(r.to_string()),
                None => break,
            }
        }
        let message = reader.read_message().map_err(shown)?;
        jobs.push(Job {
            mail_from: h.mail_from,
            pool: h.pool,
            rcpts,
            message,
        });
    }
    Ok(jobs)
}

fuzz_target!(|data: &[u8]| {
    let [mode, seed, file @ ..] = data else {
        return;
    };
    let max: u64 = match mode & 3 {
        0 => 64,
        1 => 1000,
        2 => 1 << 20,
        _ => u64::MAX,
    };
    let stop_after = usize::from(mode >> 2) % 4;
    let capacity = 1 + usize::from(seed % 16);

    let whole = read(file, max, None);
    let chunked = read(
        BufReader::with_capacity(
            capacity,
            Chunked {
                data: file,
                rng: u64::from(*seed),
            },
        ),
        max,
        None,
    );
    assert_eq!(whole, chunked, "reading in pieces changed the result");
    let skipping = read(
        BufReader::with_capacity(
            capacity,
            Chunked {
                data: file,
                rng: u64::from(*seed) ^ 0x55,
            },
        ),
        max,
        Some(stop_after),
    );
    let truncated = whole.clone().map(|jobs| {
        jobs.into_iter()
            .map(|mut j| {
                j.rcpts.truncate(stop_after);
                j
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(
        truncated, skipping,
        "skipping recipients changed the message or the error"
    );

    match whole {
        Ok(jobs) => {
            for j in &jobs {
                assert!(!j.rcpts.is_empty(), "a job without recipients: {j:?}");
                assert!(j.rcpts.iter().all(|r| valid_address(r)), "{j:?}");
                assert!(
                    j.mail_from.is_empty() || valid_address(&j.mail_from),
                    "{j:?}"
                );
                assert!(j.message.len() as u64 <= max, "message over the maximum");
                assert!(
                    j.message.is_empty() || j.message.ends_with(b"\r\n"),
                    "message not CRLF-terminated"
                );
            }
            // Write them back and read again: the same jobs.
            let mut w = JobWriter::new(Vec::new());
            for j in &jobs {
                w.job(&j.mail_from, j.pool, &j.rcpts, &j.message[..])
                    .expect("writing a job that was read");
            }
            let written = w.finish().expect("finishing the job file");
            let again = read_all(&written[..], max).expect("reading back a written job file");
            assert_eq!(again, jobs, "write then read changed the jobs");
        }
        Err(e) => {
            // "line N: ..." or "reading the job: ..." (never here: no I/O errors).
            let lines = file.iter().filter(|b| **b == b'\n').count() as u64 + 2;
            let n: u64 = e
                .strip_prefix("line ")
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("an error without a line: {e}"));
            assert!(
                n >= 1 && n <= lines,
                "error line {n} outside the file ({lines}): {e}"
            );
        }
    }
});
