//! `/metrics` over a real socket: counters add up exactly to the traffic sent (summed over workers), gauges are
//! per worker, and the text is well-formed Prometheus exposition (one `# HELP` and one `# TYPE` per family).
mod support;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{client_frame, wait_until, FrameReader, RawWs, Server};

const KEY: [u8; 4] = [1, 2, 3, 4];
const SETTLE: Duration = Duration::from_secs(3);

/// Subscribers, a publisher, probes and `M` messages, then one 404: every counter is checked exactly.
#[test]
fn counters_and_gauges_match_the_traffic_exactly() {
    const SUBSCRIBERS: usize = 4;
    const M: u64 = 50;
    let server = Server::start(&["--workers", "2"]);
    let subs: Vec<RawWs> = (0..SUBSCRIBERS).map(|_| RawWs::connect(server.addr, "/sub/m")).collect();
    let mut publisher = RawWs::connect(server.addr, "/pub/m");
    let upgrades = SUBSCRIBERS as u64 + 1;

    // Each subscriber counts every message it gets, probes included, until it has M real ones.
    let probed = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = subs
        .into_iter()
        .map(|ws| {
            let probed = probed.clone();
            std::thread::spawn(move || {
                let mut reader = FrameReader::new(ws);
                let (mut probes, mut real) = (0u64, 0u64);
                while real < M {
                    let (_, payload) = reader.next_frame().expect("subscriber read");
                    if payload == b"probe" {
                        if probes == 0 {
                            probed.fetch_add(1, Ordering::SeqCst);
                        }
                        probes += 1;
                    } else {
                        assert_eq!(payload, format!("m{real}").into_bytes());
                        real += 1;
                    }
                }
                (reader, probes + real)
            })
        })
        .collect();
    let mut probes_sent = 0u64;
    let all_probed = wait_until(Duration::from_secs(10), || {
        publisher.send_frame(0x81, b"probe", true);
        probes_sent += 1;
        std::thread::sleep(Duration::from_millis(5));
        probed.load(Ordering::SeqCst) == SUBSCRIBERS
    });
    assert!(all_probed, "not every subscriber saw a probe");
    let mut batch = Vec::new();
    for i in 0..M {
        batch.extend(client_frame(0x81, format!("m{i}").as_bytes(), KEY));
    }
    publisher.stream.write_all(&batch).expect("publish");
    let (subs, received): (Vec<FrameReader>, Vec<u64>) =
        readers.into_iter().map(|r| r.join().expect("reader thread")).unzip();
    let delivered: u64 = received.iter().sum();
    assert!(delivered >= M * SUBSCRIBERS as u64);

    let (status, _, _) = server.http("GET", "/no/such/path", &[], b"");
    assert_eq!(status, 404);

    let publishes = probes_sent + M;
    for (series, expected) in [
        ("herald_upgrades_total", upgrades),
        ("herald_publishes_total", publishes),
        ("herald_messages_in_total", publishes),
        // Every message each subscriber received was one delivery: the M real ones to each, plus the probes.
        ("herald_deliveries_total", delivered),
        ("herald_handshakes_failed_total{status=\"404\"}", 1),
        ("herald_handshakes_failed_total{status=\"400\"}", 0),
        ("herald_backpressure_drops_total", 0),
        ("herald_websockets_open", upgrades),
        ("herald_subscriptions", SUBSCRIBERS as u64),
        // The open WebSockets and the scrape's own connection.
        ("herald_connections_open", upgrades + 1),
    ] {
        assert_eq!(server.wait_metric(series, expected, SETTLE), expected, "{series}");
    }

    // Gauges are per worker: one line per worker, adding up to the process total.
    let text = server.metrics_text();
    for family in ["herald_connections_open", "herald_websockets_open", "herald_subscriptions"] {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("{family}{{"))).collect();
        let labels: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap_or_default()).collect();
        assert_eq!(labels, [format!("{family}{{worker=\"0\"}}"), format!("{family}{{worker=\"1\"}}")], "{family}");
    }
    let ws_per_worker: u64 = (0..2).map(|w| server.metric(&format!("herald_websockets_open{{worker=\"{w}\"}}"))).sum();
    assert_eq!(ws_per_worker, upgrades);

    // Closing the connections brings the gauges back down.
    drop(subs);
    drop(publisher);
    assert_eq!(server.wait_metric("herald_websockets_open", 0, SETTLE), 0);
    assert_eq!(server.wait_metric("herald_subscriptions", 0, SETTLE), 0);
    assert_eq!(server.wait_metric("herald_connections_open", 1, SETTLE), 1, "only the scrape itself");
    assert_eq!(server.metric("herald_upgrades_total"), upgrades, "a counter never goes down");
}

/// Prometheus text format 0.0.4: each family has exactly one `# HELP` and one `# TYPE` line, before its samples,
/// and its samples are contiguous.
#[test]
fn each_family_has_one_help_and_one_type_line_before_its_samples() {
    let server = Server::start(&["--workers", "2"]);
    let _ws = RawWs::connect(server.addr, "/echo");
    let text = server.metrics_text();
    let mut help: HashMap<&str, usize> = HashMap::new();
    let mut kind: HashMap<&str, &str> = HashMap::new();
    let mut type_count: HashMap<&str, usize> = HashMap::new();
    let mut finished: Vec<&str> = Vec::new();
    let mut current = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let family = rest.split(' ').next().unwrap_or_default();
            *help.entry(family).or_default() += 1;
            assert!(rest.len() > family.len() + 1, "empty help text: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let family = parts.next().unwrap_or_default();
            *type_count.entry(family).or_default() += 1;
            kind.insert(family, parts.next().unwrap_or_default());
            assert_eq!(help.get(family), Some(&1), "# HELP comes before # TYPE for {family}");
        } else {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<u64>().is_ok(), "sample value: {line}");
            assert!(type_count.contains_key(name), "sample before its # TYPE: {line}");
            if name != current {
                assert!(!finished.contains(&name), "samples of {name} are not contiguous");
                finished.push(current);
                current = name;
            }
        }
    }
    assert!(!help.is_empty());
    for (family, n) in &help {
        assert_eq!(*n, 1, "# HELP lines for {family}");
        assert_eq!(type_count.get(family), Some(&1), "# TYPE lines for {family}");
    }
    assert_eq!(help.len(), type_count.len(), "a # TYPE without # HELP");
    for (family, expected) in [
        ("herald_upgrades_total", "counter"),
        ("herald_publishes_total", "counter"),
        ("herald_deliveries_total", "counter"),
        ("herald_handshakes_failed_total", "counter"),
        ("herald_backpressure_drops_total", "counter"),
        ("herald_backpressure_closes_total", "counter"),
        ("herald_close_codes_sent_total", "counter"),
        ("herald_connections_open", "gauge"),
        ("herald_websockets_open", "gauge"),
    ] {
        assert_eq!(kind.get(family), Some(&expected), "# TYPE of {family}");
        if expected == "counter" {
            assert!(family.ends_with("_total"), "counter names end in _total: {family}");
        }
    }
}
