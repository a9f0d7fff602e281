//! One client connection's setup: a non-blocking connect from a chosen source address, then the opening
//! handshake through herald's sans-IO core ([`herald::protocol::handshake`]), and the classification of
//! whatever goes wrong into a [`Failure`].
//!
//! No event loop here: the engine owns the sockets' registration and calls in when a socket is ready.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use herald::protocol::handshake::{client_key, parse_response, write_client_request, HandshakeError};
use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::stats::Failure;
use crate::sys;

/// Largest response head accepted from a server.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Classifies a socket (or, for `wss://`, TLS) error.
pub fn classify_io(e: &io::Error) -> Failure {
    if let Some(failure) = crate::tls::classify(e) {
        return failure;
    }
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Failure::Refused,
        Some(libc::ETIMEDOUT) => Failure::Timeout,
        Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => Failure::AddrUnavailable,
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => Failure::Reset,
        _ => Failure::Io,
    }
}

/// Opens non-blocking TCP connections to one address, spreading them over source addresses round robin.
#[derive(Debug)]
pub struct Dialer {
    addr: SocketAddr,
    sources: Vec<IpAddr>,
    next: usize,
    rx_timestamps: bool,
}

impl Dialer {
    /// A dialer to `addr`; with `sources`, each connection binds the next source address first (port 0, with
    /// `IP_BIND_ADDRESS_NO_PORT` so the kernel picks the port at connect time).
    /// With `rx_timestamps`, each socket asks for kernel receive timestamps (`SO_TIMESTAMPNS`).
    pub fn new(addr: SocketAddr, sources: Vec<IpAddr>, offset: usize, rx_timestamps: bool) -> Dialer {
        let next = if sources.is_empty() { 0 } else { offset % sources.len() };
        Dialer { addr, sources, next, rx_timestamps }
    }

    /// Starts a connection; it completes (or fails) when the socket becomes writable.
    pub fn dial(&mut self) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(self.addr), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
        socket.set_nodelay(true)?;
        if self.rx_timestamps {
            sys::enable_rx_timestamps(socket.as_raw_fd())?;
        }
        if !self.sources.is_empty() {
            let ip = self.sources[self.next];
            self.next = (self.next + 1) % self.sources.len();
            if ip.is_ipv4() {
                // Best effort: without it, binding still works but uses up ports sooner.
                let _ = sys::set_bind_address_no_port(socket.as_raw_fd());
            }
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match socket.connect(&self.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(socket.into()))
    }
}

/// Whether a connect in progress has finished: `Ok(true)` connected, `Ok(false)` not yet, `Err` failed.
pub fn connect_result(stream: &TcpStream) -> Result<bool, Failure> {
    if let Some(e) = stream.take_error().map_err(|e| classify_io(&e))? {
        return Err(classify_io(&e));
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected || e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(classify_io(&e)),
    }
}

/// The client side of the opening handshake for one connection: the request to send, and the response
/// read so far.
#[derive(Debug)]
pub struct Handshake {
    key: String,
    request: Vec<u8>,
    written: usize,
    response: Vec<u8>,
    /// Subprotocols offered (`Sec-WebSocket-Protocol`); the 101 may select one of them or none.
    offered: Vec<String>,
    /// permessage-deflate was offered (`Sec-WebSocket-Extensions`).
    deflate_offered: bool,
    /// The server accepted permessage-deflate (known once the response is checked).
    deflate: Option<crate::inflate::Agreement>,
}

/// What reading the handshake response gave.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeProgress {
    /// More bytes are needed.
    Pending,
    /// Accepted; these bytes after the response head are already WebSocket frames.
    Open(Vec<u8>),
}

impl Handshake {
    /// The upgrade request for `path` on `host`, keyed by `nonce` (16 random bytes from the caller).
    /// A `Sec-WebSocket-Protocol` among `extra` lists the subprotocols offered.
    pub fn new(host: &str, path: &str, nonce: [u8; 16], extra: &[(&str, &str)]) -> Handshake {
        let key = client_key(nonce);
        let mut request = Vec::with_capacity(256);
        write_client_request(&mut request, host, path, &key, extra);
        let offered = extra
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-protocol"))
            .flat_map(|(_, value)| value.split(','))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        let deflate_offered = extra.iter().any(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"));
        Handshake { key, request, written: 0, response: Vec::new(), offered, deflate_offered, deflate: None }
    }

    /// What the server agreed to for permessage-deflate (`None`: not offered, or declined).
    pub fn deflate(&self) -> Option<crate::inflate::Agreement> {
        self.deflate
    }

    /// The request bytes.
    #[cfg(test)]
    pub fn request_bytes(&self) -> &[u8] {
        &self.request
    }

    /// Writes what is left of the request. `Ok(true)` when all of it is written.
    pub fn write_request(&mut self, sock: &mut impl Write) -> Result<bool, Failure> {
        while self.written < self.request.len() {
            match sock.write(&self.request[self.written..]) {
                Ok(0) => return Err(Failure::Eof),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify_io(&e)),
            }
        }
        Ok(true)
    }

    /// Reads response bytes until `WouldBlock` and checks the response once its head is complete.
    pub fn read_response(&mut self, sock: &mut impl Read) -> Result<HandshakeProgress, Failure> {
        let mut chunk = [0u8; 4096];
        loop {
            match sock.read(&mut chunk) {
                Ok(0) => return Err(Failure::Eof),
                Ok(n) => {
                    self.response.extend_from_slice(&chunk[..n]);
                    if let HandshakeProgress::Open(rest) = self.check()? {
                        return Ok(HandshakeProgress::Open(rest));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(HandshakeProgress::Pending),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify_io(&e)),
            }
        }
    }

    /// Checks the response read so far with herald's client-side parser.
    fn check(&mut self) -> Result<HandshakeProgress, Failure> {
        match parse_response(&self.response, &self.key, MAX_RESPONSE_HEAD) {
            Ok(None) => Ok(HandshakeProgress::Pending),
            Ok(Some(accepted)) => {
                // RFC 6455 section 4.1: a subprotocol "that was not present in the client's handshake" fails
                // the connection. Checked only when loadgen offered some, so that servers which always name
                // one keep working with the raw endpoints.
                if let Some(chosen) = &accepted.protocol {
                    if !self.offered.is_empty() && !self.offered.iter().any(|o| o == chosen.trim()) {
                        return Err(Failure::Handshake);
                    }
                }
                // RFC 6455 section 4.1: an extension "not present in the client's handshake" fails the connection.
                let head = std::str::from_utf8(&self.response[..accepted.head_len]).map_err(|_| Failure::Handshake)?;
                let extensions =
                    head.split("\r\n").filter_map(|line| line.split_once(':')).filter_map(|(name, value)| {
                        name.trim().eq_ignore_ascii_case("sec-websocket-extensions").then_some(value)
                    });
                self.deflate =
                    crate::inflate::agreement(extensions, self.deflate_offered).map_err(|_| Failure::Handshake)?;
                Ok(HandshakeProgress::Open(self.response.split_off(accepted.head_len)))
            }
            Err(HandshakeError::Refused(status)) if status != 101 && status != 0 => Err(Failure::HttpStatus(status)),
            Err(_) => Err(Failure::Handshake),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald::protocol::handshake::{accept_key, write_switching_protocols};

    fn response_for(h: &Handshake) -> Vec<u8> {
        let mut out = Vec::new();
        write_switching_protocols(&mut out, &accept_key(&h.key), None);
        out
    }

    #[test]
    fn request_carries_the_key_and_path() {
        let h = Handshake::new("127.0.0.1:9", "/sub/t0", [7; 16], &[]);
        let text = String::from_utf8(h.request.clone()).expect("ascii");
        assert!(text.starts_with("GET /sub/t0 HTTP/1.1\r\n"));
        assert!(text.contains(&format!("Sec-WebSocket-Key: {}\r\n", h.key)));
        assert!(text.contains("Host: 127.0.0.1:9\r\n"));
    }

    #[test]
    fn accepted_response_hands_back_trailing_frames() {
        let mut h = Handshake::new("h", "/", [1; 16], &[]);
        let mut bytes = response_for(&h);
        bytes.extend_from_slice(&[0x82, 0x01, 0xAA]);
        let mut reader: &[u8] = &bytes;
        // A slice reader never says WouldBlock: it ends with Ok(0), which is EOF, but the head is complete
        // before that.
        assert_eq!(h.read_response(&mut reader), Ok(HandshakeProgress::Open(vec![0x82, 0x01, 0xAA])));
    }

    #[test]
    fn non_101_is_classified_by_status() {
        let mut h = Handshake::new("h", "/", [1; 16], &[]);
        let mut reader: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(h.read_response(&mut reader), Err(Failure::HttpStatus(404)));
        let mut h = Handshake::new("h", "/", [1; 16], &[]);
        let mut reader: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                                   Sec-WebSocket-Accept: wrong\r\n\r\n";
        assert_eq!(h.read_response(&mut reader), Err(Failure::Handshake));
        let mut h = Handshake::new("h", "/", [1; 16], &[]);
        let mut reader: &[u8] = b"HTTP/1.1 101 Swi";
        assert_eq!(h.read_response(&mut reader), Err(Failure::Eof), "EOF mid-head");
    }

    #[test]
    fn subprotocol_answer_must_be_one_offered() {
        let offer = [("Sec-WebSocket-Protocol", "bearer, h.p.s")];
        let respond = |h: &Handshake, protocol: Option<&str>| {
            let mut out = Vec::new();
            write_switching_protocols(&mut out, &accept_key(&h.key), protocol);
            out
        };
        let mut h = Handshake::new("h", "/ws", [3; 16], &offer);
        let bytes = respond(&h, Some("bearer"));
        let mut reader: &[u8] = &bytes;
        assert_eq!(h.read_response(&mut reader), Ok(HandshakeProgress::Open(vec![])), "herald's answer");
        let mut h = Handshake::new("h", "/ws", [3; 16], &offer);
        let bytes = respond(&h, None);
        let mut reader: &[u8] = &bytes;
        assert_eq!(h.read_response(&mut reader), Ok(HandshakeProgress::Open(vec![])), "none selected is allowed");
        let mut h = Handshake::new("h", "/ws", [3; 16], &offer);
        let bytes = respond(&h, Some("graphql-ws"));
        let mut reader: &[u8] = &bytes;
        assert_eq!(h.read_response(&mut reader), Err(Failure::Handshake), "not offered");
        // Nothing offered: a server that names a subprotocol anyway is tolerated (raw endpoints, peers).
        let mut h = Handshake::new("h", "/sub/t", [3; 16], &[]);
        let bytes = respond(&h, Some("chat"));
        let mut reader: &[u8] = &bytes;
        assert_eq!(h.read_response(&mut reader), Ok(HandshakeProgress::Open(vec![])));
    }

    #[test]
    fn deflate_answer_is_recorded_and_an_unoffered_extension_fails_the_handshake() {
        let respond = |h: &Handshake, extensions: &str| {
            let mut out = Vec::new();
            write_switching_protocols(&mut out, &accept_key(&h.key), None);
            if !extensions.is_empty() {
                out.truncate(out.len() - 2);
                out.extend_from_slice(format!("Sec-WebSocket-Extensions: {extensions}\r\n\r\n").as_bytes());
            }
            out
        };
        let offer = [("Sec-WebSocket-Extensions", crate::inflate::OFFER)];
        let answer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        let mut h = Handshake::new("h", "/ws", [5; 16], &offer);
        let bytes = respond(&h, answer);
        assert_eq!(h.read_response(&mut &bytes[..]), Ok(HandshakeProgress::Open(vec![])));
        assert_eq!(h.deflate(), Some(crate::inflate::Agreement { no_context_takeover: true }));
        let mut h = Handshake::new("h", "/ws", [5; 16], &offer);
        let bytes = respond(&h, "");
        assert_eq!(h.read_response(&mut &bytes[..]), Ok(HandshakeProgress::Open(vec![])), "declined: uncompressed");
        assert_eq!(h.deflate(), None);
        let mut h = Handshake::new("h", "/ws", [5; 16], &[]);
        let bytes = respond(&h, answer);
        assert_eq!(h.read_response(&mut &bytes[..]), Err(Failure::Handshake), "not offered");
    }

    #[test]
    fn auth_refusals_keep_their_status() {
        for status in [401u16, 403] {
            let mut h = Handshake::new("h", "/ws", [1; 16], &[("Authorization", "Bearer x")]);
            let text = format!("HTTP/1.1 {status} No\r\nContent-Length: 0\r\n\r\n");
            let mut reader: &[u8] = text.as_bytes();
            assert_eq!(h.read_response(&mut reader), Err(Failure::HttpStatus(status)));
        }
    }

    #[test]
    fn refused_connection_is_classified() {
        // A port nobody listens on: bind one, note it, drop it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let mut dialer = Dialer::new(SocketAddr::from(([127, 0, 0, 1], port)), vec![], 0, true);
        let stream = dialer.dial().expect("dial starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match connect_result(&stream) {
                Ok(false) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                other => {
                    assert_eq!(other, Err(Failure::Refused));
                    break;
                }
            }
        }
    }
}
