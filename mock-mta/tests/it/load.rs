//! Bounded load over loopback: 32 concurrent clients, a few thousand messages; nothing is lost
//! from the journal, and a connection cap of 10 holds exactly.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::*;
use mock_mta::{MockConfig, MockMta};
use smtpw_clock::SystemClock;
use tokio::net::TcpStream;

const CLIENTS: usize = 32;
const PER_CLIENT: usize = 200;
const PER_CONNECTION: usize = 20;
const RCPTS: usize = 3;

/// One client: PER_CLIENT messages, a new connection every PER_CONNECTION, pipelined envelope.
/// Connections closed at the cap (421 greeting) are retried after a short pause.
async fn client(addr: std::net::SocketAddr, n: usize) -> (usize, usize) {
    let mut sent = 0;
    let mut capped = 0;
    while sent < PER_CLIENT {
        let mut c = Raw::new(TcpStream::connect(addr).await.expect("connect"));
        let g = c.reply().await;
        if g.code == 421 {
            capped += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        assert_eq!(g.code, 220);
        assert_eq!(c.cmd("EHLO load.example").await.code, 250);
        for _ in 0..PER_CONNECTION {
            if sent == PER_CLIENT {
                break;
            }
            let mut env = format!("MAIL FROM:<c{n}m{sent}@load.example>\r\n");
            for r in 0..RCPTS {
                env.push_str(&format!("RCPT TO:<c{n}m{sent}r{r}@dst.example>\r\n"));
            }
            env.push_str("DATA\r\n");
            c.send(env.as_bytes()).await;
            for _ in 0..=RCPTS {
                assert_eq!(c.reply().await.code, 250);
            }
            assert_eq!(c.reply().await.code, 354);
            c.send(&mock_mta::dot_stuff(message(sent).as_bytes())).await;
            assert_eq!(c.reply().await.code, 250);
            sent += 1;
        }
        assert_eq!(c.cmd("QUIT").await.code, 221);
    }
    (sent, capped)
}

async fn run(cfg: MockConfig) -> (MockMta, Duration, usize) {
    let mta = MockMta::new(cfg, SystemClock::shared());
    let server = mta
        .listen("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    let addr = server.local_addr();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(addr, n)))
        .collect();
    let mut capped = 0;
    for t in tasks {
        let (sent, c) = t.await.expect("client");
        assert_eq!(sent, PER_CLIENT);
        capped += c;
    }
    let took = t0.elapsed();
    server.shutdown().await;
    (mta, took, capped)
}

fn check_journal(mta: &MockMta) {
    let j = mta.journal();
    let total = CLIENTS * PER_CLIENT;
    let froms: BTreeSet<String> = j
        .accepted_transactions()
        .iter()
        .map(|t| t.mail_from.clone())
        .collect();
    let expected: BTreeSet<String> = (0..CLIENTS)
        .flat_map(|n| (0..PER_CLIENT).map(move |m| format!("c{n}m{m}@load.example")))
        .collect();
    assert_eq!(froms, expected, "every message is in the journal, once");
    assert_eq!(j.accepted_transactions().len(), total);
    assert_eq!(j.delivered_recipients().len(), total * RCPTS);
    let st = mta.stats();
    assert_eq!(st.messages as usize, total);
    assert_eq!(st.recipients_accepted as usize, total * RCPTS);
    assert_eq!(st.current_connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_32_clients_unlimited() {
    let (mta, took, _) = tokio::time::timeout(Duration::from_secs(120), run(MockConfig::iis()))
        .await
        .expect("load test finished in time");
    check_journal(&mta);
    let st = mta.stats();
    let total = CLIENTS * PER_CLIENT;
    eprintln!(
        "LOAD iis: {total} messages ({} recipients) from {CLIENTS} clients in {:.2?} = {:.0} messages/s, peak connections {}",
        total * RCPTS,
        took,
        total as f64 / took.as_secs_f64(),
        st.peak_connections
    );
    // A client may reconnect before the server has finished closing its previous session, so
    // the server can briefly count one closing and one new session per client.
    assert!(st.peak_connections > 1 && st.peak_connections <= 2 * CLIENTS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_32_clients_against_a_cap_of_10() {
    let mut cfg = MockConfig::xp();
    assert_eq!(cfg.profile.max_connections, Some(10));
    cfg.hostname = "xp.example".into();
    let (mta, took, capped) = tokio::time::timeout(Duration::from_secs(120), run(cfg))
        .await
        .expect("load test finished in time");
    check_journal(&mta);
    let st = mta.stats();
    let total = CLIENTS * PER_CLIENT;
    eprintln!(
        "LOAD xp: {total} messages from {CLIENTS} clients in {:.2?} = {:.0} messages/s, peak connections {}, closed at the cap {} (seen by clients {capped})",
        took,
        total as f64 / took.as_secs_f64(),
        st.peak_connections,
        st.over_cap
    );
    assert_eq!(
        st.peak_connections, 10,
        "the cap is reached and never passed"
    );
    assert!(st.over_cap > 0, "32 clients must have met the cap");
    assert_eq!(st.over_cap as usize, capped);
}
