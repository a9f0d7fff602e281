//! In-memory fan-out: one publish delivered to 10,000 subscriber outboxes through the topic index, as the
//! worker does it (frame once, one shared `Bytes` per subscriber), without sockets. Reports the cost per
//! delivery; the 100-message case shows what per-turn coalescing saves.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::broker::index::{ConnKey, Deliver, SubKind, TopicIndex};
use herald::broker::mesh::{inboxes, MeshEnd};
use herald::server::outbox::Outbox;

struct Outboxes(Vec<Outbox>);

impl Deliver for Outboxes {
    fn deliver(&mut self, key: ConnKey, frames: &Bytes, _messages: u32) {
        self.0[key].push(frames.clone());
    }
}

fn fanout(c: &mut Criterion) {
    let poll = mio::Poll::new().expect("poll");
    let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
    let (handles, _inboxes) = inboxes(vec![waker], 16);
    let mut mesh = MeshEnd::new(0, handles);
    let subs = 10_000;
    let mut index = TopicIndex::new(16, 64 * 1024);
    for key in 0..subs {
        index.subscribe("bench", key, SubKind::Raw).expect("room");
    }
    let mut out = Outboxes((0..subs).map(|_| Outbox::default()).collect());
    let payload = [b'x'; 64];
    let mut group = c.benchmark_group("fanout_10k_subscribers");
    for messages in [1u64, 100] {
        group.throughput(Throughput::Elements(messages * subs as u64));
        group.bench_with_input(BenchmarkId::new("messages_per_turn", messages), &messages, |b, &messages| {
            b.iter(|| {
                for _ in 0..messages {
                    index.publish("bench", false, &payload, None, &mut out, &mut mesh);
                }
                index.flush(&mut out, &mut mesh);
                // Drain the queues as the worker's writev would (to a sink), so they do not grow.
                for o in out.0.iter_mut() {
                    let _ = o.write_to(&mut std::io::sink());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
