//! loadgen over `wss://` against an independent TLS WebSocket server run in the test: rustls'
//! `ServerConnection` with herald's own server configuration (`herald::tls::certs::server_config_with`:
//! TLS 1.3 and 1.2, ALPN, tickets), tungstenite on top over `rustls::StreamOwned`, one thread per connection,
//! serving the peers' interface (`/sub/{topic}`, `/pub/{topic}`, `/echo`). Certificates are made here with
//! rcgen; nothing secret is committed.
//!
//! What it proves: every scenario delivers exactly over TLS, the report says TLS was used with which version
//! and how many handshakes were full or resumed, `--tls-resume` resumes and its absence does not, `--ca` and
//! `--insecure` both connect (`--insecure` still refusing a server without the certificate's key), and a
//! certificate from another CA or for another name fails with a clear error.

mod support;

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::tls::certs;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use support::{loadgen, num, serial};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::Message;

/// A CA and a leaf it signed for `localhost` and `127.0.0.1` (ECDSA P-256), the CA as a PEM file.
struct Pki {
    dir: std::path::PathBuf,
    ca_file: std::path::PathBuf,
    leaf: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    // Each CA its own name: a chain is matched to its issuer by name before the signature is checked.
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("loadgen test CA {name}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf certificate");
    let dir = std::env::temp_dir().join(format!("loadgen-wss-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    Pki {
        dir,
        ca_file,
        leaf: leaf.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Topics = Arc<Mutex<HashMap<String, Vec<Sender<Message>>>>>;

/// The in-process wss:// server; stops accepting when dropped (connection threads end with their sockets).
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Serves `pki`'s leaf with herald's server configuration.
    fn start(pki: &Pki) -> Server {
        let provider = certs::provider();
        let certified = certs::certified_key(
            std::path::Path::new("leaf"),
            vec![pki.leaf.clone()],
            std::path::Path::new("key"),
            pki.key.clone_key(),
            &provider,
        )
        .expect("certified key");
        let config = certs::server_config_with(Arc::new(certified), certs::ticketer().expect("ticketer"), provider)
            .expect("server config");
        Server::start_with(config)
    }

    fn start_with(config: Arc<ServerConfig>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let topics: Topics = Arc::default();
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let (config, topics) = (config.clone(), topics.clone());
                        std::thread::spawn(move || serve(sock, config, topics));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server { port, stop }
    }

    fn url(&self) -> String {
        format!("wss://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection: TLS, the upgrade, then the endpoint's behaviour until the client goes.
fn serve(sock: TcpStream, config: Arc<ServerConfig>, topics: Topics) {
    let _ = sock.set_nonblocking(false);
    let _ = sock.set_nodelay(true);
    let _ = sock.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(conn) = ServerConnection::new(config) else { return };
    let mut path = String::new();
    // The callback's error type is tungstenite's (a whole HTTP response); this one never fails.
    #[allow(clippy::result_large_err)]
    let record_path = |req: &Request, resp: Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(StreamOwned::new(conn, sock), record_path) else {
        return;
    };
    if let Some(topic) = path.strip_prefix("/sub/") {
        let (tx, rx) = mpsc::channel();
        topics.lock().expect("topics").entry(topic.to_owned()).or_default().push(tx);
        while let Ok(msg) = rx.recv() {
            if ws.send(msg).is_err() {
                return;
            }
        }
    } else if let Some(topic) = path.strip_prefix("/pub/") {
        while let Ok(msg) = ws.read() {
            if msg.is_binary() || msg.is_text() {
                if let Some(subs) = topics.lock().expect("topics").get_mut(topic) {
                    subs.retain(|s| s.send(msg.clone()).is_ok());
                }
            }
        }
    } else if path == "/echo" {
        while let Ok(msg) = ws.read() {
            if (msg.is_binary() || msg.is_text()) && ws.send(msg).is_err() {
                return;
            }
        }
    }
}

fn run(args: &[&str]) -> support::Run {
    let _serial = serial();
    let mut all = args.to_vec();
    all.extend(["--threads", "1", "--no-pin", "--quiet"]);
    loadgen(&all)
}

#[test]
fn fanout_over_wss_delivers_every_message_and_reports_tls_1_3() {
    let pki = pki("fanout");
    let server = Server::start(&pki);
    let ca = pki.ca_file.to_str().expect("utf-8 path");
    let r = run(&[
        "fanout",
        "--url",
        &server.url(),
        "--ca",
        ca,
        "--subs",
        "20",
        "--rate",
        "500",
        "--duration",
        "1s",
        "--warmup",
        "0s",
    ]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(num(j, "/delivery/published"), 500, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/delivered"), 20 * 500, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/lost"), 0);
    assert_eq!(num(j, "/counters/duplicates") + num(j, "/counters/reordered"), 0);
    let tls = &j["engine"]["tls"];
    assert_eq!(tls["version"], "TLSv1.3", "{j}");
    assert_eq!(tls["verify"], "ca");
    assert_eq!(num(tls, "/full_handshakes"), 21, "every connection made a full handshake");
    assert_eq!(num(tls, "/resumed_handshakes"), 0);
    assert!(r.stdout.contains("tls          TLSv1.3 (ca), 21 full / 0 resumed handshakes"), "{}", r.stdout);
}

#[test]
fn pub_url_over_wss_shares_the_tls_setup_and_different_hosts_without_server_name_are_refused() {
    let pki = pki("puburl");
    let server = Server::start(&pki);
    let ca = pki.ca_file.to_str().expect("utf-8 path");
    // The same server under --url (twice) and --pub-url: every connection goes through the list path over TLS.
    let (url, urls) = (server.url(), format!("{},{}", server.url(), server.url()));
    let common = ["fanout", "--ca", ca, "--subs", "10", "--rate", "200", "--duration", "500ms", "--warmup", "0s"];
    let mut args = common.to_vec();
    args.extend(["--url", &urls, "--pub-url", &url]);
    let r = run(&args);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(num(j, "/delivery/delivered"), 10 * num(j, "/delivery/published"), "{}", r.stdout);
    assert_eq!(num(j, "/delivery/lost"), 0);
    assert_eq!(num(&j["engine"]["tls"], "/full_handshakes"), 11, "every connection, whichever URL, made TLS");
    // localhost and 127.0.0.1 are different certificate names: refused without a --server-name for both.
    let other = url.replace("127.0.0.1", "localhost");
    let mut args = common.to_vec();
    args.extend(["--url", &url, "--pub-url", &other]);
    let r = run(&args);
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("give --server-name"), "{}", r.stderr);
}

#[test]
fn echo_over_wss_with_insecure_accounts_for_every_round_trip() {
    let pki = pki("echo");
    let server = Server::start(&pki);
    let r = run(&[
        "echo",
        "--url",
        &server.url(),
        "--insecure",
        "--conns",
        "8",
        "--inflight",
        "4",
        "--size",
        "3000",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    let sent = num(j, "/delivery/expected");
    assert!(sent > 100, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/delivered"), sent, "every echo came back\n{}", r.stdout);
    assert_eq!(j["engine"]["tls"]["verify"], "insecure");
}

#[test]
fn conns_makes_full_handshakes_unless_resumption_is_asked_for() {
    let pki = pki("conns");
    let server = Server::start(&pki);
    let ca = pki.ca_file.to_str().expect("utf-8 path");
    // Slow enough that every connection after the first finds a ticket from an earlier one.
    let common =
        ["conns", "--url", &server.url(), "--ca", ca, "--conns", "40", "--hold", "100ms", "--connect-rate", "200"];
    let full = run(&common);
    assert_eq!(full.code, 0, "stdout:\n{}\nstderr:\n{}", full.stdout, full.stderr);
    assert_eq!(num(&full.json, "/opened"), 40);
    assert_eq!(num(&full.json, "/engine/tls/full_handshakes"), 40, "{}", full.stdout);
    assert_eq!(num(&full.json, "/engine/tls/resumed_handshakes"), 0);

    let mut args = common.to_vec();
    args.push("--tls-resume");
    let resumed = run(&args);
    assert_eq!(resumed.code, 0, "stdout:\n{}\nstderr:\n{}", resumed.stdout, resumed.stderr);
    assert_eq!(num(&resumed.json, "/opened"), 40);
    assert_eq!(resumed.json["engine"]["tls"]["resume"], true);
    assert_eq!(num(&resumed.json, "/engine/tls/full_handshakes"), 1, "only the first is full\n{}", resumed.stdout);
    assert_eq!(num(&resumed.json, "/engine/tls/resumed_handshakes"), 39);
}

#[test]
fn a_burst_with_tls_resume_waits_for_tickets_and_resumes_all_but_the_first() {
    let pki = pki("burst");
    let server = Server::start(&pki);
    let ca = pki.ca_file.to_str().expect("utf-8 path");
    // No connect-rate limit: without waiting for tickets, most of the burst would be dialed before the first
    // handshake brought any, and make full handshakes.
    let r = run(&[
        "conns",
        "--url",
        &server.url(),
        "--ca",
        ca,
        "--conns",
        "200",
        "--hold",
        "100ms",
        "--connect-rate",
        "0",
        "--tls-resume",
    ]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(num(&r.json, "/opened"), 200, "{}", r.stdout);
    assert_eq!(num(&r.json, "/engine/tls/full_handshakes"), 1, "{}", r.stdout);
    assert_eq!(num(&r.json, "/engine/tls/resumed_handshakes"), 199);
}

#[test]
fn insecure_still_checks_that_the_server_holds_the_certificate_s_key() {
    // A server that presents `pki`'s certificate but signs with another key (herald's own loader refuses
    // such a pair; rustls' CertifiedKey::new does not check).
    let pki = pki("impostor");
    let provider = certs::provider();
    let other_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let signing = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(other_key.serialize_der())))
        .expect("signing key");
    let impostor = rustls::sign::CertifiedKey::new(vec![pki.leaf.clone()], signing);
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(impostor)));
    let server = Server::start_with(Arc::new(config));
    let r = run(&["conns", "--url", &server.url(), "--insecure", "--conns", "2", "--hold", "100ms"]);
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("server certificate rejected (bad signature"), "{}", r.stderr);
}

#[test]
fn a_certificate_from_another_ca_fails_with_a_clear_error() {
    let pki_served = pki("served");
    let other = pki("other");
    let server = Server::start(&pki_served);
    let ca = other.ca_file.to_str().expect("utf-8 path");
    let r = run(&["conns", "--url", &server.url(), "--ca", ca, "--conns", "3", "--hold", "100ms"]);
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("no connection could be opened (server certificate rejected (unknown issuer; check --ca or use --insecure) x3)"),
        "{}",
        r.stderr
    );
    assert_eq!(r.json["connect_failures"]["tls_certificate"]["unknown issuer"], 3, "{}", r.json);
}

#[test]
fn a_certificate_for_another_name_fails_with_a_clear_error() {
    let pki = pki("name");
    let server = Server::start(&pki);
    let ca = pki.ca_file.to_str().expect("utf-8 path");
    let r = run(&[
        "conns",
        "--url",
        &server.url(),
        "--ca",
        ca,
        "--server-name",
        "example.com",
        "--conns",
        "2",
        "--hold",
        "100ms",
    ]);
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("server certificate rejected (not valid for the host name"), "{}", r.stderr);
}

#[test]
fn wss_without_a_trust_choice_is_a_usage_error_and_tls_options_need_wss() {
    let r = run(&["conns", "--url", "wss://127.0.0.1:9", "--conns", "1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("wss:// needs --ca FILE"), "{}", r.stderr);
    let r = run(&["conns", "--url", "wss://127.0.0.1:9", "--ca", "x.pem", "--insecure", "--conns", "1"]);
    assert!(r.stderr.contains("--ca and --insecure contradict each other"), "{}", r.stderr);
    let r = run(&["conns", "--url", "ws://127.0.0.1:9", "--insecure", "--conns", "1"]);
    assert!(r.stderr.contains("need a wss:// URL"), "{}", r.stderr);
    let r = run(&["conns", "--url", "wss://127.0.0.1:9", "--ca", "/nonexistent/ca.pem", "--conns", "1"]);
    assert!(r.stderr.contains("--ca /nonexistent/ca.pem: No such file"), "{}", r.stderr);
    // soak's side traffic (churn, slow consumers, bad handshakes) is plain: refused over wss:// unless off.
    let r = run(&["soak", "--url", "wss://127.0.0.1:9", "--insecure", "--duration", "1s"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("add --churn-rate 0 --slow 0 --bad-rate 0"), "{}", r.stderr);
}
