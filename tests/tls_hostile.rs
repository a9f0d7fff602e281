//! Hostile input on the TLS port: plain HTTP, random bytes, an oversized record, a truncated client hello, a
//! client that leaves mid-handshake, and a flood of 1000 stalled handshakes. Each is answered (a plain 400, a
//! TLS alert) or closed in time and counted by reason, while a `wss://` subscriber keeps its stream, and the
//! memory the flood took comes back.
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::tls::TlsServer;
use support::{connect, next_data, parse_response, wait_until};
use tungstenite::Message;

/// The first flight a real rustls client sends (its client hello), as bytes on the wire.
fn client_hello(srv: &TlsServer) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut client = rustls::ClientConnection::new(srv.cert.client_config(), name).expect("client");
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("write hello");
    }
    out
}

fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s
}

/// Reads until the server closes; returns what it sent.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The alert description in a plaintext TLS alert record (content type 21), if `bytes` starts with one.
fn alert_description(bytes: &[u8]) -> Option<u8> {
    (bytes.len() >= 7 && bytes[0] == 21).then(|| bytes[6])
}

#[test]
fn plain_http_on_the_tls_port_gets_a_400_saying_so() {
    let srv = TlsServer::start(&[]);
    let mut s = raw(srv.tls);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let (status, _, body) = parse_response(&read_to_close(&mut s));
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("https://"), "the answer says what to use");
    assert_eq!(srv.server.wait_metric("herald_tls_handshakes_total{result=\"not_tls\"}", 1, Duration::from_secs(5)), 1);
}

#[test]
fn random_bytes_get_a_tls_alert_and_a_close() {
    let srv = TlsServer::start(&[]);
    let mut s = raw(srv.tls);
    let junk: Vec<u8> = (0..600u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80).collect();
    s.write_all(&junk).expect("write");
    let got = read_to_close(&mut s);
    assert!(alert_description(&got).is_some(), "a TLS alert comes back: {got:?}");
    assert!(wait_until(Duration::from_secs(5), || srv.server.metric("herald_tls_connections") == 0));
    assert_eq!(srv.server.metric("herald_tls_handshakes_total{result=\"ok\"}"), 0);
}

#[test]
fn an_oversized_record_gets_a_fatal_alert() {
    let srv = TlsServer::start(&[]);
    let mut s = raw(srv.tls);
    // A handshake record header announcing 40,000 bytes: more than any TLS record may hold.
    s.write_all(&[22, 3, 1, 0x9C, 0x40]).expect("write");
    s.write_all(&[0u8; 1024]).expect("write");
    let got = read_to_close(&mut s);
    // rustls answers with decode_error (50) before the handshake; record_overflow (22) would do as well.
    assert!(matches!(alert_description(&got), Some(22 | 50)), "a fatal alert: {got:?}");
    assert_eq!(got.get(5), Some(&2), "level fatal");
}

#[test]
fn a_client_hello_with_more_handshake_messages_in_its_record_gets_an_alert_and_the_server_lives_on() {
    // This record once made rustls panic inside herald's error path; the release build aborts on a panic,
    // so one 400-byte record stopped the server for everyone.
    let srv = TlsServer::start(&[]);
    let mut record = client_hello(&srv);
    for _ in 0..2 {
        record.extend_from_slice(&[20, 0, 0, 32]);
        record.extend_from_slice(&[0; 32]);
    }
    let len = u16::try_from(record.len() - 5).expect("one record");
    record[3..5].copy_from_slice(&len.to_be_bytes());
    let mut s = raw(srv.tls);
    s.write_all(&record).expect("write");
    let got = read_to_close(&mut s);
    assert!(alert_description(&got).is_some(), "a TLS alert comes back: {got:?}");
    // And the server still serves: a wss client completes its handshake and upgrade, and gets a broadcast.
    let mut sub = srv.wss("/sub/alive");
    let (status, _, _) = srv.https("POST", "/publish/alive", &[("Content-Type", "text/plain")], b"still here");
    assert!((200..300).contains(&status), "POST /publish: {status}");
    assert_eq!(next_data(&mut sub), Message::Text("still here".into()));
}

#[test]
fn a_truncated_client_hello_is_closed_at_the_handshake_timeout() {
    let srv = TlsServer::start(&["--handshake-timeout", "1s"]);
    let hello = client_hello(&srv);
    let mut s = raw(srv.tls);
    s.write_all(&hello[..hello.len() / 2]).expect("write half a hello");
    let start = Instant::now();
    let got = read_to_close(&mut s);
    assert!(got.is_empty(), "nothing is sent to a client that never finished its hello");
    assert!(start.elapsed() < Duration::from_secs(4), "closed in {:?}", start.elapsed());
    assert_eq!(srv.server.wait_metric("herald_tls_handshakes_total{result=\"timeout\"}", 1, Duration::from_secs(5)), 1);
}

#[test]
fn a_client_that_leaves_mid_handshake_is_counted_and_its_slot_freed() {
    let srv = TlsServer::start(&[]);
    let hello = client_hello(&srv);
    for _ in 0..5 {
        let mut s = raw(srv.tls);
        s.write_all(&hello).expect("write hello");
        // Wait for the server's flight, then vanish without a word.
        let mut chunk = [0u8; 64];
        assert!(s.read(&mut chunk).expect("server hello") > 0);
    }
    assert_eq!(srv.server.wait_metric("herald_tls_handshakes_total{result=\"eof\"}", 5, Duration::from_secs(5)), 5);
    assert_eq!(srv.server.wait_metric("herald_tls_connections", 0, Duration::from_secs(5)), 0);
}

#[test]
fn a_flood_of_stalled_handshakes_is_cleared_in_time_while_a_wss_subscriber_streams() {
    const FLOOD: usize = 1000;
    let srv = TlsServer::start(&["--workers", "2", "--handshake-timeout", "2s"]);
    let mut sub = srv.wss("/sub/live");
    assert_eq!(srv.server.wait_metric("herald_upgrades_total", 1, Duration::from_secs(5)), 1);
    let warm = srv.server.rss_kib();
    let hello = Arc::new(client_hello(&srv));
    // Half send nothing at all, half a partial client hello (rustls holds the partial record).
    let flood: Vec<TcpStream> = (0..FLOOD)
        .map(|i| {
            let mut s = raw(srv.tls);
            if i % 2 == 1 {
                s.write_all(&hello[..hello.len() - 10]).expect("partial hello");
            }
            s
        })
        .collect();
    let peak_conns = srv.server.wait_metric("herald_tls_connections", FLOOD as u64 + 1, Duration::from_secs(10));
    assert_eq!(peak_conns, FLOOD as u64 + 1, "the flood was accepted");
    // The subscriber keeps its stream throughout.
    let mut p = connect(&srv.server.url("/pub/live"));
    for i in 0..100 {
        p.send(Message::text(format!("{i}"))).expect("publish");
        assert_eq!(next_data(&mut sub).into_text().expect("text").as_str(), format!("{i}"));
    }
    let cleared = wait_until(Duration::from_secs(6), || srv.server.metric("herald_tls_connections") == 1);
    assert!(cleared, "every stalled handshake is closed within the timeout (plus the timer's resolution)");
    assert_eq!(srv.server.metric("herald_tls_handshakes_total{result=\"timeout\"}"), FLOOD as u64);
    drop(flood);
    p.send(Message::text("after")).expect("publish");
    assert_eq!(next_data(&mut sub).into_text().expect("text").as_str(), "after");
    // The memory the flood held comes back (the worker trims once it goes quiet).
    let settled = wait_until(Duration::from_secs(15), || srv.server.rss_kib() <= warm + 4 * 1024);
    assert!(settled, "RSS {} KiB after the flood, {} KiB before", srv.server.rss_kib(), warm);
}

#[test]
fn partial_records_held_by_stalled_clients_count_in_the_receive_budget() {
    const CLIENTS: usize = 150;
    let srv = TlsServer::start(&[
        "--workers",
        "1",
        "--max-message-size",
        "64KiB",
        "--max-receive-memory",
        "1MiB",
        "--handshake-timeout",
        "30s",
    ]);
    let mut sub = srv.wss("/sub/live");
    assert_eq!(srv.server.wait_metric("herald_upgrades_total", 1, Duration::from_secs(5)), 1);
    // Each announces a 16,000-byte handshake record and sends 15,000 bytes of it: rustls must hold them all
    // until the rest comes, which it never does. 150 x 15 KB is over the 1 MiB budget.
    let held: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut s = raw(srv.tls);
            s.write_all(&[22, 3, 1, 0x3E, 0x80]).expect("record header");
            s.write_all(&[1u8; 15_000]).expect("most of the record");
            s
        })
        .collect();
    let evicted = wait_until(Duration::from_secs(10), || {
        srv.server.metric("herald_limit_hits_total{limit=\"max_receive_memory\"}") > 0
    });
    assert!(evicted, "the worker closes the biggest holders once over its budget");
    assert!(srv.server.metric("herald_receive_buffer_bytes") <= 1024 * 1024, "held to the budget");
    let mut p = connect(&srv.server.url("/pub/live"));
    p.send(Message::text("still here")).expect("publish");
    assert_eq!(next_data(&mut sub).into_text().expect("text").as_str(), "still here");
    drop(held);
}
