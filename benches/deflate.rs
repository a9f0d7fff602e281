//! permessage-deflate costs: compressing one realistic 1 KiB JSON message (levels 1, 6, 9; windows 15 and 9),
//! inflating it, and compressing a coalesced batch of 16 such messages (what one topic's turn costs a worker,
//! once, whatever its number of subscribers).
//!
//! Run with `cargo bench --bench deflate`. [`json_message`] is the payload generator the benchmarks in
//! tuning.md use: a market-data style event, deterministic (a fixed xorshift seed), about 1 KiB.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use herald::protocol::deflate::{compress_batch, BatchStats, Compressor, Inflater};
use herald::protocol::frame::{write_frame, OpCode};

/// A JSON push message of at least `size` bytes: an event header and item records with varied numbers, from a
/// deterministic generator seeded with `seed` (so two runs compress alike, and two messages differ).
pub fn json_message(seed: u64, size: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let symbols = ["HRLD", "ACME", "INIT", "ZETA", "NOVA", "QUUX"];
    let mut s = format!(
        "{{\"type\":\"prices\",\"topic\":\"markets.eu\",\"seq\":{seed},\"ts\":{},\"items\":[",
        1_733_300_000_000 + next(1_000_000)
    );
    let mut first = true;
    while s.len() + 2 < size {
        if !first {
            s.push(',');
        }
        first = false;
        let sym = symbols[next(symbols.len() as u64) as usize];
        s.push_str(&format!(
            "{{\"id\":{},\"symbol\":\"{sym}\",\"bid\":{}.{:02},\"ask\":{}.{:02},\"volume\":{}}}",
            1000 + next(9000),
            90 + next(20),
            next(100),
            90 + next(20),
            next(100),
            next(100_000)
        ));
    }
    s.push_str("]}");
    s
}

fn compress(c: &mut Criterion) {
    let msg = json_message(1, 1024);
    let mut group = c.benchmark_group("deflate");
    group.throughput(Throughput::Bytes(msg.len() as u64));
    for (level, bits) in [(1, 15), (2, 15), (4, 15), (6, 15), (9, 15), (6, 9)] {
        let mut compressor = Compressor::new(level, bits);
        let mut out = Vec::with_capacity(2048);
        group.bench_function(format!("compress_1KiB_json/level{level}_window{bits}"), |b| {
            b.iter(|| {
                out.clear();
                compressor.compress(black_box(msg.as_bytes()), &mut out);
                out.len()
            })
        });
    }
    let mut compressed = Vec::new();
    Compressor::new(6, 15).compress(msg.as_bytes(), &mut compressed);
    let mut inflater = Inflater::new();
    group.bench_function("inflate_1KiB_json", |b| {
        b.iter(|| inflater.inflate(black_box(&compressed), 1 << 20).expect("valid").len())
    });
    let mut batch = Vec::new();
    for seed in 0..16 {
        write_frame(&mut batch, OpCode::Text, json_message(seed, 1024).as_bytes());
    }
    group.throughput(Throughput::Bytes(batch.len() as u64));
    let mut compressor = Compressor::new(6, 15);
    group.bench_function("compress_batch_16x1KiB_json/level6", |b| {
        b.iter(|| {
            let mut stats = BatchStats::default();
            compress_batch(black_box(&batch), &mut compressor, 256, &mut stats).len()
        })
    });
    group.finish();
    // What each level saves on this payload (printed, not timed), over 64 messages of the generator.
    let messages: Vec<String> = (0..64).map(|seed| json_message(seed, 1024)).collect();
    let plain: usize = messages.iter().map(String::len).sum();
    for level in [1, 2, 4, 6, 9] {
        let mut compressor = Compressor::new(level, 15);
        let mut compressed = 0;
        for m in &messages {
            let mut out = Vec::new();
            compressor.compress(m.as_bytes(), &mut out);
            compressed += out.len();
        }
        eprintln!(
            "level {level}: 64 JSON messages of ~1 KiB, {plain} B -> {compressed} B ({:.1}%)",
            100.0 * compressed as f64 / plain as f64
        );
    }
}

criterion_group!(benches, compress);
criterion_main!(benches);
