//! Unsubscribe cost: 10,000 subscribers of one topic leave, in a shuffled order (as connections closing at once
//! do). Removal is O(1) per subscription (a swap-remove at the position the subscription records), so the
//! whole run is linear in the subscriber count; a search of the topic's list made it quadratic.
//!
//! On the 2-core development machine (`CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16
//! cargo bench --bench unsubscribe -- --warm-up-time 1 --measurement-time 5`, other builds running): 15.5 ms
//! with the search (commit a98628a), 135 µs with the recorded positions.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use herald::broker::index::{SubKind, TopicIndex};

const SUBS: usize = 10_000;

/// A fixed permutation of `0..n` (a xorshift-driven Fisher-Yates shuffle), the same on every run.
fn shuffled(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

fn unsubscribe_all(c: &mut Criterion) {
    let order = shuffled(SUBS);
    c.bench_function("unsubscribe_10k_subscribers_of_one_topic", |b| {
        b.iter_batched(
            || {
                let mut index = TopicIndex::new(16, 64 * 1024);
                let subs: Vec<_> =
                    (0..SUBS).map(|key| index.subscribe("bench", key, SubKind::Json).expect("room")).collect();
                (index, subs)
            },
            |(mut index, subs)| {
                for &key in &order {
                    index.unsubscribe(subs[key], key);
                }
                index
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, unsubscribe_all);
criterion_main!(benches);
