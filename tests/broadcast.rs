//! Broadcast through `/sub/{topic}`, `/pub/{topic}` and `POST /publish/{topic}` across several workers: every
//! subscriber gets every message exactly once, in publish order, with the publisher's opcode and bytes, and a
//! topic's messages reach only that topic's subscribers.
//!
//! Cross-worker delivery starts once the publishing worker has processed the other workers' interest
//! announcements, so every test first publishes probe messages until every subscriber has seen one (as
//! `/work/shared/peers/verify.py` does); subscribers skip probes, and the real sequence starts after.
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use support::{client_frame, wait_until, FrameReader, HttpConn, RawWs, Server};

/// Every probe payload starts with this; subscribers skip such messages.
const PROBE: &[u8] = b"probe:";
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const TEXT: u8 = 0x81;
const BINARY: u8 = 0x82;

/// Opens raw `/sub/{topic}` subscribers: `min` of them, then more until each of the `workers` workers holds
/// at least one (SO_REUSEPORT picks the worker by a hash of the client port). No other WebSocket may be open.
fn subscribers_on_every_worker(server: &Server, topic: &str, min: usize, workers: usize) -> Vec<RawWs> {
    let mut subs = Vec::new();
    while subs.len() < min + 64 {
        subs.push(RawWs::connect(server.addr, &format!("/sub/{topic}")));
        if subs.len() < min {
            continue;
        }
        let per_worker = websockets_per_worker(server, workers, subs.len() as u64);
        if per_worker.iter().all(|&n| n > 0) {
            return subs;
        }
    }
    panic!("{} subscribers and still a worker without one", subs.len());
}

/// `herald_websockets_open` of each worker, once the gauges add up to `total`.
fn websockets_per_worker(server: &Server, workers: usize, total: u64) -> Vec<u64> {
    let mut per_worker = Vec::new();
    let added_up = wait_until(Duration::from_secs(5), || {
        per_worker =
            (0..workers).map(|w| server.metric(&format!("herald_websockets_open{{worker=\"{w}\"}}"))).collect();
        per_worker.iter().sum::<u64>() == total
    });
    assert!(added_up, "websockets_open gauges {per_worker:?} never added up to {total}");
    per_worker
}

/// What one subscriber thread saw: the non-probe frames, and the error that stopped it early (if any).
type Received = (Vec<(u8, Vec<u8>)>, Option<std::io::Error>);

/// Reads `count` non-probe frames on a thread. The first time it sees a probe carrying tag `t` (the bytes
/// after [`PROBE`]), it bumps `probed[t]`.
fn spawn_reader(ws: RawWs, count: usize, tags: Vec<Vec<u8>>, probed: Arc<Vec<AtomicUsize>>) -> JoinHandle<Received> {
    std::thread::spawn(move || {
        let mut reader = FrameReader::new(ws);
        let mut seen = vec![false; tags.len()];
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            match reader.next_frame() {
                Ok((_, payload)) if payload.starts_with(PROBE) => {
                    let tag = &payload[PROBE.len()..];
                    if let Some(i) = tags.iter().position(|t| t == tag) {
                        if !seen[i] {
                            seen[i] = true;
                            probed[i].fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                Ok(frame) => got.push(frame),
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    })
}

/// A `/pub/{topic}` connection that writes whole masked frames.
struct Publisher {
    stream: TcpStream,
}

impl Publisher {
    fn connect(server: &Server, topic: &str) -> Publisher {
        let raw = RawWs::connect(server.addr, &format!("/pub/{topic}"));
        raw.stream.set_nodelay(true).expect("nodelay");
        Publisher { stream: raw.stream }
    }

    fn send(&mut self, b0: u8, payload: &[u8]) {
        self.stream.write_all(&client_frame(b0, payload, KEY)).expect("publish");
    }

    /// Publishes `probe:{tag}` every few milliseconds until `probed` reaches `subscribers`.
    fn probe_until(&mut self, tag: &str, probed: &AtomicUsize, subscribers: usize) {
        let payload = [PROBE, tag.as_bytes()].concat();
        let all = wait_until(Duration::from_secs(10), || {
            self.send(TEXT, &payload);
            std::thread::sleep(Duration::from_millis(5));
            probed.load(Ordering::SeqCst) == subscribers
        });
        assert!(all, "only {} of {subscribers} subscribers saw probe {tag}", probed.load(Ordering::SeqCst));
    }
}

/// Message `i` of a sequence: even ones text `seq:{i}:...`, odd ones binary with every byte value.
fn sequence_message(i: usize) -> (u8, Vec<u8>) {
    if i.is_multiple_of(2) {
        (TEXT, format!("seq:{i:06}:{}", "é".repeat(i % 50)).into_bytes())
    } else {
        let mut payload = (i as u32).to_be_bytes().to_vec();
        payload.extend((0..=255u8).map(|b| b.wrapping_add(i as u8)));
        (BINARY, payload)
    }
}

/// Checks that a subscriber received exactly `expected`, saying where it first went wrong.
fn assert_received(who: &str, (got, err): Received, expected: &[(u8, Vec<u8>)]) {
    if let Some(pos) = got.iter().zip(expected).position(|(g, e)| g != e) {
        panic!("{who}: message {pos} is {:?}, expected {:?}", summary(&got[pos]), summary(&expected[pos]));
    }
    assert!(err.is_none(), "{who}: stopped after {} of {} messages: {err:?}", got.len(), expected.len());
    assert_eq!(got.len(), expected.len(), "{who}: message count");
}

fn summary((b0, payload): &(u8, Vec<u8>)) -> String {
    if *b0 == 0x88 && payload.len() >= 2 {
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        return format!("a close frame, code {code}, reason {:?}", String::from_utf8_lossy(&payload[2..]));
    }
    format!("opcode byte {b0:#04x}, {} bytes starting {:?}", payload.len(), &payload[..payload.len().min(16)])
}

/// Runs the main broadcast check on `workers` workers with `subscribers` raw subscribers.
fn every_subscriber_gets_the_sequence(workers: usize, subscribers: usize, messages: usize) -> Server {
    every_subscriber_gets_the_sequence_with(&[], workers, subscribers, messages)
}

fn every_subscriber_gets_the_sequence_with(
    extra: &[&str],
    workers: usize,
    subscribers: usize,
    messages: usize,
) -> Server {
    let workers_arg = workers.to_string();
    let mut args = vec!["--workers", &workers_arg];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let subs = subscribers_on_every_worker(&server, "news", subscribers, workers);
    let n = subs.len();
    let probed = Arc::new(vec![AtomicUsize::new(0)]);
    let readers: Vec<_> =
        subs.into_iter().map(|ws| spawn_reader(ws, messages, vec![b"p".to_vec()], probed.clone())).collect();
    let mut publisher = Publisher::connect(&server, "news");
    publisher.probe_until("p", &probed[0], n);

    let expected: Vec<_> = (0..messages).map(sequence_message).collect();
    for (b0, payload) in &expected {
        publisher.send(*b0, payload);
    }
    for (i, reader) in readers.into_iter().enumerate() {
        assert_received(&format!("subscriber {i}"), reader.join().expect("reader thread"), &expected);
    }
    server
}

/// A full cross-worker inbox never drops a batch: the publishing worker keeps it, stops reading from its
/// publishers until the peer has room, and every subscriber on the other worker still gets everything in order.
#[test]
fn a_full_cross_worker_inbox_pauses_publishers_and_loses_nothing() {
    let server = every_subscriber_gets_the_sequence_with(&["--inbox-capacity", "1"], 2, 8, 20_000);
    assert!(
        server.metric("herald_inbox_full_total") > 0,
        "the one-batch inbox was never full: the test proves nothing"
    );
}

#[test]
fn every_subscriber_gets_every_message_once_in_order_with_its_opcode() {
    let _ = every_subscriber_gets_the_sequence(2, 30, 1000);
}

#[test]
fn every_subscriber_gets_every_message_once_in_order_on_three_workers() {
    let _ = every_subscriber_gets_the_sequence(3, 30, 1000);
}

#[test]
fn each_publisher_keeps_its_own_order() {
    let server = Server::start(&["--workers", "2"]);
    let subs = subscribers_on_every_worker(&server, "two", 10, 2);
    let n = subs.len();
    let per_publisher = 500;
    let probed = Arc::new(vec![AtomicUsize::new(0), AtomicUsize::new(0)]);
    let tags = vec![b"A".to_vec(), b"B".to_vec()];
    let readers: Vec<_> =
        subs.into_iter().map(|ws| spawn_reader(ws, 2 * per_publisher, tags.clone(), probed.clone())).collect();
    let mut a = Publisher::connect(&server, "two");
    let mut b = Publisher::connect(&server, "two");
    a.probe_until("A", &probed[0], n);
    b.probe_until("B", &probed[1], n);

    let send_all = |mut publisher: Publisher, name: char| {
        std::thread::spawn(move || {
            for i in 0..per_publisher {
                let b0 = if i % 2 == 0 { TEXT } else { BINARY };
                publisher.send(b0, format!("{name}:{i:04}").as_bytes());
            }
            publisher
        })
    };
    let (ta, tb) = (send_all(a, 'A'), send_all(b, 'B'));
    let _publishers = (ta.join().expect("publisher A"), tb.join().expect("publisher B"));
    for (s, reader) in readers.into_iter().enumerate() {
        let (got, err) = reader.join().expect("reader thread");
        assert!(err.is_none(), "subscriber {s}: stopped after {} messages: {err:?}", got.len());
        for name in ['A', 'B'] {
            let own: Vec<_> = got.iter().filter(|(_, p)| p[0] == name as u8).cloned().collect();
            let expected: Vec<_> = (0..per_publisher)
                .map(|i| (if i % 2 == 0 { TEXT } else { BINARY }, format!("{name}:{i:04}").into_bytes()))
                .collect();
            assert_received(&format!("subscriber {s}, publisher {name}"), (own, None), &expected);
        }
    }
}

#[test]
fn subscribers_of_one_topic_get_nothing_from_another() {
    let server = Server::start(&["--workers", "2"]);
    let subs_a = subscribers_on_every_worker(&server, "topic-a", 4, 2);
    let na = subs_a.len();
    let mut subs_b = Vec::new();
    for _ in 0..4 {
        subs_b.push(RawWs::connect(server.addr, "/sub/topic-b"));
    }
    let probed = Arc::new(vec![AtomicUsize::new(0), AtomicUsize::new(0)]);
    let tags = vec![b"a".to_vec(), b"b".to_vec()];
    // Subscribers of A expect exactly one message (the end marker); those of B all 100 of B's.
    let readers_a: Vec<_> = subs_a.into_iter().map(|ws| spawn_reader(ws, 1, tags.clone(), probed.clone())).collect();
    let readers_b: Vec<_> = subs_b.into_iter().map(|ws| spawn_reader(ws, 100, tags.clone(), probed.clone())).collect();
    let mut pub_a = Publisher::connect(&server, "topic-a");
    let mut pub_b = Publisher::connect(&server, "topic-b");
    pub_a.probe_until("a", &probed[0], na);
    pub_b.probe_until("b", &probed[1], 4);
    assert_eq!(probed[1].load(Ordering::SeqCst), 4, "no subscriber of topic-a saw a probe of topic-b");

    let b_messages: Vec<_> = (0..100).map(|i| (TEXT, format!("b-only {i}").into_bytes())).collect();
    for (b0, payload) in &b_messages {
        pub_b.send(*b0, payload);
    }
    for (i, reader) in readers_b.into_iter().enumerate() {
        assert_received(&format!("topic-b subscriber {i}"), reader.join().expect("reader"), &b_messages);
    }
    // Every message to B has been delivered; the next (and only) non-probe message A's subscribers see is A's.
    let end = vec![(TEXT, b"end of topic-a".to_vec())];
    pub_a.send(TEXT, &end[0].1);
    for (i, reader) in readers_a.into_iter().enumerate() {
        assert_received(&format!("topic-a subscriber {i}"), reader.join().expect("reader"), &end);
    }
}

/// `POST /publish/{topic}`: a `text/*` body goes out as a text frame, any other as a binary frame; the reply
/// counts the subscribers the message reaches.
#[test]
fn http_publish_maps_content_type_to_opcode_and_counts_subscribers() {
    let server = Server::start(&["--workers", "2"]);
    let subs = subscribers_on_every_worker(&server, "alerts", 6, 2);
    let n = subs.len();
    let probed = Arc::new(vec![AtomicUsize::new(0)]);
    let readers: Vec<_> = subs.into_iter().map(|ws| spawn_reader(ws, 3, vec![b"p".to_vec()], probed.clone())).collect();
    // One keep-alive connection: one worker publishes everything, and it is the one the probes taught.
    let mut http = HttpConn::open(server.addr);
    let all_probed = wait_until(Duration::from_secs(10), || {
        let (status, _, _) = http.request("POST", "/publish/alerts", &[("Content-Type", "text/plain")], b"probe:p");
        assert_eq!(status, 200);
        std::thread::sleep(Duration::from_millis(5));
        probed[0].load(Ordering::SeqCst) == n
    });
    assert!(all_probed, "not every subscriber saw a probe");

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let posts: [(&str, &[u8], u8); 3] = [
        ("text/plain; charset=utf-8", "héllo \"world\"".as_bytes(), TEXT),
        ("application/octet-stream", &all_bytes, BINARY),
        ("application/json", br#"{"k":[1,2]}"#, TEXT),
    ];
    for (content_type, body, _) in posts {
        let (status, head, reply) = http.request("POST", "/publish/alerts", &[("Content-Type", content_type)], body);
        assert_eq!(status, 200, "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
        let reply: serde_json::Value = serde_json::from_slice(&reply).expect("JSON reply");
        assert_eq!(reply, serde_json::json!({"topic": "alerts", "subscribers": n}), "{content_type}");
    }
    let expected: Vec<_> = posts.iter().map(|(_, body, b0)| (*b0, body.to_vec())).collect();
    for (i, reader) in readers.into_iter().enumerate() {
        assert_received(&format!("subscriber {i}"), reader.join().expect("reader"), &expected);
    }
}

/// Binary payloads come out byte for byte, whatever the values and whichever length encoding the frame
/// needs (RFC 6455 5.2: 7-bit, 16-bit and 64-bit payload lengths).
#[test]
fn binary_payloads_keep_every_byte_value_at_every_length_encoding() {
    let server = Server::start(&["--workers", "2"]);
    let subs = subscribers_on_every_worker(&server, "bytes", 4, 2);
    let n = subs.len();
    let lengths = [0usize, 1, 125, 126, 256, 65535, 65536, 200_000];
    let expected: Vec<_> = lengths
        .iter()
        .enumerate()
        .map(|(k, &len)| (BINARY, (0..len).map(|i| (i * 7 + k) as u8).collect::<Vec<u8>>()))
        .collect();
    let probed = Arc::new(vec![AtomicUsize::new(0)]);
    let readers: Vec<_> =
        subs.into_iter().map(|ws| spawn_reader(ws, expected.len(), vec![b"p".to_vec()], probed.clone())).collect();
    let mut publisher = Publisher::connect(&server, "bytes");
    publisher.probe_until("p", &probed[0], n);
    for (b0, payload) in &expected {
        publisher.send(*b0, payload);
    }
    for (i, reader) in readers.into_iter().enumerate() {
        assert_received(&format!("subscriber {i}"), reader.join().expect("reader"), &expected);
    }
}

/// A message of exactly `max_message_size` (the default 1 MiB, which the server accepts) reaches a subscriber
/// that is idle and reading, under the default `max_backpressure` (also 1 MiB): an empty queue is never "slow".
#[test]
fn a_message_of_max_message_size_reaches_an_idle_subscriber_with_default_limits() {
    let server = Server::start(&["--workers", "2"]);
    let subs = subscribers_on_every_worker(&server, "big", 2, 2);
    let n = subs.len();
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 253) as u8).collect();
    let expected = vec![(BINARY, payload.clone())];
    let probed = Arc::new(vec![AtomicUsize::new(0)]);
    let readers: Vec<_> = subs.into_iter().map(|ws| spawn_reader(ws, 1, vec![b"p".to_vec()], probed.clone())).collect();
    let mut publisher = Publisher::connect(&server, "big");
    publisher.probe_until("p", &probed[0], n);
    publisher.send(BINARY, &payload);
    for (i, reader) in readers.into_iter().enumerate() {
        assert_received(&format!("subscriber {i}"), reader.join().expect("reader"), &expected);
    }
    assert_eq!(server.metric("herald_backpressure_closes_total"), 0);
}
