//! Unit tests of the fan-out scenario's worker side: the split over workers, what gets dialed, and the
//! receive-side accounting (raw and JSON).

use super::*;
use crate::plan::Rate;
use std::time::Duration;

fn plan(subs: usize, topics: usize, pubs: usize, window: Option<u64>) -> Arc<FanoutPlan> {
    Arc::new(FanoutPlan {
        subs,
        topics,
        pubs,
        size: 64,
        rate: Rate::Max,
        window,
        batch: None,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(1),
        grace: Duration::from_secs(1),
        probe_timeout: Duration::from_secs(1),
        protocol: Protocol::Raw,
        ws_path: "/ws".into(),
        sub_path: "/sub/{topic}".into(),
        pub_path: "/pub/{topic}".into(),
        topic_prefix: "t".into(),
        text: false,
        payload: crate::filler::Filler::Padding,
    })
}

#[test]
fn workers_split_subscribers_and_publishers() {
    let p = plan(10, 3, 4, None);
    let a = FanoutLocal::new(p.clone(), 0, 2);
    let b = FanoutLocal::new(p, 1, 2);
    assert_eq!(a.subs.len() + b.subs.len(), 10);
    assert_eq!(a.pubs.len() + b.pubs.len(), 4);
    assert_eq!(a.pairs.len(), a.subs.len() * 2);
    let dials = a.dial_list();
    assert_eq!(dials.len(), 5 + 2);
    assert_eq!(dials[0], Dial::raw(Kind::Sub(0), 0, "/sub/t0".to_owned()));
    assert_eq!(dials[1], Dial::raw(Kind::Sub(1), 2, "/sub/t2".to_owned()), "subscriber 2 is on topic 2");
    assert_eq!(dials[5], Dial::raw(Kind::Pub(0), 10, "/pub/t0".to_owned()), "numbered after the subscribers");
    let b_dials = b.dial_list();
    assert_eq!(b_dials[0].index, 1);
    assert_eq!(b_dials[5].index, 11);
}

#[test]
fn json_plan_dials_the_ws_endpoint_and_subscribes_there() {
    let mut p = (*plan(4, 2, 2, None)).clone();
    p.protocol = Protocol::Json;
    let local = FanoutLocal::new(Arc::new(p), 0, 1);
    let dials = local.dial_list();
    assert_eq!(dials[1], Dial::json(Kind::Sub(1), 1, "/ws".into(), Some("t1".into())));
    assert_eq!(dials[4], Dial::json(Kind::Pub(0), 4, "/ws".into(), None));
    assert_eq!(local.heads[1], json::envelope_head("t1"));
}

#[test]
fn json_receiver_accounts_like_raw() {
    let mut p = (*plan(1, 1, 2, None)).clone();
    p.protocol = Protocol::Json;
    let mut local = FanoutLocal::new(Arc::new(p), 0, 1);
    let mut counters = RecvCounters::default();
    let mut fast = stats::FastHist::default();
    let mut template = json::PublishTemplate::new("t0", 64, None);
    for (publisher, seq, sent_ns) in [(0, payload::PROBE_SEQ, 0), (0, 0, 150), (0, 2, 150), (1, 0, 50)] {
        let request: serde_json::Value =
            serde_json::from_slice(template.fill(payload::Header { publisher, seq, sent_ns })).expect("JSON");
        let mut envelope = Vec::new();
        let data = serde_json::value::RawValue::from_string(request["data"].to_string()).expect("raw");
        herald::control::write_envelope_json(&mut envelope, "t0", &data);
        let mut receiver = local.receiver(0);
        let json::Incoming::Message(data) =
            json::incoming(&envelope[..envelope.len().min(json::PREFIX_LEN)], receiver.head())
        else {
            panic!("a delivery");
        };
        receiver.receive_header(json::read_header(data), 1_000, 100, &mut counters, &mut fast);
    }
    assert_eq!((counters.probes, counters.messages, counters.measured, counters.gaps), (1, 3, 2, 1));
    assert_eq!(counters.foreign, 0);
    assert_eq!(local.pairs[0].account(0, 3), (2, 1, 0), "sequence 1 was skipped");
}

#[test]
fn receiver_counts_measured_gaps_and_foreign() {
    let mut local = FanoutLocal::new(plan(1, 1, 2, None), 0, 1);
    let mut counters = RecvCounters::default();
    let mut fast = stats::FastHist::default();
    let mut buf = [0u8; 20];
    let mut deliver = |local: &mut FanoutLocal, publisher: u32, seq: u64, sent_ns: u64| {
        payload::write(&mut buf, payload::Header { publisher, seq, sent_ns });
        local.receiver(0).receive(&buf, 1_000, 100, &mut counters, &mut fast);
    };
    deliver(&mut local, 0, payload::PROBE_SEQ, 0);
    deliver(&mut local, 0, 0, 50); // warm-up: not measured
    deliver(&mut local, 0, 1, 100);
    deliver(&mut local, 0, 3, 200); // gap
    deliver(&mut local, 0, 3, 200); // duplicate
    deliver(&mut local, 1, 0, 900); // the other publisher
    deliver(&mut local, 7, 0, 900); // unknown publisher
    assert_eq!(counters.probes, 1);
    assert_eq!(counters.messages, 6);
    assert_eq!(counters.measured, 3);
    assert_eq!(counters.gaps, 1);
    assert_eq!(counters.duplicates, 1);
    assert_eq!(counters.foreign, 1);
    let mut hist = stats::new_histogram();
    fast.drain_into(&mut hist);
    assert_eq!(hist.len(), 3);
    assert_eq!(hist.max(), hist.highest_equivalent(900));
    assert!(local.pairs[0].probed && local.pairs[1].probed);
    assert_eq!(local.pairs[0].account(1, 5), (2, 1, 1));
}

#[test]
fn progress_line_shows_a_dash_for_latency_before_any_sample() {
    // The first tick falls in the warm-up, when no measured message has arrived yet.
    let empty = Tick {
        t: -1.0,
        interval_s: 1.0,
        published_per_s: 2000.0,
        received_per_s: 40_000.0,
        p50_ns: 0,
        p99_ns: 0,
        max_ns: 0,
        open: 21,
    };
    let shared = crate::engine::Shared::new(1, 1);
    let line = run::progress_line(&empty, &shared);
    assert!(line.contains("p99 - max -"), "{line}");
    assert!(!line.contains("0ns"), "{line}");
    let measured = Tick { p50_ns: 900_000, p99_ns: 1_500_000, max_ns: 2_000_000, ..empty };
    assert!(run::progress_line(&measured, &shared).contains("p99 1.50ms max 2.00ms"));
}
