//! Slow consumers and bounded memory: a subscriber that stops reading is closed with 1008 (policy `close`) or
//! loses messages (policy `drop`) once its queue passes `max_backpressure`, while a subscriber that keeps up
//! still gets every message in order; an `/echo` client that does not read its echoes is no longer read from.
//! In every case the server's memory stays bounded although far more is sent than it could hold.
mod support;

use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{client_frame, wait_until, FrameReader, RawWs, Server};

const KEY: [u8; 4] = [0x5a, 0x13, 0xc7, 0x82];
/// Size of each published message.
const MSG: usize = 1024;
/// Messages published: about 100 MB in all.
const TOTAL: u64 = 100_000;
/// The publisher stays at most this many messages ahead of the subscriber that keeps up, so that subscriber's
/// queue on the server (at most 128 KiB plus framing) never reaches the 256 KiB cap, however the threads of
/// this test are scheduled.
const WINDOW: u64 = 128;
/// Most the server's resident memory may grow while 100 MB pass through it.
const RSS_GROWTH_MAX_KIB: u64 = 64 * 1024;
const PROBE: &[u8] = b"probe";

/// Message `seq`: its number in the first 8 bytes, then a fixed pattern.
fn message(seq: u64) -> Vec<u8> {
    let mut m: Vec<u8> = (0..MSG).map(|i| (i * 31 % 251) as u8).collect();
    m[..8].copy_from_slice(&seq.to_be_bytes());
    m
}

/// Checks a data frame from the flood: binary, `MSG` bytes, the pattern intact; returns its sequence number.
fn sequence_of((b0, payload): &(u8, Vec<u8>), pattern: &[u8]) -> Result<u64, String> {
    if *b0 != 0x82 || payload.len() != MSG || payload[8..] != pattern[8..] {
        return Err(format!("unexpected frame: byte0 {b0:#04x}, {} bytes", payload.len()));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&payload[..8]);
    Ok(u64::from_be_bytes(seq))
}

/// The subscriber that keeps up: skips probes, then expects messages 0..TOTAL in order.
fn spawn_keeping_up(
    mut reader: FrameReader,
    probed: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
) -> JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let pattern = message(0);
        let mut next = 0;
        while next < TOTAL {
            let frame = reader.next_frame().map_err(|e| format!("after {next} messages: {e}"))?;
            if frame.1 == PROBE {
                probed.store(true, Ordering::SeqCst);
                continue;
            }
            let seq = sequence_of(&frame, &pattern).map_err(|e| format!("after {next} messages: {e}"))?;
            if seq != next {
                return Err(format!("got message {seq}, expected {next}"));
            }
            next += 1;
            received.store(next, Ordering::SeqCst);
        }
        Ok(())
    })
}

/// What one flood left behind.
struct Flood {
    server: Server,
    /// The subscriber that stopped reading after its first probe.
    stalled: FrameReader,
    rss_before_kib: u64,
    rss_peak_kib: u64,
}

/// Starts a server with `extra` flags and a 256 KiB cap, connects a subscriber that will stall, one that keeps
/// up and a publisher, probes until both subscribers have seen a probe (after which the stalled one reads
/// nothing more), then publishes `TOTAL` messages of 1 KiB and checks that the one keeping up got them all.
fn flood_past_a_stalled_subscriber(extra: &[&str]) -> Flood {
    let mut args = vec!["--workers", "2", "--max-backpressure", "256KiB"];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let stalled = RawWs::connect(server.addr, "/sub/flood");
    let keeping_up = FrameReader::new(RawWs::connect(server.addr, "/sub/flood"));
    let publisher = RawWs::connect(server.addr, "/pub/flood");

    let stalled_probed = Arc::new(AtomicBool::new(false));
    let stalled_probe = {
        let probed = stalled_probed.clone();
        std::thread::spawn(move || {
            let mut reader = FrameReader::new(stalled);
            let frame = reader.next_frame().expect("stalled subscriber's probe");
            assert_eq!(frame, (0x82, PROBE.to_vec()));
            probed.store(true, Ordering::SeqCst);
            reader // and from here on, nobody reads it
        })
    };
    let probed = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let normal = spawn_keeping_up(keeping_up, probed.clone(), received.clone());
    let mut out = BufWriter::with_capacity(64 * 1024, &publisher.stream);
    let probe = client_frame(0x82, PROBE, KEY);
    let all_probed = wait_until(Duration::from_secs(10), || {
        out.write_all(&probe).and_then(|()| out.flush()).expect("probe");
        std::thread::sleep(Duration::from_millis(5));
        probed.load(Ordering::SeqCst) && stalled_probed.load(Ordering::SeqCst)
    });
    assert!(all_probed, "a subscriber never saw a probe");
    let stalled = stalled_probe.join().expect("stalled probe thread");
    let rss_before_kib = server.rss_kib();

    let mut frame = client_frame(0x82, &message(0), KEY);
    let header = frame.len() - MSG;
    let started = Instant::now();
    for seq in 0..TOTAL {
        if seq - received.load(Ordering::SeqCst) >= WINDOW {
            out.flush().expect("publish");
            while seq - received.load(Ordering::SeqCst) >= WINDOW / 2 && !normal.is_finished() {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        for (i, b) in seq.to_be_bytes().iter().enumerate() {
            frame[header + i] = b ^ KEY[i % 4];
        }
        if out.write_all(&frame).is_err() {
            break; // the subscriber thread says why
        }
    }
    let _ = out.flush();
    let outcome = normal.join().expect("subscriber thread");
    assert_eq!(outcome, Ok(()), "the subscriber that keeps up must get every message in order");
    eprintln!("flood of {TOTAL} messages took {:?}", started.elapsed());
    let rss_peak_kib = server.rss_peak_kib();
    drop(out);
    drop(publisher);
    Flood { server, stalled, rss_before_kib, rss_peak_kib }
}

fn assert_memory_bounded(what: &str, before_kib: u64, peak_kib: u64) {
    eprintln!("{what}: RSS {before_kib} KiB before, peak {peak_kib} KiB");
    assert!(
        peak_kib < before_kib + RSS_GROWTH_MAX_KIB,
        "{what}: RSS grew from {before_kib} KiB to a peak of {peak_kib} KiB"
    );
}

/// Reads what the stalled subscriber has left: (sequence numbers of its data messages, the close frame's
/// payload if one came). Stops at the close frame, at EOF, or after `quiet` without data.
fn drain_stalled(stalled: &mut FrameReader, quiet: Duration) -> (Vec<u64>, Option<Vec<u8>>) {
    stalled.stream.set_read_timeout(Some(quiet)).expect("timeout");
    let pattern = message(0);
    let mut seqs = Vec::new();
    loop {
        match stalled.next_frame() {
            Ok((_, payload)) if payload == PROBE => {}
            Ok((0x88, payload)) => return (seqs, Some(payload)),
            Ok(frame) => seqs.push(sequence_of(&frame, &pattern).expect("stalled subscriber frame")),
            Err(_) => return (seqs, None),
        }
    }
}

/// Policy `close` (the default): past the cap the subscriber is closed with 1008 "slow consumer"; what it
/// already had queued still arrives first, in order, and the close frame follows it.
#[test]
fn stalled_subscriber_is_closed_with_1008_and_the_others_get_everything() {
    // A long close timeout keeps the closing connection (and its queue) until this test reads it.
    let mut flood = flood_past_a_stalled_subscriber(&["--close-timeout", "60s"]);
    assert_memory_bounded("policy close", flood.rss_before_kib, flood.rss_peak_kib);
    let server = &flood.server;
    assert_eq!(server.wait_metric("herald_backpressure_closes_total", 1, Duration::from_secs(2)), 1);
    assert_eq!(server.wait_metric("herald_close_codes_sent_total{code=\"1008\"}", 1, Duration::from_secs(2)), 1);
    assert_eq!(server.metric("herald_backpressure_drops_total"), 0);

    let (seqs, close) = drain_stalled(&mut flood.stalled, Duration::from_secs(10));
    assert!(!seqs.is_empty() && (seqs.len() as u64) < TOTAL, "got {} of {TOTAL} before the close", seqs.len());
    let prefix: Vec<u64> = (0..seqs.len() as u64).collect();
    assert!(seqs == prefix, "the stalled subscriber's messages are not 0, 1, 2, ...");
    let close = close.expect("a close frame after the queued messages");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1008, "close code");
    assert_eq!(&close[2..], b"slow consumer", "close reason");
}

/// Policy `drop`: past the cap, messages for that subscriber are dropped (whole messages, counted), it stays
/// open, and the others still get everything.
#[test]
fn stalled_subscriber_loses_messages_under_drop_policy_and_the_others_get_everything() {
    let mut flood = flood_past_a_stalled_subscriber(&["--slow-consumer", "drop"]);
    assert_memory_bounded("policy drop", flood.rss_before_kib, flood.rss_peak_kib);
    let (seqs, close) = drain_stalled(&mut flood.stalled, Duration::from_secs(1));
    assert_eq!(close, None, "policy drop never closes");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "what is kept stays in order");
    let kept = seqs.len() as u64;
    assert!(kept > 0 && kept < TOTAL, "kept {kept} of {TOTAL}");
    let server = &flood.server;
    let dropped = server.wait_metric("herald_backpressure_drops_total", TOTAL - kept, Duration::from_secs(2));
    assert_eq!(dropped, TOTAL - kept, "every message not received was counted as dropped");
    assert_eq!(server.metric("herald_backpressure_closes_total"), 0);
    // Still open and still subscribed: a new message arrives once there is room.
    let mut publisher = RawWs::connect(server.addr, "/pub/flood");
    publisher.send_frame(0x82, &message(TOTAL), true);
    flood.stalled.stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let frame = flood.stalled.next_frame().expect("a message after the drops");
    assert_eq!(sequence_of(&frame, &message(0)), Ok(TOTAL));
}

/// An `/echo` client that sends without reading: once its echoes pass the cap the server stops reading from
/// it (TCP flow control then stops the client), instead of queuing without bound; when the client reads
/// again, every echo arrives, in order.
#[test]
fn echo_client_that_does_not_read_is_paused_and_memory_stays_bounded() {
    const ECHO_MSG: usize = 64 * 1024;
    const ECHO_TOTAL: u64 = 2048; // 128 MiB
    let server = Server::start(&["--workers", "1", "--max-backpressure", "256KiB"]);
    let ws = RawWs::connect(server.addr, "/echo");
    let rss_before_kib = server.rss_kib();
    let written = Arc::new(AtomicU64::new(0));
    let mut writer_stream = ws.stream.try_clone().expect("clone");
    let writer = {
        let written = written.clone();
        std::thread::spawn(move || {
            let mut payload = vec![0xa5u8; ECHO_MSG];
            for seq in 0..ECHO_TOTAL {
                payload[..8].copy_from_slice(&seq.to_be_bytes());
                writer_stream.write_all(&client_frame(0x82, &payload, KEY)).expect("send");
                written.store(seq + 1, Ordering::SeqCst);
            }
        })
    };
    // Wait until the writer makes no progress for half a second.
    let mut last = u64::MAX;
    let paused = wait_until(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(500));
        let now = written.load(Ordering::SeqCst);
        let stuck = now == last;
        last = now;
        stuck
    });
    let sent = written.load(Ordering::SeqCst);
    assert!(paused && sent < ECHO_TOTAL, "the server kept reading: {sent} of {ECHO_TOTAL} messages sent");
    eprintln!("echo: paused after {sent} messages of 64 KiB");
    assert!(sent * (ECHO_MSG as u64) < 64 << 20, "{sent} messages went in before the pause");
    assert_memory_bounded("echo", rss_before_kib, server.rss_peak_kib());

    // Reading again resumes the flow: every echo comes back, in order.
    let mut reader = FrameReader::new(ws);
    for seq in 0..ECHO_TOTAL {
        let (b0, payload) = reader.next_frame().unwrap_or_else(|e| panic!("echo {seq}: {e}"));
        assert_eq!((b0, payload.len()), (0x82, ECHO_MSG), "echo {seq}");
        assert_eq!(payload[..8], seq.to_be_bytes(), "echo {seq} out of order");
    }
    writer.join().expect("writer");
    assert_memory_bounded("echo after resuming", rss_before_kib, server.rss_peak_kib());
}

/// The cap is on a subscriber's queue, so a subscriber with nothing queued takes a turn's batch even when that
/// batch (many small messages coalesced) is larger than the cap: keeping up is never "slow".
#[test]
fn an_idle_subscriber_is_not_slow_when_one_turns_batch_exceeds_the_cap() {
    let server = Server::start(&["--workers", "1", "--max-backpressure", "16KiB"]);
    let mut sub = FrameReader::new(RawWs::connect(server.addr, "/sub/burst"));
    let publisher = RawWs::connect(server.addr, "/pub/burst");
    // 60 messages of 1 KiB in one write: read in one turn, coalesced into one batch of about 60 KiB.
    let burst: Vec<u8> = (0..60).flat_map(|seq| client_frame(0x82, &message(seq), KEY)).collect();
    (&publisher.stream).write_all(&burst).expect("publish");
    let pattern = message(0);
    for seq in 0..60 {
        let frame = sub.next_frame().expect("read");
        assert_eq!(sequence_of(&frame, &pattern), Ok(seq), "frame {seq} (byte0 {:#04x})", frame.0);
    }
    assert_eq!(server.metric("herald_backpressure_closes_total"), 0);
}
