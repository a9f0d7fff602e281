//! loadgen across the nodes of a herald cluster (two nodes over one real `redis-server`): publishers on one
//! node (`--pub-url`), subscribers on another (`--url`), with the same exact accounting as on one server.

#[path = "support/redis.rs"]
mod redis;
mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use redis::Redis;
use support::{loadgen, num, serial, Herald};

/// A herald node on `redis` with two workers, returned once `/healthz` says its cluster link is up.
fn node(redis: &Redis) -> Herald {
    let url = redis.url();
    let herald = Herald::start(&["--workers", "2", "--cluster-redis-urls", &url]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthz(&herald).contains(r#""state":"ok""#) {
        assert!(Instant::now() < deadline, "the node's link to Redis never came up: {}", healthz(&herald));
        std::thread::sleep(Duration::from_millis(50));
    }
    herald
}

/// The body of `GET /healthz` (empty if the request failed).
fn healthz(herald: &Herald) -> String {
    let Ok(mut sock) = std::net::TcpStream::connect(herald.addr) else { return String::new() };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = sock.read_to_string(&mut text);
    text.split_once("\r\n\r\n").map(|(_, body)| body.replace([' ', '\n'], "")).unwrap_or_default()
}

fn fanout(args: &[&str]) -> support::Run {
    let mut all = vec!["fanout", "--threads", "2", "--no-pin", "--quiet", "--warmup", "0s"];
    all.extend_from_slice(args);
    loadgen(&all)
}

#[test]
fn publishers_on_one_node_reach_subscribers_on_another_exactly_once() {
    let _serial = serial();
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    // 50 subscribers on A, 1 publisher on B at 500/s for 1 s of schedule: every message crosses Redis.
    let (url_a, url_b) = (a.url(), b.url());
    let r = fanout(&["--url", &url_a, "--pub-url", &url_b, "--subs", "50", "--rate", "500", "--duration", "1s"]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(num(j, "/delivery/published"), 500, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/expected"), 25_000);
    assert_eq!(num(j, "/delivery/delivered"), 25_000, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/lost") + num(j, "/delivery/in_flight"), 0);
    assert_eq!(num(j, "/counters/duplicates") + num(j, "/counters/reordered"), 0);
    assert_eq!(num(j, "/counters/gap_notices"), 0);
    assert_eq!(j["engine"]["pub_urls"], serde_json::json!([url_b]), "the report names where publishers went");
    assert!(r.stdout.contains(&format!("(publishers on {url_b})")), "{}", r.stdout);
    // Where the connections went: A only delivered, B only took publishes and sent them on to Redis.
    assert_eq!(a.metric("herald_messages_in_total"), 0, "no publisher on the subscribers' node");
    assert!(b.metric("herald_messages_in_total") >= 500, "the publisher was on B");
    assert!(a.metric("herald_cluster_foreign_messages_total") >= 500, "A delivered B's messages from Redis");
}

#[test]
fn json_subscribers_spread_over_two_nodes_count_every_delivery_and_gap_notice() {
    let _serial = serial();
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    // Subscribers dealt over A and B, the publishers on B: half the deliveries are local, half cross nodes.
    let (url_a, url_b) = (a.url(), b.url());
    let urls = format!("{url_a},{url_b}");
    let r = fanout(&[
        "--protocol",
        "json",
        "--url",
        &urls,
        "--pub-url",
        &url_b,
        "--subs",
        "40",
        "--topics",
        "2",
        "--pubs",
        "2",
        "--rate",
        "400",
        "--duration",
        "1s",
    ]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(num(j, "/delivery/published"), 400, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/expected"), 8_000, "each message to the 20 subscribers of its topic");
    assert_eq!(num(j, "/delivery/delivered"), 8_000, "{}", r.stdout);
    assert_eq!(num(j, "/counters/foreign"), 0, "nothing unexpected was taken for a message");
    assert_eq!(num(j, "/counters/gap_notices"), 0, "Redis stayed up: nothing was lost between nodes");
    assert!(r.stdout.contains("gap notices  0"), "{}", r.stdout);
    assert!(a.metric("herald_cluster_foreign_messages_total") > 0, "some subscribers were on A");
}

#[test]
fn ws_and_wss_urls_in_one_run_are_refused_with_a_reason() {
    let r = fanout(&["--url", "ws://127.0.0.1:1", "--pub-url", "wss://127.0.0.1:2", "--insecure"]);
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("mix ws:// and wss://"), "{}", r.stderr);
}
