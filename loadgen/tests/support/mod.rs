//! Shared helpers for loadgen's integration tests: a real `herald` process on an ephemeral loopback port
//! (built on demand from the workspace root, into the same target directory and profile as the tests), and
//! a runner for the `loadgen` binary that returns its exit code, output and `--json` report.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Tests measure latency and throughput on a 2-core machine: run them one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The herald binary: `$HERALD_BIN` if set, else built with `cargo build --bin herald` for the profile and
/// target directory these tests were built with (so a fresh clone needs nothing but `cargo test`).
pub fn herald_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("HERALD_BIN") {
            return PathBuf::from(path);
        }
        // This test runs from <target>/<profile>/deps/<name>-<hash>.
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("profile directory").to_path_buf();
        let target_dir = profile_dir.parent().expect("target directory").to_path_buf();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("Cargo.toml");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--bin", "herald", "--profile", &profile])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            .status()
            .expect("run cargo build --bin herald");
        assert!(status.success(), "cargo build --bin herald failed");
        let bin = profile_dir.join("herald");
        assert!(bin.exists(), "{} not found after building", bin.display());
        bin
    })
    .clone()
}

/// A herald process for one test; killed on drop.
pub struct Herald {
    child: Child,
    pub addr: SocketAddr,
}

impl Herald {
    /// Starts `herald --listen 127.0.0.1:0 --no-pin <args>` and waits for its "listening" line.
    pub fn start(args: &[&str]) -> Herald {
        let mut child = Command::new(herald_bin())
            .args(["--listen", "127.0.0.1:0", "--no-pin"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn herald");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next().expect("herald printed nothing").expect("read stdout");
        let addr = line
            .strip_prefix("herald listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        std::thread::spawn(move || for _ in lines {});
        Herald { child, addr }
    }

    /// `ws://addr`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of a counter in herald's `/metrics` (summed over its series), or 0 if absent.
    pub fn metric(&self, name: &str) -> u64 {
        use std::io::{Read, Write};
        let Ok(mut sock) = std::net::TcpStream::connect(self.addr) else { return 0 };
        let _ = sock.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let request = "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
        if sock.write_all(request.as_bytes()).is_err() {
            return 0;
        }
        let mut text = String::new();
        let _ = sock.read_to_string(&mut text);
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<u64>().ok()))
            .sum()
    }

    /// Sends a signal by name (`STOP`, `CONT`) with kill(1), to this child only.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        // Never leave it stopped: a stopped process ignores SIGKILL until continued on some kernels.
        let _ = Command::new("kill").arg("-CONT").arg(self.pid().to_string()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a loadgen run gave.
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output (the human table).
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The `--json` report (`Null` if none was written).
    pub json: serde_json::Value,
}

/// Runs `loadgen <args> --json <tmp>` to completion.
pub fn loadgen(args: &[&str]) -> Run {
    let dir = std::env::temp_dir().join(format!("loadgen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let json_path = dir.join(format!("run-{}.json", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .arg("--json")
        .arg(&json_path)
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    let json = std::fs::read_to_string(&json_path)
        .ok()
        .map(|text| serde_json::from_str(&text).expect("valid JSON report"))
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_file(&json_path);
    // Only succeeds once no other run of this process still uses the directory.
    let _ = std::fs::remove_dir(&dir);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
    }
}

/// A u64 at a JSON pointer such as `/delivery/expected`.
pub fn num(v: &serde_json::Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(serde_json::Value::as_u64).unwrap_or_else(|| panic!("no u64 at {pointer} in {v}"))
}

/// Runs `loadgen <args>` as given (no `--json` added), from a fresh temporary directory so that nothing it
/// writes lands in the source tree. The `json` field stays `Null`.
pub fn loadgen_plain(args: &[&str]) -> Run {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("loadgen-plain-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json: serde_json::Value::Null,
    }
}
