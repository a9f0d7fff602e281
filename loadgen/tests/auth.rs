//! loadgen's authentication against a real herald with auth on: minted JWTs in every carrier open every
//! connection, refusals are classified by status or reply code, and the message and per-message modes keep the
//! delivery accounting exact.

mod support;

use support::{loadgen, num, serial, Herald};

/// herald's test HMAC secret (no trailing newline).
const SECRET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/auth/hs.secret");
const ORIGIN: &str = "http://loadgen.test";

fn fanout(url: &str, extra: &[&str]) -> support::Run {
    let mut args = vec!["fanout", "--url", url, "--threads", "2", "--no-pin", "--quiet", "--jwt-secret-file", SECRET];
    args.extend_from_slice(&["--subs", "5", "--rate", "200", "--duration", "300ms", "--warmup", "0s"]);
    args.extend_from_slice(extra);
    loadgen(&args)
}

fn assert_exact(r: &support::Run, what: &str) {
    assert_eq!(r.code, 0, "{what}: stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(num(j, "/connections/opened"), 6, "{what}: {}", r.stdout);
    assert_eq!(num(j, "/connections/failures_total"), 0, "{what}: {}", r.stdout);
    assert!(num(j, "/delivery/expected") >= 5 * 60, "{what}: {}", r.stdout);
    assert_eq!(num(j, "/delivery/delivered"), num(j, "/delivery/expected"), "{what}: {}", r.stdout);
}

#[test]
fn minted_tokens_open_every_carrier() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2", "--auth-secret-file", SECRET, "--auth-allowed-origins", ORIGIN]);
    for carrier in ["bearer", "x-auth-token", "cookie", "query", "subprotocol"] {
        let r = fanout(&herald.url(), &["--auth-carrier", carrier, "--origin", ORIGIN]);
        assert_exact(&r, carrier);
    }
    let r = fanout(&herald.url(), &["--protocol", "json", "--auth-carrier", "subprotocol", "--jwt-sub", "alice"]);
    assert_exact(&r, "json over subprotocol");
}

#[test]
fn refusals_are_counted_by_status() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "1", "--auth-secret-file", SECRET, "--auth-allowed-origins", ORIGIN]);
    // Subscribers may not subscribe to loadgen's topics: 403 each; the publisher still opens.
    let r = fanout(&herald.url(), &["--jwt-subscribe", "news.*", "--probe-timeout", "1s"]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(num(&r.json, "/connections/connect_failures/http_status/403"), 5, "{}", r.stdout);
    assert!(r.stdout.contains("http 403 x5"), "{}", r.stdout);
    // A cookie without an allowed Origin: 403 too.
    let r = fanout(&herald.url(), &["--auth-carrier", "cookie"]);
    assert_eq!(r.code, 1, "nothing opens: stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("http 403 x6"), "{}", r.stderr);
    // Signed with another secret: 401 for everyone, and loadgen says so.
    let r = loadgen(&[
        "fanout",
        "--url",
        &herald.url(),
        "--no-pin",
        "--quiet",
        "--subs",
        "3",
        "--duration",
        "200ms",
        "--token",
        "a.b.c",
    ]);
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("http 401 x4"), "{}", r.stderr);
}

#[test]
fn message_mode_opens_after_the_auth_message() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2", "--auth-secret-file", SECRET, "--auth-mode", "message"]);
    // /ws acks the auth message, then the subscribe: the subscribers open after both.
    let r = fanout(&herald.url(), &["--protocol", "json", "--auth-carrier", "message"]);
    assert_exact(&r, "json");
    assert!(num(&r.json, "/counters/acks") >= 6 + 5, "{}", r.json["counters"]);
    // Raw endpoints take the auth message silently.
    let r = fanout(&herald.url(), &["--auth-carrier", "message"]);
    assert_exact(&r, "raw");
    // Without it, herald answers the first request by closing with 4401.
    let r = fanout(&herald.url(), &["--auth-carrier", "none", "--protocol", "json", "--probe-timeout", "500ms"]);
    let output = format!("{}{}", r.stdout, r.stderr);
    assert!(output.contains("close 4401 x5"), "the subscribers fail to open: {output}");
}

#[test]
fn per_message_tokens_authorize_each_request() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2", "--auth-secret-file", SECRET, "--auth-mode", "per_message"]);
    let r = fanout(&herald.url(), &["--protocol", "json", "--auth-per-message", "--auth-carrier", "none"]);
    assert_exact(&r, "per message");
    assert_eq!(num(&r.json, "/counters/error_replies"), 0);
    // A token that may not publish: every publish is answered with an error reply, nothing is delivered.
    let r = fanout(
        &herald.url(),
        &["--protocol", "json", "--auth-per-message", "--jwt-publish", "", "--probe-timeout", "500ms"],
    );
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(num(&r.json, "/counters/error_replies") >= 30, "{}", r.json["counters"]);
    assert_eq!(num(&r.json, "/delivery/delivered"), 0);
    assert!(r.stdout.contains("error replies"), "{}", r.stdout);
}
