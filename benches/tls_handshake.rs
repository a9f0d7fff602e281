//! The TLS handshake's own ceiling: a TLS 1.3 handshake with an ECDSA P-256 certificate done in memory
//! between a rustls `ClientConnection` and a `ServerConnection`, no sockets. The server side is herald's own
//! configuration (`tls::certs::server_config_with`: TLS 1.3 and 1.2, ALPN `http/1.1`, tickets from
//! `certs::ticketer`), and the certificate chain (leaf + CA) is what a deployment serves.
//!
//! - `full/both_sides`: one full handshake (key exchange X25519, the provider's default first group;
//!   ECDSA P-256 signature by the server, verified by the client against the CA), including the two TLS 1.3
//!   session tickets the server sends after it. Client and server on one core.
//! - `full/server_side`: the same handshakes, timing only the server's calls (`ServerConnection::new`,
//!   `read_tls` + `process_new_packets`, `write_tls`): what one server core pays per full handshake, since in
//!   the socket benchmark the client runs on another core. 1 / this time is the per-core ceiling that
//!   `loadgen conns` over wss:// is compared against.
//! - `resumed/both_sides`, `resumed/server_side`: a resumed handshake (TLS 1.3 ticket, PSK with (EC)DHE),
//!   the client offering a ticket from an earlier handshake; each run checks that it did resume.
//!
//! Times are the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: on the shared 2-core machine
//! other processes take the core away mid-handshake, and CPU time is what "handshakes per core" divides.
//!
//! Certificates are generated when the bench starts (rcgen); nothing secret is committed.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use herald::tls::certs;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, Connection, HandshakeKind, ProtocolVersion, ServerConfig, ServerConnection,
};

/// A CPU-time stamp of this thread (the bench's clock).
#[derive(Clone, Copy)]
struct Instant(Duration);

impl Instant {
    fn now() -> Instant {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime");
        Instant(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    fn elapsed(&self) -> Duration {
        Instant::now().0.saturating_sub(self.0)
    }
}

/// herald's server configuration for a fresh ECDSA P-256 leaf (chain: leaf, CA), and the CA.
fn server_config() -> (Arc<ServerConfig>, CertificateDer<'static>) {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "herald bench CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf certificate");
    let chain = vec![leaf.der().clone(), ca.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = certs::provider();
    let path = std::path::Path::new("bench");
    let certified = certs::certified_key(path, chain, path, key, &provider).expect("certified key");
    let config = certs::server_config_with(Arc::new(certified), certs::ticketer().expect("ticketer"), provider)
        .expect("server config");
    (config, ca.der().clone())
}

/// A TLS 1.3 client trusting `ca`, with or without a session cache.
fn client_config(ca: &CertificateDer<'static>, resume: bool) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA");
    // The client offers suites in browsers' order (AES-128-GCM first), as loadgen does.
    let mut provider = (*certs::provider()).clone();
    provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if resume { Resumption::in_memory_sessions(64) } else { Resumption::disabled() };
    Arc::new(config)
}

/// Moves everything `from` has to send into `to` and lets `to` process it. Returns whether anything moved.
fn transfer(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("write_tls to memory");
    }
    if buf.is_empty() {
        return false;
    }
    let mut rest: &[u8] = buf;
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("read_tls from memory");
        to.process_new_packets().expect("handshake proceeds");
    }
    true
}

/// One complete handshake, tickets included. Returns the time spent in the server's calls.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, buf: &mut Vec<u8>) -> (Duration, Connection) {
    let name = ServerName::try_from("localhost").expect("name");
    let mut c = Connection::Client(ClientConnection::new(client.clone(), name).expect("client"));
    let t = Instant::now();
    let mut s = Connection::Server(ServerConnection::new(server.clone()).expect("server"));
    let mut server_time = t.elapsed();
    loop {
        // Client to server: the server reads and processes.
        let t = Instant::now();
        let sent = transfer(&mut c, &mut s, buf);
        if sent {
            // Only the server's part counts; the client's write_tls above is cheap (already sealed).
            server_time += t.elapsed();
        }
        // Server to client: the server's write_tls counts, the client's processing does not.
        let t = Instant::now();
        buf.clear();
        while s.wants_write() {
            s.write_tls(buf).expect("write_tls to memory");
        }
        server_time += t.elapsed();
        let mut rest: &[u8] = buf;
        let answered = !rest.is_empty();
        while !rest.is_empty() {
            c.read_tls(&mut rest).expect("read_tls from memory");
            c.process_new_packets().expect("handshake proceeds");
        }
        if !sent && !answered {
            break;
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking(), "handshake completed");
    assert_eq!(s.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    (server_time, s)
}

fn tls_handshake(c: &mut Criterion) {
    let (server, ca) = server_config();
    let full = client_config(&ca, false);
    let resuming = client_config(&ca, true);
    let mut buf = Vec::with_capacity(16 * 1024);
    // Prime the session cache; every resumed handshake below leaves new tickets in it.
    let (_, s) = handshake(&resuming, &server, &mut buf);
    assert_eq!(s.handshake_kind(), Some(HandshakeKind::Full));

    let mut group = c.benchmark_group("tls_handshake");
    for (kind, client, expect) in [("full", &full, HandshakeKind::Full), ("resumed", &resuming, HandshakeKind::Resumed)]
    {
        group.bench_function(format!("{kind}/both_sides"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let (_, s) = handshake(client, &server, &mut buf);
                    assert_eq!(s.handshake_kind(), Some(expect));
                }
                start.elapsed()
            })
        });
        group.bench_function(format!("{kind}/server_side"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (server_time, s) = handshake(client, &server, &mut buf);
                    assert_eq!(s.handshake_kind(), Some(expect));
                    total += server_time;
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, tls_handshake);
criterion_main!(benches);
