//! `wss://`: the client's TLS configuration (which server certificates to trust, session resumption) and the
//! transport, [`Stream`] (in [`stream`]), the one piece in which a plain and a TLS connection differ.
//!
//! Everything above the transport (the opening handshake in [`crate::client`], the frame scanner, the
//! scenarios) reads and writes plaintext through [`Stream`] whatever the scheme. For `wss://` the stream runs
//! a [`Session`] over the same non-blocking mio socket, in the worker's own loop: rustls' unbuffered client
//! (its `ring` provider, as herald itself) for the handshake and TLS 1.2, and for TLS 1.3 traffic the
//! session's own record layer ([`traffic`]) with the keys rustls hands over. Ciphertext is read from the
//! socket (with the kernel's receive timestamp, like plain reads), decrypted in place, and the plaintext
//! handed up; plaintext written is sealed and written out at once. The TLS work therefore counts in
//! loadgen's own CPU figures, and a connection's handshake time (dial to 101) includes the TLS handshake.
//!
//! Trust: `--ca FILE` trusts the certificates in that PEM file (the server's chain must lead to one of them
//! and name the URL's host); `--insecure` accepts any certificate but still checks the handshake signatures
//! with the provider, so the crypto cost is the same as a verifying client's minus the chain walk.
//! Resumption: off by default, so `conns` measures full handshakes; `--tls-resume` shares one session cache
//! (TLS 1.3 tickets, TLS 1.2 tickets) among every connection of the run, so that all but the first few resume.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls12Resumption,
    Tls13ClientSessionValue, UnbufferedClientConnection,
};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, NamedGroup, ProtocolVersion, SignatureScheme};
use serde::Serialize;

use crate::stats::Failure;

mod session;
mod stream;
mod traffic;

pub use session::Session;
pub use stream::Stream;

/// TLS 1.3 tickets the shared store keeps with `--tls-resume` (the oldest go first beyond it).
const MAX_TICKETS: usize = 32 * 1024;

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// `wss://` without saying which certificates to trust.
    #[error("wss:// needs --ca FILE (trust the certificates in FILE) or --insecure (accept any certificate)")]
    NoTrust,
    /// Both trust options given.
    #[error("--ca and --insecure contradict each other")]
    BothTrust,
    /// TLS options with a `ws://` URL.
    #[error("--ca, --insecure, --tls-resume and --server-name need a wss:// URL")]
    NotWss,
    /// The CA file could not be read.
    #[error("--ca {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The CA file is not PEM, or holds no certificate.
    #[error("--ca {path}: {detail}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The host (or `--server-name`) is not a DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    BadServerName(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Trust the certificates in this PEM file. A chain is verified against them once and the verdict reused
    /// for connections that present the same chain for the same name within [`CHAIN_CACHE_TTL`], as browsers'
    /// verifiers cache theirs (Chrome's `CachingCertVerifier`); the handshake signature is checked on every
    /// connection.
    Ca(PathBuf),
    /// The same, with the chain verified again on every connection (`--verify-every-chain`).
    CaEveryChain(PathBuf),
    /// Accept any certificate (signatures are still verified).
    Insecure,
}

/// Handshake counts of a run, shared by its workers (one relaxed add per handshake).
#[derive(Debug, Default)]
pub struct TlsCounts {
    /// Full handshakes.
    pub full: AtomicU64,
    /// Resumed handshakes.
    pub resumed: AtomicU64,
    /// Handshakes that negotiated TLS 1.3.
    pub tls13: AtomicU64,
    /// Handshakes that negotiated TLS 1.2.
    pub tls12: AtomicU64,
}

/// Everything a worker needs to start TLS connections.
#[derive(Debug)]
pub struct ClientTls {
    /// The rustls configuration (shared: with `--tls-resume` its session cache is the run's).
    pub config: Arc<ClientConfig>,
    /// The name the certificate must carry (and the SNI sent, for a DNS name).
    pub server_name: ServerName<'static>,
    /// How the certificate is checked.
    pub trust: Trust,
    /// Whether sessions are resumed.
    pub resume: bool,
    /// `--tls-resume`: the run's ticket store.
    tickets: Option<Arc<TicketStore>>,
    /// Handshakes done so far.
    pub counts: TlsCounts,
}

/// The TLS part of a report.
#[derive(Debug, Clone, Serialize)]
pub struct TlsSummary {
    /// Always true (the field is absent for `ws://`).
    pub enabled: bool,
    /// `ca` or `insecure`.
    pub verify: &'static str,
    /// The CA file, with `--ca`.
    pub ca: Option<String>,
    /// The certificate name checked.
    pub server_name: String,
    /// Session resumption offered (`--tls-resume`).
    pub resume: bool,
    /// The version negotiated (`TLSv1.3`, `TLSv1.2`, `mixed`; `null` before any handshake).
    pub version: Option<&'static str>,
    /// Full handshakes so far in this process.
    pub full_handshakes: u64,
    /// Resumed handshakes so far in this process.
    pub resumed_handshakes: u64,
}

/// rustls' ring provider with its cipher suites in the order browsers offer them: AES-128-GCM first (Chrome
/// and Firefox both do), where rustls' own default puts AES-256-GCM first. Servers mostly follow the client's
/// order, so this makes loadgen cost a server what a browser's connection costs it (a TLS 1.3 handshake with
/// SHA-256 rather than SHA-384, records sealed with AES-128).
pub fn browser_order_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |s: S| match s {
        S::TLS13_AES_128_GCM_SHA256 => 0,
        S::TLS13_AES_256_GCM_SHA384 => 1,
        S::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 4,
        _ => 5,
    };
    provider.cipher_suites.sort_by_key(|s| rank(s.suite()));
    provider
}

impl ClientTls {
    /// The client TLS settings for `host` (the URL's host, without port or brackets, or `--server-name`).
    pub fn new(host: &str, trust: Trust, resume: bool) -> Result<ClientTls, TlsSetupError> {
        let provider = Arc::new(browser_order_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let mut config = match &trust {
            Trust::CaEveryChain(path) => builder.with_root_certificates(load_roots(path)?).with_no_client_auth(),
            Trust::Ca(path) => {
                let roots = Arc::new(load_roots(path)?);
                let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| TlsSetupError::BadCa { path: path.clone(), detail: e.to_string() })?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(CachedChain { inner, last: Mutex::new(None) }))
                    .with_no_client_auth()
            }
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // TLS 1.3 records are opened and sealed by the session itself once the handshake is done
        // (`traffic`), with the keys rustls hands over.
        config.enable_secret_extraction = true;
        let tickets = resume.then(|| Arc::new(TicketStore::default()));
        config.resumption = match &tickets {
            Some(store) => Resumption::store(store.clone()).tls12_resumption(Tls12Resumption::SessionIdOrTickets),
            None => Resumption::disabled(),
        };
        let server_name =
            ServerName::try_from(host.to_owned()).map_err(|_| TlsSetupError::BadServerName(host.to_owned()))?;
        Ok(ClientTls { config: Arc::new(config), server_name, trust, resume, tickets, counts: TlsCounts::default() })
    }

    /// With `--tls-resume`, whether a new connection would find a ticket to resume with (a session takes its
    /// ticket when it is created). Always true without resumption.
    pub fn has_ticket(&self) -> bool {
        self.tickets.as_ref().is_none_or(|t| t.tls13.lock().is_ok_and(|q| !q.is_empty()))
    }

    /// A new client session for one connection.
    pub fn session(&self) -> io::Result<Session> {
        UnbufferedClientConnection::new(self.config.clone(), self.server_name.clone())
            .map(Session::new)
            .map_err(io::Error::other)
    }

    /// Counts the handshake `stream` completed.
    pub fn count(&self, stream: &Stream) {
        let Some(tls) = stream.session() else { return };
        let c = &self.counts;
        match tls.handshake_kind() {
            Some(HandshakeKind::Resumed) => c.resumed.fetch_add(1, Ordering::Relaxed),
            _ => c.full.fetch_add(1, Ordering::Relaxed),
        };
        match tls.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => c.tls13.fetch_add(1, Ordering::Relaxed),
            Some(ProtocolVersion::TLSv1_2) => c.tls12.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// What the report says about TLS.
    pub fn summary(&self) -> TlsSummary {
        let c = &self.counts;
        let (tls13, tls12) = (c.tls13.load(Ordering::Relaxed), c.tls12.load(Ordering::Relaxed));
        TlsSummary {
            enabled: true,
            verify: match self.trust {
                Trust::Ca(_) => "ca",
                Trust::CaEveryChain(_) => "ca, every chain verified",
                Trust::Insecure => "insecure",
            },
            ca: match &self.trust {
                Trust::Ca(path) | Trust::CaEveryChain(path) => Some(path.display().to_string()),
                Trust::Insecure => None,
            },
            server_name: self.server_name.to_str().into_owned(),
            resume: self.resume,
            version: match (tls13, tls12) {
                (0, 0) => None,
                (_, 0) => Some("TLSv1.3"),
                (0, _) => Some("TLSv1.2"),
                _ => Some("mixed"),
            },
            full_handshakes: c.full.load(Ordering::Relaxed),
            resumed_handshakes: c.resumed.load(Ordering::Relaxed),
        }
    }
}

impl TlsSummary {
    /// One line for the human table.
    pub fn human(&self) -> String {
        format!(
            "  tls          {} ({}), {} full / {} resumed handshakes{}\n",
            self.version.unwrap_or("no handshake"),
            self.verify,
            self.full_handshakes,
            self.resumed_handshakes,
            if self.resume { ", resumption on" } else { "" }
        )
    }
}

/// Reads the trusted certificates of `--ca`.
fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::Unreadable { path: path.to_owned(), source })?;
    let bad = |detail: String| TlsSetupError::BadCa { path: path.to_owned(), detail };
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE section".to_owned()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| bad(format!("unusable certificate: {e}")))?;
    }
    Ok(roots)
}

/// `--tls-resume`'s session store, shared by every connection of the run. rustls' own cache keeps at most 8
/// TLS 1.3 tickets per server, so a burst of connections would mostly find none and fall back to full
/// handshakes; this one keeps every ticket the server sent (up to [`MAX_TICKETS`]), each used once, so that
/// a `conns` run measures resumed handshakes once the first few have completed. A run has one server name:
/// tickets are kept in one queue whatever the name (rustls checks a ticket's suite and freshness itself).
/// TLS 1.2 sessions and key-exchange hints go to rustls' cache.
#[derive(Debug)]
struct TicketStore {
    rest: ClientSessionMemoryCache,
    tls13: Mutex<VecDeque<Tls13ClientSessionValue>>,
}

impl Default for TicketStore {
    fn default() -> TicketStore {
        TicketStore { rest: ClientSessionMemoryCache::new(64), tls13: Mutex::new(VecDeque::new()) }
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.rest.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.rest.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.rest.set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.rest.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.rest.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(&self, _server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        if let Ok(mut tickets) = self.tls13.lock() {
            if tickets.len() >= MAX_TICKETS {
                tickets.pop_front();
            }
            tickets.push_back(value);
        }
    }

    fn take_tls13_ticket(&self, _server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // Newest first: the freshest ticket is the least likely to have expired.
        self.tls13.lock().ok()?.pop_back()
    }
}

/// How long a verified chain is trusted again without a new check ([`Trust::Ca`]).
pub const CHAIN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// `--ca`: webpki's verifier, whose last verdict is reused for the same chain and name within
/// [`CHAIN_CACHE_TTL`]. A benchmark's connections all get the same chain, and walking it (an ECDSA or RSA
/// verification of the leaf by the CA) cost loadgen about a fifth of a full handshake: the server under test
/// then waited for loadgen instead of working. The handshake signature, which proves the server holds the key,
/// is verified on every connection.
#[derive(Debug)]
struct CachedChain {
    inner: Arc<WebPkiServerVerifier>,
    last: Mutex<Option<Verdict>>,
}

/// A chain (leaf first) verified for `name`, trusted until `until` (Unix seconds).
#[derive(Debug)]
struct Verdict {
    chain: Vec<Vec<u8>>,
    name: String,
    until: u64,
}

impl Verdict {
    fn covers(&self, end_entity: &[u8], intermediates: &[CertificateDer<'_>], name: &str, now: u64) -> bool {
        now < self.until
            && self.name == name
            && self.chain.len() == intermediates.len() + 1
            && self.chain[0] == end_entity
            && self.chain[1..].iter().zip(intermediates).all(|(a, b)| a[..] == b[..])
    }
}

impl ServerCertVerifier for CachedChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = server_name.to_str();
        let secs = now.as_secs();
        let cached = self
            .last
            .lock()
            .is_ok_and(|v| v.as_ref().is_some_and(|v| v.covers(end_entity, intermediates, &name, secs)));
        if cached {
            return Ok(ServerCertVerified::assertion());
        }
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        if let Ok(mut last) = self.last.lock() {
            let chain = std::iter::once(end_entity).chain(intermediates).map(|c| c.to_vec()).collect();
            *last = Some(Verdict { chain, name: name.into_owned(), until: secs + CHAIN_CACHE_TTL.as_secs() });
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `--insecure`: any certificate chain is accepted, but the handshake signatures are verified with the
/// provider's algorithms, so the server must still hold the key of the certificate it sent.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS failure surfaced through `io::Error` (kind `InvalidData`), so that [`crate::client::classify_io`]
/// can tell a rejected certificate from other TLS errors.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsFailure(pub rustls::Error);

/// The failure class of `e` if it is a TLS failure from a [`Stream`]: a rejected server certificate (with
/// why) or any other TLS error.
pub fn classify(e: &io::Error) -> Option<Failure> {
    use rustls::CertificateError as C;
    let TlsFailure(error) = e.get_ref()?.downcast_ref::<TlsFailure>()?;
    Some(match error {
        rustls::Error::InvalidCertificate(why) => Failure::TlsCertificate(match why {
            C::UnknownIssuer => "unknown issuer",
            C::NotValidForName | C::NotValidForNameContext { .. } => "not valid for the host name",
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet",
            C::BadSignature => "bad signature",
            _ => "rejected",
        }),
        _ => Failure::Tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_are_offered_in_the_browsers_order_aes_128_gcm_first() {
        let order: Vec<rustls::CipherSuite> =
            browser_order_provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(order[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(order[1], rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
        assert_eq!(order.len(), rustls::crypto::ring::default_provider().cipher_suites.len(), "none dropped");
    }
}
