//! loadgen's `conns` and `echo` scenarios against a real herald: connections open and are held (answering the
//! server's pings), the server's memory is sampled from /proc, and every echo is accounted for.

mod support;

use support::{loadgen, loadgen_plain, num, serial, Herald};

#[test]
fn holds_every_connection_and_reports_server_memory() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2"]);
    let pid = herald.pid().to_string();
    let r = loadgen(&[
        "conns",
        "--url",
        &herald.url(),
        "--conns",
        "300",
        "--hold",
        "500ms",
        "--threads",
        "2",
        "--no-pin",
        "--quiet",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(num(j, "/opened"), 300, "{}", r.stdout);
    assert_eq!(num(j, "/open_at_end"), 300);
    assert!(num(j, "/server/during/rss_kib") > 0);
    assert!(j["server"]["rss_bytes_per_conn"].as_f64().is_some(), "{}", r.stdout);
    assert!(r.stdout.contains("bytes per connection"), "{}", r.stdout);
}

#[test]
fn echo_round_trips_are_all_accounted_for() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2"]);
    let r = loadgen(&[
        "echo",
        "--url",
        &herald.url(),
        "--conns",
        "20",
        "--inflight",
        "4",
        "--size",
        "100",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--threads",
        "2",
        "--no-pin",
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    let sent = num(j, "/delivery/expected");
    assert!(sent > 100, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/delivered"), sent, "every echo came back\n{}", r.stdout);
    assert_eq!(num(j, "/counters/foreign") + num(j, "/counters/duplicates") + num(j, "/counters/reordered"), 0);
    assert!(num(j, "/latency/count") > 0);
}

#[test]
fn pinged_connections_answer_and_survive_the_idle_timeout() {
    let _serial = serial();
    // herald pings after 200 ms of silence and closes after 1 s without anything from the client: loadgen's
    // pongs must keep every connection open through a 2 s hold.
    let herald = Herald::start(&["--workers", "1", "--ping-interval", "200ms", "--idle-timeout", "1s"]);
    let r = loadgen(&[
        "conns",
        "--url",
        &herald.url(),
        "--conns",
        "50",
        "--hold",
        "2s",
        "--threads",
        "1",
        "--no-pin",
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(num(&r.json, "/open_at_end"), 50, "{}", r.stdout);
    assert_eq!(r.json["disconnects"]["closed_by_server"], serde_json::json!({}), "{}", r.stdout);
}

#[test]
fn json_connections_count_once_subscribed() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2"]);
    let r = loadgen(&[
        "conns",
        "--url",
        &herald.url(),
        "--protocol",
        "json",
        "--conns",
        "100",
        "--hold",
        "300ms",
        "--threads",
        "2",
        "--no-pin",
        "--quiet",
        "--token",
        "static.test.token",
        "--auth-carrier",
        "cookie",
    ]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(num(&r.json, "/opened"), 100, "{}", r.stdout);
    assert_eq!(num(&r.json, "/open_at_end"), 100);
    assert_eq!(r.json["plan"]["protocol"], "json");
    assert_eq!(r.json["plan"]["path"], "/ws");
    assert_eq!(r.json["engine"]["auth"]["source"], "token");
}

#[test]
fn json_dash_puts_the_report_alone_on_stdout() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "1"]);
    let url = herald.url();
    let common = ["--url", url.as_str(), "--threads", "1", "--no-pin", "--quiet", "--json", "-"];
    let conns = loadgen_plain(&[&["conns", "--conns", "10", "--hold", "100ms"][..], &common].concat());
    let fanout = loadgen_plain(
        &[&["fanout", "--subs", "5", "--rate", "1000", "--duration", "300ms", "--warmup", "0s"][..], &common].concat(),
    );
    for (scenario, r) in [("conns", conns), ("fanout", fanout)] {
        assert_eq!(r.code, 0, "{scenario}: stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
        let report: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{scenario}: stdout is not one JSON document ({e}):\n{}", r.stdout));
        assert_eq!(report["scenario"], scenario);
        assert!(
            r.stderr.contains(&format!("loadgen {scenario} ")),
            "{scenario}: the table moves to stderr:\n{}",
            r.stderr
        );
    }
}
