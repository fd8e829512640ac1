//! A scripted hostile SMTP relay on 127.0.0.1. It speaks enough SMTP to bring a client
//! to one point of a transaction and then misbehaves there (goes silent, drips, sends garbage or
//! replies that never end, answers DATA wrongly, closes after the final dot). Bounded: every
//! thread stops when the relay is dropped or after [`LIFETIME`], and an endless reply stops at
//! [`ENDLESS_CAP`] bytes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a relay lives.
pub const LIFETIME: Duration = Duration::from_secs(120);
/// The most one endless reply sends.
pub const ENDLESS_CAP: u64 = 256 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Greets, then never answers.
    SilentAfterGreeting,
    /// Answers EHLO and MAIL, then never answers RCPT.
    SilentMidTransaction,
    /// Takes the whole message and its final dot, then never answers.
    SilentAfterData,
    /// From the MAIL reply on, sends every reply one byte per interval.
    Drip(Duration),
    /// Answers MAIL with an HTTP error page.
    Garbage,
    /// Answers RCPT with one reply line of 1 MiB.
    OversizedReply,
    /// Answers RCPT with a reply line that never ends.
    EndlessLine,
    /// Answers RCPT with a multi-line reply that never ends.
    EndlessMultiline,
    /// Answers DATA with 250 instead of 354 (and takes what follows as commands).
    WrongDataReply,
    /// Takes the message and its final dot, then closes without a reply.
    CloseAfterDot,
}

/// What the relay saw and did.
#[derive(Debug, Default, Clone)]
pub struct RelayLog {
    pub connections: u64,
    /// When the script's misbehaviour first began.
    pub trapped_at: Option<Instant>,
    /// Recipients of messages whose final dot arrived (the relay may have kept them).
    pub dot_seen: Vec<String>,
    /// Recipients of messages answered 250 after the dot.
    pub accepted: Vec<String>,
    pub bytes_sent: u64,
}

pub struct HostileRelay {
    pub port: u16,
    log: Arc<Mutex<RelayLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HostileRelay {
    pub fn start(script: Script) -> HostileRelay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(RelayLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (lg, st) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + LIFETIME;
            let mut conns = Vec::new();
            while !st.load(Ordering::SeqCst) && Instant::now() < end {
                match l.accept() {
                    Ok((sock, _)) => {
                        lock(&lg).connections += 1;
                        let (lg, st) = (lg.clone(), st.clone());
                        conns.push(std::thread::spawn(move || {
                            let mut c = Conn {
                                sock,
                                script,
                                log: lg,
                                stop: st,
                                end,
                                buf: Vec::new(),
                                drip: None,
                            };
                            let _ = c.serve();
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            st.store(true, Ordering::SeqCst);
            for c in conns {
                let _ = c.join();
            }
        });
        HostileRelay {
            port,
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn log(&self) -> RelayLog {
        lock(&self.log).clone()
    }

    /// Wait at most `limit` for the misbehaviour to begin.
    pub fn wait_trapped(&self, limit: Duration) -> bool {
        crate::proc::wait_until(limit, || lock(&self.log).trapped_at.is_some())
    }
}

impl Drop for HostileRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(m: &Mutex<RelayLog>) -> std::sync::MutexGuard<'_, RelayLog> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a connection's thread stops.
enum End {
    Closed,
    Stopped,
}

struct Conn {
    sock: TcpStream,
    script: Script,
    log: Arc<Mutex<RelayLog>>,
    stop: Arc<AtomicBool>,
    end: Instant,
    buf: Vec<u8>,
    /// Set once dripping has begun.
    drip: Option<Duration>,
}

impl Conn {
    fn done(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || Instant::now() >= self.end
    }

    fn trap(&self) {
        lock(&self.log).trapped_at.get_or_insert_with(Instant::now);
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), End> {
        match self.drip {
            None => {
                self.sock.write_all(bytes).map_err(|_| End::Closed)?;
                lock(&self.log).bytes_sent += bytes.len() as u64;
            }
            Some(every) => {
                for b in bytes {
                    if self.done() {
                        return Err(End::Stopped);
                    }
                    self.sock
                        .write_all(std::slice::from_ref(b))
                        .map_err(|_| End::Closed)?;
                    lock(&self.log).bytes_sent += 1;
                    std::thread::sleep(every);
                }
            }
        }
        Ok(())
    }

    /// The next line without its CRLF; `Err` at EOF or a stop.
    fn line(&mut self) -> Result<String, End> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let mut l: Vec<u8> = self.buf.drain(..=i).collect();
                l.pop();
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                return Ok(String::from_utf8_lossy(&l).into_owned());
            }
            if self.done() {
                return Err(End::Stopped);
            }
            match self.sock.read(&mut chunk) {
                Ok(0) => return Err(End::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Err(End::Closed),
            }
        }
    }

    /// Say nothing more: read and discard until the client closes or the relay stops.
    fn hold(&mut self) -> Result<(), End> {
        loop {
            self.line()?;
        }
    }

    /// Send `head` once, then `body` again and again: a reply that never ends.
    fn endless(&mut self, head: &[u8], body: &[u8]) -> Result<(), End> {
        self.send(head)?;
        let block: Vec<u8> = body.iter().copied().cycle().take(64 * 1024).collect();
        let mut sent = 0u64;
        while sent < ENDLESS_CAP {
            if self.done() {
                return Err(End::Stopped);
            }
            self.send(&block)?;
            sent += block.len() as u64;
        }
        self.hold()
    }

    fn serve(&mut self) -> Result<(), End> {
        self.sock
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|_| End::Closed)?;
        let _ = self.sock.set_nodelay(true);
        self.send(b"220 hostile.example ESMTP ready\r\n")?;
        if self.script == Script::SilentAfterGreeting {
            self.trap();
            return self.hold();
        }
        let mut rcpts: Vec<String> = Vec::new();
        loop {
            let line = self.line()?;
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                self.send(b"250-hostile.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n")?;
            } else if upper.starts_with("HELO") {
                self.send(b"250 hostile.example\r\n")?;
            } else if upper.starts_with("MAIL FROM:") {
                rcpts.clear();
                match self.script {
                    Script::Garbage => {
                        self.trap();
                        self.send(
                            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n\r\n\
                              <html><body>\x1b[2J\x00not smtp</body></html>\r\n",
                        )?;
                        return self.hold();
                    }
                    Script::Drip(every) => {
                        self.trap();
                        self.drip = Some(every);
                        self.send(b"250 2.1.0 Sender OK\r\n")?;
                    }
                    _ => self.send(b"250 2.1.0 Sender OK\r\n")?,
                }
            } else if upper.starts_with("RCPT TO:") {
                match self.script {
                    Script::SilentMidTransaction => {
                        self.trap();
                        return self.hold();
                    }
                    Script::OversizedReply => {
                        self.trap();
                        let mut r = b"250 ".to_vec();
                        r.resize(1 << 20, b'x');
                        r.extend_from_slice(b"\r\n");
                        self.send(&r)?;
                    }
                    Script::EndlessLine => {
                        self.trap();
                        return self.endless(b"250 ", b"x");
                    }
                    Script::EndlessMultiline => {
                        self.trap();
                        return self.endless(b"", b"250-recipient ok, and more to say\r\n");
                    }
                    _ => {
                        let addr = line
                            .split_once('<')
                            .and_then(|(_, r)| r.split_once('>'))
                            .map(|(a, _)| a.to_string())
                            .unwrap_or_default();
                        rcpts.push(addr);
                        self.send(b"250 2.1.5 Recipient OK\r\n")?;
                    }
                }
            } else if upper == "DATA" {
                if self.script == Script::WrongDataReply {
                    self.trap();
                    self.send(b"250 2.0.0 OK\r\n")?;
                    continue;
                }
                self.send(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n")?;
                while self.line()? != "." {}
                lock(&self.log).dot_seen.extend(rcpts.iter().cloned());
                match self.script {
                    Script::SilentAfterData => {
                        self.trap();
                        return self.hold();
                    }
                    Script::CloseAfterDot => {
                        self.trap();
                        return Err(End::Closed);
                    }
                    _ => {
                        self.send(b"250 2.6.0 Queued mail for delivery\r\n")?;
                        lock(&self.log).accepted.append(&mut rcpts);
                    }
                }
            } else if upper == "RSET" {
                rcpts.clear();
                self.send(b"250 2.0.0 Resetting\r\n")?;
            } else if upper == "NOOP" {
                self.send(b"250 2.0.0 OK\r\n")?;
            } else if upper == "QUIT" {
                self.send(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            } else {
                self.send(b"500 5.3.3 Unrecognized command\r\n")?;
            }
        }
    }
}
