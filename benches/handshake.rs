//! Handshake and control-envelope costs: what one new connection, and one `/ws` publish, pay up front.
//!
//! - `parse_validate_browser_upgrade`: `parse_request` + `validate_upgrade` (which includes the SHA-1 and
//!   base64 of the accept key) on a typical ~500-byte Chrome upgrade request with a dozen headers.
//! - `accept_key`: the accept key alone, to see how much of the above is hashing.
//! - `write_switching_protocols`: writing the 101 into a reused buffer.
//! - `write_envelope_json_64b`: building one delivery envelope for a 64-byte JSON payload.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use herald::control::write_envelope_json;
use herald::protocol::handshake::{accept_key, parse_request, write_switching_protocols};
use serde_json::value::RawValue;

/// A Chrome-style upgrade request (headers as a current desktop browser sends them).
const BROWSER_UPGRADE: &[u8] = b"GET /ws?token=eyJhbGciOiJIUzI1NiJ9.e30.abc HTTP/1.1\r\n\
Host: push.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://app.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=3f1c9a7e2b; theme=dark\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Bytes(BROWSER_UPGRADE.len() as u64));
    group.bench_function("parse_validate_browser_upgrade", |b| {
        b.iter(|| {
            let head = parse_request(black_box(BROWSER_UPGRADE), 8192).expect("valid").expect("complete");
            head.validate_upgrade().expect("valid upgrade")
        })
    });
    group.finish();

    c.bench_function("handshake/accept_key", |b| b.iter(|| accept_key(black_box("dGhlIHNhbXBsZSBub25jZQ=="))));

    let mut out = Vec::with_capacity(256);
    c.bench_function("handshake/write_switching_protocols", |b| {
        b.iter(|| {
            out.clear();
            write_switching_protocols(&mut out, black_box("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), None);
            out.len()
        })
    });
}

fn envelope(c: &mut Criterion) {
    // 64 bytes of JSON.
    let data = RawValue::from_string(r#"{"sym":"EURUSD","bid":1.084125,"ask":1.08415,"ts":1717171717000}"#.to_owned())
        .expect("valid json");
    assert_eq!(data.get().len(), 64);
    let mut out = Vec::with_capacity(256);
    let mut group = c.benchmark_group("control");
    group.throughput(Throughput::Bytes(64));
    group.bench_function("write_envelope_json_64b", |b| {
        b.iter(|| {
            out.clear();
            write_envelope_json(&mut out, black_box("prices/fx/eurusd"), black_box(&data));
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, handshake, envelope);
criterion_main!(benches);
