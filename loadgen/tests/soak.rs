//! `loadgen soak` against a real herald on loopback, shortened to about 20 s with 2 s intervals: it runs all
//! four kinds of traffic, finds the server's process by its port, samples it every interval, reports zero
//! loss for the well-behaved subscribers, and exits 0. (The trend rule is unit-tested in `soak::trend`.)

mod support;

use support::{loadgen, num, serial, Herald};

#[test]
fn a_short_soak_runs_every_kind_of_traffic_loses_nothing_and_passes() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2"]);
    let url = herald.url();
    // No --server-pid: loadgen finds herald from the listening port.
    let r = loadgen(&[
        "soak",
        "--url",
        &url,
        "--threads",
        "1",
        "--no-pin",
        "--quiet",
        "--duration",
        "20s",
        "--interval",
        "2s",
        "--trend-warmup",
        "4s",
        "--subs",
        "50",
        "--topics",
        "5",
        "--pubs",
        "5",
        "--rate",
        "500",
        "--churn-rate",
        "10",
        "--slow",
        "4",
        "--slow-stall",
        "4s",
        "--bad-rate",
        "4",
        // 20 s on a shared machine: a neighbour's build can move p99 and RSS; the trend rule itself has unit
        // tests, this test is about running everything without loss.
        "--p99-tolerance",
        "1s",
        "--rss-tolerance",
        "64MiB",
    ]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(j["passed"], true, "{}", r.stdout);
    let samples = j["samples"].as_array().expect("samples");
    assert!((9..=11).contains(&samples.len()), "one sample per 2 s interval: {}", samples.len());
    for s in samples {
        assert_eq!(num(s, "/loss"), 0, "{s}");
        assert!(num(s, "/rss_kib") > 0 && num(s, "/fds") > 0, "the server was found and sampled: {s}");
    }
    let expected = num(j, "/delivery/expected");
    assert_eq!(expected, 500 * 20 * 10, "every message goes to the 10 subscribers of its topic");
    assert_eq!(num(j, "/delivery/delivered"), expected, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/lost") + num(j, "/delivery/lost_disconnected") + num(j, "/delivery/in_flight"), 0);
    // The side traffic ran and the server answered it.
    let side = &j["side"];
    assert!(num(side, "/churn_clean") > 0 && num(side, "/churn_rst") > 0, "{side}");
    assert!(num(side, "/churn_fin") > 0 && num(side, "/churn_fin_mid_request") > 0, "{side}");
    assert_eq!(num(side, "/churn_failed"), 0, "{side}");
    assert!(num(side, "/slow_sessions") > 0, "{side}");
    assert!(num(side, "/bad_sent") > 0, "{side}");
    let answers = side["bad_answers"].as_object().expect("answers");
    assert!(answers.keys().any(|k| k.starts_with('4')), "bad handshakes get 4xx answers: {side}");
    assert!(!answers.contains_key("timeout"), "every bad handshake was answered or closed: {side}");
    assert!(r.stdout.contains("PASS"), "{}", r.stdout);
}
