//! What the server's last packets look like on the wire: a packet socket on the loopback interface sees every
//! TCP segment the server sends, and the tests check how it ends a connection. A file of its own, so that no
//! other test's traffic crowds the capture (cargo runs test binaries one at a time).
//!
//! Opening a packet socket needs `CAP_NET_RAW` (root, as in CI). Without it each test says so on stderr and
//! checks nothing.
mod support;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use support::tls::TlsServer;
use support::{client_frame, RawWs, Server};

/// One TCP segment seen on the loopback interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    from: u16,
    to: u16,
    seq: u32,
    flags: u8,
    payload: usize,
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;

impl Segment {
    /// Reads an IPv4 packet between loopback addresses carrying TCP.
    fn parse(ip: &[u8]) -> Option<Segment> {
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
            return None;
        }
        let ihl = usize::from(ip[0] & 0x0F) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let tcp = ip.get(ihl..total)?;
        if !src.is_loopback() || tcp.len() < 20 {
            return None;
        }
        let doff = usize::from(tcp[12] >> 4) * 4;
        Some(Segment {
            from: u16::from_be_bytes([tcp[0], tcp[1]]),
            to: u16::from_be_bytes([tcp[2], tcp[3]]),
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            flags: tcp[13],
            payload: tcp.len().saturating_sub(doff),
        })
    }
}

/// Every IPv4 TCP segment on the loopback interface from its start until [`Capture::stop`].
struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Segment>>,
}

impl Capture {
    /// Starts capturing; `None` when this process may not open a packet socket.
    fn start() -> Option<Capture> {
        let eth_p_ip = i32::from((libc::ETH_P_IP as u16).to_be());
        let socket = match Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(eth_p_ip))) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                eprintln!("segments: no packet socket without CAP_NET_RAW ({e}); nothing checked");
                return None;
            }
            Err(e) => panic!("packet socket: {e}"),
        };
        socket.set_recv_buffer_size(8 << 20).expect("receive buffer");
        socket.set_read_timeout(Some(Duration::from_millis(20))).expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = (&socket).read(&mut buf) {
                    // Loopback shows each packet twice (leaving and arriving): keep one.
                    if let Some(s) = Segment::parse(&buf[..n]).filter(|s| !seen.contains(s)) {
                        seen.push(s);
                    }
                }
            }
            seen
        });
        Some(Capture { stop, thread })
    }

    /// Stops after the stragglers are in, and returns what `server` sent to `client`, in order.
    fn stop(self, server: SocketAddr, client: SocketAddr) -> Vec<Segment> {
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        let all = self.thread.join().expect("capture thread");
        all.into_iter().filter(|s| s.from == server.port() && s.to == client.port()).collect()
    }
}

/// Checks the end of a connection as the server sent it: its last bytes carry the FIN, and no segment carries
/// a FIN alone.
fn assert_fin_rides_with_the_last_bytes(sent: &[Segment]) {
    let described = format!("{sent:#?}");
    assert!(!sent.iter().any(|s| s.flags & RST != 0), "the server reset the connection: {described}");
    let fins: Vec<_> = sent.iter().filter(|s| s.flags & FIN != 0).collect();
    assert_eq!(fins.len(), 1, "one FIN from the server: {described}");
    assert!(fins[0].payload > 0, "the FIN came alone, not with the close frame: {described}");
    let last_data = sent.iter().filter(|s| s.payload > 0 && s.flags & SYN == 0).max_by_key(|s| s.seq);
    assert_eq!(last_data, Some(fins[0]), "the FIN is in the segment with the last bytes: {described}");
}

/// The close handshake ends with the server's close frame and its FIN in one segment (one packet for both
/// ends to process, not two): the reply is sent with `MSG_MORE` and the shutdown that follows adds the FIN.
#[test]
fn the_close_frame_and_the_fin_leave_in_one_segment() {
    let srv = Server::start(&["--workers", "1"]);
    let mut ws = RawWs::connect(srv.addr, "/echo");
    let client = ws.stream.local_addr().expect("client address");
    let Some(capture) = Capture::start() else { return };
    ws.send_frame(0x88, &1000u16.to_be_bytes(), true);
    assert_eq!(ws.read_close_code(), Some(1000), "the close frame comes back");
    assert!(ws.closed_within(Duration::from_secs(5)), "then the server closes");
    drop(ws);
    let sent = capture.stop(srv.addr, client);
    assert_fin_rides_with_the_last_bytes(&sent);
    assert_eq!(sent.iter().filter(|s| s.payload > 0).count(), 1, "one data segment after the close: {sent:#?}");
}

/// Over TLS the last segment holds the close frame, our close_notify and the FIN.
#[test]
fn over_tls_the_close_frame_close_notify_and_the_fin_leave_in_one_segment() {
    let srv = TlsServer::start(&["--workers", "1"]);
    let mut s = srv.connect();
    let client = s.sock.local_addr().expect("client address");
    let upgrade = "GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    std::io::Write::write_all(&mut s, upgrade.as_bytes()).expect("upgrade request");
    let head = support::read_head(&mut s);
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    let Some(capture) = Capture::start() else { return };
    std::io::Write::write_all(&mut s, &client_frame(0x88, &1000u16.to_be_bytes(), [1, 2, 3, 4])).expect("close");
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("the close frame, then close_notify");
    assert_eq!(&reply[..2.min(reply.len())], &[0x88, 2], "a close frame with the code");
    drop(s);
    let sent = capture.stop(srv.tls, client);
    assert_fin_rides_with_the_last_bytes(&sent);
    assert_eq!(sent.iter().filter(|s| s.payload > 0).count(), 1, "one data segment after the close: {sent:#?}");
}

/// An HTTP answer that ends the connection (here a 404 to a client that asked for `Connection: close`) and
/// the FIN leave in one segment too.
#[test]
fn a_last_http_answer_and_the_fin_leave_in_one_segment() {
    let srv = Server::start(&["--workers", "1"]);
    let mut stream = std::net::TcpStream::connect(srv.addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let client = stream.local_addr().expect("client address");
    let Some(capture) = Capture::start() else { return };
    let request = b"GET /nowhere HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    std::io::Write::write_all(&mut stream, request).expect("request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("the answer, then the end");
    assert!(answer.starts_with(b"HTTP/1.1 404"), "{}", String::from_utf8_lossy(&answer));
    drop(stream);
    let sent = capture.stop(srv.addr, client);
    assert_fin_rides_with_the_last_bytes(&sent);
}
