//! The soak test's side traffic, on plain blocking `std::net` sockets, one thread per kind: connection churn,
//! slow consumers and bad handshakes. None of it is in the fan-out's delivery accounting; each kind counts
//! what happened to it in [`SideStats`].
//!
//! - churn: a client connects, subscribes (to a loaded topic, or a topic of its own that no one else uses, so
//!   that the server must forget it again), and leaves: with a close handshake, a FIN after the upgrade, a FIN
//!   half-way through the upgrade request, or an RST (`SO_LINGER` 0).
//! - slow consumers: `/ws` connections subscribed to every loaded topic (so that their backlog grows fast)
//!   with a 4 KiB receive buffer, that read nothing (stalled) or a trickle for `stall`, then drain what is
//!   left: if the server closed them meanwhile, its slow-consumer policy acted. Then they reconnect.
//! - bad handshakes: garbage bytes, a wrong `Sec-WebSocket-Version`, a head over herald's `max_request_head`,
//!   an unknown path; each answer is counted by HTTP status (or as a silent close, or no answer).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use herald::protocol::frame::{write_masked_frame, OpCode};

use crate::client::{Handshake, HandshakeProgress};

/// Longest wait for any one answer from the server.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer of a slow consumer's socket.
const SLOW_RCVBUF: usize = 4096;

/// What the side traffic is and where it goes.
#[derive(Debug, Clone)]
pub struct SidePlan {
    /// The server.
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// The loaded topics' names.
    pub topics: Vec<String>,
    /// Prefix for the churn clients' own topics.
    pub topic_prefix: String,
    /// Churn connections per second.
    pub churn_rate: f64,
    /// Slow consumers kept connected.
    pub slow: usize,
    /// How long a slow consumer lags before it drains and reconnects.
    pub slow_stall: Duration,
    /// Bytes per second a reading slow consumer reads (the other half read nothing).
    pub slow_read_rate: usize,
    /// Bad handshakes per second.
    pub bad_rate: f64,
}

/// Counters of the side traffic, shared with the main thread.
#[derive(Debug, Default)]
pub struct SideStats {
    /// Churn clients that left with a close handshake / FIN after the upgrade / FIN mid-request / RST.
    pub churn_clean: AtomicU64,
    /// FIN after the upgrade.
    pub churn_fin: AtomicU64,
    /// FIN in the middle of the upgrade request.
    pub churn_fin_mid_request: AtomicU64,
    /// RST.
    pub churn_rst: AtomicU64,
    /// Churn clients whose upgrade failed (refused, error status, timeout).
    pub churn_failed: AtomicU64,
    /// Slow-consumer sessions ended.
    pub slow_sessions: AtomicU64,
    /// ... of which the server had closed (its slow-consumer policy).
    pub slow_closed_by_server: AtomicU64,
    /// Slow consumers that could not connect.
    pub slow_failed: AtomicU64,
    /// Bytes the slow consumers read.
    pub slow_bytes: AtomicU64,
    /// Bad handshakes sent.
    pub bad_sent: AtomicU64,
    /// Answers to bad handshakes, by HTTP status (0: closed without an answer; 1: no answer in time).
    pub bad_answers: Mutex<BTreeMap<u16, u64>>,
}

/// A copy of [`SideStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SideSnapshot {
    /// Churn clients that left with a close handshake.
    pub churn_clean: u64,
    /// ... with a FIN after the upgrade.
    pub churn_fin: u64,
    /// ... with a FIN in the middle of the upgrade request.
    pub churn_fin_mid_request: u64,
    /// ... with an RST.
    pub churn_rst: u64,
    /// Churn upgrades that failed.
    pub churn_failed: u64,
    /// Slow-consumer sessions ended.
    pub slow_sessions: u64,
    /// ... closed by the server.
    pub slow_closed_by_server: u64,
    /// Slow consumers that could not connect.
    pub slow_failed: u64,
    /// Bytes read by slow consumers.
    pub slow_bytes: u64,
    /// Bad handshakes sent.
    pub bad_sent: u64,
    /// Answers to them by HTTP status ("closed": no answer before the close; "timeout": none in time).
    pub bad_answers: BTreeMap<String, u64>,
}

impl SideStats {
    /// The counters now.
    pub fn snapshot(&self) -> SideSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let answers = match self.bad_answers.lock() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        SideSnapshot {
            churn_clean: get(&self.churn_clean),
            churn_fin: get(&self.churn_fin),
            churn_fin_mid_request: get(&self.churn_fin_mid_request),
            churn_rst: get(&self.churn_rst),
            churn_failed: get(&self.churn_failed),
            slow_sessions: get(&self.slow_sessions),
            slow_closed_by_server: get(&self.slow_closed_by_server),
            slow_failed: get(&self.slow_failed),
            slow_bytes: get(&self.slow_bytes),
            bad_sent: get(&self.bad_sent),
            bad_answers: answers
                .into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        0 => "closed".to_owned(),
                        1 => "timeout".to_owned(),
                        s => s.to_string(),
                    };
                    (key, v)
                })
                .collect(),
        }
    }

    fn answer(&self, status: u16) {
        let mut map = match self.bad_answers.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        *map.entry(status).or_insert(0) += 1;
    }
}

impl SideSnapshot {
    /// Churn clients that completed, any way.
    pub fn churned(&self) -> u64 {
        self.churn_clean + self.churn_fin + self.churn_fin_mid_request + self.churn_rst
    }
}

/// The running side-traffic threads.
pub struct Side {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    /// Their counters.
    pub stats: Arc<SideStats>,
}

impl Side {
    /// Starts the threads (a kind with a zero rate or count gets none).
    pub fn start(plan: &SidePlan) -> io::Result<Side> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(SideStats::default());
        let mut handles = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| std::thread::Builder::new().name(name.into()).spawn(f);
        if plan.churn_rate > 0.0 {
            let (p, s, st) = (plan.clone(), stats.clone(), stop.clone());
            handles.push(spawn("soak-churn", Box::new(move || churn(&p, &s, &st)))?);
        }
        if plan.slow > 0 {
            let (p, s, st) = (plan.clone(), stats.clone(), stop.clone());
            handles.push(spawn("soak-slow", Box::new(move || slow(&p, &s, &st)))?);
        }
        if plan.bad_rate > 0.0 {
            let (p, s, st) = (plan.clone(), stats.clone(), stop.clone());
            handles.push(spawn("soak-bad", Box::new(move || bad(&p, &s, &st)))?);
        }
        Ok(Side { stop, handles, stats })
    }

    /// Stops the threads and waits for them (each finishes its current client first).
    pub fn stop(self) -> SideSnapshot {
        self.stop.store(true, Ordering::Release);
        for h in self.handles {
            let _ = h.join();
        }
        self.stats.snapshot()
    }
}

/// Sleeps until `at`, in short steps so that `stop` is seen; false when stopped.
fn pace(at: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        std::thread::sleep((at - now).min(Duration::from_millis(50)));
    }
}

/// A blocking connection with the soak's timeouts.
fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    sock.set_nodelay(true)?;
    Ok(sock)
}

/// Runs the upgrade to `path` on a blocking socket; `Ok(())` once the server answered 101.
fn upgrade(sock: &mut TcpStream, host: &str, path: &str, nonce: u64) -> io::Result<()> {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&nonce.to_le_bytes());
    let mut hs = Handshake::new(host, path, key, &[]);
    let failed = |f| io::Error::other(format!("upgrade failed: {f:?}"));
    while !hs.write_request(sock).map_err(failed)? {}
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match hs.read_response(sock).map_err(failed)? {
            HandshakeProgress::Open(_) => return Ok(()),
            HandshakeProgress::Pending if Instant::now() < deadline => {}
            HandshakeProgress::Pending => return Err(io::ErrorKind::TimedOut.into()),
        }
    }
}

/// Reads until EOF, an error or the timeout; returns the bytes read and whether it ended in EOF or a reset
/// (the server closed).
fn drain(sock: &mut TcpStream, timeout: Duration) -> (u64, bool) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64 * 1024];
    let mut total = 0;
    while Instant::now() < deadline {
        match sock.read(&mut buf) {
            Ok(0) => return (total, true),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => return (total, true),
        }
    }
    (total, false)
}

/// A masked close frame with status 1000 (the mask is all zero: the payload goes as is).
const CLOSE_FRAME: [u8; 8] = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8];

/// Connection churn: one client after another at `churn_rate`, cycling through the ways to leave.
fn churn(plan: &SidePlan, stats: &SideStats, stop: &AtomicBool) {
    let every = Duration::from_secs_f64(1.0 / plan.churn_rate);
    let mut next = Instant::now();
    for i in 0u64.. {
        if !pace(next, stop) {
            return;
        }
        next += every;
        // Four clients in a row (one of each way to leave) join loaded topics, the next four topics of their own.
        let topic = if (i / 4) % 2 == 0 {
            plan.topics[(i / 2) as usize % plan.topics.len()].clone()
        } else {
            format!("{}churn-{i}", plan.topic_prefix)
        };
        let path = format!("/sub/{topic}");
        let Ok(mut sock) = connect(plan.addr) else {
            stats.churn_failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if i % 4 == 2 {
            // FIN half-way through the request: the server must drop the half-read head.
            let mut hs = Vec::new();
            herald::protocol::handshake::write_client_request(
                &mut hs,
                &plan.host,
                &path,
                &herald::protocol::handshake::client_key([7; 16]),
                &[],
            );
            let _ = sock.write_all(&hs[..hs.len() / 2]);
            let _ = sock.shutdown(Shutdown::Write);
            drain(&mut sock, IO_TIMEOUT);
            stats.churn_fin_mid_request.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if upgrade(&mut sock, &plan.host, &path, i).is_err() {
            stats.churn_failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Stay subscribed for a moment, so that deliveries reach it.
        std::thread::sleep(Duration::from_millis(20));
        match i % 4 {
            0 => {
                let _ = sock.write_all(&CLOSE_FRAME);
                drain(&mut sock, IO_TIMEOUT);
                stats.churn_clean.fetch_add(1, Ordering::Relaxed);
            }
            1 => {
                let _ = sock.shutdown(Shutdown::Write);
                drain(&mut sock, IO_TIMEOUT);
                stats.churn_fin.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                // SO_LINGER 0: close sends an RST.
                let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
                drop(sock);
                stats.churn_rst.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One slow consumer's connection and schedule.
struct SlowConn {
    sock: TcpStream,
    /// Reads a trickle (else nothing) until `until`.
    reads: bool,
    until: Instant,
}

/// Opens a slow consumer of every loaded topic (on `/ws`) with a small receive buffer.
fn open_slow(plan: &SidePlan, nonce: u64) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(plan.addr), Type::STREAM, Some(Protocol::TCP))?;
    // Before connect, so that the window never grows past it.
    socket.set_recv_buffer_size(SLOW_RCVBUF)?;
    socket.connect_timeout(&plan.addr.into(), IO_TIMEOUT)?;
    let mut sock: TcpStream = socket.into();
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    upgrade(&mut sock, &plan.host, "/ws", nonce)?;
    let mut requests = Vec::new();
    for (i, topic) in plan.topics.iter().enumerate() {
        let request = format!(r#"{{"type":"subscribe","topic":"{topic}","id":{i}}}"#);
        write_masked_frame(&mut requests, true, OpCode::Text, request.as_bytes(), [1, 2, 3, 4]);
    }
    sock.write_all(&requests)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Slow consumers: `slow` of them, half stalled, half trickling; each lags for `slow_stall`, then drains,
/// counts whether the server had closed it, and reconnects. Staggered so that they do not all end at once.
fn slow(plan: &SidePlan, stats: &SideStats, stop: &AtomicBool) {
    let tick = Duration::from_millis(100);
    let per_tick = (plan.slow_read_rate / 10).max(1);
    let mut conns: Vec<Option<SlowConn>> = (0..plan.slow).map(|_| None).collect();
    let mut nonce = 0u64;
    let mut buf = vec![0u8; per_tick];
    let start = Instant::now();
    let mut next = start;
    while pace(next, stop) {
        next += tick;
        let now = Instant::now();
        for (i, slot) in conns.iter_mut().enumerate() {
            match slot {
                None => {
                    // Stagger the first openings over one stall period.
                    if now < start + plan.slow_stall.mul_f64(i as f64 / plan.slow as f64) {
                        continue;
                    }
                    nonce += 1;
                    match open_slow(plan, nonce) {
                        Ok(sock) => *slot = Some(SlowConn { sock, reads: i % 2 == 1, until: now + plan.slow_stall }),
                        Err(_) => {
                            stats.slow_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Some(c) if now >= c.until => {
                    let closed = c.sock.set_nonblocking(false).is_err() || {
                        let (n, closed) = drain(&mut c.sock, Duration::from_secs(1));
                        stats.slow_bytes.fetch_add(n, Ordering::Relaxed);
                        closed
                    };
                    stats.slow_sessions.fetch_add(1, Ordering::Relaxed);
                    if closed {
                        stats.slow_closed_by_server.fetch_add(1, Ordering::Relaxed);
                    }
                    *slot = None;
                }
                Some(c) if c.reads => match c.sock.read(&mut buf) {
                    // The server closed it: count it now.
                    Ok(0) => c.until = now,
                    Ok(n) => {
                        stats.slow_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => c.until = now,
                },
                Some(_) => {}
            }
        }
    }
}

/// The kinds of bad handshake, in turn.
fn bad_request(kind: u64, host: &str, n: u64) -> Vec<u8> {
    let key = herald::protocol::handshake::client_key([9; 16]);
    match kind % 4 {
        // Not HTTP at all (a TLS ClientHello's first bytes, then noise).
        0 => {
            let mut v = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
            v.extend((0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
            v.extend_from_slice(b"\r\n\r\n");
            v
        }
        // A version herald does not speak.
        1 => format!(
            "GET /sub/soak-bad HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 8\r\n\r\n"
        )
        .into_bytes(),
        // A head far over max_request_head (8 KiB by default).
        2 => {
            let filler = "x".repeat(32 * 1024);
            format!(
                "GET /sub/soak-bad HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 X-Filler: {filler}\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .into_bytes()
        }
        // A path nothing serves.
        _ => format!(
            "GET /no/such/path-{n} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes(),
    }
}

/// The status of an HTTP response's first line.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// Bad handshakes at `bad_rate`, each answered (or not) within the timeout.
fn bad(plan: &SidePlan, stats: &SideStats, stop: &AtomicBool) {
    let every = Duration::from_secs_f64(1.0 / plan.bad_rate);
    let mut next = Instant::now();
    for i in 0u64.. {
        if !pace(next, stop) {
            return;
        }
        next += every;
        let Ok(mut sock) = connect(plan.addr) else {
            stats.answer(0);
            continue;
        };
        stats.bad_sent.fetch_add(1, Ordering::Relaxed);
        // The server may answer and close before the whole request is written: that is fine.
        let _ = sock.write_all(&bad_request(i, &plan.host, i));
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + IO_TIMEOUT;
        let status = loop {
            if let Some(s) = status_of(&head).filter(|_| head.contains(&b'\n')) {
                break s;
            }
            if Instant::now() >= deadline {
                break 1;
            }
            match sock.read(&mut buf) {
                Ok(0) => break 0,
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break 1,
                Err(_) => break 0,
            }
        };
        stats.answer(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_is_parsed_and_garbage_is_not() {
        assert_eq!(status_of(b"HTTP/1.1 426 Upgrade Required\r\n"), Some(426));
        assert_eq!(status_of(b"HTTP/1.1 404"), Some(404));
        assert_eq!(status_of(b"\x15\x03\x01"), None);
    }

    #[test]
    fn bad_requests_cover_the_four_kinds() {
        let reqs: Vec<Vec<u8>> = (0..4).map(|k| bad_request(k, "h:1", 5)).collect();
        assert_eq!(reqs[0][0], 0x16, "garbage first");
        assert!(String::from_utf8_lossy(&reqs[1]).contains("Sec-WebSocket-Version: 8"));
        assert!(reqs[2].len() > 32 * 1024, "oversized head");
        assert!(String::from_utf8_lossy(&reqs[3]).starts_with("GET /no/such/path-5 "));
    }
}
