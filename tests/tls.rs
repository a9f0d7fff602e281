//! `wss://` and `https://` served by herald's workers, against an independent client (rustls + tungstenite)
//! and certificates made at test time: every endpoint over TLS, the WebSocket protocol cases with frames split
//! across TLS records at awkward places, handshake auth, resumption, the main listener as the TLS one, and a
//! certificate reload under traffic.
mod support;

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::tls::{client_config_trusting, presented, tls_connect, wss_connect, TestCert, TlsServer, TlsStream};
use support::{client_frame, connect, expect_close_on, next_data, parse_response, read_head, wait_until};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

const SECRET: &[u8] = include_bytes!("fixtures/auth/hs.secret");
const SECRET_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth/hs.secret");

/// Waits until `srv` counts `n` upgrades (so a publish that follows finds the subscribers in place).
fn wait_upgrades(srv: &TlsServer, n: u64) {
    assert_eq!(srv.server.wait_metric("herald_upgrades_total", n, Duration::from_secs(5)), n);
}

fn text(m: Message) -> String {
    m.into_text().expect("a text message").to_string()
}

#[test]
fn raw_subscribers_over_tls_get_every_message_in_order_from_tls_and_plain_publishers() {
    let srv = TlsServer::start(&["--workers", "2"]);
    let mut subs: Vec<_> = (0..4).map(|_| srv.wss("/sub/news")).collect();
    let mut plain_sub = connect(&srv.server.url("/sub/news"));
    wait_upgrades(&srv, 5);
    let mut tls_pub = srv.wss("/pub/news");
    let mut plain_pub = connect(&srv.server.url("/pub/news"));
    for i in 0..200 {
        tls_pub.send(Message::text(format!("tls {i}"))).expect("publish over TLS");
    }
    tls_pub.flush().expect("flush");
    // Only once every TLS message has arrived does the plain publisher start, so the order is known.
    for sub in subs.iter_mut() {
        for i in 0..200 {
            assert_eq!(text(next_data(sub)), format!("tls {i}"));
        }
    }
    for i in 0..200 {
        assert_eq!(text(next_data(&mut plain_sub)), format!("tls {i}"));
    }
    for i in 0..200 {
        plain_pub.send(Message::binary(vec![i as u8; 1 + i])).expect("publish in the clear");
    }
    plain_pub.flush().expect("flush");
    for sub in subs.iter_mut() {
        for i in 0..200 {
            assert_eq!(next_data(sub), Message::binary(vec![i as u8; 1 + i]), "message {i}");
        }
    }
    assert_eq!(srv.server.metric("herald_tls_connections"), 5);
}

#[test]
fn the_ws_json_protocol_and_post_publish_work_over_tls() {
    let srv = TlsServer::start(&["--workers", "2"]);
    let mut ws = srv.wss("/ws");
    ws.send(Message::text(r#"{"type":"subscribe","topic":"jobs","id":1}"#)).expect("subscribe");
    let ack: Value = serde_json::from_str(&text(next_data(&mut ws))).expect("json");
    assert_eq!(ack["type"], "ack", "{ack}");
    let (status, _, body) = srv.https("POST", "/publish/jobs", &[("Content-Type", "text/plain")], b"from https");
    assert!((200..300).contains(&status), "POST /publish over HTTPS: {status} {}", String::from_utf8_lossy(&body));
    let msg: Value = serde_json::from_str(&text(next_data(&mut ws))).expect("json");
    assert_eq!(msg["type"], "message", "{msg}");
    assert_eq!(msg["topic"], "jobs");
    assert_eq!(msg["data"], "from https");
    ws.send(Message::text(r#"{"type":"publish","topic":"jobs","data":"from wss"}"#)).expect("publish");
    let got: Value = loop {
        let v: Value = serde_json::from_str(&text(next_data(&mut ws))).expect("json");
        if v["type"] == "message" {
            break v;
        }
    };
    assert_eq!(got["data"], "from wss");
    let (status, _, body) = srv.https("GET", "/healthz", &[], b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("ok"));
    let (status, _, body) = srv.https("GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("herald_tls_handshakes_total{result=\"ok\"}"));
}

#[test]
fn echo_returns_large_and_fragmented_messages_over_tls() {
    let srv = TlsServer::start(&[]);
    let mut ws = srv.wss("/echo");
    let big: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).expect("send 600 KB");
    assert_eq!(next_data(&mut ws), Message::binary(big));
    let text_msg = "ü€".repeat(20_000);
    ws.send(Message::text(text_msg.clone())).expect("send text");
    assert_eq!(text(next_data(&mut ws)), text_msg);
}

/// Writes `bytes` over TLS one record per piece, cutting at each of `cuts` (record boundaries in awkward
/// places: inside a frame header, inside the mask, inside a UTF-8 sequence).
fn send_in_records(s: &mut TlsStream, bytes: &[u8], cuts: &[usize]) {
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        s.write_all(&bytes[at..cut]).expect("write a record");
        s.flush().expect("flush");
        at = cut;
    }
}

/// Upgrades a raw TLS stream on `path` by hand; returns the stream and anything read after the 101.
fn raw_upgrade(srv: &TlsServer, path: &str) -> (TlsStream, Vec<u8>) {
    let mut s = srv.connect();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    // The request head itself crosses three records.
    send_in_records(&mut s, req.as_bytes(), &[3, 40]);
    let mut buf = read_head(&mut s);
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole response head") + 4;
    assert!(buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf));
    (s, buf.split_off(end))
}

/// Reads one unmasked server frame from `s` (`pending` holds bytes already read): (first byte, payload).
fn read_frame(s: &mut TlsStream, pending: &mut Vec<u8>) -> (u8, Vec<u8>) {
    let mut chunk = [0u8; 16384];
    loop {
        if pending.len() >= 2 {
            let len7 = (pending[1] & 0x7F) as usize;
            let (hdr, len) = match len7 {
                126 if pending.len() >= 4 => (4, u16::from_be_bytes([pending[2], pending[3]]) as usize),
                127 if pending.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&pending[2..10]);
                    (10, u64::from_be_bytes(b) as usize)
                }
                126 | 127 => (usize::MAX, 0),
                n => (2, n),
            };
            if hdr != usize::MAX && pending.len() >= hdr + len {
                let frame: Vec<u8> = pending.drain(..hdr + len).collect();
                return (frame[0], frame[hdr..].to_vec());
            }
        }
        let n = s.read(&mut chunk).expect("read a frame");
        assert!(n > 0, "connection ended before a whole frame");
        pending.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn fragmented_messages_and_control_frames_split_across_records_are_reassembled() {
    let srv = TlsServer::start(&[]);
    let (mut s, mut pending) = raw_upgrade(&srv, "/echo");
    let key = [0x11, 0x22, 0x33, 0x44];
    // "héllo wörld" in three fragments with a ping between them; the records cut through headers, masks and
    // the two-byte UTF-8 sequences.
    let msg = "héllo wörld".as_bytes();
    let mut wire = client_frame(0x01, &msg[..2], key);
    wire.extend(client_frame(0x89, b"ping!", key));
    wire.extend(client_frame(0x00, &msg[2..9], key));
    wire.extend(client_frame(0x80, &msg[9..], key));
    let cuts: Vec<usize> = (1..wire.len()).step_by(3).collect();
    send_in_records(&mut s, &wire, &cuts);
    let (b0, pong) = read_frame(&mut s, &mut pending);
    assert_eq!((b0, pong.as_slice()), (0x8A, b"ping!".as_slice()), "the pong comes first");
    let (b0, echoed) = read_frame(&mut s, &mut pending);
    assert_eq!(b0, 0x81);
    assert_eq!(echoed, msg);
    // Invalid UTF-8 split across records is refused with 1007, then a close frame with 1000 code ends it.
    let mut bad = client_frame(0x01, &[0xE2, 0x82], key);
    bad.extend(client_frame(0x80, &[0x28], key));
    send_in_records(&mut s, &bad, &[1, 5, 7]);
    let (b0, close) = read_frame(&mut s, &mut pending);
    assert_eq!(b0, 0x88);
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1007);
}

#[test]
fn close_codes_travel_both_ways_over_tls() {
    let srv = TlsServer::start(&[]);
    let mut ws = srv.wss("/echo");
    ws.close(Some(tungstenite::protocol::CloseFrame { code: CloseCode::Away, reason: "bye".into() })).expect("close");
    let (code, _) = expect_close_on(&mut ws, "wss echo");
    assert_eq!(code, CloseCode::Away, "the server echoes the client's code");
    // A message over the limit gets 1009.
    let mut ws = srv.wss("/echo");
    ws.send(Message::binary(vec![0u8; 2 * 1024 * 1024])).expect("send an oversized message");
    let (code, _) = expect_close_on(&mut ws, "wss echo, oversized");
    assert_eq!(code, CloseCode::Size);
}

fn token(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).expect("sign")
}

#[test]
fn handshake_auth_over_tls_admits_a_good_token_and_refuses_a_bad_one_with_401() {
    let srv = TlsServer::start(&["--auth-secret-file", SECRET_FILE]);
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 3600;
    let good = token(json!({"sub": "ann", "exp": exp, "subscribe": ["news"]}));
    let mut ws = wss_connect(srv.tls, &format!("/sub/news?token={good}"), srv.cert.client_config());
    let (status, _, _) = srv.https("POST", "/publish/news", &[], b"x");
    assert_eq!(status, 401, "POST without credentials is refused");
    ws.send(Message::Ping(vec![1].into())).expect("ping");
    assert!(matches!(ws.read().expect("pong"), Message::Pong(_)));
    let mut s = srv.connect();
    let req = "GET /sub/news?token=nope HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
               Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let (status, head, _) = parse_response(&buf);
    assert_eq!(status, 401, "{head}");
}

#[test]
fn a_second_connection_resumes_the_session_with_a_ticket() {
    let srv = TlsServer::start(&[]);
    // One client configuration keeps its session cache between connections, as a browser does.
    let config = srv.cert.client_config();
    for _ in 0..3 {
        let mut s = tls_connect(srv.tls, config.clone());
        // TLS 1.3 tickets arrive after the handshake: read a response so they are taken in.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("write");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.starts_with(b"HTTP/1.1 200"));
    }
    let resumed = srv.server.wait_metric("herald_tls_sessions_total{kind=\"resumed\"}", 2, Duration::from_secs(5));
    assert_eq!(resumed, 2, "the second and third connections resume");
    assert_eq!(srv.server.metric("herald_tls_sessions_total{kind=\"full\"}"), 1);
}

#[test]
fn a_tls_1_2_client_is_served() {
    let srv = TlsServer::start(&[]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(srv.cert.der.clone())).expect("root");
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("TLS 1.2")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut ws = wss_connect(srv.tls, "/echo", std::sync::Arc::new(config));
    ws.send(Message::text("over 1.2")).expect("send");
    assert_eq!(text(next_data(&mut ws)), "over 1.2");
    assert_eq!(srv.server.metric("herald_tls_protocol_total{version=\"1.2\"}"), 1);
}

#[test]
fn with_no_tls_listen_the_main_listener_speaks_tls_and_ed25519_keys_work() {
    let srv = TlsServer::start_with(TestCert::ed25519(), false, &[]);
    assert_eq!(srv.tls, srv.server.addr, "the main listener is the TLS one");
    let mut ws = srv.wss("/echo");
    ws.send(Message::text("hi")).expect("send");
    assert_eq!(text(next_data(&mut ws)), "hi");
    let (status, _, body) = srv.https("GET", "/healthz", &[], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn a_reloaded_certificate_serves_new_connections_while_a_subscriber_streams_without_loss() {
    let srv = TlsServer::start(&["--workers", "2"]);
    let old = srv.cert.der.clone();
    let mut sub = srv.wss("/sub/feed");
    wait_upgrades(&srv, 1);
    let publisher = {
        let url = srv.server.url("/pub/feed");
        std::thread::spawn(move || {
            let mut p = connect(&url);
            for i in 0..3000 {
                p.send(Message::text(format!("{i}"))).expect("publish");
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            p.flush().expect("flush");
            p
        })
    };
    // Swap the files for a new certificate and reload while messages flow.
    let new = TestCert::ecdsa();
    std::fs::write(&srv.cert_file, &new.cert_pem).expect("new cert");
    std::fs::write(&srv.key_file, &new.key_pem).expect("new key");
    srv.server.signal(libc::SIGHUP);
    assert_eq!(srv.server.wait_metric("herald_tls_cert_reloads_total{result=\"ok\"}", 1, Duration::from_secs(5)), 1);
    let both = client_config_trusting(&[&srv.cert, &new]);
    let fresh = tls_connect(srv.tls, both.clone());
    assert_eq!(presented(&fresh), new.der, "a new connection sees the new certificate");
    assert_ne!(new.der, old);
    // A broken file keeps the certificate in force, and the failure is counted.
    std::fs::write(&srv.key_file, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        .expect("broken key");
    srv.server.signal(libc::SIGHUP);
    assert_eq!(
        srv.server.wait_metric("herald_tls_cert_reloads_total{result=\"failed\"}", 1, Duration::from_secs(5)),
        1
    );
    let after = tls_connect(srv.tls, both);
    assert_eq!(presented(&after), new.der, "the last good certificate stays in force");
    // The subscriber, established under the old certificate, got every message in order.
    for i in 0..3000 {
        assert_eq!(text(next_data(&mut sub)), format!("{i}"));
    }
    drop(publisher.join().expect("publisher"));
}

#[test]
fn a_missing_or_mismatched_certificate_stops_the_start_with_a_message_naming_the_file() {
    let dir = support::tls::Dir::new("tls-bad");
    let a = TestCert::ecdsa();
    let b = TestCert::ecdsa();
    let cert = dir.write("a.pem", &a.cert_pem);
    let other_key = dir.write("b.key", &b.key_pem);
    let missing = dir.0.join("missing.pem");
    for (cert, key, names) in [(&missing, &other_key, "missing.pem"), (&cert, &other_key, "b.key")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", "127.0.0.1:0", "--no-pin", "--tls-cert-file"])
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .output()
            .expect("run herald");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "herald must not start");
        assert!(err.contains(names), "the message names {names}: {err}");
    }
}

#[test]
fn a_subscriber_that_stops_reading_over_tls_is_closed_as_a_slow_consumer_and_the_others_stream_on() {
    let srv = TlsServer::start(&["--max-backpressure", "256KiB", "--slow-consumer", "close"]);
    let stalled = srv.wss("/sub/flood");
    let mut reader = srv.wss("/sub/flood");
    wait_upgrades(&srv, 2);
    let mut p = connect(&srv.server.url("/pub/flood"));
    const N: usize = 3000;
    let reader_thread = std::thread::spawn(move || {
        for i in 0..N {
            assert_eq!(next_data(&mut reader).into_data().len(), 4096, "message {i}");
        }
    });
    // 12 MB, paced so that a reading subscriber keeps up: more than the socket buffers and the cap can hold
    // for the one that does not read.
    for i in 0..N {
        p.send(Message::binary(vec![(i % 251) as u8; 4096])).expect("publish");
        if i % 50 == 49 {
            p.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    p.flush().expect("flush");
    reader_thread.join().expect("the reading subscriber got every message");
    assert!(
        wait_until(Duration::from_secs(10), || srv.server.metric("herald_backpressure_closes_total") == 1),
        "the subscriber that stopped reading is closed as a slow consumer"
    );
    drop(stalled);
}

/// A TLS stream that starts with a PROXY v1 header naming `client`, sent in the same segment as the client
/// hello (so herald reads both at once and must decrypt what follows the header).
fn tls_behind_proxy(srv: &TlsServer, client: &str) -> std::io::Result<TlsStream> {
    let mut sock = std::net::TcpStream::connect(srv.tls).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut conn = rustls::ClientConnection::new(srv.cert.client_config(), name).expect("client");
    let mut first = format!("PROXY TCP4 {client} 127.0.0.1 40000 443\r\n").into_bytes();
    while conn.wants_write() {
        conn.write_tls(&mut first).expect("client hello");
    }
    sock.write_all(&first).expect("header and hello");
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// The status of a WebSocket upgrade on `/sub/p` sent over `s`.
fn upgrade_status(s: &mut TlsStream) -> u16 {
    let req = "GET /sub/p HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(req.as_bytes()).expect("upgrade request");
    parse_response(&read_head(s)).0
}

#[test]
fn behind_a_layer_4_proxy_the_proxy_header_precedes_tls_and_names_the_client() {
    let srv = TlsServer::start(&[
        "--workers",
        "1",
        "--max-connections-per-ip",
        "1",
        "--trusted-proxies",
        "127.0.0.1",
        "--proxy-protocol",
        "true",
    ]);
    let mut first = tls_behind_proxy(&srv, "198.51.100.9").expect("TLS after the PROXY header");
    assert_eq!(upgrade_status(&mut first), 101);
    // Refused before any handshake (no way to send a status): the connection is closed, as at accept.
    assert!(tls_behind_proxy(&srv, "198.51.100.9").is_err(), "the client the header names is at its limit");
    let mut other = tls_behind_proxy(&srv, "198.51.100.10").expect("another client");
    assert_eq!(upgrade_status(&mut other), 101, "another client");
}

/// A client whose Finished and upgrade request travel together, as browsers' and loadgen's do: the request is
/// queued before the client's last handshake flight is written.
fn upgrade_with_the_finished(srv: &TlsServer, path: &str) -> TlsStream {
    let mut sock = std::net::TcpStream::connect(srv.tls).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut conn = rustls::ClientConnection::new(srv.cert.client_config(), name).expect("client connection");
    conn.write_tls(&mut sock).expect("client hello");
    while conn.is_handshaking() {
        conn.read_tls(&mut sock).expect("server flight");
        conn.process_new_packets().expect("server flight is valid");
    }
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    conn.writer().write_all(req.as_bytes()).expect("request");
    while conn.wants_write() {
        conn.write_tls(&mut sock).expect("finished and request");
    }
    let mut s = rustls::StreamOwned::new(conn, sock);
    let head = read_head(&mut s);
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Records the session makes by itself get no write of their own: the handshake costs the server two writes
/// (its hello flight; the session tickets with the 101 sealed behind them), and a close one (the close frame
/// with close_notify behind it). Each scrape's own answer counts one more.
#[test]
fn tickets_ride_with_the_101_and_close_notify_with_the_close_frame() {
    let srv = TlsServer::start(&["--workers", "1"]);
    let writes = || srv.server.metric("herald_socket_writes_total");
    let before = writes();
    let mut s = upgrade_with_the_finished(&srv, "/echo");
    let upgraded = writes();
    assert_eq!(upgraded - before, 2 + 1, "writes for the handshake and the 101 (and the first scrape's answer)");
    s.write_all(&client_frame(0x88, &1000u16.to_be_bytes(), [1, 2, 3, 4])).expect("close frame");
    s.flush().expect("flush");
    let mut reply = [0u8; 64];
    let n = s.read(&mut reply).expect("the close frame back");
    assert_eq!(&reply[..2.min(n)], &[0x88, 2], "a close frame with the code");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "close_notify ends the stream cleanly, nothing after the close frame");
    // The server shut its side after close_notify: its writes are done.
    let closed = writes();
    assert_eq!(closed - upgraded, 1 + 1, "one write for the close frame and close_notify (and a scrape's answer)");
}
