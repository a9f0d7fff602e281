//! `loadgen --compress` against a real herald on loopback: permessage-deflate is negotiated on every connection
//! herald offers it to, compressed deliveries are inflated and accounted exactly, and wire bytes are counted
//! apart from payload bytes; against a herald without compression the same run goes uncompressed.

mod support;

use support::{loadgen, num, serial, Herald};

/// 50 subscribers and one publisher, open loop at 500/s for 1 s, 1 KiB payloads (loadgen's header, then
/// padding: very compressible, and above herald's default 256 B `min_size`).
fn fanout_with_compress(url: &str) -> support::Run {
    loadgen(&[
        "fanout",
        "--url",
        url,
        "--threads",
        "2",
        "--no-pin",
        "--quiet",
        "--compress",
        "--subs",
        "50",
        "--pubs",
        "1",
        "--size",
        "1KiB",
        "--rate",
        "500",
        "--duration",
        "1s",
        "--warmup",
        "0s",
    ])
}

#[test]
fn compressed_fanout_is_negotiated_on_every_connection_and_delivers_exactly() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2", "--compression", "true"]);
    let r = fanout_with_compress(&herald.url());
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(num(j, "/connections/opened"), 51);
    assert_eq!(num(j, "/counters/deflate_negotiated"), 51, "every connection, publisher included");
    assert_eq!(num(j, "/delivery/expected"), 25_000);
    assert_eq!(num(j, "/delivery/delivered"), 25_000, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/lost") + num(j, "/delivery/in_flight"), 0);
    assert_eq!(num(j, "/counters/foreign"), 0, "every inflated payload starts with loadgen's header");
    assert!(num(j, "/counters/compressed_messages") >= 25_000, "deliveries arrive compressed: {}", r.stdout);
    let (wire, payload) = (num(j, "/counters/wire_bytes_in_window"), num(j, "/counters/bytes_in_window"));
    assert_eq!(payload, num(j, "/counters/messages_in_window") * 1024, "payload bytes are the inflated sizes");
    assert!(wire * 4 < payload, "1 KiB of padding compresses well: {wire} B on the wire for {payload} B");
}

#[test]
fn against_a_server_without_compression_the_run_is_uncompressed_and_says_so() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2"]);
    let r = fanout_with_compress(&herald.url());
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(num(j, "/connections/opened"), 51);
    assert_eq!(num(j, "/counters/deflate_negotiated"), 0);
    assert_eq!(num(j, "/counters/compressed_messages"), 0);
    assert_eq!(num(j, "/delivery/delivered"), 25_000, "{}", r.stdout);
    assert_eq!(num(j, "/counters/wire_bytes_in_window"), num(j, "/counters/bytes_in_window"));
}

#[test]
fn compressed_json_envelopes_on_ws_are_inflated_and_read_like_plain_ones() {
    let _serial = serial();
    let herald = Herald::start(&["--workers", "2", "--compression", "true"]);
    let r = loadgen(&[
        "fanout",
        "--url",
        &herald.url(),
        "--threads",
        "2",
        "--no-pin",
        "--quiet",
        "--compress",
        "--protocol",
        "json",
        "--subs",
        "20",
        "--pubs",
        "1",
        "--size",
        "1KiB",
        "--rate",
        "500",
        "--duration",
        "1s",
        "--warmup",
        "0s",
    ]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = &r.json;
    assert_eq!(num(j, "/counters/deflate_negotiated"), 21);
    assert_eq!(num(j, "/delivery/delivered"), 10_000, "{}", r.stdout);
    assert_eq!(num(j, "/delivery/lost") + num(j, "/delivery/in_flight"), 0);
    assert_eq!(num(j, "/counters/foreign"), 0, "every inflated envelope is recognised as a delivery");
    assert!(num(j, "/counters/compressed_messages") >= 10_000, "{}", r.stdout);
    assert!(num(j, "/counters/wire_bytes_in_window") < num(j, "/counters/bytes_in_window"));
}
