//! The SMTP listener end to end (LISTEN-1..LISTEN-7): `smtpw run --settings smtpw.toml` with a
//! `[listen]` section, independent clients (Python's smtplib, and a raw pipelining client that
//! writes a whole conversation at once), and mock-mta relays, one per pool: every message
//! answered 250 reaches the relay of its pool (XPOOL, Delivery-Pool: header, sender map,
//! DEFAULT_LIST_POOL), once, with the header removed; everything refused is never delivered.
//!
//! `cargo test -p smtpw --test it listen_cli::`

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mock_mta::MockConfig;
use smtpw_testkit::proc::{free_port, log_to, received, wait_until, Kid, LoopbackMock};

use crate::SMTPW;

const MAX_RCPTS: u32 = 50;
const MAX_BYTES: u64 = 100_000;
const MAX_CONNS: u32 = 4;

/// `python3` if it is installed (the smtplib client needs nothing else).
fn python() -> Option<PathBuf> {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(PathBuf::from("python3"))
    } else {
        eprintln!("SKIPPED: python3 is not installed (apt-get install python3); the smtplib client did not run");
        None
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testkit/py")
        .join(name)
}

struct Site {
    _dir: tempfile::TempDir,
    mocks: HashMap<char, LoopbackMock>,
    port: u16,
    kid: Kid,
    ledger: PathBuf,
    log: PathBuf,
}

/// Four relays (pools A, B, C, D; DEFAULT_LIST_POOL=D) and `smtpw run` listening.
fn start() -> Site {
    start_with("")
}

/// As [`start`], with `extra` lines in `[listen]`.
fn start_with(extra: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let mut mocks = HashMap::new();
    for p in ['A', 'B', 'C', 'D'] {
        let mut mc = MockConfig::iis();
        mc.keep_bodies = true;
        mocks.insert(p, LoopbackMock::start(mc));
    }
    let mut cfg = String::from("NODE=LISTSERV.EXAMPLE.ORG\nDEFAULT_LIST_POOL=D\nMAXBSMTP=25\n");
    cfg.push_str(&format!("SMTP_FORWARD=127.0.0.1:{}\n", mocks[&'D'].port));
    for (n, p) in ['A', 'B', 'C', 'D'].iter().enumerate() {
        cfg.push_str(&format!(
            "SMTP_FORWARD_{}=127.0.0.1:{};POOL={p}\n",
            n + 1,
            mocks[p].port
        ));
    }
    let cfg_path = dir.path().join("SITE.CFG");
    std::fs::write(&cfg_path, cfg).unwrap();
    let port = free_port();
    let toml = dir.path().join("smtpw.toml");
    std::fs::write(
        &toml,
        format!(
            "[listen]\naddresses = [\"127.0.0.1:{port}\"]\nallow = [\"127.0.0.1/32\"]\n\
             max_message_bytes = {MAX_BYTES}\nmax_recipients = {MAX_RCPTS}\nmax_connections = {MAX_CONNS}\n\
             {extra}[listen.pools]\n\"owner-bulk-*@lists.example.org\" = \"B\"\n"
        ),
    )
    .unwrap();
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log = dir.path().join("smtpw.log");
    let mut cmd = SMTPW.command();
    cmd.arg("run")
        .arg("--config")
        .arg(&cfg_path)
        .arg("--settings")
        .arg(&toml)
        .arg("--spool")
        .arg(&spool)
        .arg("--ledger")
        .arg(&ledger)
        .env("RUST_LOG", "info");
    log_to(&mut cmd, &log);
    let kid = Kid::spawn(cmd, "smtpw run");
    assert!(
        wait_until(Duration::from_secs(30), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "the listener did not come up: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Site {
        _dir: dir,
        mocks,
        port,
        kid,
        ledger,
        log,
    }
}

impl Site {
    /// Wait until the relays together accepted `n` recipients (at most 60 s).
    fn wait_delivered(&self, n: usize) {
        let total = || -> usize {
            self.mocks
                .values()
                .map(|m| received(m).values().map(|&c| c as usize).sum::<usize>())
                .sum()
        };
        let ok = wait_until(Duration::from_secs(60), || total() >= n);
        assert!(
            ok,
            "{} of {n} recipients delivered; log: {}",
            total(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Which relay (pool) each recipient reached, and how often.
    fn where_delivered(&self) -> HashMap<String, Vec<char>> {
        let mut m: HashMap<String, Vec<char>> = HashMap::new();
        for (p, mock) in &self.mocks {
            for (addr, n) in received(mock) {
                for _ in 0..n {
                    m.entry(addr.clone()).or_default().push(*p);
                }
            }
        }
        m
    }

    /// The ledger's job per delivered recipient, once it has `n` of them (at most 30 s).
    fn ledger_complete(&self, n: usize) -> HashMap<String, i64> {
        wait_until(Duration::from_secs(30), || {
            ledger_jobs(&self.ledger).len() >= n
        });
        ledger_jobs(&self.ledger)
    }

    fn bodies(&self) -> Vec<String> {
        self.mocks
            .values()
            .flat_map(|m| {
                m.mta
                    .journal()
                    .accepted_transactions()
                    .into_iter()
                    .filter_map(|t| t.body.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn stop(mut self) {
        let (status, _) = self.kid.term_and_wait(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "smtpw run stops cleanly: {status:?}; log: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

/// The job ids the ledger gives each recipient's delivery.
fn ledger_jobs(path: &Path) -> HashMap<String, i64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["outcome"] == "delivered")
        .map(|v| {
            (
                v["rcpt"].as_str().unwrap().to_owned(),
                v["job"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn smtplib_messages_reach_the_relay_of_their_pool_and_refusals_store_nothing() {
    let Some(py) = python() else { return };
    let site = start();
    let out = std::process::Command::new(py)
        .arg(script("smtplib_client.py"))
        .args([
            site.port.to_string(),
            MAX_RCPTS.to_string(),
            MAX_BYTES.to_string(),
            MAX_CONNS.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib client: {}\nlog: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&site.log).unwrap_or_default()
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes = &r["codes"];
    assert_eq!(codes["size_declared"], 552);
    assert_eq!(codes["size_data"], 552);
    assert_eq!(codes["rcpt_over_limit"], 452);
    assert_eq!(codes["malformed_rcpt"], 501);
    assert_eq!(codes["malformed_sender"], 501);
    assert_eq!(codes["no_rcpts_data"], 554);
    assert_eq!(codes["over_cap"], 421);
    assert_eq!(codes["outside_allow"], 554);
    assert!(r["outside_allow_text"]
        .as_str()
        .unwrap()
        .starts_with("5.7.1 "));
    let accepted = r["accepted"].as_array().unwrap();
    let mut want: HashMap<String, (char, i64)> = HashMap::new();
    for m in accepted {
        let pool = m["pool"].as_str().unwrap().chars().next().unwrap();
        for rc in m["rcpts"].as_array().unwrap() {
            want.insert(
                rc.as_str().unwrap().to_owned(),
                (pool, m["job"].as_i64().unwrap()),
            );
        }
    }
    assert_eq!(want.len(), 10 * 40 + MAX_RCPTS as usize);
    site.wait_delivered(want.len());
    let got = site.where_delivered();
    for (rcpt, (pool, _)) in &want {
        assert_eq!(
            got.get(rcpt),
            Some(&vec![*pool]),
            "{rcpt}: once, at the relay of pool {pool}"
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "nothing else delivered (no refused recipient)"
    );
    for n in r["never"].as_array().unwrap() {
        assert!(!got.contains_key(n.as_str().unwrap()));
    }
    // The 250's job id is the job the ledger records (once the outcomes are recorded: the
    // relay has them a moment before the ledger does).
    let jobs = site.ledger_complete(want.len());
    for (rcpt, (_, job)) in &want {
        assert_eq!(jobs.get(rcpt), Some(job), "{rcpt}");
    }
    // The header is gone from what the relays got; the message is otherwise intact.
    let bodies = site.bodies();
    assert!(!bodies.is_empty());
    for b in &bodies {
        assert!(!b.to_ascii_lowercase().contains("delivery-pool:"), "{b}");
        assert!(
            b.contains("\r\n.a line with a dot\r\n") || b.contains("Subject: message"),
            "{b}"
        );
    }
    site.stop();
}

/// Write a whole conversation at once (PIPELINING, RFC 2920) and read every reply.
fn pipelined(port: u16, msgs: usize, rcpts: usize, tag: &str) -> (Vec<String>, Vec<String>) {
    let mut conv = String::from("EHLO pipeliner.example\r\n");
    let mut all = Vec::new();
    for i in 0..msgs {
        conv.push_str(
            "MAIL FROM:<owner@lists.example.org> XPOOL=C SIZE=200
",
        );
        for k in 0..rcpts {
            let a = format!("{tag}-{i}-{k}@pipe.example");
            conv.push_str(&format!("RCPT TO:<{a}>\r\n"));
            all.push(a);
        }
        conv.push_str(&format!("DATA\r\nSubject: {tag} {i}\r\n\r\n..dot\r\n.\r\n"));
    }
    conv.push_str("QUIT\r\n");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(conv.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    (text.lines().map(str::to_owned).collect(), all)
}

#[test]
fn a_pipelining_client_gets_every_reply_in_order_and_every_message_is_delivered() {
    let site = start();
    let (lines, all) = pipelined(site.port, 20, 5, "p");
    let finals: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("250 2.0.0 Ok: queued as "))
        .collect();
    assert_eq!(finals.len(), 20, "{lines:?}");
    assert!(lines.last().unwrap().starts_with("221"), "{lines:?}");
    site.wait_delivered(all.len());
    let got = site.where_delivered();
    for a in &all {
        assert_eq!(got.get(a), Some(&vec!['C']), "{a}");
    }
    for b in site.bodies() {
        assert!(b.contains("\r\n.dot\r\n"), "dot-stuffing undone once: {b}");
    }
    site.stop();
}

/// The names of a process's threads (Linux: /proc/PID/task/*/comm).
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

/// `[listen] threads = 3`: three threads serve the listener, each accepting on its address;
/// concurrent clients get every reply in order and every message is delivered once, to its
/// pool; a stop drains them all.
#[test]
fn three_listener_threads_serve_concurrent_clients_and_every_message_is_delivered_once() {
    let site = start_with("threads = 3\n");
    // The port takes connections from its bind on; the threads start a moment later.
    let listeners = || {
        let mut names = thread_names(site.kid.pid());
        names.retain(|n| n.starts_with("smtpw-listen-"));
        names.sort();
        names
    };
    wait_until(Duration::from_secs(10), || listeners().len() >= 3);
    assert_eq!(
        listeners(),
        ["smtpw-listen-0", "smtpw-listen-1", "smtpw-listen-2"],
        "the listener's threads"
    );
    let port = site.port;
    let clients: Vec<_> = (0..MAX_CONNS as usize)
        .map(|c| std::thread::spawn(move || pipelined(port, 15, 4, &format!("t{c}"))))
        .collect();
    let mut all = Vec::new();
    for c in clients {
        let (lines, sent) = c.join().unwrap();
        let finals = lines
            .iter()
            .filter(|l| l.starts_with("250 2.0.0 Ok: queued as "))
            .count();
        assert_eq!(finals, 15, "{lines:?}");
        assert!(lines.last().unwrap().starts_with("221"), "{lines:?}");
        all.extend(sent);
    }
    site.wait_delivered(all.len());
    let got = site.where_delivered();
    assert_eq!(got.len(), all.len(), "no other recipient delivered");
    for a in &all {
        assert_eq!(got.get(a), Some(&vec!['C']), "{a}: once, to pool C's relay");
    }
    site.stop();
}

/// lettre (Rust), another independent client: concurrent connections, many recipients per
/// message; each 250 carries the job id.
#[test]
fn lettre_messages_are_acknowledged_with_their_job_id_and_delivered() {
    use lettre::transport::smtp::AsyncSmtpTransport;
    use lettre::{AsyncTransport, Message, Tokio1Executor};
    let site = start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ids, all) = rt.block_on(async {
        let t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(site.port)
            .timeout(Some(Duration::from_secs(20)))
            .build();
        let mut ids = Vec::new();
        let mut all = Vec::new();
        let mut sends = Vec::new();
        for i in 0..12 {
            let mut b = Message::builder()
                .from("List <owner-bulk-l@lists.example.org>".parse().unwrap())
                .subject(format!("lettre {i}"));
            for k in 0..30 {
                let a = format!("lettre-{i}-{k}@dest.example");
                b = b.to(a.parse().unwrap());
                all.push(a);
            }
            let m = b.body(format!("message {i}\r\n.dot\r\n")).unwrap();
            let t = t.clone();
            sends.push(async move { t.send(m).await });
        }
        // A connection per message (lettre without its pool), three at a time: within the
        // listener's connection cap (more would be told 421).
        while !sends.is_empty() {
            let now: Vec<_> = sends
                .drain(..sends.len().min(MAX_CONNS as usize - 1))
                .collect();
            for r in futures_join(now).await {
                let r = r.expect("lettre: accepted");
                assert_eq!(r.code().to_string(), "250");
                let text = r.message().next().unwrap().to_owned();
                let id: i64 = text.rsplit(' ').next().unwrap().parse().unwrap();
                ids.push(id);
            }
        }
        (ids, all)
    });
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 12, "a job id per message: {ids:?}");
    site.wait_delivered(all.len());
    let got = site.where_delivered();
    for a in &all {
        // owner-bulk-* is pool B by the sender map.
        assert_eq!(got.get(a), Some(&vec!['B']), "{a}");
    }
    let jobs = site.ledger_complete(all.len());
    for a in &all {
        assert!(
            unique.contains(&jobs[a]),
            "{a}: job {} was answered",
            jobs[a]
        );
    }
    site.stop();
}

/// Run the futures at once (several of lettre's pooled connections busy together).
async fn futures_join<F: std::future::Future + Send + 'static>(fs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
