//! `rediss://`: the client side of TLS for the bridge's Redis connections.
//!
//! rustls (the `ring` provider, as herald's server side) does the protocol through its `ClientConnection`,
//! which is sans-IO: the bridge keeps its non-blocking `mio` sockets and moves records between them and the
//! connection (see `Link` in [`super::bridge`]). This module owns the configuration: the CA Redis's certificate
//! must chain to (`cluster.tls_ca_file`, required: nothing is trusted by default, and there is no switch that
//! turns verification off — a self-signed Redis certificate is trusted by naming it as the CA), the optional
//! client certificate for Redis's `tls-auth-clients yes`, and the name checked (the URL's host: a DNS name or an
//! IP address in the certificate's subjectAltName).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::config::Cluster;

/// Why the TLS settings for `rediss://` are not usable (each message names the key and the file).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file could not be read.
    #[error("{key} {path}: cannot read it: {source}")]
    Read {
        /// The config key.
        key: &'static str,
        /// The path as configured.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM section is malformed.
    #[error("{key} {path}: not valid PEM: {detail}")]
    Pem {
        /// The config key.
        key: &'static str,
        /// The path as configured.
        path: String,
        /// What the PEM parser said.
        detail: String,
    },
    /// No `CERTIFICATE` section (CA file or client certificate).
    #[error("{key} {path}: no certificate in it (expected a PEM \"CERTIFICATE\" section)")]
    NoCertificate {
        /// The config key.
        key: &'static str,
        /// The path as configured.
        path: String,
    },
    /// rustls refused a certificate or key.
    #[error("{key}: {source}")]
    Rustls {
        /// The config key.
        key: &'static str,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The URL's host is not a name a certificate can carry.
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
}

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(Path::new(path)).map_err(|source| TlsSetupError::Read { key, path: path.to_string(), source })
}

fn certificates(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Pem { key, path: path.to_string(), detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate { key, path: path.to_string() });
    }
    Ok(certs)
}

/// The client configuration for `rediss://` links, or `None` when no URL uses TLS.
pub fn client_config(c: &Cluster, urls: &[super::RedisUrl]) -> Result<Option<Arc<ClientConfig>>, TlsSetupError> {
    if !urls.iter().any(|u| u.tls) {
        return Ok(None);
    }
    const CA: &str = "cluster.tls_ca_file";
    let mut roots = RootCertStore::empty();
    for cert in certificates(CA, &c.tls_ca_file)? {
        roots.add(cert).map_err(|source| TlsSetupError::Rustls { key: CA, source })?;
    }
    let builder = ClientConfig::builder_with_provider(crate::tls::certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsSetupError::Rustls { key: CA, source })?
        .with_root_certificates(roots);
    let config = if c.tls_cert_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        const KEY: &str = "cluster.tls_key_file";
        let chain = certificates("cluster.tls_cert_file", &c.tls_cert_file)?;
        let pem = read(KEY, &c.tls_key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsSetupError::Pem {
            key: KEY,
            path: c.tls_key_file.clone(),
            detail: e.to_string(),
        })?;
        builder.with_client_auth_cert(chain, key).map_err(|source| TlsSetupError::Rustls { key: KEY, source })?
    };
    Ok(Some(Arc::new(config)))
}

/// The name Redis's certificate must carry: the URL's host (a DNS name, or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    ServerName::try_from(host.to_string()).map_err(|_| TlsSetupError::ServerName(host.to_string()))
}

/// A TLS failure on a link, said so an operator knows which setting to look at.
pub fn describe(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    let hint = match e {
        Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            " (Redis's certificate does not chain to cluster.tls_ca_file)"
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => " (the certificate does not carry the host of the rediss:// URL)",
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            " (Redis's certificate has expired)"
        }
        Error::AlertReceived(_) => {
            " (Redis refused the handshake: does it require a client certificate, cluster.tls_cert_file?)"
        }
        Error::InvalidMessage(_) => " (is this port a TLS port? rediss:// needs Redis's tls-port)",
        _ => "",
    };
    format!("TLS: {e}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::RedisUrl;

    fn cluster(ca: &str) -> Cluster {
        Cluster { tls_ca_file: ca.to_string(), ..Cluster::default() }
    }

    #[test]
    fn without_a_rediss_url_no_tls_is_set_up() {
        let urls = [RedisUrl::parse("redis://h:1").expect("url")];
        assert!(client_config(&cluster("/nonexistent"), &urls).expect("not read").is_none());
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error_naming_the_key_and_path() {
        let urls = [RedisUrl::parse("rediss://h:1").expect("url")];
        let err = client_config(&cluster("/nonexistent/ca.pem"), &urls).expect_err("missing");
        assert!(err.to_string().starts_with("cluster.tls_ca_file /nonexistent/ca.pem: cannot read it"), "{err}");
        let path = std::env::temp_dir().join(format!("herald-empty-ca-{}", std::process::id()));
        std::fs::write(&path, "no PEM here\n").expect("write");
        let err = client_config(&cluster(path.to_str().expect("utf-8")), &urls).expect_err("empty");
        assert!(matches!(err, TlsSetupError::NoCertificate { key: "cluster.tls_ca_file", .. }), "{err}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn rediss_without_a_ca_file_or_a_client_certificate_without_its_key_is_refused_at_start() {
        use crate::config::{Cli, Config};
        use clap::Parser;
        let none = Cli::try_parse_from(["herald"]).expect("no flags");
        let err = Config::from_toml("[cluster]\nredis_urls = \"rediss://r:6380\"\n", &none).expect_err("no CA");
        assert!(err.to_string().contains("cluster.tls_ca_file"), "{err}");
        let ok = "[cluster]\nredis_urls = \"rediss://r:6380\"\ntls_ca_file = \"/etc/ca.pem\"\n";
        assert!(Config::from_toml(ok, &none).is_ok());
        let half = format!("{ok}tls_cert_file = \"/etc/c.pem\"\n");
        let err = Config::from_toml(&half, &none).expect_err("cert without key");
        assert!(err.to_string().contains("cluster.tls_cert_file"), "{err}");
    }

    #[test]
    fn hosts_and_addresses_are_server_names() {
        assert!(server_name("redis.internal").is_ok());
        assert!(matches!(server_name("127.0.0.1"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name").is_err());
    }

    #[test]
    fn certificate_failures_point_at_the_setting_to_check() {
        use rustls::{CertificateError, Error};
        let unknown = describe(&Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert!(unknown.contains("cluster.tls_ca_file"), "{unknown}");
        let name = describe(&Error::InvalidCertificate(CertificateError::NotValidForName));
        assert!(name.contains("host of the rediss:// URL"), "{name}");
    }
}
