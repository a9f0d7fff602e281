//! A worker's permessage-deflate machinery: its compressors (one per window size in use, almost always one)
//! and its inflater, shared by every connection of the worker. Nothing of it is per connection: a connection
//! only remembers the window it negotiated (one byte in its core).
//!
//! Everything is made on first use, so a worker whose clients never negotiate compression holds none of it.

use bytes::Bytes;

use crate::broker::index::Batch;
use crate::config::Compression;
use crate::metrics::{Counters, Metric};
use crate::protocol::deflate::{self, BatchStats, Compressor, Inflater, MAX_WINDOW_BITS, MIN_WINDOW_BITS};
use crate::protocol::frame::OpCode;

/// Compressors by window bits (9 to 15), made when first needed.
const WINDOWS: usize = (MAX_WINDOW_BITS - MIN_WINDOW_BITS + 1) as usize;

/// One worker's compressors and inflater.
#[derive(Debug)]
pub struct WorkerDeflate {
    compressors: [Option<Box<Compressor>>; WINDOWS],
    inflater: Option<Box<Inflater>>,
    enabled: bool,
    level: u32,
    min_size: usize,
}

impl WorkerDeflate {
    /// Nothing made yet; `cfg` gives the level and the size under which messages go plain.
    pub fn new(cfg: &Compression) -> Self {
        WorkerDeflate {
            compressors: Default::default(),
            inflater: None,
            enabled: cfg.enabled,
            level: cfg.level,
            min_size: usize::try_from(cfg.min_size.0).unwrap_or(usize::MAX),
        }
    }

    /// Whether `[compression]` is on (else no connection negotiates it).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The inflater, made on first use.
    pub fn inflater(&mut self) -> &mut Inflater {
        self.inflater.get_or_insert_with(Box::default)
    }

    fn compressor(&mut self, bits: u8) -> &mut Compressor {
        let bits = bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        let level = self.level;
        self.compressors[usize::from(bits - MIN_WINDOW_BITS)]
            .get_or_insert_with(|| Box::new(Compressor::new(level, bits)))
    }

    /// The form of `batch` for a subscriber that negotiated a window of `bits`: made once per batch and window,
    /// then shared.
    pub fn batch_for(&mut self, batch: &mut Batch<'_>, bits: u8, metrics: &mut Counters) -> Bytes {
        if let Some((_, frames)) = batch.deflated.iter().find(|(b, _)| *b == bits) {
            return frames.clone();
        }
        let mut stats = BatchStats::default();
        let min_size = self.min_size;
        metrics.inc(Metric::DeflateBatches);
        let out = deflate::compress_batch(batch.plain, self.compressor(bits), min_size, &mut stats);
        // Nothing worth compressing in it: the plain frames serve (no second buffer).
        let frames = if stats.compressed == 0 { batch.plain.clone() } else { Bytes::from(out) };
        record(metrics, &stats);
        batch.deflated.push((bits, frames.clone()));
        frames
    }

    /// One message for one client with a window of `bits` (an echo): compressed when worth it.
    pub fn frame_for(&mut self, opcode: OpCode, payload: &[u8], bits: u8, metrics: &mut Counters) -> Bytes {
        let mut stats = BatchStats::default();
        let mut out = Vec::with_capacity(payload.len() + 14);
        let min_size = self.min_size;
        deflate::write_message(&mut out, opcode, payload, self.compressor(bits), min_size, &mut stats);
        record(metrics, &stats);
        Bytes::from(out)
    }
}

fn record(metrics: &mut Counters, stats: &BatchStats) {
    metrics.add(Metric::DeflateCompressed, stats.compressed);
    metrics.add(Metric::DeflatePlain, stats.plain);
    metrics.add(Metric::DeflateBytesBefore, stats.bytes_before);
    metrics.add(Metric::DeflateBytesAfter, stats.bytes_after);
}
