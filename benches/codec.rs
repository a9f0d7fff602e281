//! Codec throughput: decoding masked client frames (small text and 64 KiB binary), encoding server frames,
//! and the masking XOR on its own.
//!
//! Run with `cargo bench --bench codec`. Decode inputs are rebuilt outside the timed section for every batch,
//! because the decoder unmasks in place.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use herald::protocol::codec::{DecodeLimits, Decoder, Incoming};
use herald::protocol::frame::{write_frame, write_masked_frame, OpCode};
use herald::protocol::mask::apply_mask;
use herald::protocol::Role;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const LIMITS: DecodeLimits = DecodeLimits { max_frame_size: 1 << 24, max_message_size: 1 << 24 };

/// `count` masked FIN frames of `opcode` with `payload`, back to back.
fn stream(opcode: OpCode, payload: &[u8], count: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    for _ in 0..count {
        write_masked_frame(&mut wire, true, opcode, payload, MASK);
    }
    wire
}

/// Decodes the whole input, returning how many messages came out.
fn decode_all(input: &mut BytesMut) -> usize {
    let mut decoder = Decoder::new(Role::Server, LIMITS);
    let mut messages = 0;
    while let Some(incoming) = decoder.decode(input).expect("valid stream") {
        if matches!(incoming, Incoming::Text(_) | Incoming::Binary(_)) {
            messages += 1;
        }
        black_box(incoming);
    }
    messages
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");

    const SMALL_FRAMES: usize = 1000;
    let text = "x".repeat(64);
    let wire = stream(OpCode::Text, text.as_bytes(), SMALL_FRAMES);
    group.throughput(Throughput::Elements(SMALL_FRAMES as u64));
    group.bench_function("text_64B_x1000", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut input| {
                assert_eq!(decode_all(&mut input), SMALL_FRAMES);
                input // freed outside the timed section
            },
            BatchSize::LargeInput,
        )
    });

    const LARGE_FRAMES: usize = 16;
    let payload = vec![0xA5u8; 64 * 1024];
    let wire = stream(OpCode::Binary, &payload, LARGE_FRAMES);
    group.throughput(Throughput::Bytes((LARGE_FRAMES * payload.len()) as u64));
    group.bench_function("binary_64KiB_x16", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut input| {
                assert_eq!(decode_all(&mut input), LARGE_FRAMES);
                input // freed outside the timed section
            },
            BatchSize::LargeInput,
        )
    });

    // The same 64 KiB frames arriving in 4 KiB reads: the copying, piece-by-piece path.
    group.bench_function("binary_64KiB_x16_in_4KiB_reads", |b| {
        b.iter_batched(
            || wire.clone(),
            |wire| {
                let mut decoder = Decoder::new(Role::Server, LIMITS);
                let mut input = BytesMut::with_capacity(8 * 1024);
                let mut messages = 0;
                for read in wire.chunks(4096) {
                    input.extend_from_slice(read);
                    while let Some(incoming) = decoder.decode(&mut input).expect("valid stream") {
                        messages += 1;
                        black_box(incoming);
                    }
                }
                assert_eq!(messages, LARGE_FRAMES);
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, len) in [("frame_64B", 64), ("frame_64KiB", 64 * 1024)] {
        let payload = vec![0x5Au8; len];
        let mut out = Vec::with_capacity(len + 16);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                write_frame(&mut out, OpCode::Binary, black_box(&payload));
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    let mut buf = vec![0x3Cu8; 64 * 1024];
    group.throughput(Throughput::Bytes(buf.len() as u64));
    group.bench_function("apply_mask_64KiB", |b| {
        b.iter(|| apply_mask(black_box(&mut buf), black_box(MASK), black_box(1)))
    });
    group.finish();
}

criterion_group!(benches, decode, encode, mask);
criterion_main!(benches);
