//! TLS for the integration tests: certificates made at test time (rcgen, nothing committed), herald started
//! with them, and clients that speak `https://` and `wss://` through rustls (tungstenite over a rustls stream,
//! an implementation independent of herald's server side).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::WebSocket;

use super::Server;

/// A TLS stream to the server.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;
/// A WebSocket over TLS.
pub type WssClient = WebSocket<TlsStream>;

/// A directory of its own for one test's files, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    /// A fresh directory named after `tag` and this process.
    pub fn new(tag: &str) -> Dir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("herald-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made now.
pub struct TestCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER (what a client sees, and trusts).
    pub der: Vec<u8>,
}

impl TestCert {
    /// A new ECDSA P-256 certificate (the benchmark key type).
    pub fn ecdsa() -> TestCert {
        Self::with(&rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A new Ed25519 certificate.
    pub fn ed25519() -> TestCert {
        Self::with(&rcgen::PKCS_ED25519)
    }

    fn with(alg: &'static rcgen::SignatureAlgorithm) -> TestCert {
        let key = rcgen::KeyPair::generate_for(alg).expect("key pair");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    /// Writes `cert.pem` and `key.pem` into `dir`; returns their paths.
    pub fn write_to(&self, dir: &Dir) -> (PathBuf, PathBuf) {
        (dir.write("cert.pem", &self.cert_pem), dir.write("key.pem", &self.key_pem))
    }

    /// A client configuration that trusts this certificate only (TLS 1.3 and 1.2, ALPN http/1.1).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        client_config_trusting(&[self])
    }
}

/// A client configuration that trusts `certs` (and nothing else).
pub fn client_config_trusting(certs: &[&TestCert]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(CertificateDer::from(c.der.clone())).expect("trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A herald with TLS, its certificate and where each listener is.
pub struct TlsServer {
    pub server: Server,
    /// The TLS listener.
    pub tls: SocketAddr,
    pub cert: TestCert,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub dir: Dir,
}

impl TlsServer {
    /// herald with a fresh ECDSA certificate on a TLS listener beside the plain one (`--tls-listen`).
    pub fn start(args: &[&str]) -> TlsServer {
        Self::start_with(TestCert::ecdsa(), true, args)
    }

    /// herald with `cert`; `beside` puts TLS on a listener of its own, otherwise the main listener is TLS.
    pub fn start_with(cert: TestCert, beside: bool, args: &[&str]) -> TlsServer {
        let dir = Dir::new("tls");
        let (cert_file, key_file) = cert.write_to(&dir);
        let mut all: Vec<&str> = vec![
            "--tls-cert-file",
            cert_file.to_str().expect("utf-8 path"),
            "--tls-key-file",
            key_file.to_str().expect("utf-8 path"),
        ];
        if beside {
            all.extend(["--tls-listen", "127.0.0.1:0"]);
        }
        all.extend_from_slice(args);
        let (server, lines) = Server::start_lines(&all, 2);
        let tls = lines[1].strip_prefix("herald tls on ").expect("tls line").parse().expect("tls address");
        TlsServer { server, tls, cert, cert_file, key_file, dir }
    }

    /// A TLS stream to the TLS listener, handshake done, trusting the server's certificate.
    pub fn connect(&self) -> TlsStream {
        tls_connect(self.tls, self.cert.client_config())
    }

    /// A `wss://` client on `path`.
    pub fn wss(&self, path: &str) -> WssClient {
        wss_connect(self.tls, path, self.cert.client_config())
    }

    /// One HTTPS request on a fresh connection; returns status, head and body.
    pub fn https(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut s = self.connect();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        s.write_all(req.as_bytes()).expect("write request");
        s.write_all(body).expect("write body");
        let mut buf = Vec::new();
        // The server closes after the response with close_notify: read to the end.
        let _ = s.read_to_end(&mut buf);
        super::parse_response(&buf)
    }
}

/// Connects to `addr` and completes the TLS handshake (SNI `localhost`).
pub fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsStream {
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    sock.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from("localhost").expect("name");
    let conn = ClientConnection::new(config, name).expect("client connection");
    let mut stream = StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).expect("TLS handshake");
    }
    stream
}

/// A `wss://` client: TLS, then the WebSocket upgrade on `path`, by tungstenite.
pub fn wss_connect(addr: SocketAddr, path: &str, config: Arc<ClientConfig>) -> WssClient {
    let stream = tls_connect(addr, config);
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, _resp) = tungstenite::client(url, stream).expect("upgrade over TLS");
    ws
}

/// The certificate the server presented on `stream` (DER).
pub fn presented(stream: &TlsStream) -> Vec<u8> {
    stream.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).expect("a peer certificate")
}
