//! A real `redis-server` for one test: a free loopback port, a temporary directory, persistence off, stopped by
//! PID when dropped. `.ci/run` installs `redis-server` where it is missing. For `rediss://`, a TLS port beside
//! the plain one (which the helpers here use), with certificates from a CA made at test time ([`Pki`]).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct Redis {
    child: Child,
    pub port: u16,
    /// The TLS port, when started with [`Redis::start_tls`].
    pub tls_port: Option<u16>,
    dir: PathBuf,
    password: Option<String>,
}

/// The server binary: `$REDIS_SERVER`, else `redis-server` on the PATH.
fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string())
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("addr").port()
}

impl Redis {
    /// Starts one on a free port.
    pub fn start() -> Redis {
        Redis::start_with(free_port(), None)
    }

    /// Starts one on a free port that requires `password`.
    pub fn start_with_password(password: &str) -> Redis {
        Redis::start_with(free_port(), Some(password.to_string()))
    }

    /// Starts one on `port` (again, after [`Redis::kill`]), with `password` required when given.
    pub fn start_with(port: u16, password: Option<String>) -> Redis {
        Redis::start_args(port, password, &[])
    }

    /// Starts `n` cluster-enabled instances and makes them one Redis Cluster of `n` masters (no replicas),
    /// with `redis-cli --cluster create`; returns once every node says `cluster_state:ok`.
    pub fn cluster(n: usize) -> Vec<Redis> {
        Redis::cluster_with_replicas(n, 0)
    }

    /// [`Redis::cluster`] with `replicas` replicas per master (`n * (1 + replicas)` instances; `redis-cli`
    /// chooses which are masters: see [`Redis::is_master`]) and, with replicas, a 1.5 s `cluster-node-timeout`,
    /// so a replica is promoted a few seconds after its master dies. Returns once every replica has synced.
    pub fn cluster_with_replicas(n: usize, replicas: usize) -> Vec<Redis> {
        let nodes: Vec<Redis> = (0..n * (1 + replicas))
            .map(|_| {
                let (port, bus) = (free_port(), free_port());
                let bus = bus.to_string();
                let mut args = vec!["--cluster-enabled", "yes", "--cluster-port", &bus];
                if replicas > 0 {
                    args.extend_from_slice(&["--cluster-node-timeout", "1500"]);
                }
                Redis::start_args(port, None, &args)
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|r| format!("127.0.0.1:{}", r.port)).collect();
        let replicas = replicas.to_string();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas, "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli (same package as redis-server)");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for r in &nodes {
            while !r
                .try_command(&["CLUSTER", "INFO"])
                .is_ok_and(|i| String::from_utf8_lossy(&i).contains("cluster_state:ok"))
            {
                assert!(Instant::now() < deadline, "the cluster did not reach cluster_state:ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for r in nodes.iter().filter(|r| !r.is_master()) {
            while !r
                .try_command(&["INFO", "replication"])
                .is_ok_and(|i| String::from_utf8_lossy(&i).contains("master_link_status:up"))
            {
                assert!(Instant::now() < deadline, "a replica did not sync with its master");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        nodes
    }

    /// Whether this instance is a master now (`ROLE`).
    pub fn is_master(&self) -> bool {
        self.try_command(&["ROLE"]).is_ok_and(|r| r.windows(10).any(|w| w == b"\r\nmaster\r\n"))
    }

    fn start_args(port: u16, password: Option<String>, extra: &[&str]) -> Redis {
        let dir = std::env::temp_dir().join(format!("herald-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut cmd = Command::new(binary());
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]).args([
            "--dir",
            dir.to_str().expect("utf-8 temp dir"),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]);
        if let Some(pw) = &password {
            cmd.args(["--requirepass", pw]);
        }
        cmd.args(extra);
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap_or_else(|e| {
            panic!("cannot start {} ({e}): install it (apt-get install redis-server; .ci/run does)", binary())
        });
        let redis = Redis { child, port, tls_port: None, dir, password };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.try_command(&["PING"]).is_err() {
            assert!(Instant::now() < deadline, "redis-server on port {port} did not answer PING");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// Starts one with a TLS port beside the plain one, serving `cert`/`key` (PEM files); with `client_certs`,
    /// clients must present a certificate signed by `ca` (Redis's `tls-auth-clients yes`, its default).
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path, client_certs: bool) -> Redis {
        let tls_port = free_port();
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();
        let (tls_port_s, cert, key, ca) = (tls_port.to_string(), path(cert), path(key), path(ca));
        let auth = if client_certs { "yes" } else { "no" };
        let mut redis = Redis::start_args(
            free_port(),
            None,
            &[
                "--tls-port",
                &tls_port_s,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                auth,
            ],
        );
        redis.tls_port = Some(tls_port);
        redis
    }

    /// `rediss://{host}:tls_port`.
    pub fn tls_url(&self, host: &str) -> String {
        format!("rediss://{host}:{}", self.tls_port.expect("started with start_tls"))
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped; no memory is involved.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// SIGKILL, and reap it (the port is free again once this returns).
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Sends one command on a fresh connection (after AUTH when a password is set) and returns the raw reply.
    pub fn try_command(&self, args: &[&str]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut req = Vec::new();
        let mut push = |args: &[&str]| {
            req.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                req.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
            }
        };
        let authed = self.password.is_some();
        if let Some(pw) = &self.password {
            push(&["AUTH", pw]);
        }
        push(args);
        s.write_all(&req)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Replies here are small: read until the last reply's CRLF has come (and the AUTH reply before it).
        let needed = if authed { 2 } else { 1 };
        loop {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if complete_replies(&buf) >= needed {
                break;
            }
        }
        if authed {
            let first = buf.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
            buf.drain(..first);
        }
        Ok(buf)
    }

    /// Subscribers of `channel` (PUBSUB NUMSUB), over all clients of this instance.
    pub fn numsub(&self, channel: &str) -> u64 {
        let reply = self.try_command(&["PUBSUB", "NUMSUB", channel]).expect("PUBSUB NUMSUB");
        // *2\r\n$len\r\nchannel\r\n:N\r\n
        let text = String::from_utf8_lossy(&reply);
        text.lines().find_map(|l| l.strip_prefix(':')).and_then(|n| n.trim().parse().ok()).expect("an integer")
    }

    /// Shard channels (sharded pub/sub) with subscribers on this node, matching `pattern`.
    pub fn shard_channels(&self, pattern: &str) -> usize {
        let reply = self.try_command(&["PUBSUB", "SHARDCHANNELS", pattern]).expect("PUBSUB SHARDCHANNELS");
        let text = String::from_utf8_lossy(&reply);
        text.lines().next().and_then(|l| l.strip_prefix('*')).and_then(|n| n.trim().parse().ok()).expect("array")
    }

    /// Channels with at least one subscriber (PUBSUB NUMPAT aside), matching `pattern`.
    pub fn channels(&self, pattern: &str) -> usize {
        let reply = self.try_command(&["PUBSUB", "CHANNELS", pattern]).expect("PUBSUB CHANNELS");
        let text = String::from_utf8_lossy(&reply);
        text.lines().next().and_then(|l| l.strip_prefix('*')).and_then(|n| n.trim().parse().ok()).expect("array")
    }
}

/// Complete top-level replies in `buf`, for the small replies above (simple lines, integers, flat arrays of
/// bulk strings and integers).
fn complete_replies(buf: &[u8]) -> usize {
    let lines: Vec<&[u8]> = buf.split(|&b| b == b'\n').collect();
    let complete = lines.len() - 1; // the last piece has no LF yet
    let mut i = 0;
    let mut replies = 0;
    while i < complete {
        let l = lines[i];
        match l.first() {
            Some(b'*') => {
                let n: usize = std::str::from_utf8(&l[1..]).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
                let mut need = n;
                i += 1;
                while need > 0 && i < complete {
                    if lines[i].first() == Some(&b'$') {
                        i += 2;
                    } else {
                        i += 1;
                    }
                    need -= 1;
                }
                if need > 0 || i > complete {
                    return replies;
                }
            }
            Some(b'$') => i += 2,
            _ => i += 1,
        }
        if i <= complete {
            replies += 1;
        }
    }
    replies
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SIGKILL works on a stopped process too.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A certificate authority made now (rcgen, nothing committed), and certificates it signs.
pub struct Pki {
    /// The CA certificate, PEM (what a client or server trusts).
    pub ca_pem: String,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    /// A new CA (ECDSA P-256).
    pub fn new() -> Pki {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "herald test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        Pki { ca_pem: ca.pem(), ca }
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA: (certificate PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("params");
        let cert = params.signed_by(&key, &self.ca).expect("signed certificate");
        (cert.pem(), key.serialize_pem())
    }
}
