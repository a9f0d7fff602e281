//! Herald's TLS 1.3 record layer ([`super::traffic`]) against a real `rustls::ClientConnection`, and against
//! a test peer that seals records by hand with the client's keys (what a hostile client could send).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{AlertDescription, ClientConnection, ConnectionTrafficSecrets};

use super::record::{self, CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE};
use super::tests::{
    app_records, client_output, client_to_server, connect, connect_with, feed_client, p256, server_to_client, TLS12,
    TLS13,
};
use super::testutil::client_config;
use super::{AlertSent, TlsError, TlsSession};

/// A connected TLS 1.3 pair whose client can also hand its keys to a [`Peer`].
fn connect_extractable() -> (ClientConnection, TlsSession) {
    let (pki, config) = p256();
    let mut client_config = (*client_config(&pki, TLS13)).clone();
    client_config.enable_secret_extraction = true;
    connect_with(Arc::new(client_config), &config)
}

/// One direction of the test peer: key, IV, next sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Self {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => panic!("a cipher herald's provider does not have"),
        };
        let key = LessSafeKey::new(UnboundKey::new(algorithm, key.as_ref()).expect("key"));
        Direction { key, iv: iv.as_ref().try_into().expect("12-byte IV"), seq }
    }

    fn nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// A client written by hand: seals any inner content type and padding, opens what the server sends.
struct Peer {
    tx: Direction,
    rx: Direction,
}

impl Peer {
    fn from(client: ClientConnection) -> Self {
        let secrets = client.dangerous_extract_secrets().expect("the client config allows extraction");
        Peer { tx: Direction::new(secrets.tx), rx: Direction::new(secrets.rx) }
    }

    /// One record: `content`, its inner type, `padding` zero bytes.
    fn record(&mut self, inner_type: u8, content: &[u8], padding: usize) -> Vec<u8> {
        let mut body = content.to_vec();
        body.push(inner_type);
        body.resize(body.len() + padding, 0);
        let len = u16::try_from(body.len() + 16).expect("short record");
        let header = [CONTENT_APPLICATION_DATA, 3, 3, len.to_be_bytes()[0], len.to_be_bytes()[1]];
        let nonce = self.tx.nonce();
        self.tx.key.seal_in_place_append_tag(nonce, Aad::from(header), &mut body).expect("seal");
        [&header[..], &body].concat()
    }

    /// Every record the server sent, opened: (inner type, content).
    fn open_all(&mut self, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        for record in record::records(bytes) {
            let header = [record.content_type, 3, 3, 0, 0];
            let mut header = header;
            header[3..].copy_from_slice(&u16::try_from(record.body.len()).expect("len").to_be_bytes());
            let mut body = record.body.to_vec();
            let nonce = self.rx.nonce();
            let plain =
                self.rx.key.open_in_place(nonce, Aad::from(header), &mut body).expect("the server's record opens");
            let end = plain.iter().rposition(|&b| b != 0).expect("an inner type");
            out.push((plain[end], plain[..end].to_vec()));
        }
        out
    }
}

fn feed(server: &mut TlsSession, bytes: &[u8]) -> Result<BytesMut, TlsError> {
    let mut plain = BytesMut::new();
    server.feed(bytes, &mut plain)?;
    Ok(plain)
}

fn drain(server: &mut TlsSession) -> Vec<u8> {
    let mut out = Vec::new();
    server.drain_tls_into(&mut out);
    out
}

/// The server failed with `reason`, queued an encrypted alert, and the peer reads that alert as `expect`.
fn assert_fails_with(
    server: &mut TlsSession,
    peer: &mut Peer,
    result: Result<BytesMut, TlsError>,
    reason: &str,
    expect: AlertDescription,
) {
    let error = result.expect_err("the record is refused");
    assert_eq!(error.reason(), reason, "{error}");
    assert!(matches!(error, TlsError::Protocol { alert: AlertSent::Encrypted, .. }), "{error:?}");
    assert_eq!(peer.open_all(&drain(server)), vec![(CONTENT_ALERT, vec![2, u8::from(expect)])]);
    assert!(matches!(feed(server, b"more"), Err(TlsError::Failed)), "the failure is sticky");
}

#[test]
fn a_tls13_session_moves_to_herald_records_and_a_tls12_one_stays_with_rustls() {
    let (pki, config) = p256();
    let (_, mut tls13) = connect(&pki, &config, TLS13);
    assert!(tls13.traffic_mut().is_some());
    assert!(!tls13.is_handshaking());
    assert_eq!(tls13.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(tls13.alpn_protocol(), Some(&b"http/1.1"[..]), "kept across the hand-over");
    assert_eq!(tls13.handshake_kind(), Some(rustls::HandshakeKind::Full), "kept across the hand-over");
    let (_, mut tls12) = connect(&pki, &config, TLS12);
    assert!(tls12.traffic_mut().is_none());
}

#[test]
fn every_tls13_cipher_suite_carries_data_both_ways() {
    let (pki, config) = p256();
    let provider = super::certs::provider();
    let suites: Vec<_> =
        provider.cipher_suites.iter().filter(|s| s.version() == &rustls::version::TLS13).copied().collect();
    assert_eq!(suites.len(), 3, "AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305");
    for suite in suites {
        let one = rustls::crypto::CryptoProvider { cipher_suites: vec![suite], ..(*provider).clone() };
        let mut client_config = rustls::ClientConfig::builder_with_provider(Arc::new(one))
            .with_protocol_versions(TLS13)
            .expect("versions")
            .with_root_certificates(roots_of(&pki))
            .with_no_client_auth();
        client_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (mut client, mut server) = connect_with(Arc::new(client_config), &config);
        assert_eq!(client.negotiated_cipher_suite(), Some(suite));
        std::io::Write::write_all(&mut client.writer(), b"ping").expect("write");
        assert_eq!(&client_to_server(&mut client, &mut server).expect("server opens")[..], b"ping", "{suite:?}");
        server.seal(&[Bytes::from_static(b"pong")]).expect("seal");
        assert_eq!(server_to_client(&mut server, &mut client).expect("client opens"), b"pong", "{suite:?}");
    }
}

fn roots_of(pki: &super::testutil::Pki) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).expect("CA");
    roots
}

#[test]
fn a_turn_of_frames_is_gathered_into_records_of_at_most_16_kib_and_reads_back_whole() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    // Odd sizes, so record boundaries fall inside frames: 40,000 B make three records.
    let frames: Vec<Bytes> = (0..400u32).map(|i| Bytes::from(vec![i as u8; 97 + (i as usize % 7)])).collect();
    let total: usize = frames.iter().map(|f| f.len()).sum();
    assert_eq!(server.seal(&frames).expect("seal"), total);
    let ciphertext = drain(&mut server);
    assert_eq!(app_records(&ciphertext), total.div_ceil(16 * 1024));
    assert!(record::records(&ciphertext).all(|r| r.body.len() <= 16 * 1024 + 17));
    let got = feed_client(&mut client, &ciphertext).expect("the client opens every record");
    assert_eq!(got, frames.concat());

    // And the sequence carries on across turns.
    server.seal(&[Bytes::from_static(b"next turn")]).expect("seal");
    assert_eq!(server_to_client(&mut server, &mut client).expect("client"), b"next turn");
}

#[test]
fn data_from_the_client_opens_from_any_split_of_the_byte_stream() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    client.set_buffer_limit(None);
    let upload: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    std::io::Write::write_all(&mut client.writer(), &upload).expect("write");
    let bytes = client_output(&mut client);
    for split in [1, 5, 6, 100, 16_405, bytes.len() - 1] {
        let (mut c, mut s) = connect(&pki, &config, TLS13);
        c.set_buffer_limit(None);
        std::io::Write::write_all(&mut c.writer(), &upload).expect("write");
        let bytes = client_output(&mut c);
        let mut plain = BytesMut::new();
        for chunk in bytes.chunks(split) {
            s.feed(chunk, &mut plain).expect("partial records wait for the rest");
        }
        assert_eq!(&plain[..], &upload[..], "split every {split} bytes");
        assert_eq!(s.input_held(), 0, "nothing is held once every record is complete");
    }
    assert_eq!(&feed(&mut server, &bytes).expect("all at once")[..], &upload[..]);
}

#[test]
fn a_client_key_update_is_followed_and_answered_with_ours() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    client.refresh_traffic_keys().expect("the client asks for a key update");
    std::io::Write::write_all(&mut client.writer(), b"under new keys").expect("write");
    assert_eq!(&client_to_server(&mut client, &mut server).expect("server follows")[..], b"under new keys");
    assert!(server.wants_write(), "our own KeyUpdate, as the client asked");
    server.seal(&[Bytes::from_static(b"reply")]).expect("seal");
    assert_eq!(server_to_client(&mut server, &mut client).expect("the client follows ours"), b"reply");
    let traffic = server.traffic_mut().expect("TLS 1.3");
    assert_eq!(traffic.sequence(), (1, 1), "both directions restarted their sequence on the new keys");
}

#[test]
fn the_send_key_is_refreshed_before_it_seals_its_limit() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    server.traffic_mut().expect("TLS 1.3").set_key_limit(2);
    let mut ciphertext = Vec::new();
    for i in 0..7u8 {
        server.seal(&[Bytes::from(vec![b'a' + i; 10])]).expect("seal");
        ciphertext.extend(drain(&mut server));
    }
    // 7 data records, and a KeyUpdate before the 3rd, 5th and 7th (the server's first two records since the
    // hand-over are data).
    assert_eq!(app_records(&ciphertext), 7 + 3);
    let got = feed_client(&mut client, &ciphertext).expect("the client follows every key update");
    assert_eq!(got, (0..7u8).flat_map(|i| vec![b'a' + i; 10]).collect::<Vec<_>>());
}

#[test]
fn thirty_two_key_updates_in_a_row_are_allowed_and_the_thirty_third_is_refused() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    for _ in 0..32 {
        client.refresh_traffic_keys().expect("request");
    }
    std::io::Write::write_all(&mut client.writer(), b"data resets the count").expect("write");
    assert_eq!(&client_to_server(&mut client, &mut server).expect("32 are fine")[..], b"data resets the count");
    server_to_client(&mut server, &mut client).expect("the client follows our 32 answers");
    for _ in 0..33 {
        client.refresh_traffic_keys().expect("request");
    }
    let error = client_to_server(&mut client, &mut server).expect_err("33 in a row are refused");
    assert_eq!(error.reason(), "misbehaved");
}

#[test]
fn close_notify_ends_the_clients_stream_and_bytes_after_it_are_ignored() {
    let (pki, config) = p256();
    let (mut client, mut server) = connect(&pki, &config, TLS13);
    std::io::Write::write_all(&mut client.writer(), b"last words").expect("write");
    client.send_close_notify();
    let mut bytes = client_output(&mut client);
    bytes.extend_from_slice(b"\x17\x03\x03\x00\x05junk");
    assert_eq!(&feed(&mut server, &bytes).expect("clean close")[..], b"last words");
    assert!(server.peer_closed());
    assert_eq!(feed(&mut server, b"more junk").expect("ignored").len(), 0);
    server.close();
    let mut tail = drain(&mut server);
    assert_eq!(app_records(&tail), 1, "our close_notify");
    assert!(feed_client(&mut client, &std::mem::take(&mut tail)).is_ok());
}

#[test]
fn a_tampered_record_is_bad_record_mac() {
    let (mut client, mut server) = connect_extractable();
    std::io::Write::write_all(&mut client.writer(), b"hello").expect("write");
    let mut bytes = client_output(&mut client);
    *bytes.last_mut().expect("a record") ^= 1;
    let mut peer = Peer::from(client);
    let result = feed(&mut server, &bytes);
    assert_fails_with(&mut server, &mut peer, result, "decrypt_error", AlertDescription::BadRecordMac);
}

#[test]
fn a_record_longer_than_tls_allows_is_refused_from_its_header() {
    let (client, mut server) = connect_extractable();
    let mut peer = Peer::from(client);
    // 2^14 + 256 + 1 bytes announced: refused before the body arrives.
    let result = feed(&mut server, &[CONTENT_APPLICATION_DATA, 3, 3, 0x41, 0x01]);
    assert_fails_with(&mut server, &mut peer, result, "other", AlertDescription::RecordOverflow);
}

#[test]
fn a_plaintext_record_after_the_handshake_is_unexpected() {
    let (client, mut server) = connect_extractable();
    let mut peer = Peer::from(client);
    let result = feed(&mut server, &[CONTENT_HANDSHAKE, 3, 3, 0, 1, 0]);
    assert_fails_with(&mut server, &mut peer, result, "unexpected_message", AlertDescription::UnexpectedMessage);
}

#[test]
fn padding_is_stripped_and_the_inner_type_says_what_the_record_holds() {
    let (client, mut server) = connect_extractable();
    let mut peer = Peer::from(client);
    let mut bytes = peer.record(CONTENT_APPLICATION_DATA, b"padded", 300);
    bytes.extend(peer.record(CONTENT_APPLICATION_DATA, b"", 0));
    bytes.extend(peer.record(CONTENT_APPLICATION_DATA, b" data", 1));
    assert_eq!(&feed(&mut server, &bytes).expect("valid records")[..], b"padded data");
}

#[test]
fn a_record_of_nothing_but_padding_is_refused() {
    let (client, mut server) = connect_extractable();
    let mut peer = Peer::from(client);
    let bytes = peer.record(0, b"", 40);
    let result = feed(&mut server, &bytes);
    assert_fails_with(&mut server, &mut peer, result, "misbehaved", AlertDescription::UnexpectedMessage);
}

#[test]
fn a_handshake_message_other_than_key_update_is_unexpected() {
    let (client, mut server) = connect_extractable();
    let mut peer = Peer::from(client);
    let finished = [&[20u8, 0, 0, 32][..], &[0; 32]].concat();
    let bytes = peer.record(CONTENT_HANDSHAKE, &finished, 0);
    let result = feed(&mut server, &bytes);
    assert_fails_with(&mut server, &mut peer, result, "unexpected_message", AlertDescription::UnexpectedMessage);
}

#[test]
fn a_key_update_must_end_its_record() {
    let (client, mut server) = connect_extractable();
    let mut peer = Peer::from(client);
    let bytes = peer.record(CONTENT_HANDSHAKE, &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0], 0);
    let result = feed(&mut server, &bytes);
    assert_fails_with(&mut server, &mut peer, result, "misbehaved", AlertDescription::UnexpectedMessage);
}

#[test]
fn a_key_update_with_an_unknown_request_is_a_decode_error() {
    let (client, mut server) = connect_extractable();
    let mut peer = Peer::from(client);
    let bytes = peer.record(CONTENT_HANDSHAKE, &[24, 0, 0, 1, 7], 0);
    let result = feed(&mut server, &bytes);
    assert_fails_with(&mut server, &mut peer, result, "invalid_message", AlertDescription::DecodeError);
}

#[test]
fn user_canceled_warnings_are_ignored_four_times_and_the_fifth_is_refused() {
    let (client, mut server) = connect_extractable();
    let mut peer = Peer::from(client);
    let user_canceled = [1, u8::from(AlertDescription::UserCanceled)];
    let mut bytes = Vec::new();
    for _ in 0..4 {
        bytes.extend(peer.record(CONTENT_ALERT, &user_canceled, 0));
    }
    bytes.extend(peer.record(CONTENT_APPLICATION_DATA, b"still here", 0));
    assert_eq!(&feed(&mut server, &bytes).expect("four warnings pass")[..], b"still here");
    let bytes = peer.record(CONTENT_ALERT, &user_canceled, 0);
    let result = feed(&mut server, &bytes);
    assert_fails_with(&mut server, &mut peer, result, "misbehaved", AlertDescription::UnexpectedMessage);
}

#[test]
fn any_other_warning_is_a_decode_error_and_a_fatal_alert_gets_no_answer() {
    let (client, mut server) = connect_extractable();
    let mut peer = Peer::from(client);
    let bytes = peer.record(CONTENT_ALERT, &[1, u8::from(AlertDescription::BadCertificate)], 0);
    let result = feed(&mut server, &bytes);
    assert_fails_with(&mut server, &mut peer, result, "alert_received", AlertDescription::DecodeError);

    let (client, mut server) = connect_extractable();
    let mut peer = Peer::from(client);
    let bytes = peer.record(CONTENT_ALERT, &[2, u8::from(AlertDescription::InternalError)], 0);
    let error = feed(&mut server, &bytes).expect_err("fatal");
    assert!(matches!(error, TlsError::Protocol { alert: AlertSent::None, .. }), "{error:?}");
    assert!(!server.wants_write(), "nothing is sent back after the peer's fatal alert");
}

#[test]
fn an_alert_of_unknown_level_is_an_illegal_parameter() {
    let (client, mut server) = connect_extractable();
    let mut peer = Peer::from(client);
    let bytes = peer.record(CONTENT_ALERT, &[9, 0], 0);
    // Even close_notify: it ends the stream only at a known level.
    let result = feed(&mut server, &bytes);
    assert_fails_with(&mut server, &mut peer, result, "alert_received", AlertDescription::IllegalParameter);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever an established connection receives, the record layer answers with plaintext or an error,
    /// never a panic, and holds at most one record's worth of input.
    #[test]
    fn herald_records_never_panic_on_arbitrary_bytes(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8)) {
        let (pki, config) = p256();
        let (_client, mut server) = connect(&pki, &config, TLS13);
        for chunk in chunks {
            let mut plain = BytesMut::new();
            if server.feed(&chunk, &mut plain).is_err() {
                break;
            }
            prop_assert!(server.input_held() <= 5 + 16 * 1024 + 256 + 300);
        }
    }
}
