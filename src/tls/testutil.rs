//! Test support: certificates made at test time (nothing secret is committed), a scratch directory, and a
//! rustls client configured to trust the generated CA.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SignatureAlgorithm};
use rustls_pki_types::CertificateDer;

/// The kinds of leaf key the server must accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa,
}

/// A CA (ECDSA P-256) and a leaf for `localhost` signed by it.
pub struct Pki {
    pub ca_der: CertificateDer<'static>,
    /// Leaf then CA, PEM.
    pub chain_pem: String,
    /// The leaf key, PKCS#8 PEM.
    pub key_pem: String,
    /// The leaf key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

/// Makes an RSA-2048 PKCS#8 key with `openssl genrsa` (ring cannot generate RSA keys). `None` (with a
/// printed note) when `openssl` is not installed.
pub fn openssl_rsa_key_pem() -> Option<String> {
    let out = Command::new("openssl").args(["genrsa", "2048"]).output();
    match out {
        Ok(out) if out.status.success() => {
            let pem = String::from_utf8(out.stdout).ok()?;
            if pem.contains("BEGIN PRIVATE KEY") {
                Some(pem)
            } else {
                // OpenSSL 1.x prints PKCS#1; rcgen wants PKCS#8.
                let der = pem_body(&pem);
                Some(pem_encode("PRIVATE KEY", &pkcs1_to_pkcs8(&der)))
            }
        }
        _ => {
            eprintln!("note: openssl is not available, skipping the RSA case (ring cannot generate RSA keys)");
            None
        }
    }
}

fn key_for(kind: KeyKind) -> Option<KeyPair> {
    let alg: &'static SignatureAlgorithm = match kind {
        KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        KeyKind::Rsa => {
            let pem = openssl_rsa_key_pem()?;
            return Some(
                KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("openssl RSA key loads"),
            );
        }
    };
    Some(KeyPair::generate_for(alg).expect("key generation"))
}

/// A fresh CA and a `localhost` leaf with a key of `kind`; `None` only for RSA without `openssl`.
pub fn pki(kind: KeyKind) -> Option<Pki> {
    let leaf_key = key_for(kind)?;
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_params = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf certificate");
    Some(Pki {
        ca_der: ca_cert.der().clone(),
        chain_pem: format!("{}{}", leaf.pem(), ca_cert.pem()),
        key_pem: leaf_key.serialize_pem(),
        key_der: leaf_key.serialize_der(),
    })
}

/// The PEM body of the first section of `pem`, decoded.
pub fn pem_body(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).expect("PEM base64")
}

/// PEM-encodes `der` under `label`.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Reads one DER length at `*i`, advancing past it.
fn der_len(der: &[u8], i: &mut usize) -> usize {
    let first = der[*i];
    *i += 1;
    if first < 0x80 {
        return usize::from(first);
    }
    let mut len = 0usize;
    for _ in 0..(first & 0x7f) {
        len = (len << 8) | usize::from(der[*i]);
        *i += 1;
    }
    len
}

fn der_header(tag: u8, len: usize) -> Vec<u8> {
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out
}

/// The `privateKey` OCTET STRING inside a PKCS#8 `PrivateKeyInfo`: SEC1 `ECPrivateKey` for an EC key,
/// PKCS#1 `RSAPrivateKey` for an RSA key.
pub fn pkcs8_inner(der: &[u8]) -> Vec<u8> {
    let mut i = 0;
    assert_eq!(der[i], 0x30, "PrivateKeyInfo is a SEQUENCE");
    i += 1;
    der_len(der, &mut i);
    for tag in [0x02, 0x30] {
        assert_eq!(der[i], tag, "version, then algorithm");
        i += 1;
        let len = der_len(der, &mut i);
        i += len;
    }
    assert_eq!(der[i], 0x04, "privateKey OCTET STRING");
    i += 1;
    let len = der_len(der, &mut i);
    der[i..i + len].to_vec()
}

/// Wraps a PKCS#1 RSA key in PKCS#8.
fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    // version 0, AlgorithmIdentifier { rsaEncryption, NULL }
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend([0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00]);
    body.extend(der_header(0x04, pkcs1.len()));
    body.extend(pkcs1);
    let mut out = der_header(0x30, body.len());
    out.extend(body);
    out
}

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-tls-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` in the directory; returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A client configuration that trusts `pki`'s CA and offers ALPN `http/1.1`, with the given versions.
pub fn client_config(pki: &Pki, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).expect("CA is a valid trust anchor");
    let mut config = rustls::ClientConfig::builder_with_provider(super::certs::provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}
