//! loadgen's fan-out scenario against a real herald on loopback: exact delivery accounting, failure
//! classification, thresholds, and latency that shows a stalled server (no coordinated omission).

mod support;

use std::time::Duration;

use serde_json::json;
use support::{loadgen, num, serial, Herald};

/// Arguments every test run shares: small, short, two unpinned threads.
fn base(url: &str) -> Vec<String> {
    ["fanout", "--url", url, "--threads", "2", "--no-pin", "--quiet"].iter().map(|s| s.to_string()).collect()
}

fn run(url: &str, extra: &[&str]) -> support::Run {
    let mut args = base(url);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    loadgen(&refs)
}

#[test]
fn hundred_subscribers_get_exactly_a_thousand_messages_each() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2"]);
    // Open loop at 1000/s for exactly 1 s of schedule: messages 0..1000 are due inside the window.
    let r =
        run(&herald.url(), &["--subs", "100", "--pubs", "1", "--rate", "1000", "--duration", "1s", "--warmup", "0s"]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(num(j, "/delivery/published"), 1000, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/expected"), 100_000);
    assert_eq!(num(j, "/delivery/delivered"), 100_000, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/lost"), 0);
    assert_eq!(num(j, "/delivery/in_flight"), 0);
    assert_eq!(num(j, "/counters/duplicates"), 0);
    assert_eq!(num(j, "/counters/reordered"), 0);
    assert_eq!(num(j, "/latency/count"), 100_000);
    assert_eq!(num(j, "/subscribers_confirmed"), 100);
    assert_eq!(num(j, "/connections/opened"), 101);
}

#[test]
fn closed_loop_over_topics_and_publishers_delivers_everything_once() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2"]);
    // 20 subscribers over 4 topics (5 each), 8 publishers (2 per topic), each at most 32 messages ahead.
    let r = run(
        &herald.url(),
        &[
            "--subs",
            "20",
            "--topics",
            "4",
            "--pubs",
            "8",
            "--rate",
            "max",
            "--window",
            "32",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
        ],
    );
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    let published = num(j, "/delivery/published");
    assert!(published > 100, "closed loop made progress: {}", r.stdout);
    assert_eq!(num(j, "/delivery/expected"), published * 5, "each message goes to the 5 subscribers of its topic");
    assert_eq!(num(j, "/delivery/delivered"), published * 5, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/lost") + num(j, "/delivery/in_flight"), 0);
    assert_eq!(num(j, "/counters/foreign"), 0, "no message reached a subscriber of another topic");
    assert!(j["drained"].as_bool().expect("drained"), "every message arrived within the grace period");
}

#[test]
fn stalled_server_shows_up_as_latency_not_silence() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "1"]);
    let url = herald.url();
    let loadgen = std::thread::spawn(move || {
        run(&url, &["--subs", "20", "--rate", "2000", "--duration", "4s", "--warmup", "500ms", "--grace", "5s"])
    });
    // Wait until the publisher runs at its rate (probes alone are 100/s), then for the warm-up to pass, so the
    // stall falls inside the measured window.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while herald.metric("herald_messages_in_total") < 300 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1000));
    herald.signal("STOP");
    std::thread::sleep(Duration::from_secs(1));
    herald.signal("CONT");
    let r = loadgen.join().expect("loadgen thread");
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    let (p99, max) = (num(j, "/latency/p99_ns"), num(j, "/latency/max_ns"));
    // Messages scheduled during the stall wait for it to end: latency from the schedule reaches ~1 s.
    assert!(max >= 900_000_000, "max {max} ns should show the 1 s stall\n{}", r.stdout);
    assert!(max < 3_000_000_000, "max {max} ns: the stall was 1 s\n{}", r.stdout);
    assert!(p99 >= 500_000_000, "p99 {p99} ns: a quarter of the window was stalled\n{}", r.stdout);
    assert_eq!(num(j, "/delivery/delivered"), num(j, "/delivery/expected"), "a stall loses nothing\n{}", r.stdout);
}

#[test]
fn refused_and_rejected_connections_are_counted_not_fatal() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "1"]);
    // herald answers 404 to an unknown path: the subscribers fail with an HTTP status, the publisher opens, and
    // the run goes on without waiting for subscribers that cannot be confirmed.
    let r = run(
        &herald.url(),
        &["--subs", "10", "--sub-path", "/nope/{topic}", "--rate", "100", "--duration", "300ms", "--warmup", "0s"],
    );
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(num(&r.json, "/connections/connect_failures/http_status/404"), 10, "{}", r.stdout);
    assert_eq!(num(&r.json, "/connections/opened"), 1);
    assert!(r.stdout.contains("http 404 x10"), "{}", r.stdout);

    // Nothing listening: every connection is refused, and loadgen says so.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let r = run(&format!("ws://127.0.0.1:{port}"), &["--subs", "3", "--duration", "200ms"]);
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("refused 4"), "{}", r.stderr);
}

#[test]
fn broken_thresholds_exit_with_status_3() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "1"]);
    let r = run(
        &herald.url(),
        &["--subs", "5", "--rate", "500", "--duration", "300ms", "--warmup", "0s", "--max-p99", "1ns"],
    );
    assert_eq!(r.code, 3, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("FAIL: p99"), "{}", r.stdout);
    assert_eq!(r.json["verdict"]["passed"], serde_json::Value::Bool(false));
    let r = run(
        &herald.url(),
        &[
            "--subs",
            "5",
            "--rate",
            "500",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--max-loss",
            "0",
            "--max-p99",
            "10s",
        ],
    );
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
}

#[test]
fn json_report_carries_the_configuration() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "1"]);
    let r =
        run(&herald.url(), &["--subs", "3", "--size", "100", "--rate", "200", "--duration", "300ms", "--warmup", "0s"]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(j["scenario"], "fanout");
    assert_eq!(num(j, "/plan/size"), 100);
    assert_eq!(num(j, "/plan/subs"), 3);
    assert_eq!(j["plan"]["rate"]["kind"], "fixed");
    assert_eq!(num(j, "/engine/threads"), 2);
    assert_eq!(j["engine"]["url"], herald.url());
    assert!(j["timeline"].as_array().is_some_and(|t| !t.is_empty()));
    assert!(j["loadgen"]["cpu_ns_per_delivery"].as_f64().is_some());
}

#[test]
fn json_protocol_delivers_exactly_like_raw() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2"]);
    // 20 subscribers on herald's /ws, each counted open only once its subscribe is acked; 500 messages
    // scheduled inside the window.
    let r = run(
        &herald.url(),
        &["--protocol", "json", "--subs", "20", "--rate", "500", "--duration", "1s", "--warmup", "0s", "--size", "64"],
    );
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(j["plan"]["protocol"], "json");
    assert_eq!(num(j, "/delivery/published"), 500, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/expected"), 10_000);
    assert_eq!(num(j, "/delivery/delivered"), 10_000, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/lost") + num(j, "/delivery/in_flight") + num(j, "/delivery/lost_disconnected"), 0);
    assert_eq!(num(j, "/counters/duplicates") + num(j, "/counters/reordered") + num(j, "/counters/foreign"), 0);
    assert_eq!(num(j, "/counters/error_replies"), 0);
    assert_eq!(num(j, "/latency/count"), 10_000);
    assert_eq!(num(j, "/subscribers_confirmed"), 20);
    assert_eq!(num(j, "/connections/opened"), 21);
    // Every subscribe and every publish (probes included) was acked; none counted as a delivery.
    assert!(num(j, "/counters/acks") >= 20 + 500, "{}", j["counters"]);
}

#[test]
fn json_error_replies_are_classified_not_fatal() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "1"]);
    // `/` is not allowed in herald's topic names: each subscribe is answered with an error reply, and so is
    // each publish.
    let r = run(
        &herald.url(),
        &[
            "--protocol",
            "json",
            "--topic-prefix",
            "bad/",
            "--subs",
            "5",
            "--rate",
            "100",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--probe-timeout",
            "1s",
        ],
    );
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(num(j, "/connections/connect_failures/error_reply/invalid_topic"), 5, "{}", r.stdout);
    assert_eq!(num(j, "/connections/opened"), 1, "the publisher needs no ack to open");
    assert!(num(j, "/counters/error_replies") >= 20, "publishes refused: {}", j["counters"]);
    assert!(r.stdout.contains("error reply invalid_topic x5"), "{}", r.stdout);
}

#[test]
fn tokens_in_every_carrier_reach_a_server_that_does_not_check_them() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "1"]);
    let secret = std::env::temp_dir().join(format!("loadgen-fanout-secret-{}", std::process::id()));
    std::fs::write(&secret, "test-secret\n").expect("secret file");
    let secret_path = secret.to_str().expect("utf-8 path");
    // The requests are well formed whatever the carrier: a server without auth accepts them all.
    for carrier in ["bearer", "x-auth-token", "cookie", "query", "subprotocol"] {
        let r = run(
            &herald.url(),
            &[
                "--subs",
                "5",
                "--rate",
                "200",
                "--duration",
                "300ms",
                "--warmup",
                "0s",
                "--jwt-secret-file",
                secret_path,
                "--auth-carrier",
                carrier,
            ],
        );
        assert_eq!(r.code, 0, "{carrier}: stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
        assert_eq!(num(&r.json, "/connections/opened"), 6, "{carrier}: {}", r.stdout);
        assert_eq!(num(&r.json, "/delivery/delivered"), num(&r.json, "/delivery/expected"), "{carrier}");
        assert_eq!(r.json["engine"]["auth"]["carrier"], carrier);
        assert_eq!(r.json["engine"]["auth"]["source"], "jwt");
    }
    let _ = std::fs::remove_file(&secret);
}

#[test]
fn token_subcommand_prints_a_verifiable_jwt() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["token", "--jwt-secret-env", "LOADGEN_TEST_JWT_SECRET", "--jwt-sub", "alice"])
        .args(["--jwt-subscribe", "news.*", "--jwt-alg", "HS384", "--jwt-kid", "k1"])
        .env("LOADGEN_TEST_JWT_SECRET", "s3cret")
        .output()
        .expect("run loadgen token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let token = text.trim_end();
    assert_eq!(text, format!("{token}\n"), "one line");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS384);
    v.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &jsonwebtoken::DecodingKey::from_secret(b"s3cret"), &v)
        .expect("verifies with the secret");
    assert_eq!(data.header.kid.as_deref(), Some("k1"));
    let c = &data.claims;
    assert_eq!(
        (c["sub"].as_str(), c["subscribe"].clone(), c["publish"].clone()),
        (Some("alice"), json!(["news.*"]), json!(["*"]))
    );
    assert_eq!(c["exp"].as_u64().expect("exp") - c["iat"].as_u64().expect("iat"), 3600);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen")).arg("token").output().expect("run");
    assert_eq!(out.status.code(), Some(1), "no secret: an error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jwt-secret-file"));
}
