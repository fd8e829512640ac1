//! The listener's edges in process (LISTEN-3, LISTEN-6): a spool on a full disk answers 451 and
//! stores nothing, then 250 once space returns; an idle client is told 421 4.4.2; a stop tells
//! a connected client 421 4.3.2 and `serve` returns; the connection cap holds across the
//! listener's threads (LISTEN-6a).

use std::sync::Arc;
use std::time::Duration;

use smtpw_engine::clock::SystemClock;
use smtpw_engine::listen::Listener;
use smtpw_engine::settings::ListenSettings;
use smtpw_engine::spool::{Spool, SpoolOptions, SqliteSpool};
use smtpw_testkit::tmpfs::Tmpfs;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn settings() -> ListenSettings {
    ListenSettings::on(vec!["127.0.0.1:0".parse().unwrap()])
}

/// Final reply lines (the last line of each reply) for `n` replies.
async fn replies(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    while out.len() < n {
        line.clear();
        if r.read_line(&mut line).await.unwrap() == 0 {
            break;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            out.push(line.trim_end().to_owned());
        }
    }
    out
}

/// A client connected to `port` that said EHLO: its halves and the greeting and EHLO replies.
async fn ehlo(
    port: u16,
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
    Vec<String>,
) {
    let (r, mut w) = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap()
        .into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"EHLO c\r\n").await.unwrap();
    let got = replies(&mut r, 2).await;
    (r, w, got)
}

async fn transaction(port: u16, body_kb: usize) -> Vec<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut conv = String::from("EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: big\r\n\r\n");
    for _ in 0..body_kb * 1024 / 100 {
        conv.push_str(&"y".repeat(98));
        conv.push_str("\r\n");
    }
    conv.push_str(".\r\nQUIT\r\n");
    w.write_all(conv.as_bytes()).await.unwrap();
    replies(&mut r, 7).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_451_and_nothing_stored_then_250_once_space_returns() {
    let Some(disk) = Tmpfs::mount("listen_edges full disk", "6m") else {
        return;
    };
    let spool = Arc::new(
        SqliteSpool::open(
            &disk.path.join("spool"),
            SpoolOptions::default(),
            SystemClock::shared(),
        )
        .unwrap(),
    );
    let metrics = smtpw_engine::metrics::Metrics::new();
    let l = Listener::bind(settings(), "mx.test".into())
        .await
        .unwrap()
        .with_metrics(metrics.clone());
    let port = l.local_addrs()[0].port();
    let stats = l.stats();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(l.serve(spool.clone(), stop.clone()));
    let filler = disk.fill("filler");
    let r = transaction(port, 1024).await;
    assert_eq!(
        &r[..5],
        [
            "220 mx.test ESMTP smtpw ready",
            "250 XPOOL",
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>"
        ]
    );
    assert!(r[5].starts_with("451 4.3.1 "), "{r:?}");
    assert_eq!(r[6], "221 2.0.0 Bye");
    assert_eq!(spool.stats().await.unwrap().jobs, 0, "nothing half-stored");
    std::fs::remove_file(&filler.path).unwrap();
    let r = transaction(port, 1024).await;
    assert!(r[5].starts_with("250 2.0.0 Ok: queued as "), "{r:?}");
    let st = spool.stats().await.unwrap();
    assert_eq!((st.jobs, st.queued), (1, 1));
    assert_eq!(
        stats
            .store_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(stats.jobs.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The same counts reach GET /metrics.
    let text = metrics.render(None);
    for line in [
        "smtpw_ingest_jobs_total{source=\"smtp\",result=\"accepted\"} 1",
        "smtpw_ingest_jobs_total{source=\"smtp\",result=\"rejected\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
    stop.cancel();
    serving.await.unwrap();
}

/// A listener of `s` serving a SQLite spool in `dir`.
struct Served {
    port: u16,
    stats: Arc<smtpw_engine::listen::ListenStats>,
    stop: CancellationToken,
    serving: tokio::task::JoinHandle<()>,
}

async fn serve_in(dir: &std::path::Path, s: ListenSettings) -> Served {
    let spool =
        Arc::new(SqliteSpool::open(dir, SpoolOptions::default(), SystemClock::shared()).unwrap());
    let l = Listener::bind(s, "mx.test".into()).await.unwrap();
    let port = l.local_addrs()[0].port();
    let stats = l.stats();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(l.serve(spool, stop.clone()));
    Served {
        port,
        stats,
        stop,
        serving,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_gets_421_and_a_stop_tells_connected_clients_421() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings();
    s.idle_timeout = Duration::from_millis(300);
    let Served {
        port,
        stop,
        serving,
        ..
    } = serve_in(dir.path(), s).await;

    let (r, _w) = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap()
        .into_split();
    let mut r = BufReader::new(r);
    let t0 = std::time::Instant::now();
    let got = replies(&mut r, 3).await;
    assert_eq!(got.len(), 2, "then the connection closes: {got:?}");
    assert!(got[1].starts_with("421 4.4.2 "), "{got:?}");
    // Not at once: after the idle time-out (the client's clock starts a little before the
    // server's, and tokio's timer may round down by a millisecond or so).
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );

    let (mut r, _w, got) = ehlo(port).await;
    assert_eq!(got.len(), 2);
    stop.cancel();
    let got = replies(&mut r, 2).await;
    assert!(got[0].starts_with("421 4.3.2 "), "{got:?}");
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve returns after a stop")
        .unwrap();
}

/// A message line over 998 bytes is folded before it is stored, as ingest folds `.MAIL` files
/// (JOB rules): what the relay will get has no line over 1000 octets, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_over_998_bytes_is_stored_folded() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(
        SqliteSpool::open(
            &dir.path().join("spool"),
            SpoolOptions::default(),
            SystemClock::shared(),
        )
        .unwrap(),
    );
    let l = Listener::bind(settings(), "mx.test".into()).await.unwrap();
    let port = l.local_addrs()[0].port();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(l.serve(spool.clone(), stop.clone()));
    let long: String = (0..3000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let conv = format!(
        "EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: long\r\n\r\n{long}\r\nend\r\n.\r\nQUIT\r\n"
    );
    w.write_all(conv.as_bytes()).await.unwrap();
    let rep = replies(&mut r, 7).await;
    assert!(rep[5].starts_with("250 2.0.0 Ok: queued as "), "{rep:?}");
    let copy = spool
        .claim(smtpw_engine::config::PoolSet::ALL)
        .await
        .unwrap()
        .expect("the stored copy");
    let text = String::from_utf8(copy.message.to_vec()).unwrap();
    assert!(
        text.split("\r\n").all(|l| l.len() <= 998),
        "a line over 998 bytes was stored: {text:?}"
    );
    let body: Vec<&str> = text.split("\r\n").skip(2).collect();
    let joined: String = body
        .iter()
        .take_while(|l| **l != "end")
        .enumerate()
        .map(|(i, l)| if i == 0 { *l } else { &l[1..] })
        .collect();
    assert_eq!(
        joined, long,
        "the folded pieces put back together are the line"
    );
    stop.cancel();
    serving.await.unwrap();
}

/// With three listener threads the connection cap is still one: four clients held open (each
/// served, whichever thread took it), the fifth is told 421 and closed; a stop then tells each
/// of the four 421 and `serve` returns (LISTEN-6, LISTEN-6a).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_across_listener_threads_and_a_stop_ends_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings();
    s.threads = 3;
    s.max_connections = 4;
    let Served {
        port,
        stats,
        stop,
        serving,
    } = serve_in(dir.path(), s).await;

    let mut held = Vec::new();
    for _ in 0..4 {
        let (r, w, got) = ehlo(port).await;
        assert!(
            got[0].starts_with("220 ") && got[1].starts_with("250 "),
            "{got:?}"
        );
        held.push((r, w));
    }
    let (r, _w) = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap()
        .into_split();
    let mut r = BufReader::new(r);
    let got = replies(&mut r, 2).await;
    assert_eq!(
        got.len(),
        1,
        "one reply, then the connection closes: {got:?}"
    );
    assert!(got[0].starts_with("421 4.3.2 "), "{got:?}");
    assert_eq!(stats.over_cap.load(std::sync::atomic::Ordering::Relaxed), 1);
    stop.cancel();
    for (r, _w) in &mut held {
        let got = replies(r, 1).await;
        assert!(got[0].starts_with("421 4.3.2 "), "{got:?}");
    }
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve returns after a stop")
        .unwrap();
}
