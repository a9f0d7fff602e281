//! `TlsSession` against a real `rustls::ClientConnection`, joined in memory by plain byte vectors.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rustls::{AlertDescription, ClientConnection, HandshakeKind, ProtocolVersion, ServerConfig};

use super::certs::{certified_key, parse_cert_chain, parse_private_key, provider, server_config_with, ticketer};
use super::record::{self, CONTENT_APPLICATION_DATA};
use super::testutil::{client_config, pki, KeyKind, Pki};
use super::{AlertSent, TlsError, TlsSession};

pub(super) const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
pub(super) const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

pub(super) fn server_config_for(pki: &Pki) -> Arc<ServerConfig> {
    let path = std::path::Path::new("test.pem");
    let chain = parse_cert_chain(path, pki.chain_pem.as_bytes()).expect("chain");
    let key = parse_private_key(path, pki.key_pem.as_bytes()).expect("key");
    let provider = provider();
    let certified = certified_key(path, chain, path, key, &provider).expect("matching key");
    server_config_with(Arc::new(certified), ticketer().expect("ticketer"), provider).expect("config")
}

/// Everything the client has queued, as the bytes the server's socket would read.
pub(super) fn client_output(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("write into a Vec");
    }
    out
}

/// Moves the client's output into the server; returns the plaintext the server got.
pub(super) fn client_to_server(client: &mut ClientConnection, server: &mut TlsSession) -> Result<BytesMut, TlsError> {
    let bytes = client_output(client);
    let mut plain = BytesMut::new();
    server.feed(&bytes, &mut plain)?;
    Ok(plain)
}

/// Moves the server's output into the client; returns the plaintext the client got.
pub(super) fn server_to_client(
    server: &mut TlsSession,
    client: &mut ClientConnection,
) -> Result<Vec<u8>, rustls::Error> {
    let mut bytes = Vec::new();
    server.drain_tls_into(&mut bytes);
    feed_client(client, &bytes)
}

pub(super) fn feed_client(client: &mut ClientConnection, mut bytes: &[u8]) -> Result<Vec<u8>, rustls::Error> {
    let mut plain = Vec::new();
    while !bytes.is_empty() {
        if client.read_tls(&mut bytes).expect("client read_tls") == 0 {
            break;
        }
        client.process_new_packets()?;
        let _ = std::io::Read::read_to_end(&mut client.reader(), &mut plain);
    }
    Ok(plain)
}

/// Pumps both ways until neither side is handshaking, then once more so the server's tickets reach the client.
pub(super) fn handshake(client: &mut ClientConnection, server: &mut TlsSession) {
    for _ in 0..10 {
        client_to_server(client, server).expect("server accepts the client's handshake");
        server_to_client(server, client).expect("client accepts the server's handshake");
        if !client.is_handshaking() && !server.is_handshaking() {
            client_to_server(client, server).expect("server accepts");
            server_to_client(server, client).expect("client accepts the tickets");
            return;
        }
    }
    panic!("handshake did not complete in 10 round trips");
}

pub(super) fn connect(
    pki: &Pki,
    config: &Arc<ServerConfig>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (ClientConnection, TlsSession) {
    connect_with(client_config(pki, versions), config)
}

pub(super) fn connect_with(
    client_config: Arc<rustls::ClientConfig>,
    config: &Arc<ServerConfig>,
) -> (ClientConnection, TlsSession) {
    let name = "localhost".try_into().expect("server name");
    let mut client = ClientConnection::new(client_config, name).expect("client");
    let mut server = TlsSession::new(config.clone()).expect("session");
    handshake(&mut client, &mut server);
    (client, server)
}

pub(super) fn p256() -> (Pki, Arc<ServerConfig>) {
    let pki = pki(KeyKind::EcdsaP256).expect("P-256 needs no openssl");
    let config = server_config_for(&pki);
    (pki, config)
}

#[test]
fn tls13_full_handshake_negotiates_http11_alpn() {
    let (pki, config) = p256();
    let (client, server) = connect(&pki, &config, TLS13);
    assert_eq!(server.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(client.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(server.handshake_kind(), Some(HandshakeKind::Full));
}

#[test]
fn tls12_full_handshake_negotiates_http11_alpn() {
    let (pki, config) = p256();
    let (_client, server) = connect(&pki, &config, TLS12);
    assert_eq!(server.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert!(!server.is_handshaking());
}

#[test]
fn every_supported_key_kind_completes_a_handshake() {
    for kind in [KeyKind::EcdsaP256, KeyKind::EcdsaP384, KeyKind::Ed25519, KeyKind::Rsa] {
        let Some(pki) = pki(kind) else { continue };
        let config = server_config_for(&pki);
        for versions in [TLS13, TLS12] {
            let (client, server) = connect(&pki, &config, versions);
            assert!(!client.is_handshaking() && !server.is_handshaking(), "{kind:?} {versions:?}");
        }
    }
}

#[test]
fn data_flows_both_ways_including_more_than_one_record_of_plaintext() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);

    // 100 KiB from the client: several 16 KiB records in one feed, all of it comes out.
    client.set_buffer_limit(None);
    let upload: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    std::io::Write::write_all(&mut client.writer(), &upload).expect("client write");
    let got = client_to_server(&mut client, &mut server).expect("server decrypts");
    assert_eq!(&got[..], &upload[..]);

    let frames = vec![Bytes::from_static(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"), Bytes::from(vec![7u8; 30_000])];
    assert_eq!(server.seal(&frames).expect("seal"), 30_000 + frames[0].len());
    let got = server_to_client(&mut server, &mut client).expect("client decrypts");
    assert_eq!(got, [&frames[0][..], &frames[1][..]].concat());
}

#[test]
fn records_split_at_every_byte_boundary_still_decrypt() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    std::io::Write::write_all(&mut client.writer(), b"GET /sub HTTP/1.1\r\n\r\n").expect("write");
    let bytes = client_output(&mut client);
    let mut plain = BytesMut::new();
    for byte in bytes.chunks(1) {
        server.feed(byte, &mut plain).expect("partial records wait for the rest");
    }
    assert_eq!(&plain[..], b"GET /sub HTTP/1.1\r\n\r\n");
}

#[test]
fn plaintext_sealed_during_the_handshake_is_sent_once_it_completes() {
    let (pki, config) = p256();
    let name = "localhost".try_into().expect("name");
    let mut client = ClientConnection::new(client_config(&pki, TLS13), name).expect("client");
    let mut server = TlsSession::new(config).expect("session");
    server.seal(&[Bytes::from_static(b"early")]).expect("buffered");
    let mut got = Vec::new();
    for _ in 0..5 {
        client_to_server(&mut client, &mut server).expect("server");
        got.extend(server_to_client(&mut server, &mut client).expect("client"));
    }
    assert_eq!(got, b"early");
}

pub(super) fn app_records(ciphertext: &[u8]) -> usize {
    record::records(ciphertext).filter(|r| r.content_type == CONTENT_APPLICATION_DATA).count()
}

#[test]
fn a_hundred_small_frames_sealed_in_one_call_make_one_record() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    assert!(!server.wants_write(), "handshake output fully flushed");

    let frames: Vec<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i; 66])).collect();
    server.seal(&frames).expect("seal");
    let mut ciphertext = Vec::new();
    server.drain_tls_into(&mut ciphertext);
    let records = app_records(&ciphertext);
    eprintln!("100 frames x 66 B sealed in one call: {records} record(s), {} B of ciphertext", ciphertext.len());
    assert_eq!(records, 1, "6600 B of plaintext fit one record");
    assert_eq!(feed_client(&mut client, &ciphertext).expect("client").len(), 6600);

    // The contrast: one seal per frame costs one record each.
    for frame in &frames {
        server.seal(std::slice::from_ref(frame)).expect("seal");
    }
    let mut one_by_one = Vec::new();
    server.drain_tls_into(&mut one_by_one);
    assert_eq!(app_records(&one_by_one), 100);
}

#[test]
fn an_outbox_written_through_the_sealer_is_taken_whole_into_one_record() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    let frames: Vec<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i; 40])).collect();
    let slices: Vec<std::io::IoSlice<'_>> = frames.iter().map(|f| std::io::IoSlice::new(f)).collect();
    // What `Outbox::write_to` does with a socket, done with the sealer: one write_vectored, all taken.
    let taken = std::io::Write::write_vectored(&mut server.sealer(), &slices).expect("seal");
    assert_eq!(taken, 4000);
    let mut ciphertext = Vec::new();
    server.drain_tls_into(&mut ciphertext);
    assert_eq!(app_records(&ciphertext), 1);
    assert_eq!(feed_client(&mut client, &ciphertext).expect("client").len(), 4000);
}

#[test]
fn the_sealer_reports_a_failed_session_as_an_io_error() {
    let (_pki, config) = p256();
    let mut server = TlsSession::new(config).expect("session");
    let _ = server.feed(b"not tls at all", &mut BytesMut::new());
    let err = std::io::Write::write(&mut server.sealer(), b"x").expect_err("failed session");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn a_40_kib_turn_is_sealed_into_three_records() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    let frames: Vec<Bytes> = (0..40).map(|_| Bytes::from(vec![1u8; 1024])).collect();
    server.seal(&frames).expect("seal");
    let pending = server.pending_tls();
    let mut ciphertext = Vec::new();
    assert_eq!(server.drain_tls_into(&mut ciphertext), pending);
    let sizes: Vec<usize> = record::records(&ciphertext).map(|r| r.body.len()).collect();
    eprintln!("40 KiB turn: record bodies {sizes:?}");
    assert_eq!(sizes.len(), 3, "16 KiB + 16 KiB + 8 KiB");
    assert_eq!(feed_client(&mut client, &ciphertext).expect("client").len(), 40 * 1024);
}

#[test]
fn write_tls_to_hands_out_all_pending_records_in_one_write() {
    let (pki, config) = p256();
    let (_client, mut server) = connect(&pki, &config, TLS13);
    let frames: Vec<Bytes> = (0..40).map(|_| Bytes::from(vec![1u8; 1024])).collect();
    server.seal(&frames).expect("seal");
    let pending = server.pending_tls();
    let mut sink = Vec::new();
    // A Vec's write_vectored takes every slice, as one writev would if the socket has room.
    assert_eq!(server.write_tls_to(&mut sink).expect("write"), pending);
    assert!(!server.wants_write());
}

#[test]
fn a_second_connection_with_the_same_client_config_resumes() {
    let (pki, config) = p256();
    for versions in [TLS13, TLS12] {
        let client_config = client_config(&pki, versions);
        let (_c1, first) = connect_with(client_config.clone(), &config);
        assert_eq!(first.handshake_kind(), Some(HandshakeKind::Full));
        let (c2, second) = connect_with(client_config, &config);
        assert_eq!(second.handshake_kind(), Some(HandshakeKind::Resumed), "{versions:?}");
        assert_eq!(c2.handshake_kind(), Some(HandshakeKind::Resumed), "{versions:?}");
    }
}

#[test]
fn plain_http_on_the_tls_port_is_an_error_with_an_alert_to_send() {
    let (_pki, config) = p256();
    let mut server = TlsSession::new(config).expect("session");
    let mut plain = BytesMut::new();
    let err = server.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut plain).expect_err("not TLS");
    let TlsError::Protocol { alert, .. } = &err else { panic!("{err:?}") };
    assert!(matches!(alert, AlertSent::Plain(_)), "{alert:?}");
    assert_eq!(err.reason(), "invalid_message");
    assert!(plain.is_empty());
    assert!(server.is_failed() && server.wants_write(), "the alert is still to be flushed");
    let mut out = Vec::new();
    server.drain_tls_into(&mut out);
    let last = record::records(&out).last().expect("an alert record");
    assert_eq!(last.content_type, record::CONTENT_ALERT);
    assert!(!server.wants_write());
    assert!(matches!(server.feed(b"more", &mut plain), Err(TlsError::Failed)));
    assert!(matches!(server.seal(&[Bytes::from_static(b"x")]), Err(TlsError::Failed)));
}

/// A TLS 1.2 client hello offering only `TLS_RSA_WITH_AES_128_CBC_SHA` and `TLS_RSA_WITH_3DES_EDE_CBC_SHA`
/// (RSA key exchange, which rustls does not implement), with the usual groups and signature algorithms.
fn client_hello_with_only_rsa_kx_suites() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([0x42; 32]); // random
    body.push(0); // session id
    body.extend([0x00, 0x04, 0x00, 0x2f, 0x00, 0x0a]); // cipher suites
    body.extend([0x01, 0x00]); // compression: null
    let mut ext = Vec::new();
    ext.extend([0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17]); // supported_groups: secp256r1
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // ec_point_formats: uncompressed
    ext.extend([0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]); // signature_algorithms: ecdsa_secp256r1_sha256
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![0x01, 0x00];
    hs.extend((body.len() as u16).to_be_bytes());
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

#[test]
fn a_client_hello_with_no_usable_suite_gets_a_handshake_failure_alert() {
    let (_pki, config) = p256();
    let mut server = TlsSession::new(config).expect("session");
    let err = server.feed(&client_hello_with_only_rsa_kx_suites(), &mut BytesMut::new()).expect_err("no common suite");
    let TlsError::Protocol { alert, .. } = &err else { panic!("{err:?}") };
    assert_eq!(*alert, AlertSent::Plain(AlertDescription::HandshakeFailure), "{err}");
    assert_eq!(err.reason(), "incompatible");
    let mut out = Vec::new();
    server.drain_tls_into(&mut out);
    assert_eq!(out, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 40], "a fatal handshake_failure alert record");
}

#[test]
fn an_oversized_record_ends_the_session_with_a_decode_error_alert() {
    let (_pki, config) = p256();
    let mut server = TlsSession::new(config).expect("session");
    // A handshake record claiming 65535 bytes: more than TLS ever allows (2^14 + 2048).
    let err = server.feed(&[0x16, 0x03, 0x03, 0xff, 0xff, 0x01], &mut BytesMut::new()).expect_err("too large");
    let TlsError::Protocol { alert, .. } = &err else { panic!("{err:?}") };
    // rustls 0.23 answers a length no record can have with decode_error (RFC 8446 5.1 would say
    // record_overflow); either way the peer gets a fatal alert before anything is buffered.
    assert_eq!(*alert, AlertSent::Plain(AlertDescription::DecodeError), "{err}");
    assert_eq!(err.reason(), "invalid_message");
}

#[test]
fn sealing_an_empty_turn_sends_nothing() {
    let (pki, config) = p256();
    let (_client, mut server) = connect(&pki, &config, TLS13);
    assert_eq!(server.seal(&[]).expect("seal"), 0);
    assert_eq!(server.seal(&[Bytes::new(), Bytes::new()]).expect("seal"), 0);
    assert!(!server.wants_write());
}

#[test]
fn close_notify_from_the_client_is_seen_and_later_bytes_are_ignored() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    std::io::Write::write_all(&mut client.writer(), b"last words").expect("write");
    client.send_close_notify();
    let mut bytes = client_output(&mut client);
    bytes.extend(b"trailing garbage after close_notify");
    let mut plain = BytesMut::new();
    server.feed(&bytes, &mut plain).expect("clean close");
    assert_eq!(&plain[..], b"last words");
    assert!(server.peer_closed());
}

#[test]
fn close_notify_from_the_server_reaches_the_client() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    server.seal(&[Bytes::from_static(b"bye")]).expect("seal");
    server.close();
    assert!(server.wants_write());
    let mut bytes = Vec::new();
    server.drain_tls_into(&mut bytes);
    let mut slice = &bytes[..];
    let mut plain = Vec::new();
    let mut closed = false;
    while !slice.is_empty() {
        client.read_tls(&mut slice).expect("read");
        let state = client.process_new_packets().expect("client");
        closed |= state.peer_has_closed();
        let _ = std::io::Read::read_to_end(&mut client.reader(), &mut plain);
    }
    assert_eq!(plain, b"bye");
    assert!(closed);
}

#[test]
fn a_tampered_record_fails_the_session_with_an_encrypted_alert() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    std::io::Write::write_all(&mut client.writer(), b"hello").expect("write");
    let mut bytes = client_output(&mut client);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let err = server.feed(&bytes, &mut BytesMut::new()).expect_err("bad MAC");
    let TlsError::Protocol { alert, .. } = &err else { panic!("{err:?}") };
    assert_eq!(*alert, AlertSent::Encrypted);
    assert!(server.wants_write());
}

#[test]
fn a_client_hello_sharing_its_record_with_more_handshake_messages_is_refused_without_a_panic() {
    // rustls keeps the unprocessed messages of a record it has started on; asking it for its alert with an
    // empty buffer made it index past that buffer and panic (the release build aborts on panic, so one
    // 400-byte record took the whole server down).
    let (pki, config) = p256();
    let name = "localhost".try_into().expect("name");
    let mut client = ClientConnection::new(client_config(&pki, TLS13), name).expect("client");
    let mut record = client_output(&mut client);
    for _ in 0..2 {
        record.extend_from_slice(&[20, 0, 0, 32]);
        record.extend_from_slice(&[0; 32]);
    }
    let len = u16::try_from(record.len() - record::HEADER_LEN).expect("one record");
    record[3..5].copy_from_slice(&len.to_be_bytes());
    let mut server = TlsSession::new(config).expect("session");
    let error =
        server.feed(&record, &mut BytesMut::new()).expect_err("a Finished before the server's hello is refused");
    assert!(matches!(error, TlsError::Protocol { alert: AlertSent::Plain(_), .. }), "{error:?}");
    assert!(server.wants_write(), "the alert waits to be sent");
    assert!(matches!(server.feed(b"more", &mut BytesMut::new()), Err(TlsError::Failed)));
}

proptest! {
    #[test]
    fn feed_never_panics_on_arbitrary_bytes(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..8), handshake_prefix in any::<bool>()) {
        let (pki, config) = p256_shared();
        let mut server = TlsSession::new(config).expect("session");
        let mut plain = BytesMut::new();
        if handshake_prefix {
            // Start from a real client hello so the bytes hit later handshake states too.
            let name = "localhost".try_into().expect("name");
            let mut client = ClientConnection::new(client_config(&pki, TLS13), name).expect("client");
            let _ = client_to_server(&mut client, &mut server);
        }
        for chunk in &chunks {
            if server.feed(chunk, &mut plain).is_err() {
                let mut out = Vec::new();
                server.drain_tls_into(&mut out);
                prop_assert!(!server.wants_write());
                prop_assert!(matches!(server.feed(chunk, &mut plain), Err(TlsError::Failed)));
                break;
            }
        }
    }
}

proptest! {
    /// The same, with the arbitrary bytes inside the client hello's own record, behind the hello: the
    /// messages rustls has yet to process when the hello's handling fails.
    #[test]
    fn arbitrary_bytes_behind_a_client_hello_in_its_record_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..400)) {
        let (pki, config) = p256_shared();
        let name = "localhost".try_into().expect("name");
        let mut client = ClientConnection::new(client_config(&pki, TLS13), name).expect("client");
        let mut record = client_output(&mut client);
        record.extend_from_slice(&tail);
        let len = u16::try_from(record.len() - record::HEADER_LEN).expect("one record");
        record[3..5].copy_from_slice(&len.to_be_bytes());
        let mut server = TlsSession::new(config).expect("session");
        if server.feed(&record, &mut BytesMut::new()).is_err() {
            prop_assert!(matches!(server.feed(b"x", &mut BytesMut::new()), Err(TlsError::Failed)));
        }
    }
}

/// One CA and configuration for all proptest cases (generating keys per case would dominate the run).
fn p256_shared() -> (Arc<Pki>, Arc<ServerConfig>) {
    static SHARED: std::sync::OnceLock<(Arc<Pki>, Arc<ServerConfig>)> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (pki, config) = p256();
            (Arc::new(pki), config)
        })
        .clone()
}

#[test]
fn many_small_records_read_at_once_come_out_whole_and_in_order() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    let mut wire = Vec::new();
    for i in 0..2000u32 {
        // Each write and flush makes its own record.
        std::io::Write::write_all(&mut client.writer(), &i.to_be_bytes()).expect("write");
        wire.extend(client_output(&mut client));
    }
    let mut plain = BytesMut::new();
    server.feed(&wire, &mut plain).expect("feed");
    let expected: Vec<u8> = (0..2000u32).flat_map(|i| i.to_be_bytes()).collect();
    assert_eq!(&plain[..], &expected[..]);
    assert_eq!(server.input_held(), 0, "nothing left over");
}

#[test]
fn an_idle_session_holds_no_input_or_output_buffer() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    std::io::Write::write_all(&mut client.writer(), b"GET / HTTP/1.1\r\n\r\n").expect("write");
    let bytes = client_output(&mut client);
    // Half a record first: held until the rest comes.
    let mut plain = BytesMut::new();
    server.feed(&bytes[..bytes.len() / 2], &mut plain).expect("feed");
    assert!(server.input_held() > 0, "the unfinished record is kept");
    server.feed(&bytes[bytes.len() / 2..], &mut plain).expect("feed");
    assert_eq!(&plain[..], b"GET / HTTP/1.1\r\n\r\n");
    server.seal(&[Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n")]).expect("seal");
    assert!(server.wants_write());
    let mut sink = Vec::new();
    while server.wants_write() {
        server.write_tls_to(&mut sink).expect("write");
    }
    assert_eq!(server.input_held(), 0, "no input buffer once the record is complete");
    assert_eq!(server.pending_tls(), 0, "no output buffer once everything is written");
    assert_eq!(feed_client(&mut client, &sink).expect("client"), b"HTTP/1.1 200 OK\r\n\r\n");
}
