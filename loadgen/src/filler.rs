//! What follows the payload header in a fan-out message (`--payload`): `x` padding (the default, which compresses
//! to almost nothing), or a realistic JSON body for measuring compression.

use serde::Serialize;

/// The bytes after the payload header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Filler {
    /// `x` repeated: compresses about 40-fold.
    #[default]
    Padding,
    /// A market-data style JSON event with varied numbers (the generator of `benches/deflate.rs`): compresses
    /// about threefold at zlib level 6, like real push payloads.
    Json,
}

impl Filler {
    /// A `size`-byte payload: `header_len` bytes left for the header (zeros), then the filler, cut to size.
    pub fn payload(self, size: usize, header_len: usize) -> Vec<u8> {
        let mut out = vec![b'x'; size];
        if self == Filler::Json && size > header_len {
            let body = json_message(1, size);
            let n = size - header_len;
            out[header_len..].copy_from_slice(&body.as_bytes()[..n]);
        }
        out
    }
}

/// A JSON push message of at least `size` bytes: an event header and item records with varied numbers, from a
/// deterministic generator seeded with `seed`. The same generator as `benches/deflate.rs`, so loadgen's
/// compression figures and the benchmark's are about the same payload.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_asked_size_and_room_for_the_header() {
        for filler in [Filler::Padding, Filler::Json] {
            for size in [20, 21, 100, 1024, 4096] {
                let p = filler.payload(size, 20);
                assert_eq!(p.len(), size, "{filler:?}");
            }
        }
        let p = Filler::Json.payload(1024, 20);
        assert!(p[20..].starts_with(b"{\"type\":\"prices\""));
    }

    #[test]
    fn json_filler_compresses_about_threefold_not_fortyfold() {
        use flate2::{Compress, Compression, FlushCompress};
        let ratio = |p: &[u8]| {
            let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
            let mut out = Vec::with_capacity(2048);
            c.compress_vec(p, &mut out, FlushCompress::Sync).expect("compress");
            p.len() as f64 / out.len() as f64
        };
        let json = ratio(&Filler::Json.payload(1024, 20));
        assert!((2.0..5.0).contains(&json), "JSON body ratio {json:.1}");
        assert!(ratio(&Filler::Padding.payload(1024, 20)) > 10.0);
    }
}
