//! Behind a proxy: with `server.trusted_proxies`, the client address of a connection from a trusted proxy comes
//! from `X-Forwarded-For` (the rightmost untrusted entry) or, with `server.proxy_protocol`, from the PROXY
//! header; `max_connections_per_ip` and the logs then apply to that client, and the counts return to zero.
//!
//! The test client connects from 127.0.0.1, the trusted proxy; an untrusted peer connects from 127.0.0.2.
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{parse_response, read_head, Server};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// An upgrade request for `/echo` with these extra headers.
fn upgrade(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!(
        "GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Connects (from `from`, when given), sends `bytes`, and returns the response status with the open stream
/// (a 101 keeps the connection, and with it its per-address count).
fn exchange_from(addr: SocketAddr, from: Option<[u8; 4]>, bytes: &[u8]) -> (u16, TcpStream) {
    let mut s = match from {
        None => TcpStream::connect(addr).expect("connect"),
        Some(ip) => {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
            socket.bind(&SocketAddr::from((ip, 0)).into()).expect("bind the source address");
            socket.connect(&addr.into()).expect("connect");
            socket.into()
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(bytes).expect("write");
    let head = read_head(&mut s);
    (parse_response(&head).0, s)
}

fn exchange(addr: SocketAddr, bytes: &[u8]) -> (u16, TcpStream) {
    exchange_from(addr, None, bytes)
}

/// Upgrades as forwarded for `client` (`X-Forwarded-For: <client>`).
fn upgrade_for(server: &Server, client: &str) -> (u16, TcpStream) {
    exchange(server.addr, &upgrade(&[("X-Forwarded-For", client)]))
}

/// `bytes` preceded by a PROXY v1 line naming `client` (an IPv4 address).
fn with_v1(client: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("PROXY TCP4 {client} 127.0.0.1 40000 8080\r\n").into_bytes();
    out.extend_from_slice(bytes);
    out
}

/// `bytes` preceded by a PROXY v2 header: PROXY from `client` (IPv4) with a TLV, or LOCAL when `None`.
fn with_v2(client: Option<[u8; 4]>, bytes: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match client {
        Some(ip) => {
            out.extend_from_slice(&[0x21, 0x11, 0, 12 + 5]);
            out.extend_from_slice(&ip);
            out.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90]);
            out.extend_from_slice(&[0x04, 0, 2, 0xaa, 0xbb]); // a NOOP TLV, skipped
        }
        None => out.extend_from_slice(&[0x20, 0x00, 0, 0]),
    }
    out.extend_from_slice(bytes);
    out
}

/// A metric read on a connection that starts with a PROXY v2 LOCAL header (the proxy's own health check).
fn metric_via_local(server: &Server, series: &str) -> u64 {
    let req = with_v2(None, b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let (status, _, body) = support::raw_exchange(server.addr, &req);
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<u64>().ok()))
        .sum()
}

/// [`metric_via_local`] polled until it reads `expected` or 5 s pass (another worker publishes its counters at
/// the end of its loop turn); returns the last value read.
fn wait_metric_via_local(server: &Server, series: &str, expected: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = metric_via_local(server, series);
        if value == expected || Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Retries `attempt` until it gives 101 (the server frees slots when it sees the closes), up to 2 s.
fn upgrades_again(mut attempt: impl FnMut() -> (u16, TcpStream)) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, s) = attempt();
        if status == 101 {
            return s;
        }
        assert_eq!(status, 503, "only the per-address limit may refuse");
        assert!(Instant::now() < deadline, "the slot was never freed: a leaked count");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const CLIENTS: [&str; 3] = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];

#[test]
fn the_per_ip_limit_applies_to_each_forwarded_client() {
    let server = Server::start(&[
        "--workers",
        "2",
        "--max-connections-per-ip",
        "2",
        "--trusted-proxies",
        "10.0.0.0/8, 127.0.0.1",
    ]);
    let mut held = Vec::new();
    for client in CLIENTS {
        for _ in 0..2 {
            let (status, s) = upgrade_for(&server, client);
            assert_eq!(status, 101, "{client}: six connections from the proxy, two per client");
            held.push(s);
        }
    }
    let (status, _) = upgrade_for(&server, CLIENTS[0]);
    assert_eq!(status, 503, "a third connection for the same client");
    let (status, _) = upgrade_for(&server, &format!("{}, 10.1.2.3", CLIENTS[1]));
    assert_eq!(status, 503, "the same client through a second trusted proxy");
    // Two workers: a scrape sees the other worker's count as of its last loop turn, so wait for it.
    let rejected = "herald_connections_rejected_total{reason=\"max_connections_per_ip\"}";
    assert_eq!(server.wait_metric(rejected, 2, Duration::from_secs(5)), 2);
    let (status, _) = exchange(server.addr, &upgrade(&[]));
    assert_eq!(status, 101, "the proxy's own requests are not limited by its clients' connections");
}

#[test]
fn without_trusted_proxies_x_forwarded_for_is_ignored() {
    let server = Server::start(&["--workers", "2", "--max-connections-per-ip", "2"]);
    let (a, _s1) = upgrade_for(&server, CLIENTS[0]);
    let (b, _s2) = upgrade_for(&server, CLIENTS[1]);
    assert_eq!((a, b), (101, 101));
    let (status, _) = upgrade_for(&server, CLIENTS[2]);
    assert_eq!(status, 503, "the limit counts the peer, 127.0.0.1, whatever the header says");
}

#[test]
fn an_untrusted_peer_cannot_name_its_client() {
    let server = Server::start(&["--workers", "1", "--max-connections-per-ip", "2", "--trusted-proxies", "127.0.0.1"]);
    let from = Some([127, 0, 0, 2]);
    let (a, _s1) = exchange_from(server.addr, from, &upgrade(&[("X-Forwarded-For", CLIENTS[0])]));
    let (b, _s2) = exchange_from(server.addr, from, &upgrade(&[("X-Forwarded-For", CLIENTS[1])]));
    assert_eq!((a, b), (101, 101));
    let (status, _) = exchange_from(server.addr, from, &upgrade(&[("X-Forwarded-For", CLIENTS[2])]));
    assert_eq!(status, 503, "127.0.0.2 is not trusted: its header is ignored and the limit counts it");
}

#[test]
fn a_spoofed_leftmost_forwarded_entry_is_not_used() {
    let server = Server::start(&["--workers", "1", "--max-connections-per-ip", "2", "--trusted-proxies", "127.0.0.1"]);
    let (a, _s1) = upgrade_for(&server, CLIENTS[0]);
    let (b, _s2) = upgrade_for(&server, CLIENTS[0]);
    assert_eq!((a, b), (101, 101));
    // The client sent `X-Forwarded-For: 203.0.113.5`; the proxy appended the address it saw.
    let (status, _) = upgrade_for(&server, &format!("203.0.113.5, {}", CLIENTS[0]));
    assert_eq!(status, 503, "the client is the rightmost untrusted entry, not the one it wrote");
    let (status, _) =
        exchange(server.addr, &upgrade(&[("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-For", CLIENTS[0])]));
    assert_eq!(status, 503, "repeated headers are read as one list");
    let (status, _s3) = exchange(server.addr, &upgrade(&[("Forwarded", "for=203.0.113.5")]));
    assert_eq!(status, 101, "Forwarded: for= names a client too");
}

#[test]
fn a_proxy_v1_header_gives_the_client_address() {
    let server = Server::start(&[
        "--workers",
        "2",
        "--max-connections-per-ip",
        "2",
        "--trusted-proxies",
        "127.0.0.1",
        "--proxy-protocol",
        "true",
    ]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let (status, s) = exchange(server.addr, &with_v1(CLIENTS[0], &upgrade(&[])));
        assert_eq!(status, 101);
        held.push(s);
    }
    let (status, _) = exchange(server.addr, &with_v1(CLIENTS[0], &upgrade(&[])));
    assert_eq!(status, 503, "a third connection from the client the header names");
    let (status, _s) = exchange(server.addr, &with_v1(CLIENTS[1], &upgrade(&[("X-Forwarded-For", CLIENTS[0])])));
    assert_eq!(status, 101, "another client; X-Forwarded-For is not read in this mode");
    assert_eq!(
        wait_metric_via_local(&server, "herald_connections_rejected_total{reason=\"max_connections_per_ip\"}", 1),
        1
    );
}

#[test]
fn a_proxy_v2_header_gives_the_client_address() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--max-connections-per-ip",
        "2",
        "--trusted-proxies",
        "127.0.0.1",
        "--proxy-protocol",
        "true",
    ]);
    let client = [198, 51, 100, 7];
    let mut held = Vec::new();
    for _ in 0..2 {
        let (status, s) = exchange(server.addr, &with_v2(Some(client), &upgrade(&[])));
        assert_eq!(status, 101);
        held.push(s);
    }
    let (status, _) = exchange(server.addr, &with_v2(Some(client), &upgrade(&[])));
    assert_eq!(status, 503);
    let (status, _s) = exchange(server.addr, &with_v2(Some([198, 51, 100, 8]), &upgrade(&[])));
    assert_eq!(status, 101);
}

#[test]
fn with_proxy_protocol_a_trusted_connection_without_a_header_is_refused() {
    let server = Server::start(&["--workers", "1", "--trusted-proxies", "127.0.0.1", "--proxy-protocol", "true"]);
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got); // EOF or a reset: either way, no answer
    assert!(got.is_empty(), "closed without an answer, got {:?}", String::from_utf8_lossy(&got));
    assert_eq!(wait_metric_via_local(&server, "herald_connections_rejected_total{reason=\"proxy_header\"}", 1), 1);
    // An untrusted peer is never read for a PROXY header: its request is plain HTTP, and a PROXY line is not.
    let (status, _) = exchange_from(server.addr, Some([127, 0, 0, 2]), b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status, 200);
    let spoof = with_v1(CLIENTS[0], b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, _) = exchange_from(server.addr, Some([127, 0, 0, 2]), &spoof);
    assert_eq!(status, 400, "a PROXY line from an untrusted peer is a bad request, not a header");
}

#[test]
fn counts_return_to_zero_after_every_close() {
    for proxy_protocol in [false, true] {
        let mut args = vec!["--workers", "2", "--max-connections-per-ip", "2", "--trusted-proxies", "127.0.0.1"];
        if proxy_protocol {
            args.extend(["--proxy-protocol", "true"]);
        }
        let server = Server::start(&args);
        let open = |client: &str| {
            if proxy_protocol {
                exchange(server.addr, &with_v1(client, &upgrade(&[])))
            } else {
                upgrade_for(&server, client)
            }
        };
        let mut held = Vec::new();
        for client in CLIENTS {
            for _ in 0..2 {
                let (status, s) = open(client);
                assert_eq!(status, 101);
                held.push(s);
            }
        }
        if !proxy_protocol {
            // One kept-alive connection from the proxy carrying requests for two clients in turn: its count
            // moves from one to the other and is released from the last.
            let (status, mut s) = exchange(
                server.addr,
                b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.1\r\nContent-Length: 0\r\n\r\n",
            );
            assert_eq!(status, 200);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.2\r\n\r\n").expect("write");
            assert_eq!(parse_response(&read_head(&mut s)).0, 200);
            held.push(s);
        }
        drop(held);
        // Every client gets its full `limit` again once the server has seen the closes.
        let mut again = Vec::new();
        for client in CLIENTS.iter().chain(["203.0.113.1", "203.0.113.2"].iter()) {
            for _ in 0..2 {
                again.push(upgrades_again(|| open(client)));
            }
        }
        let (status, _) = open(CLIENTS[0]);
        assert_eq!(status, 503, "and still no more than the limit (proxy_protocol {proxy_protocol})");
    }
}

/// Refusals are logged with the client's address, not the proxy's.
#[test]
fn refusals_are_logged_with_the_client_address() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "127.0.0.1:0", "--no-pin", "--workers", "1", "--trusted-proxies", "127.0.0.1"])
        .args(["--backend", &support::backend()])
        .args(["--max-connections-per-ip", "1"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines.next().expect("a line").expect("read");
    let addr: SocketAddr = line.strip_prefix("herald listening on ").expect("listening line").parse().expect("addr");
    let req = |xff: &str| {
        format!("GET /nowhere HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n").into_bytes()
    };
    assert_eq!(exchange(addr, &req("198.51.100.77")).0, 404);
    let (status, _held) = exchange(addr, &upgrade(&[("X-Forwarded-For", "198.51.100.78")]));
    assert_eq!(status, 101);
    assert_eq!(exchange(addr, &upgrade(&[("X-Forwarded-For", "198.51.100.78")])).0, 503);
    std::thread::sleep(Duration::from_millis(200));
    child.kill().expect("kill");
    child.wait().expect("wait");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    let refusals: Vec<&str> = stderr.lines().filter(|l| l.contains("request refused")).collect();
    assert!(refusals.iter().any(|l| l.contains("404") && l.contains("198.51.100.77")), "{stderr}");
    assert!(refusals.iter().any(|l| l.contains("503") && l.contains("198.51.100.78")), "{stderr}");
    assert!(!refusals.iter().any(|l| l.contains("127.0.0.1")), "the proxy is not the peer logged: {stderr}");
}
