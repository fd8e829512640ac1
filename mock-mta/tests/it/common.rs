//! Test helpers: a raw SMTP client over any stream (it reads into its own buffer), and a way to
//! connect an in-memory stream to a mock.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use jiff::civil::DateTime;
use mock_mta::{MockConfig, MockMta};
use smtpw_clock::{SharedClock, VirtualClock};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// One SMTP reply (possibly multi-line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The last line, code included (e.g. `552 5.5.3 Too many recipients`).
    pub fn line(&self) -> String {
        format!(
            "{} {}",
            self.code,
            self.lines.last().cloned().unwrap_or_default()
        )
    }
}

/// A raw client: sends bytes exactly as given, parses replies.
pub struct Raw<S> {
    pub s: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub fn new(s: S) -> Self {
        Self { s, buf: Vec::new() }
    }

    pub async fn send(&mut self, data: &[u8]) {
        self.s.write_all(data).await.expect("write");
        self.s.flush().await.expect("flush");
    }

    /// The next reply, or `None` when the server closed the connection first.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let nl = loop {
                if let Some(p) = self.buf.iter().position(|b| *b == b'\n') {
                    break p;
                }
                let mut chunk = [0u8; 8192];
                let n = self.s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            };
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .expect("reply code");
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Some(Reply { code, lines });
            }
        }
    }

    pub async fn reply(&mut self) -> Reply {
        self.try_reply()
            .await
            .expect("a reply, not a closed connection")
    }

    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// True when the server closed the connection (EOF) with nothing more to read.
    pub async fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut b = [0u8; 64];
        matches!(self.s.read(&mut b).await, Ok(0) | Err(_))
    }
}

pub fn peer() -> SocketAddr {
    "127.0.0.1:40001".parse().expect("addr")
}

/// A virtual clock reading the given UTC civil time now.
pub fn vclock(at: DateTime) -> (Arc<VirtualClock>, SharedClock) {
    VirtualClock::at_utc(at).shared()
}

/// A mock with a virtual clock at 2026-11-22 09:00 UTC.
pub fn mock(config: MockConfig) -> MockMta {
    let (_h, clock) = vclock(jiff::civil::date(2026, 11, 22).at(9, 0, 0, 0));
    MockMta::new(config, clock)
}

/// Connect an in-memory client to the mock (the session runs in a spawned task).
pub fn connect(mta: &MockMta) -> (Raw<DuplexStream>, tokio::task::JoinHandle<()>) {
    connect_from(mta, peer())
}

pub fn connect_from(
    mta: &MockMta,
    from: SocketAddr,
) -> (Raw<DuplexStream>, tokio::task::JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(256 * 1024);
    let m = mta.clone();
    let h = tokio::spawn(async move { m.serve_stream(server, from).await });
    (Raw::new(client), h)
}

/// Connect, read the greeting, EHLO.
pub async fn ready(mta: &MockMta) -> (Raw<DuplexStream>, tokio::task::JoinHandle<()>) {
    let (mut c, h) = connect(mta);
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO client.example").await.code, 250);
    (c, h)
}

/// A small message with CRLF line ends.
pub fn message(i: usize) -> String {
    format!("From: a@src.example\r\nTo: list@dst.example\r\nSubject: message {i}\r\n\r\nBody of message {i}.\r\n")
}
