//! `latency-proxy`: a TCP proxy on 127.0.0.1 that delays every byte by a fixed one-way delay in
//! each direction, so that `cargo xtask bench` can measure every peer (smtp-source, smtpw, the
//! Postfix relay client) over the same round-trip time on a kernel without `netem`.
//!
//! ```text
//! latency-proxy --target 127.0.0.1:PORT --rtt-ms 10 [--listen 127.0.0.1:0] [--for-secs 900]
//! ```
//!
//! It prints the port it listens on (one line), then, for each accepted connection, connects to
//! the target and relays both directions:
//!
//! - every chunk read from one side is written to the other side no earlier than its read time
//!   plus half the RTT (a thread per direction sleeps until each chunk is due; chunks already due
//!   when it wakes are written together), in order;
//! - the connection to the target is made 1.5 RTT after the accept, so that the server's greeting
//!   reaches the client 2 RTT after its `connect()`, as over a real network (SYN, SYN-ACK, ACK,
//!   then the greeting; the kernel completes the client's own handshake at once);
//! - at most [`LIMIT`] bytes wait per direction and connection: a full pipe stops reading, so a
//!   fast sender is held back by TCP flow control instead of growing the proxy's memory;
//! - a half-close (EOF) is passed on after the same delay; an error closes the connection.
//!
//! It stops by itself: when its standard input closes (the parent that holds the pipe exited)
//! or after `--for-secs` (default 900).
//!
//! Why a process of its own rather than a thread of the xtask: it runs the release build (the
//! xtask is a debug build), its scheduling and CPU are apart from the harness that times the
//! runs, and it is one and the same program in front of every peer. Why threads rather than
//! tokio: tokio's timer rounds every sleep up to the next millisecond, which would turn a 1 ms
//! RTT into about 2 ms; `thread::sleep` (nanosleep) is precise to tens of microseconds.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes that may wait in the proxy per direction and connection (plus one read).
const LIMIT: usize = 4 << 20;
/// The largest single read.
const READ: usize = 64 << 10;

/// How the proxy delays.
#[derive(Clone, Copy, Debug)]
struct Config {
    target: SocketAddr,
    /// Half the round-trip time.
    one_way: Duration,
    /// Bytes waiting per direction before reading stops.
    limit: usize,
}

impl Config {
    fn new(target: SocketAddr, rtt: Duration) -> Self {
        Config {
            target,
            one_way: rtt / 2,
            limit: LIMIT,
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: latency-proxy --target HOST:PORT --rtt-ms MS [--listen 127.0.0.1:0] [--for-secs N]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut listen, mut target, mut rtt, mut life) = (
        "127.0.0.1:0".to_string(),
        None,
        None,
        Duration::from_secs(900),
    );
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let Some(v) = it.next() else {
            return usage();
        };
        match k.as_str() {
            "--listen" => listen = v.clone(),
            "--target" => target = v.parse::<SocketAddr>().ok(),
            "--rtt-ms" => {
                rtt = v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0 && *x < 60_000.0)
                    .map(|ms| Duration::from_secs_f64(ms / 1000.0));
            }
            "--for-secs" => match v.parse() {
                Ok(s) => life = Duration::from_secs(s),
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
    let (Some(target), Some(rtt)) = (target, rtt) else {
        return usage();
    };
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("latency-proxy: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    let port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => {
            eprintln!("latency-proxy: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{port}");
    let _ = std::io::stdout().flush();
    // Stop when the parent lets go of our stdin, or at the end of our life at the latest.
    std::thread::spawn(|| {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    std::thread::spawn(move || {
        std::thread::sleep(life);
        eprintln!("latency-proxy: stopping after {} s", life.as_secs());
        std::process::exit(0);
    });
    accept_loop(listener, Config::new(target, rtt));
    ExitCode::SUCCESS
}

fn accept_loop(listener: TcpListener, cfg: Config) {
    for conn in listener.incoming() {
        match conn {
            Ok(c) => {
                let accepted = Instant::now();
                std::thread::spawn(move || connection(c, accepted, cfg));
            }
            Err(e) => eprintln!("latency-proxy: accept: {e}"),
        }
    }
}

/// Relay one accepted connection through the delay, both ways.
fn connection(client: TcpStream, accepted: Instant, cfg: Config) {
    // The handshake a real network would cost before the server sees the connection.
    sleep_until(accepted + 3 * cfg.one_way);
    let server = match TcpStream::connect(cfg.target) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("latency-proxy: cannot connect to {}: {e}", cfg.target);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || pump(c2, s2, cfg));
    pump(server, client, cfg);
    let _ = up.join();
}

/// Chunks read and not yet written, in read order.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    /// The reader saw EOF or an error.
    eof: bool,
    /// The writer cannot write any more.
    broken: bool,
}

#[derive(Default)]
struct Pipe {
    q: Mutex<Queue>,
    cv: Condvar,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn wait<'a>(&self, g: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        self.cv.wait(g).unwrap_or_else(|p| p.into_inner())
    }
}

/// One direction: a reader thread stamps each chunk with its due time, this thread writes it then.
fn pump(from: TcpStream, to: TcpStream, cfg: Config) {
    let pipe = Arc::new(Pipe::default());
    let Ok(from2) = from.try_clone() else {
        return;
    };
    let reader = {
        let pipe = pipe.clone();
        std::thread::spawn(move || read_side(from2, &pipe, cfg))
    };
    write_side(&to, &pipe);
    // The writer is done (EOF passed on, or the other side is gone): unblock the reader.
    if pipe.lock().broken {
        let _ = from.shutdown(Shutdown::Read);
    }
    let _ = reader.join();
}

fn read_side(mut from: TcpStream, pipe: &Pipe, cfg: Config) {
    let mut buf = vec![0u8; READ];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let due = Instant::now() + cfg.one_way;
        let mut q = pipe.lock();
        if n == 0 {
            q.eof = true;
            pipe.cv.notify_all();
            return;
        }
        // Bounded: wait for the writer to drain (a lone chunk may always wait).
        while q.bytes > 0 && q.bytes + n > cfg.limit && !q.broken {
            q = pipe.wait(q);
        }
        if q.broken {
            return;
        }
        q.chunks.push_back((due, buf[..n].to_vec()));
        q.bytes += n;
        pipe.cv.notify_all();
    }
}

fn write_side(mut to: &TcpStream, pipe: &Pipe) {
    let mut out = Vec::with_capacity(READ);
    loop {
        let due = {
            let mut q = pipe.lock();
            loop {
                if let Some((due, _)) = q.chunks.front() {
                    break *due;
                }
                if q.eof {
                    drop(q);
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                q = pipe.wait(q);
            }
        };
        sleep_until(due);
        out.clear();
        {
            let mut q = pipe.lock();
            let now = Instant::now();
            while let Some((d, _)) = q.chunks.front() {
                if *d > now {
                    break;
                }
                if let Some((_, c)) = q.chunks.pop_front() {
                    q.bytes -= c.len();
                    out.extend_from_slice(&c);
                }
            }
            pipe.cv.notify_all();
        }
        if to.write_all(&out).is_err() {
            let mut q = pipe.lock();
            q.broken = true;
            pipe.cv.notify_all();
            return;
        }
    }
}

fn sleep_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        std::thread::sleep(t - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proxy with `rtt` (and `limit`) in front of `target`; returns its address.
    fn proxy(target: SocketAddr, rtt: Duration, limit: usize) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut cfg = Config::new(target, rtt);
        cfg.limit = limit;
        std::thread::spawn(move || accept_loop(l, cfg));
        addr
    }

    /// A server that sends `greeting`, then echoes everything back, recording when each read
    /// arrived (relative to its accept) on `arrivals`.
    fn echo_server(
        greeting: &'static [u8],
    ) -> (SocketAddr, std::sync::mpsc::Receiver<(Instant, usize)>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(greeting).unwrap();
            let mut buf = vec![0u8; 8192];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let _ = tx.send((Instant::now(), n));
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        (addr, rx)
    }

    fn read_exact_timed(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.read_exact(&mut v).unwrap();
        v
    }

    #[test]
    fn bytes_arrive_intact_in_order_and_not_before_the_delay() {
        let rtt = Duration::from_millis(40);
        let (target, arrivals) = echo_server(b"220 hi\r\n");
        let addr = proxy(target, rtt, LIMIT);
        let t0 = Instant::now();
        let mut c = TcpStream::connect(addr).unwrap();
        // The greeting: 1.5 RTT for the handshake, then half an RTT on the way back.
        assert_eq!(read_exact_timed(&mut c, 8), b"220 hi\r\n");
        let greeted = t0.elapsed();
        assert!(
            greeted >= 2 * rtt,
            "greeting after {greeted:?}, before 2 RTT"
        );
        assert!(greeted < 2 * rtt + Duration::from_secs(2), "{greeted:?}");

        // One small write: the server sees it no sooner than half the RTT, the echo no sooner
        // than a whole RTT.
        let sent = Instant::now();
        c.write_all(b"EHLO x\r\n").unwrap();
        assert_eq!(read_exact_timed(&mut c, 8), b"EHLO x\r\n");
        let rt = sent.elapsed();
        let (arrived, n) = arrivals.recv().unwrap();
        assert_eq!(n, 8);
        let one_way = arrived - sent;
        assert!(one_way >= rtt / 2, "arrived after {one_way:?}");
        assert!(rt >= rtt, "echo after {rt:?}, less than the RTT");
        assert!(rt < rtt + Duration::from_secs(2), "echo after {rt:?}");

        // 2 MB in writes of odd sizes, echoed back: intact and in order.
        let data: Vec<u8> = (0..2_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut w = c.try_clone().unwrap();
        let d2 = data.clone();
        let writer = std::thread::spawn(move || {
            for (i, chunk) in d2.chunks(7919).enumerate() {
                w.write_all(chunk).unwrap();
                if i % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let back = read_exact_timed(&mut c, data.len());
        writer.join().unwrap();
        assert!(back == data, "the echoed bytes differ from those sent");
    }

    #[test]
    fn round_trips_cost_the_rtt_each_and_no_more() {
        // Ten request/response round trips at 20 ms RTT: about 200 ms, never less.
        let rtt = Duration::from_millis(20);
        let (target, _arrivals) = echo_server(b"");
        let addr = proxy(target, rtt, LIMIT);
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"x").unwrap();
        read_exact_timed(&mut c, 1); // past the handshake
        let t = Instant::now();
        for _ in 0..10 {
            c.write_all(b"ping").unwrap();
            assert_eq!(read_exact_timed(&mut c, 4), b"ping");
        }
        let took = t.elapsed();
        assert!(took >= 10 * rtt, "10 round trips in {took:?}");
        // Generous for a loaded machine, but far below what a second delay per trip would give.
        assert!(took < 10 * rtt + Duration::from_millis(180), "{took:?}");
    }

    #[test]
    fn a_target_that_does_not_read_holds_the_sender_back() {
        // The target accepts and never reads: what the sender can write is bounded by the
        // proxy's limit plus the kernel's socket buffers, not by its memory.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = l.local_addr().unwrap();
        let hold = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_secs(3));
            drop(s);
        });
        let limit = 256 << 10;
        let addr = proxy(target, Duration::from_millis(2), limit);
        let c = TcpStream::connect(addr).unwrap();
        c.set_write_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        let chunk = vec![b'x'; 64 << 10];
        let mut written = 0usize;
        let mut w = &c;
        while written < (256 << 20) {
            match w.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        // Loopback socket buffers are at most a few MB each way (tcp_wmem/tcp_rmem maxima).
        assert!(
            written < 48 << 20,
            "{written} bytes accepted: the proxy does not hold the sender back"
        );
        hold.join().unwrap();
    }
}
