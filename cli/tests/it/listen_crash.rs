//! A 250 from the listener means durable (LISTEN-3), under SIGKILL: `smtpw run --listen` is
//! killed several times while SMTP clients submit (one unique recipient per message, no retry)
//! and `smtpw sendmail` runs beside them; after a last run, every message that got a 250 and
//! every sendmail that exited 0 is delivered, and no message is stored twice (the ledger gives
//! every recipient one job): one that got no 250 is in the spool once or not at all. Repeats at
//! the relay (of any message) are bounded by the copies the workers had in flight at each kill,
//! as for any crash.
//!
//! `cargo test -p smtpw --test it listen_crash:: -- --nocapture` prints the figures.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mock_mta::MockConfig;
use smtpw_testkit::proc::{
    free_port, log_to, received, repeat_bound_per_crash, wait_until, write_site_cfg, Kid,
    LoopbackMock,
};
use smtpw_testkit::workload::Lcg;

use crate::SMTPW;

const CLIENTS: usize = 4;
const KILLS: usize = 4;
const WORKERS: u32 = 2;
const MAX_BSMTP: u32 = 10;

#[derive(Default)]
struct Tally {
    acked: HashSet<String>,
    unacked: HashSet<String>,
}

/// One SMTP client: a message per unique recipient, each command waited for; a message whose
/// 250 did not come (the server died) is counted unacknowledged and not sent again.
fn client(port: u16, id: usize, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) {
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let reply = |r: &mut BufReader<TcpStream>| -> Option<u16> {
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).ok()? == 0 {
                    return None;
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    return line.get(..3)?.parse().ok();
                }
            }
        };
        if reply(&mut r) != Some(220) {
            continue;
        }
        if w.write_all(b"EHLO c\r\n").is_err() || reply(&mut r) != Some(250) {
            continue;
        }
        while !stop.load(Ordering::SeqCst) {
            let rcpt = format!("c{id}-{n}@crash.example");
            n += 1;
            let steps: [(String, u16); 4] = [
                ("MAIL FROM:<owner@lists.example.org>\r\n".into(), 250),
                (format!("RCPT TO:<{rcpt}>\r\n"), 250),
                ("DATA\r\n".into(), 354),
                (format!("Subject: {rcpt}\r\n\r\nbody\r\n.\r\n"), 250),
            ];
            let mut ok = true;
            for (cmd, want) in &steps {
                if w.write_all(cmd.as_bytes()).is_err() || reply(&mut r) != Some(*want) {
                    ok = false;
                    break;
                }
            }
            let mut t = tally.lock().unwrap();
            if ok {
                t.acked.insert(rcpt);
            } else {
                t.unacked.insert(rcpt);
                break;
            }
        }
    }
}

fn sendmail(spool: &Path, rcpt: &str) -> bool {
    let mut child = SMTPW
        .command()
        .args(["sendmail", "--spool"])
        .arg(spool)
        .args([
            "-oi",
            "-odi",
            "-oem",
            "-f",
            "owner@lists.example.org",
            "--",
            rcpt,
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("Subject: {rcpt}\n\nbody\n").as_bytes());
    child.wait().is_ok_and(|s| s.success())
}

#[test]
fn sigkill_while_clients_submit_loses_no_acknowledged_message() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut mc = MockConfig::iis();
    mc.faults.command_latency_ms.insert("DOT".into(), 5);
    let mock = LoopbackMock::start(mc);
    let cfg = write_site_cfg(dir.path(), mock.port, WORKERS, MAX_BSMTP);
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log = dir.path().join("smtpw.log");
    let port = free_port();
    let run = || {
        let mut c = SMTPW.command();
        c.arg("run")
            .arg("--config")
            .arg(&cfg)
            .arg("--spool")
            .arg(&spool)
            .arg("--ledger")
            .arg(&ledger)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info");
        log_to(&mut c, &log);
        Kid::spawn(c, "smtpw run --listen")
    };
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut kid = run();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (stop, tally) = (stop.clone(), tally.clone());
            std::thread::spawn(move || client(port, id, stop, tally))
        })
        .collect();
    let sent_by_sendmail = {
        let (stop, spool) = (stop.clone(), spool.clone());
        std::thread::spawn(move || {
            let mut ok = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let rcpt = format!("sendmail-{i}@crash.example");
                i += 1;
                if sendmail(&spool, &rcpt) {
                    ok.push(rcpt);
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            ok
        })
    };
    let mut rng = Lcg(0x11_57e4);
    let mut kills = 0u64;
    for _ in 0..KILLS {
        let before = tally.lock().unwrap().acked.len();
        // Let some messages through, then kill in the middle of the traffic.
        wait_until(Duration::from_secs(20), || {
            tally.lock().unwrap().acked.len() >= before + 20
        });
        std::thread::sleep(Duration::from_millis(rng.between(20, 300)));
        if kid.kill() {
            kills += 1;
        }
        kid = run();
    }
    wait_until(Duration::from_secs(10), || {
        tally.lock().unwrap().acked.len() >= 50 * (KILLS + 1)
    });
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let by_sendmail = sent_by_sendmail.join().unwrap();
    let t = tally.lock().unwrap();
    let must: Vec<&String> = t.acked.iter().chain(by_sendmail.iter()).collect();
    let all_there = wait_until(Duration::from_secs(60), || {
        let got = received(&mock);
        must.iter().all(|r| got.contains_key(*r))
    });
    let (status, _) = kid.term_and_wait(Duration::from_secs(30));
    let got = received(&mock);
    let lost: Vec<&&String> = must.iter().filter(|r| !got.contains_key(**r)).collect();
    let duplicated: u64 = must
        .iter()
        .map(|r| u64::from(got.get(*r).copied().unwrap_or(1).saturating_sub(1)))
        .sum();
    let unacked_repeats: u64 = t
        .unacked
        .iter()
        .map(|r| u64::from(got.get(r).copied().unwrap_or(1).saturating_sub(1)))
        .sum();
    // Every recipient's ledger lines name one job: nothing was stored twice.
    let mut jobs_of: std::collections::HashMap<String, HashSet<i64>> = Default::default();
    for l in std::fs::read_to_string(&ledger).unwrap_or_default().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        jobs_of
            .entry(v["rcpt"].as_str().unwrap().to_owned())
            .or_default()
            .insert(v["job"].as_i64().unwrap());
    }
    let stored_twice: Vec<&String> = jobs_of
        .iter()
        .filter(|(_, j)| j.len() > 1)
        .map(|(r, _)| r)
        .collect();
    let unacked_delivered = t.unacked.iter().filter(|r| got.contains_key(*r)).count();
    let bound = kills * repeat_bound_per_crash(WORKERS, MAX_BSMTP);
    eprintln!(
        "listen crash test: {kills} SIGKILLs, {} messages acknowledged by 250 and {} sendmail \
         exits 0: lost {}, duplicated at the relay {duplicated} (bound {bound}); {} without a \
         250 ({} of them delivered, repeated at the relay {unacked_repeats}); stored twice {}; \
         {:.1} s",
        t.acked.len(),
        by_sendmail.len(),
        lost.len(),
        t.unacked.len(),
        unacked_delivered,
        stored_twice.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the last run stops cleanly"
    );
    assert!(kills >= KILLS as u64 - 1, "the kills fell while it ran");
    assert!(t.acked.len() >= 50, "enough traffic to mean something");
    assert!(
        all_there && lost.is_empty(),
        "lost: {lost:?}; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(stored_twice.is_empty(), "stored twice: {stored_twice:?}");
    assert!(
        duplicated + unacked_repeats <= bound,
        "{duplicated} + {unacked_repeats} repeats > {bound}"
    );
}
