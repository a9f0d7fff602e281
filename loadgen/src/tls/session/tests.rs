//! The receive path of [`Session`] against rustls' own `ServerConnection` in memory (herald's server
//! configuration: TLS 1.3 and 1.2, ALPN, tickets), with certificates made here by rcgen: records split
//! anywhere, several in one read, larger than the caller's buffer, `close_notify`, corruption, a rejected
//! certificate, resumption, and what an idle session keeps.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use herald::tls::certs;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{AlertDescription, HandshakeKind, ProtocolVersion, ServerConfig, ServerConnection};

use super::Session;
use crate::stats::Failure;
use crate::tls::{classify, ClientTls, TlsFailure, Trust};

/// A CA (its PEM in a file of its own) and a `localhost` leaf it signed.
struct Pki {
    ca_file: PathBuf,
    leaf: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("session test CA {name}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("leaf params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf certificate");
        let ca_file = std::env::temp_dir().join(format!("loadgen-session-{}-{name}.pem", std::process::id()));
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        Pki {
            ca_file,
            leaf: leaf.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        }
    }

    /// herald's server configuration for this leaf.
    fn server_config(&self) -> Arc<ServerConfig> {
        let provider = certs::provider();
        let certified = certs::certified_key(
            std::path::Path::new("leaf"),
            vec![self.leaf.clone()],
            std::path::Path::new("key"),
            self.key.clone_key(),
            &provider,
        )
        .expect("certified key");
        certs::server_config_with(Arc::new(certified), certs::ticketer().expect("ticketer"), provider)
            .expect("server config")
    }

    /// herald's server configuration offering only `suite`.
    fn server_config_for(&self, suite: rustls::CipherSuite) -> Arc<ServerConfig> {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.retain(|s| s.suite() == suite);
        let provider = Arc::new(provider);
        let certified = certs::certified_key(
            std::path::Path::new("leaf"),
            vec![self.leaf.clone()],
            std::path::Path::new("key"),
            self.key.clone_key(),
            &provider,
        )
        .expect("certified key");
        certs::server_config_with(Arc::new(certified), certs::ticketer().expect("ticketer"), provider)
            .expect("server config")
    }

    /// A TLS 1.2-only server with this leaf.
    fn tls12_server_config(&self) -> Arc<ServerConfig> {
        let config = ServerConfig::builder_with_provider(certs::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("TLS 1.2")
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf.clone()], self.key.clone_key())
            .expect("server config");
        Arc::new(config)
    }

    /// loadgen's client settings trusting this CA.
    fn client(&self, resume: bool) -> ClientTls {
        ClientTls::new("localhost", Trust::Ca(self.ca_file.clone()), resume).expect("client TLS")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// Ciphertext on its way to the client, in the chunks a socket would hand out: each call of the source
/// takes (at most) one chunk; none left is `WouldBlock`, or the end of the stream once `ended`.
#[derive(Default)]
struct Wire {
    chunks: VecDeque<Vec<u8>>,
    ended: bool,
}

impl Wire {
    fn source(&mut self) -> impl FnMut(&mut [u8]) -> io::Result<usize> + '_ {
        |into: &mut [u8]| match self.chunks.pop_front() {
            Some(mut chunk) => {
                let n = chunk.len().min(into.len());
                into[..n].copy_from_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.chunks.push_front(chunk.split_off(n));
                }
                Ok(n)
            }
            None if self.ended => Ok(0),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// A client session and a server joined in memory.
struct Pair {
    client: Session,
    server: ServerConnection,
    wire: Wire,
    scratch: Vec<u8>,
    /// Plaintext the server received.
    received: Vec<u8>,
}

impl Pair {
    fn new(tls: &ClientTls, server: Arc<ServerConfig>) -> Pair {
        Pair {
            client: tls.session().expect("client session"),
            server: ServerConnection::new(server).expect("server session"),
            wire: Wire::default(),
            scratch: Vec::new(),
            received: Vec::new(),
        }
    }

    /// Handshake done, the server's tickets (if any) received.
    fn connected(tls: &ClientTls, server: Arc<ServerConfig>) -> Pair {
        let mut pair = Pair::new(tls, server);
        for _ in 0..4 {
            pair.client_reads_would_block();
            pair.client_to_server().expect("server takes the client's flight");
            pair.server_to_wire();
        }
        pair.client_reads_would_block();
        assert!(!pair.client.is_handshaking(), "handshake complete");
        assert!(!pair.server.is_handshaking(), "server handshake complete");
        pair
    }

    /// The client's sealed bytes, processed by the server (plaintext to `received`).
    fn client_to_server(&mut self) -> Result<(), rustls::Error> {
        let mut bytes = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls_to(&mut bytes).expect("to memory");
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            self.server.read_tls(&mut rest).expect("server reads");
            self.server.process_new_packets()?;
            let mut chunk = [0u8; 4096];
            loop {
                match self.server.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("server plaintext: {e}"),
                }
            }
        }
        Ok(())
    }

    /// Everything the server has to send, as one chunk on the wire.
    fn server_to_wire(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        while self.server.wants_write() {
            self.server.write_tls(&mut bytes).expect("to memory");
        }
        if !bytes.is_empty() {
            self.wire.chunks.push_back(bytes.clone());
        }
        bytes
    }

    /// The server's records for these messages (one write each), not yet on the wire.
    fn server_sends(&mut self, messages: &[&[u8]]) -> Vec<u8> {
        for message in messages {
            self.server.writer().write_all(message).expect("server writes");
        }
        let mut bytes = Vec::new();
        while self.server.wants_write() {
            self.server.write_tls(&mut bytes).expect("to memory");
        }
        bytes
    }

    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Pair { client, wire, scratch, .. } = self;
        client.read(out, scratch, &mut wire.source())
    }

    fn client_reads_would_block(&mut self) {
        let mut out = [0u8; 256];
        match self.read(&mut out) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => panic!("expected WouldBlock, got {other:?}"),
        }
    }

    /// Reads until `WouldBlock` (or the end), `room` bytes at a time.
    fn read_available(&mut self, room: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut out = vec![0u8; room];
        loop {
            match self.read(&mut out) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&out[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }
}

fn tls_failure(e: &io::Error) -> &rustls::Error {
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    &e.get_ref().and_then(|inner| inner.downcast_ref::<TlsFailure>()).expect("a TlsFailure").0
}

#[test]
fn the_handshake_agrees_on_tls_1_3_and_http_1_1_and_keeps_no_buffers() {
    let pki = Pki::new("handshake");
    let pair = Pair::connected(&pki.client(false), pki.server_config());
    assert_eq!(pair.client.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(pair.server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(pair.client.handshake_kind(), Some(HandshakeKind::Full));
    assert!(pair.client.own_record_layer(), "TLS 1.3 records are opened here once the handshake is done");
    assert_eq!(pair.client.input_held(), 0, "no receive buffer once idle");
    assert!(!pair.client.wants_write(), "no output buffer once idle");
}

#[test]
fn records_split_anywhere_across_reads_give_the_same_plaintext() {
    let pki = Pki::new("split");
    let mut pair = Pair::connected(&pki.client(false), pki.server_config());
    let messages: [&[u8]; 3] = [b"a", &[7u8; 300], &[9u8; 5000]];
    let expected = messages.concat();
    for piece in [1, 2, 3, 4, 5, 6, 7, 8, 13, 21, 64, 1000, 4099] {
        let ciphertext = pair.server_sends(&messages);
        let mut got = Vec::new();
        for chunk in ciphertext.chunks(piece) {
            pair.wire.chunks.push_back(chunk.to_vec());
            got.extend(pair.read_available(64 * 1024));
        }
        assert_eq!(got, expected, "pieces of {piece} bytes");
        assert_eq!(pair.client.input_held(), 0, "pieces of {piece}: nothing kept after the last record");
    }
}

#[test]
fn an_unfinished_record_is_kept_until_the_rest_arrives_and_then_released() {
    let pki = Pki::new("partial");
    let mut pair = Pair::connected(&pki.client(false), pki.server_config());
    let ciphertext = pair.server_sends(&[b"hello"]);
    let (head, tail) = ciphertext.split_at(ciphertext.len() / 2);
    pair.wire.chunks.push_back(head.to_vec());
    let mut out = [0u8; 64];
    assert_eq!(pair.read(&mut out).map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
    assert!(pair.client.input_held() >= head.len(), "the first half is kept");
    pair.wire.chunks.push_back(tail.to_vec());
    assert_eq!(pair.read(&mut out).expect("read"), 5);
    assert_eq!(&out[..5], b"hello");
    assert_eq!(pair.client.input_held(), 0);
}

#[test]
fn several_records_in_one_read_come_out_of_one_call() {
    let pki = Pki::new("several");
    let mut pair = Pair::connected(&pki.client(false), pki.server_config());
    let ciphertext = pair.server_sends(&[b"one ", b"two ", b"three"]);
    pair.wire.chunks.push_back(ciphertext);
    let mut out = [0u8; 1024];
    let n = pair.read(&mut out).expect("read");
    assert_eq!(&out[..n], b"one two three");
    assert!(!pair.client.read_pending(), "a short read: the source was drained");
    assert_eq!(pair.read(&mut out).map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
}

#[test]
fn a_record_larger_than_the_callers_buffer_comes_out_in_full_reads() {
    let pki = Pki::new("large");
    let mut pair = Pair::connected(&pki.client(false), pki.server_config());
    let message: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let ciphertext = pair.server_sends(&[&message]);
    pair.wire.chunks.push_back(ciphertext);
    let mut got = Vec::new();
    let mut out = [0u8; 1000];
    for _ in 0..10 {
        assert_eq!(pair.read(&mut out).expect("read"), 1000, "every read fills the buffer");
        got.extend_from_slice(&out);
    }
    assert_eq!(got, message);
    assert!(!pair.client.read_pending());
    assert_eq!(pair.client.input_held(), 0, "the rest of the record is released once read");
    assert_eq!(pair.read(&mut out).map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
}

#[test]
fn close_notify_ends_the_stream_after_the_data_before_it() {
    let pki = Pki::new("close");
    let mut pair = Pair::connected(&pki.client(false), pki.server_config());
    let mut ciphertext = pair.server_sends(&[b"bye"]);
    pair.server.send_close_notify();
    ciphertext.extend(pair.server_sends(&[]));
    // Bytes after close_notify are ignored.
    ciphertext.extend_from_slice(b"trailing garbage");
    pair.wire.chunks.push_back(ciphertext);
    let mut out = [0u8; 64];
    assert_eq!(pair.read(&mut out).expect("read"), 3);
    assert_eq!(&out[..3], b"bye");
    assert!(pair.client.read_pending(), "a short read, but the end is still to be reported");
    assert_eq!(pair.read(&mut out).expect("end of stream"), 0);
    assert_eq!(pair.read(&mut out).expect("still the end"), 0);
    assert_eq!(pair.client.input_held(), 0);
}

#[test]
fn the_end_of_the_socket_without_close_notify_is_the_end_of_the_stream() {
    let pki = Pki::new("eof");
    let mut pair = Pair::connected(&pki.client(false), pki.server_config());
    let ciphertext = pair.server_sends(&[b"last"]);
    pair.wire.chunks.push_back(ciphertext);
    pair.wire.ended = true;
    let mut out = [0u8; 64];
    assert_eq!(pair.read(&mut out).expect("read"), 4);
    // As on a plain socket, the end shows on the next read.
    assert_eq!(pair.read(&mut out).expect("end of stream"), 0);
}

#[test]
fn a_corrupted_record_fails_with_a_tls_error_and_sends_bad_record_mac() {
    let pki = Pki::new("corrupt");
    let mut pair = Pair::connected(&pki.client(false), pki.server_config());
    let mut ciphertext = pair.server_sends(&[b"first", b"second"]);
    let last = ciphertext.len() - 1;
    ciphertext[last] ^= 0x40;
    pair.wire.chunks.push_back(ciphertext);
    let mut out = [0u8; 64];
    let e = pair.read(&mut out).expect_err("the second record does not authenticate");
    assert!(matches!(tls_failure(&e), rustls::Error::DecryptError), "{e}");
    assert_eq!(classify(&e), Some(Failure::Tls));
    assert!(pair.client.wants_write(), "an alert waits for the server");
    match pair.client_to_server() {
        Err(rustls::Error::AlertReceived(AlertDescription::BadRecordMac)) => {}
        other => panic!("expected the server to receive bad_record_mac, got {other:?}"),
    }
    let again = pair.read(&mut out).expect_err("the error is sticky");
    assert!(matches!(tls_failure(&again), rustls::Error::DecryptError));
    assert!(pair.client.seal(b"more").is_err(), "nothing is sealed after a failure");
}

#[test]
fn a_certificate_from_another_ca_is_reported_as_rejected() {
    let pki = Pki::new("server");
    let other = Pki::new("other");
    let mut pair = Pair::new(&other.client(false), pki.server_config());
    pair.client_reads_would_block();
    pair.client_to_server().expect("client hello");
    pair.server_to_wire();
    let mut out = [0u8; 64];
    let e = pair.read(&mut out).expect_err("the chain does not lead to the trusted CA");
    assert_eq!(classify(&e), Some(Failure::TlsCertificate("unknown issuer")));
    assert!(pair.client.wants_write(), "an alert waits for the server");
    match pair.client_to_server() {
        Err(rustls::Error::AlertReceived(AlertDescription::UnknownCA)) => {}
        other => panic!("expected the server to receive unknown_ca, got {other:?}"),
    }
}

/// `--ca` reuses the verdict on a chain it verified, but only for that chain: a client that has just accepted
/// the right server's chain still rejects a chain from another CA.
#[test]
fn a_cached_chain_verdict_does_not_cover_another_chain() {
    let pki = Pki::new("cached");
    let other = Pki::new("impostor");
    let client = pki.client(false);
    for _ in 0..2 {
        let pair = Pair::connected(&client, pki.server_config());
        assert!(!pair.client.is_handshaking(), "the trusted chain passes, from the cache the second time");
    }
    let mut pair = Pair::new(&client, other.server_config());
    pair.client_reads_would_block();
    pair.client_to_server().expect("client hello");
    pair.server_to_wire();
    let mut out = [0u8; 64];
    let e = pair.read(&mut out).expect_err("another CA's chain is verified, and fails");
    assert_eq!(classify(&e), Some(Failure::TlsCertificate("unknown issuer")));
}

#[test]
fn plaintext_written_during_the_handshake_goes_out_behind_the_client_finished() {
    let pki = Pki::new("early");
    let mut pair = Pair::new(&pki.client(false), pki.server_config());
    let request = b"GET /sub/news HTTP/1.1\r\n\r\n";
    assert_eq!(pair.client.seal(request).expect("kept"), request.len());
    assert!(pair.client.wants_write(), "the client hello is ready");
    pair.client_to_server().expect("client hello");
    pair.server_to_wire();
    pair.client_reads_would_block();
    // One flight: the client's Finished and the request.
    assert!(pair.server.is_handshaking());
    pair.client_to_server().expect("finished and request");
    assert!(!pair.server.is_handshaking());
    assert_eq!(pair.received, request, "the request arrived with the Finished");
}

#[test]
fn sealed_data_reaches_the_server() {
    let pki = Pki::new("seal");
    let mut pair = Pair::connected(&pki.client(false), pki.server_config());
    let big = vec![5u8; 40_000];
    assert_eq!(pair.client.seal(&big).expect("sealed"), big.len());
    pair.client_to_server().expect("records");
    assert_eq!(pair.received, big);
    assert!(!pair.client.wants_write(), "the output buffer is released once written");
}

#[test]
fn with_resumption_the_servers_ticket_resumes_the_next_session() {
    let pki = Pki::new("resume");
    let client = pki.client(true);
    let server = pki.server_config();
    let first = Pair::connected(&client, server.clone());
    assert_eq!(first.client.handshake_kind(), Some(HandshakeKind::Full));
    assert!(client.has_ticket(), "the server's tickets reached the shared store");
    let second = Pair::connected(&client, server);
    assert_eq!(second.client.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(second.client.protocol_version(), Some(ProtocolVersion::TLSv1_3));
}

#[test]
fn tls_1_2_records_are_read_the_same_way() {
    let pki = Pki::new("tls12");
    let mut pair = Pair::connected(&pki.client(false), pki.tls12_server_config());
    assert_eq!(pair.client.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert!(!pair.client.own_record_layer(), "TLS 1.2 stays with rustls");
    let messages: [&[u8]; 2] = [b"explicit", &[3u8; 3000]];
    let ciphertext = pair.server_sends(&messages);
    let mut got = Vec::new();
    for chunk in ciphertext.chunks(7) {
        pair.wire.chunks.push_back(chunk.to_vec());
        got.extend(pair.read_available(1024));
    }
    assert_eq!(got, messages.concat());
}

#[test]
fn every_tls_1_3_suite_is_opened_and_sealed_by_the_session_itself() {
    use rustls::CipherSuite as S;
    let pki = Pki::new("suites");
    for suite in [S::TLS13_AES_128_GCM_SHA256, S::TLS13_AES_256_GCM_SHA384, S::TLS13_CHACHA20_POLY1305_SHA256] {
        let mut pair = Pair::connected(&pki.client(false), pki.server_config_for(suite));
        assert_eq!(pair.client.traffic_suite(), Some(suite));
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let ciphertext = pair.server_sends(&[b"down", &big]);
        pair.wire.chunks.push_back(ciphertext);
        assert_eq!(pair.read_available(64 * 1024), [&b"down"[..], &big].concat(), "{suite:?}: server to client");
        assert_eq!(pair.client.seal(&big).expect("sealed"), big.len());
        pair.client_to_server().expect("the server opens what the session sealed");
        assert_eq!(pair.received, big, "{suite:?}: client to server");
    }
}

#[test]
fn a_key_update_from_the_server_is_followed_and_answered() {
    let pki = Pki::new("keyupdate");
    let mut pair = Pair::connected(&pki.client(false), pki.server_config());
    assert!(pair.client.own_record_layer());
    // rustls asks the peer to update too (update_requested).
    pair.server.refresh_traffic_keys().expect("key update");
    let ciphertext = pair.server_sends(&[b"after the update"]);
    pair.wire.chunks.push_back(ciphertext);
    assert_eq!(pair.read_available(1024), b"after the update");
    assert!(pair.client.wants_write(), "our key update answers the server's request");
    pair.client.seal(b"with the new key").expect("sealed");
    pair.client_to_server().expect("the server follows our key update");
    assert_eq!(pair.received, b"with the new key");
    // And once more, to see both sides moved on in step.
    pair.server.refresh_traffic_keys().expect("second key update");
    let ciphertext = pair.server_sends(&[b"again"]);
    pair.wire.chunks.push_back(ciphertext);
    assert_eq!(pair.read_available(1024), b"again");
    pair.client.seal(b"and again").expect("sealed");
    pair.client_to_server().expect("second answer");
    assert_eq!(pair.received, b"with the new keyand again");
}

#[test]
fn a_plaintext_record_after_the_handshake_is_refused_with_unexpected_message() {
    let pki = Pki::new("plaintext");
    let mut pair = Pair::connected(&pki.client(false), pki.server_config());
    // A fatal alert in the clear, as a confused or hostile peer might send it.
    pair.wire.chunks.push_back(vec![21, 3, 3, 0, 2, 2, 40]);
    let mut out = [0u8; 64];
    let e = pair.read(&mut out).expect_err("protected records only");
    assert!(matches!(tls_failure(&e), rustls::Error::InappropriateMessage { .. }), "{e}");
    assert_eq!(classify(&e), Some(Failure::Tls));
    match pair.client_to_server() {
        Err(rustls::Error::AlertReceived(AlertDescription::UnexpectedMessage)) => {}
        other => panic!("expected the server to receive unexpected_message, got {other:?}"),
    }
}

#[test]
fn session_tickets_split_over_records_are_joined_and_resume() {
    let pki = Pki::new("joined");
    let client = pki.client(true);
    // rustls' server cuts what it sends into records of at most this many bytes (header included), so
    // each ticket, sent after the handshake, spans several records.
    let mut config = (*pki.server_config()).clone();
    config.max_fragment_size = Some(64);
    let config = Arc::new(config);
    assert!(!client.has_ticket());
    let mut pair = Pair::connected(&client, config.clone());
    assert!(pair.client.own_record_layer());
    assert!(client.has_ticket(), "the tickets were joined and filed in the store");
    let ciphertext = pair.server_sends(&[&[1u8; 1000]]);
    pair.wire.chunks.push_back(ciphertext);
    assert_eq!(pair.read_available(4096), vec![1u8; 1000], "data in 64-byte records");
    let resumed = Pair::connected(&client, config);
    assert_eq!(resumed.client.handshake_kind(), Some(HandshakeKind::Resumed));
}
