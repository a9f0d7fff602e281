//! Shared helpers for the integration tests: a real `herald` process on an ephemeral loopback port, and
//! clients (tungstenite, the independent implementation, and a raw TCP client for malformed input).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod tls;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// The backend the suite runs herald on: `HERALD_TEST_BACKEND` (`epoll`, the default, or `uring`). The test
/// command runs the integration suite once per backend (see `scripts/test`).
pub fn backend() -> String {
    std::env::var("HERALD_TEST_BACKEND").unwrap_or_else(|_| "epoll".into())
}

/// A herald process started for one test; killed on drop if it is still running.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `herald --listen 127.0.0.1:0 --no-pin --backend <backend()> <args>` (unless `args` name a backend)
    /// and waits for its "listening" line.
    pub fn start(args: &[&str]) -> Server {
        Self::start_lines(args, 1).0
    }

    /// [`Server::start`], returning the first `n` lines herald printed (the listening line, then e.g. the TLS
    /// one).
    pub fn start_lines(args: &[&str], n: usize) -> (Server, Vec<String>) {
        let backend = backend();
        let chosen = if args.contains(&"--backend") { &[][..] } else { &["--backend", backend.as_str()][..] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", "127.0.0.1:0", "--no-pin"])
            .args(chosen)
            .args(args)
            .env("RUST_LOG", std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn herald");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let printed: Vec<String> =
            (0..n).map(|_| lines.next().expect("herald printed too little").expect("read stdout")).collect();
        let line = &printed[0];
        let addr = line
            .strip_prefix("herald listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (Server { child, addr }, printed)
    }

    /// `ws://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped; no memory is involved.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident set size of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// One plain HTTP/1.1 request with `Connection: close`; returns (status, head, body).
    pub fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        raw_exchange(self.addr, &bytes)
    }

    /// The value of a metric series (exact text before the space, e.g. `herald_upgrades_total` or
    /// `herald_close_codes_sent_total{code="1008"}`), summed over workers for gauges.
    pub fn metric(&self, series: &str) -> u64 {
        let (_, _, body) = self.http("GET", "/metrics", &[], b"");
        let text = String::from_utf8(body).expect("metrics are UTF-8");
        let mut total = 0;
        let mut found = false;
        for line in text.lines() {
            let (name, value) = match line.rsplit_once(' ') {
                Some(p) => p,
                None => continue,
            };
            let matches = name == series || (name.starts_with(series) && name[series.len()..].starts_with("{worker="));
            if matches {
                total += value.parse::<u64>().expect("numeric metric");
                found = true;
            }
        }
        assert!(found, "metric {series} not found in:\n{text}");
        total
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `request` on a fresh connection and reads the response until the server closes (or 5 s pass).
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(request).expect("write request");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

/// Reads from `s` until a whole response head has arrived (or the server closes or times out); a 101 leaves
/// the connection open, so reading to EOF would wait.
pub fn read_head<S: Read>(s: &mut S) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// Splits an HTTP response into (status, head, body).
pub fn parse_response(buf: &[u8]) -> (u16, String, Vec<u8>) {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    (status, head, buf[end + 4..].to_vec())
}

/// A tungstenite client over a blocking TCP stream with a read timeout.
pub type Client = WebSocket<TcpStream>;

/// Connects a tungstenite client to `url` (a `ws://` URL on the test server).
pub fn connect(url: &str) -> Client {
    let addr = url.trim_start_matches("ws://").split('/').next().expect("host");
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    let (ws, _resp) = tungstenite::client(url, stream).expect("handshake");
    ws
}

/// Reads the next data message (text or binary), answering pings on the way.
pub fn next_data<S: Read + Write>(ws: &mut WebSocket<S>) -> Message {
    loop {
        match ws.read().expect("read") {
            m @ (Message::Text(_) | Message::Binary(_)) => return m,
            _ => continue,
        }
    }
}

/// Reads until the server's close frame; returns its code and reason.
pub fn expect_close(ws: &mut Client) -> (CloseCode, String) {
    let addrs = format!("client {:?} -> {:?}", ws.get_ref().local_addr(), ws.get_ref().peer_addr());
    expect_close_on(ws, &addrs)
}

/// [`expect_close`] on any stream (`about` names the connection in the failure message).
pub fn expect_close_on<S: Read + Write>(ws: &mut WebSocket<S>, about: &str) -> (CloseCode, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return (frame.code, frame.reason.to_string()),
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got error {e} ({about})"),
        }
    }
}

/// A raw TCP client that has completed the upgrade by hand, for sending malformed frames.
pub struct RawWs {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades on `path` with a fixed key and checks the 101.
    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).expect("write");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = stream.read(&mut chunk).expect("read 101");
            assert!(n > 0, "closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        assert!(buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf));
        let rest = buf.split_off(end);
        RawWs { stream, buf: rest }
    }

    /// Sends one client frame with the given first byte, payload and a fixed mask (or unmasked).
    pub fn send_frame(&mut self, b0: u8, payload: &[u8], masked: bool) {
        let mut f = vec![b0];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n <= 0xFFFF => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = [0x12, 0x34, 0x56, 0x78];
        if masked {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.stream.write_all(&f).expect("write frame");
    }

    /// Reads one server frame: (first byte, payload). Panics on EOF or timeout.
    pub fn read_frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                let len7 = (self.buf[1] & 0x7F) as usize;
                let (len, hdr) = match len7 {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    n if n < 126 => (n, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= hdr + len {
                    let b0 = self.buf[0];
                    let payload = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    return (b0, payload);
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("read frame");
            assert!(n > 0, "connection closed while waiting for a frame");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a close frame; returns its code (None for an empty close).
    pub fn read_close_code(&mut self) -> Option<u16> {
        loop {
            let (b0, payload) = self.read_frame();
            if b0 == 0x88 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }

    /// Whether the server closed the TCP connection within `timeout` (reads and discards until EOF).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).expect("timeout");
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }
}

// Helpers for broadcast, JSON protocol, backpressure, shutdown and metrics tests.

impl Server {
    /// The whole `/metrics` text (one scrape on a fresh connection).
    pub fn metrics_text(&self) -> String {
        let (status, _, body) = self.http("GET", "/metrics", &[], b"");
        assert_eq!(status, 200, "GET /metrics");
        String::from_utf8(body).expect("metrics are UTF-8")
    }

    /// Polls [`Server::metric`] until it equals `expected` or `timeout` passes, and returns the last value seen.
    /// (A scrape sees other workers' values as of their last loop turn, so a fresh count may lag a little.)
    pub fn wait_metric(&self, series: &str, expected: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(series);
            if value == expected || Instant::now() >= deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident set size of the process so far, in KiB (VmHWM from /proc).
    pub fn rss_peak_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

/// Calls `ready` every 5 ms until it returns true or `timeout` passes; returns its last answer.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One complete client frame with first byte `b0` (FIN and opcode), its payload masked with `key`
/// (RFC 6455 5.3), eight bytes at a time so that volume tests are not bound by the client.
pub fn client_frame(b0: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(b0);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    let start = f.len();
    f.extend_from_slice(payload);
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = f[start..].chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    f
}

/// Reads whole server frames from an upgraded raw connection through one reusable buffer (for volume tests;
/// [`RawWs::read_frame`] is simpler but copies its buffer on every frame). Errors (timeout, EOF, reset) are
/// returned, not panicked on.
pub struct FrameReader {
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    /// Takes over an upgraded connection, with whatever it had already buffered.
    pub fn new(ws: RawWs) -> FrameReader {
        let end = ws.buf.len();
        let mut buf = ws.buf;
        buf.resize(end.max(256 * 1024), 0);
        FrameReader { stream: ws.stream, buf, start: 0, end }
    }

    fn need(&mut self, n: usize) -> std::io::Result<()> {
        while self.end - self.start < n {
            if self.buf.len() - self.start < n || self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < n {
                    self.buf.resize(n, 0);
                }
            }
            let got = self.stream.read(&mut self.buf[self.end..])?;
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.end += got;
        }
        Ok(())
    }

    /// The next frame: (first byte, payload).
    pub fn next_frame(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        self.need(2)?;
        let b0 = self.buf[self.start];
        let len7 = (self.buf[self.start + 1] & 0x7F) as usize;
        let (hdr, len) = match len7 {
            126 => {
                self.need(4)?;
                (4, u16::from_be_bytes([self.buf[self.start + 2], self.buf[self.start + 3]]) as usize)
            }
            127 => {
                self.need(10)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[self.start + 2..self.start + 10]);
                (10, u64::from_be_bytes(b) as usize)
            }
            n => (2, n),
        };
        self.need(hdr + len)?;
        let payload = self.buf[self.start + hdr..self.start + hdr + len].to_vec();
        self.start += hdr + len;
        Ok((b0, payload))
    }
}

/// A keep-alive HTTP/1.1 connection: every request on it is served by the same worker, in order.
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    /// Connects to `addr`.
    pub fn open(addr: SocketAddr) -> HttpConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        HttpConn { stream, buf: Vec::new() }
    }

    /// Sends one request (keeping the connection open) and reads its response by `Content-Length`:
    /// (status, head, body). Panics if the connection fails.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        self.try_request(method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// [`HttpConn::request`], returning an error when the connection is closed, reset or times out.
    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, String, Vec<u8>)> {
        let closed = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes)?;
        let mut chunk = [0u8; 16384];
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(closed());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end - 4]).to_string();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
            })
            .expect("Content-Length in response");
        while self.buf.len() < head_end + len {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(closed());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Ok((status, head, body))
    }
}
