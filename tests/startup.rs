//! Starting herald as an operator does: addresses, a second instance on the same address, the open-files
//! limit, configuration from the environment, `--check`, and what a configuration error looks like.
mod support;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{raw_exchange, Server};

fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.env_remove("RUST_LOG").env("HERALD_SERVER_BACKEND", support::backend());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Runs herald to completion (for commands that must exit by themselves) and returns (status, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run herald");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_second_herald_on_the_same_address_fails_to_start() {
    let first = Server::start(&["--workers", "2"]);
    let addr = first.addr.to_string();
    let (status, stdout, stderr) = run(herald().args(["--listen", &addr, "--workers", "2", "--no-pin"]));
    assert_ne!(status, 0, "the second instance must not serve: {stdout}");
    assert!(stderr.to_lowercase().contains("address already in use"), "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    let (code, _, _) = raw_exchange(first.addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 200, "the first one still serves");
}

#[test]
fn an_empty_host_listens_on_every_address_and_names_are_resolved() {
    for listen in [":0", "localhost:0"] {
        let mut child = herald().args(["--listen", listen, "--workers", "1", "--no-pin"]).spawn().expect("spawn");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = lines.next().expect("a line").expect("read");
        let addr: std::net::SocketAddr =
            line.strip_prefix("herald listening on ").expect("listening line").parse().expect("addr");
        if listen == ":0" {
            assert!(addr.ip().is_unspecified(), "{addr}");
        } else {
            assert!(addr.ip().is_loopback(), "{addr}");
        }
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
        let (code, _, _) = raw_exchange(local, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(code, 200, "{listen}");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }
}

#[test]
fn the_open_files_soft_limit_is_raised_to_the_hard_limit_and_logged() {
    let mut cmd = herald();
    cmd.args(["--listen", "127.0.0.1:0", "--workers", "1", "--no-pin"]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits, between fork and exec.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = lim.rlim_max.min(1024);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let _ = lines.next().expect("a line");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).expect("limits");
    let row = limits.lines().find(|l| l.starts_with("Max open files")).expect("open files row");
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields[3], fields[4], "soft = hard: {row}");
    child.kill().expect("kill");
    child.wait().expect("wait");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    assert!(stderr.contains("open-files limit raised"), "{stderr}");
    assert!(stderr.contains("max_connections"), "the effective limit is logged: {stderr}");
    assert!(!stderr.contains('\x1b'), "no colour codes when stderr is not a terminal: {stderr:?}");
}

#[test]
fn check_prints_the_effective_settings_from_file_environment_and_flags() {
    let dir = std::env::temp_dir().join(format!("herald-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("herald.toml");
    std::fs::write(&file, "[limits]\nmax_message_size = \"2MiB\"\nmax_subscriptions = 7\n").expect("write");
    let (status, stdout, stderr) = run(herald()
        .args(["--config", file.to_str().expect("path"), "--check", "--max-subscriptions", "9"])
        .env("HERALD_LIMITS_MAX_MESSAGE_SIZE", "4MiB")
        .env("HERALD_TIMEOUTS_PING_INTERVAL", "7s"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.contains("max_message_size = \"4MiB\""), "environment over file: {stdout}");
    assert!(stdout.contains("max_subscriptions = 9"), "flag over file: {stdout}");
    assert!(stdout.contains("ping_interval = \"7s\""), "environment over default: {stdout}");
    assert!(!stdout.contains("listening"), "nothing is served: {stdout}");
}

#[test]
fn a_configuration_error_is_one_line_and_status_2_even_with_backtraces_on() {
    for (args, env, needle) in [
        (vec!["--max-message-size", "lots"], None, "max-message-size"),
        (vec!["--config", "/nonexistent/herald.toml"], None, "/nonexistent/herald.toml"),
        (vec!["--check"], Some(("HERALD_LIMITS_MAX_BACKPRESSURE", "lots")), "HERALD_LIMITS_MAX_BACKPRESSURE"),
        (vec!["--max-frame-size", "2MiB", "--check"], None, "limits.max_frame_size"),
    ] {
        let mut cmd = herald();
        cmd.args(&args).env("RUST_BACKTRACE", "1");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let (status, _, stderr) = run(&mut cmd);
        assert_eq!(status, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("backtrace") && !stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.trim().lines().count() <= 4, "a message, not a dump: {stderr}");
    }
}

#[test]
fn the_example_config_file_starts_a_server() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/herald.example.toml");
    let server = Server::start(&["--config", example]);
    let (code, _, _) = raw_exchange(server.addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 200);
    std::thread::sleep(Duration::from_millis(10));
}

/// Refused upgrades are logged at `info` with status, reason, peer and path, never the token, and a flood of
/// them is rate-limited; a close is logged at `debug` with its code.
#[test]
fn refusals_are_logged_without_tokens_and_rate_limited_and_closes_with_their_code() {
    let mut child = herald()
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--no-pin"])
        .env("RUST_LOG", "info,herald::server::worker=debug")
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines.next().expect("a line").expect("read");
    let addr: std::net::SocketAddr =
        line.strip_prefix("herald listening on ").expect("listening line").parse().expect("addr");
    for _ in 0..200 {
        let (code, _, _) =
            raw_exchange(addr, b"GET /nowhere?token=SECRET-TOKEN HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(code, 404);
    }
    let mut ws = support::connect(&format!("ws://{addr}/echo"));
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Away,
        reason: "bye".into(),
    }))
    .expect("close");
    let _ = ws.read();
    drop(ws);
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("kill");
    child.wait().expect("wait");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    let refusals: Vec<&str> = stderr.lines().filter(|l| l.contains("request refused")).collect();
    assert!(!refusals.is_empty(), "{stderr}");
    assert!(refusals.len() < 100, "a flood is rate-limited: {} lines", refusals.len());
    assert!(refusals[0].contains("404") && refusals[0].contains("/nowhere") && refusals[0].contains("127.0.0.1"));
    assert!(!stderr.contains("SECRET-TOKEN"), "the query string (and any token in it) is never logged");
    let close = stderr.lines().find(|l| l.contains("websocket closed")).expect("a close line");
    assert!(close.contains("1001") && close.contains("peer"), "{close}");
}

/// With `--log-format json` every log line is one JSON object, the "listening" event included; stdout keeps
/// its one plain line for scripts.
#[test]
fn json_logs_are_json_on_every_line() {
    let first = Server::start(&["--workers", "1"]);
    let (status, stdout, stderr) = run(herald()
        .args(["--listen", &first.addr.to_string(), "--log-format", "json", "--no-pin"])
        .env("RUST_LOG", "info"));
    assert_ne!(status, 0);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!stderr.trim().is_empty());
    for line in stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    let mut child = herald()
        .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--no-pin", "--workers", "1"])
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines.next().expect("a line").expect("read");
    assert!(line.starts_with("herald listening on "), "{line}");
    std::thread::sleep(Duration::from_millis(200));
    child.kill().expect("kill");
    child.wait().expect("wait");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    let listening = stderr.lines().find(|l| l.contains("herald listening")).expect("a listening event");
    let v: serde_json::Value = serde_json::from_str(listening).expect("JSON");
    assert!(v["fields"]["addr"].is_string(), "{listening}");
}
