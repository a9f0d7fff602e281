//! Loading `cert_file` and `key_file` into a `rustls::ServerConfig`, with errors that name the file.
//!
//! The certificate chain is PEM (`CERTIFICATE` sections, leaf first). The key is PEM in any of the three
//! encodings rustls' ring provider loads: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or PKCS#1
//! (`RSA PRIVATE KEY`); the first key section in the file is used. ECDSA (P-256, P-384), Ed25519 and RSA
//! keys are supported. A key that does not belong to the leaf certificate is refused here, at start (or at a
//! reload), not at the first handshake.
//!
//! Reading the two files is the only I/O in this module (configuration, not connection traffic).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::ProducesTickets;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol herald speaks over TLS: WebSocket upgrades and the HTTP endpoints are HTTP/1.1.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Why `cert_file`/`key_file` could not be turned into a server configuration. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file does not exist.
    #[error("{which} {}: no such file", path.display())]
    Missing {
        /// `cert_file` or `key_file`.
        which: &'static str,
        /// The path as configured.
        path: PathBuf,
    },
    /// The file exists but could not be read (permissions, a directory, an I/O error).
    #[error("{which} {}: cannot read it: {source}", path.display())]
    Unreadable {
        /// `cert_file` or `key_file`.
        which: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// The error from the file system.
        source: io::Error,
    },
    /// A PEM section is malformed (bad base64, a BEGIN line without its END line).
    #[error("{which} {}: not valid PEM: {detail}", path.display())]
    BadPem {
        /// `cert_file` or `key_file`.
        which: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// What the PEM parser said.
        detail: String,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("cert_file {}: no certificate in it (expected a PEM \"CERTIFICATE\" section)", path.display())]
    NoCertificate {
        /// The path as configured.
        path: PathBuf,
    },
    /// The key file holds no private key section in a supported encoding.
    #[error(
        "key_file {}: no private key in it (expected PEM \"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\"; \
         encrypted keys are not supported)",
        path.display()
    )]
    NoKey {
        /// The path as configured.
        path: PathBuf,
    },
    /// The key is there but rustls cannot sign with it (an unsupported curve or algorithm, or corrupt DER).
    #[error("key_file {}: key type not supported: {detail}", path.display())]
    UnsupportedKey {
        /// The path as configured.
        path: PathBuf,
        /// What rustls said.
        detail: String,
    },
    /// The key is not the one the leaf certificate was issued for.
    #[error("key_file {} does not match the certificate in cert_file {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The leaf certificate could not be parsed to compare it with the key.
    #[error("cert_file {}: the first certificate cannot be parsed: {detail}", path.display())]
    BadCertificate {
        /// The path as configured.
        path: PathBuf,
        /// What rustls said.
        detail: String,
    },
    /// rustls refused the configuration itself (for example the ticket key could not be generated).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider herald uses everywhere: rustls' `ring` backend with its default suites
/// (TLS 1.3: AES-128/256-GCM, ChaCha20-Poly1305; TLS 1.2: ECDHE with the same AEADs), drawing rustls' random
/// bytes from a per-thread pool ([`super::random`]) instead of a system call each.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        secure_random: &super::random::POOLED_RANDOM,
        ..rustls::crypto::ring::default_provider()
    })
}

/// Reads `path` whole, telling a missing file from an unreadable one.
fn read_file(which: &'static str, path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            CertError::Missing { which, path: path.to_path_buf() }
        } else {
            CertError::Unreadable { which, path: path.to_path_buf(), source }
        }
    })
}

fn bad_pem(which: &'static str, path: &Path, err: rustls_pki_types::pem::Error) -> CertError {
    CertError::BadPem { which, path: path.to_path_buf(), detail: err.to_string() }
}

/// Parses every `CERTIFICATE` section of `pem` (other sections are skipped).
pub fn parse_cert_chain(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem("cert_file", path, e))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(chain)
}

/// Parses the first private key section of `pem` (PKCS#8, SEC1 or PKCS#1).
pub fn parse_private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(CertError::NoKey { path: path.to_path_buf() }),
        Err(e) => Err(bad_pem("key_file", path, e)),
    }
}

/// Joins a parsed chain and key into a [`CertifiedKey`], refusing a key rustls cannot use and a key that is
/// not the leaf certificate's.
pub fn certified_key(
    cert_path: &Path,
    chain: Vec<CertificateDer<'static>>,
    key_path: &Path,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertError> {
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::UnsupportedKey { path: key_path.to_path_buf(), detail: e.to_string() })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // A key type whose public half rustls cannot extract: nothing to compare, accept it as rustls does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err(CertError::KeyMismatch { cert: cert_path.to_path_buf(), key: key_path.to_path_buf() })
        }
        Err(e) => Err(CertError::BadCertificate { path: cert_path.to_path_buf(), detail: e.to_string() }),
    }
}

/// Reads and checks `cert_file` and `key_file`: the piece a certificate reload redoes.
pub fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertError> {
    let cert_pem = read_file("cert_file", cert_file)?;
    let key_pem = read_file("key_file", key_file)?;
    let chain = parse_cert_chain(cert_file, &cert_pem)?;
    let key = parse_private_key(key_file, &key_pem)?;
    certified_key(cert_file, chain, key_file, key, provider)
}

/// A fresh session-ticket encrypter (rustls' ring `Ticketer`: keys rotate every 6 hours, the previous key is
/// still accepted). Keep one for the life of the process and pass it to every [`server_config_with`], so that a
/// certificate reload does not invalidate the tickets clients hold.
pub fn ticketer() -> Result<Arc<dyn ProducesTickets>, CertError> {
    Ok(rustls::crypto::ring::Ticketer::new()?)
}

/// The server configuration for a checked certificate: TLS 1.3 and 1.2, no client certificates, ALPN
/// `http/1.1`, session tickets from `ticketer` (TLS 1.3 tickets and RFC 5077 tickets for TLS 1.2), and TLS 1.3
/// traffic keys handed over to herald's record layer once a handshake is done (`super::traffic`).
pub fn server_config_with(
    certified: Arc<CertifiedKey>,
    ticketer: Arc<dyn ProducesTickets>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, CertError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    config.ticketer = ticketer;
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// Loads `cert_file` and `key_file` and builds the server configuration with a new ticketer: what the server
/// does at start.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, CertError> {
    let provider = provider();
    let certified = load_certified_key(cert_file, key_file, &provider)?;
    server_config_with(Arc::new(certified), ticketer()?, provider)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testutil::{pem_encode, pkcs8_inner, pki, KeyKind, Pki, TempDir};

    /// Writes the chain and `key_pem` to files and loads them.
    fn load(dir: &TempDir, pki: &Pki, key_pem: &str) -> Result<Arc<ServerConfig>, CertError> {
        let cert = dir.write("cert.pem", &pki.chain_pem);
        let key = dir.write("key.pem", key_pem);
        server_config(&cert, &key)
    }

    fn p256() -> Pki {
        pki(KeyKind::EcdsaP256).expect("P-256 needs no openssl")
    }

    #[test]
    fn an_ecdsa_p256_pkcs8_key_loads_with_alpn_and_tickets() {
        let pki = p256();
        let config = load(&TempDir::new(), &pki, &pki.key_pem).expect("loads");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(config.ticketer.enabled(), "session tickets on");
        // Both versions are offered: tests.rs completes a TLS 1.3 and a TLS 1.2 handshake with this config.
    }

    #[test]
    fn every_supported_key_kind_loads_in_pkcs8() {
        for kind in [KeyKind::EcdsaP256, KeyKind::EcdsaP384, KeyKind::Ed25519, KeyKind::Rsa] {
            let Some(pki) = pki(kind) else { continue };
            let dir = TempDir::new();
            load(&dir, &pki, &pki.key_pem).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }

    #[test]
    fn an_ecdsa_key_in_sec1_loads() {
        let pki = p256();
        let sec1 = pem_encode("EC PRIVATE KEY", &pkcs8_inner(&pki.key_der));
        load(&TempDir::new(), &pki, &sec1).expect("SEC1 key loads");
    }

    #[test]
    fn an_rsa_key_in_pkcs1_loads() {
        let Some(pki) = pki(KeyKind::Rsa) else { return };
        let pkcs1 = pem_encode("RSA PRIVATE KEY", &pkcs8_inner(&pki.key_der));
        load(&TempDir::new(), &pki, &pkcs1).expect("PKCS#1 key loads");
    }

    #[test]
    fn a_missing_cert_file_is_named() {
        let dir = TempDir::new();
        let key = dir.write("key.pem", p256().key_pem);
        let cert = dir.path().join("nope.pem");
        let err = server_config(&cert, &key).expect_err("missing");
        assert!(matches!(err, CertError::Missing { which: "cert_file", .. }), "{err:?}");
        assert!(err.to_string().contains(&*cert.to_string_lossy()), "{err}");
    }

    #[test]
    fn a_missing_key_file_is_named() {
        let dir = TempDir::new();
        let cert = dir.write("cert.pem", p256().chain_pem);
        let key = dir.path().join("absent.key");
        let err = server_config(&cert, &key).expect_err("missing");
        assert!(matches!(err, CertError::Missing { which: "key_file", .. }), "{err:?}");
        assert!(err.to_string().contains(&*key.to_string_lossy()), "{err}");
    }

    #[test]
    fn an_unreadable_key_file_is_named() {
        // A directory cannot be read as a file (permission bits would not stop root, who runs CI).
        let dir = TempDir::new();
        let cert = dir.write("cert.pem", p256().chain_pem);
        let key = dir.path().join("key.d");
        std::fs::create_dir(&key).expect("mkdir");
        let err = server_config(&cert, &key).expect_err("unreadable");
        assert!(matches!(err, CertError::Unreadable { which: "key_file", .. }), "{err:?}");
        assert!(err.to_string().contains(&*key.to_string_lossy()), "{err}");
    }

    #[test]
    fn a_cert_file_without_a_certificate_is_named() {
        let dir = TempDir::new();
        let pki = p256();
        let cert = dir.write("cert.pem", &pki.key_pem);
        let key = dir.write("key.pem", &pki.key_pem);
        let err = server_config(&cert, &key).expect_err("no certificate");
        assert!(matches!(err, CertError::NoCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains(&*cert.to_string_lossy()), "{err}");
    }

    #[test]
    fn a_key_file_without_a_key_is_named() {
        let dir = TempDir::new();
        let pki = p256();
        let err = load(&dir, &pki, &pki.chain_pem).expect_err("no key");
        assert!(matches!(err, CertError::NoKey { .. }), "{err:?}");
        assert!(err.to_string().contains(&*dir.path().join("key.pem").to_string_lossy()), "{err}");
    }

    #[test]
    fn a_truncated_pem_section_is_named() {
        let dir = TempDir::new();
        let pki = p256();
        let cut = &pki.chain_pem[..pki.chain_pem.len() / 3];
        let cert = dir.write("cert.pem", cut);
        let key = dir.write("key.pem", &pki.key_pem);
        let err = server_config(&cert, &key).expect_err("truncated");
        assert!(matches!(err, CertError::BadPem { which: "cert_file", .. }), "{err:?}");
        assert!(err.to_string().contains(&*cert.to_string_lossy()), "{err}");
    }

    #[test]
    fn a_key_rustls_cannot_use_is_named_as_unsupported() {
        let dir = TempDir::new();
        let pki = p256();
        let junk = pem_encode("PRIVATE KEY", b"\x30\x03\x02\x01\x00 not a key");
        let err = load(&dir, &pki, &junk).expect_err("unsupported");
        assert!(matches!(err, CertError::UnsupportedKey { .. }), "{err:?}");
        assert!(err.to_string().contains(&*dir.path().join("key.pem").to_string_lossy()), "{err}");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_naming_both_files() {
        let dir = TempDir::new();
        let pki = p256();
        let other = p256();
        let err = load(&dir, &pki, &other.key_pem).expect_err("mismatch");
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("key.pem") && msg.contains("cert.pem") && msg.contains("does not match"), "{msg}");
    }

    #[test]
    fn a_key_of_another_kind_than_the_certificate_is_refused() {
        let dir = TempDir::new();
        let ecdsa = p256();
        let ed = pki(KeyKind::Ed25519).expect("Ed25519");
        let err = load(&dir, &ecdsa, &ed.key_pem).expect_err("mismatch");
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err:?}");
    }
}
