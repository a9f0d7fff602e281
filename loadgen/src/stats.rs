//! What a run measures, per thread and merged: latency histograms (HdrHistogram), per-publisher sequence
//! tracking (gaps, duplicates, reorders) in flat arrays, delivery counters, and classified failures.
//!
//! Each worker thread owns its own [`RecvCounters`], [`FastHist`] and [`Pair`] table and touches no shared
//! memory per message; the main thread merges them at the end (histograms with `add`, counters by summing).
//! Loss is computed at the end from each pair's state and each publisher's final counts (see [`Pair`] and
//! [`Delivery`]).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency the histograms hold (values above are clamped): one hour, in nanoseconds.
pub const HIST_MAX_NS: u64 = 3_600 * 1_000_000_000;

/// A latency histogram in nanoseconds with 3 significant digits, from 1 ns to [`HIST_MAX_NS`].
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("bug: constant histogram bounds are valid")
}

/// Records `value_ns`, clamped into the histogram's range (never fails).
#[inline]
pub fn record(hist: &mut Histogram<u64>, value_ns: u64) {
    hist.saturating_record(value_ns.clamp(1, HIST_MAX_NS));
}

/// Adds `from` into `into` (both made by [`new_histogram`], so the ranges match).
pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Same bounds on both sides: `add` cannot fail; if it ever did, the values are still clamped in.
    if into.add(from).is_err() {
        for v in from.iter_recorded() {
            let _ = into.record_n(v.value_iterated_to().min(HIST_MAX_NS), v.count_at_value());
        }
    }
}

/// Values below this are counted one by one in [`FastHist`]; above, in 1024 sub-buckets per power of two.
const FAST_LINEAR: u64 = 2048;
/// Buckets of [`FastHist`]: the linear range, then 1024 per power of two up to [`HIST_MAX_NS`] (< 2^42).
const FAST_BUCKETS: usize = FAST_LINEAR as usize + 31 * 1024;

/// A latency recorder for the receive hot path: an increment in a flat array, no bounds or error handling
/// beyond a clamp. Its buckets are HdrHistogram's at 3 significant digits (exact below 2048, then 1024
/// sub-buckets per power of two), so draining it into a [`Histogram`] once a second loses nothing.
#[derive(Debug, Clone)]
pub struct FastHist {
    counts: Vec<u64>,
    len: u64,
}

impl Default for FastHist {
    fn default() -> Self {
        FastHist { counts: vec![0; FAST_BUCKETS], len: 0 }
    }
}

impl FastHist {
    /// The bucket of `v` (already clamped to 1..=HIST_MAX_NS).
    #[inline]
    fn index(v: u64) -> usize {
        if v < FAST_LINEAR {
            return v as usize;
        }
        // v in [2^e, 2^(e+1)) with e >= 11: keep its top 11 bits.
        let e = 63 - v.leading_zeros() as u64;
        let shift = e - 10;
        (FAST_LINEAR + (shift - 1) * 1024 + ((v >> shift) - 1024)) as usize
    }

    /// The lowest value of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < FAST_LINEAR {
            return i;
        }
        let shift = (i - FAST_LINEAR) / 1024 + 1;
        let top = (i - FAST_LINEAR) % 1024 + 1024;
        top << shift
    }

    /// Records one value in nanoseconds.
    #[inline]
    pub fn record(&mut self, value_ns: u64) {
        let i = Self::index(value_ns.clamp(1, HIST_MAX_NS));
        // The clamp keeps `i` below FAST_BUCKETS; `get_mut` keeps that a non-panicking fact.
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
            self.len += 1;
        }
    }

    /// Whether nothing was recorded since the last drain.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves every count into `into` and clears this recorder.
    pub fn drain_into(&mut self, into: &mut Histogram<u64>) {
        if self.len == 0 {
            return;
        }
        for (i, c) in self.counts.iter_mut().enumerate() {
            if *c > 0 {
                let _ = into.record_n(Self::value(i).max(1), *c);
                *c = 0;
            }
        }
        self.len = 0;
    }
}

/// The percentiles reported for a latency distribution, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Number of values.
    pub count: u64,
    /// Smallest value.
    pub min_ns: u64,
    /// Mean value.
    pub mean_ns: f64,
    /// 50th percentile.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// 99.99th percentile.
    pub p9999_ns: u64,
    /// Largest value.
    pub max_ns: u64,
}

impl Percentiles {
    /// The percentiles of `hist` (all zero when empty).
    pub fn of(hist: &Histogram<u64>) -> Percentiles {
        if hist.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: hist.len(),
            min_ns: hist.min(),
            mean_ns: hist.mean(),
            p50_ns: hist.value_at_quantile(0.50),
            p90_ns: hist.value_at_quantile(0.90),
            p99_ns: hist.value_at_quantile(0.99),
            p999_ns: hist.value_at_quantile(0.999),
            p9999_ns: hist.value_at_quantile(0.9999),
            max_ns: hist.max(),
        }
    }
}

/// What one received sequence number meant for its (subscriber, publisher) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOutcome {
    /// The next one expected.
    InOrder,
    /// Newer than expected: this many were skipped (they may still arrive late).
    Gap(u64),
    /// Older than the newest, not seen before: it arrived after a later one (reordered).
    Late,
    /// Seen before, or too old to tell (more than 64 behind the newest).
    Duplicate,
}

/// The sequence state of one (subscriber, publisher) pair: 24 bytes plus a flag, in a flat table indexed by
/// `local_subscriber * slots_per_topic + publisher_slot`.
///
/// `next` is one past the highest sequence received; `recent` is a bitmap of the 64 sequences below `next`
/// (bit `i` = sequence `next - 1 - i` was received), which tells a late message from a duplicate. At the end,
/// for the measured sequences `[first, end)` of the publisher: the missing ones below `next` were lost (the
/// server skipped them; a later one arrived), and the ones from `next` up were still in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pair {
    /// One past the highest sequence received.
    pub next: u64,
    /// Which of the 64 sequences below `next` were received.
    pub recent: u64,
    /// Measured (sent in the window) messages received, duplicates excluded.
    pub measured: u64,
    /// A probe from this publisher arrived (the subscription carries its messages).
    pub probed: bool,
}

impl Pair {
    /// Updates the state for sequence `seq` and says what it was.
    #[inline]
    pub fn record(&mut self, seq: u64) -> SeqOutcome {
        if seq >= self.next {
            let gap = seq - self.next;
            self.recent = if gap >= 63 { 1 } else { (self.recent << (gap + 1)) | 1 };
            self.next = seq + 1;
            if gap == 0 {
                SeqOutcome::InOrder
            } else {
                SeqOutcome::Gap(gap)
            }
        } else {
            let back = self.next - 1 - seq;
            if back >= 64 || self.recent & (1 << back) != 0 {
                SeqOutcome::Duplicate
            } else {
                self.recent |= 1 << back;
                SeqOutcome::Late
            }
        }
    }

    /// Splits a publisher's measured sequences `[first, end)` into (delivered, lost, still in flight) for
    /// this pair. Delivered is the pair's count; the missing ones at or above `next` are in flight, the rest
    /// lost.
    pub fn account(&self, first: u64, end: u64) -> (u64, u64, u64) {
        let expected = end.saturating_sub(first);
        let in_flight = end.saturating_sub(self.next.max(first)).min(expected);
        let delivered = self.measured.min(expected);
        let lost = expected - in_flight - delivered.min(expected - in_flight);
        (delivered, lost, in_flight)
    }
}

/// Receive-side counters of one thread (summed across threads at the end).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecvCounters {
    /// Data messages received, warm-up and measured, duplicates included (probes excluded).
    pub messages: u64,
    /// Data frame payload bytes received.
    pub bytes: u64,
    /// Data messages received during the measured window (by receive time).
    pub messages_in_window: u64,
    /// Payload bytes received during the measured window (by receive time).
    pub bytes_in_window: u64,
    /// Data frame payload bytes as they came on the wire: `bytes` before inflating (equal without compression).
    pub wire_bytes: u64,
    /// Wire bytes received during the measured window (by receive time).
    pub wire_bytes_in_window: u64,
    /// `--compress`: connections on which the server accepted permessage-deflate.
    pub deflate_negotiated: u64,
    /// Messages that arrived compressed (and were inflated).
    pub compressed_messages: u64,
    /// Messages sent during the window that arrived (duplicates excluded), whenever they arrived.
    pub measured: u64,
    /// Duplicates (or messages more than 64 behind the newest of their publisher).
    pub duplicates: u64,
    /// Messages that arrived after a later one of the same publisher.
    pub reordered: u64,
    /// Times a subscriber saw a sequence jump forward (each gap may hold several messages).
    pub gaps: u64,
    /// Messages jumped over by those gaps (some may still arrive late: see `reordered`).
    pub skipped: u64,
    /// Messages whose payload was not loadgen's (too short, unknown publisher, wrong topic).
    pub foreign: u64,
    /// Probe messages received.
    pub probes: u64,
    /// Pings answered.
    pub pings: u64,
    /// `read` calls that returned data.
    pub reads: u64,
    /// `--protocol json`: `ack` replies (to subscribes, publishes and auth messages; not deliveries).
    pub acks: u64,
    /// `--protocol json`: `error` replies on open connections (e.g. a refused publish).
    pub error_replies: u64,
    /// `--protocol json`: gap notices (`{"type":"gap"}`) from a herald cluster node that lost messages of a
    /// subscriber's topic between nodes; the messages themselves show as lost (or `skipped`).
    pub gap_notices: u64,
}

impl RecvCounters {
    /// Counts what a sequence check found; false for a duplicate, which the caller must not count further.
    #[inline]
    pub fn count_sequence(&mut self, outcome: SeqOutcome) -> bool {
        match outcome {
            SeqOutcome::InOrder => {}
            SeqOutcome::Gap(n) => {
                self.gaps += 1;
                self.skipped += n;
            }
            SeqOutcome::Late => self.reordered += 1,
            SeqOutcome::Duplicate => {
                self.duplicates += 1;
                return false;
            }
        }
        true
    }

    /// Adds another thread's counters.
    pub fn add(&mut self, o: &RecvCounters) {
        self.messages += o.messages;
        self.bytes += o.bytes;
        self.messages_in_window += o.messages_in_window;
        self.bytes_in_window += o.bytes_in_window;
        self.wire_bytes += o.wire_bytes;
        self.wire_bytes_in_window += o.wire_bytes_in_window;
        self.deflate_negotiated += o.deflate_negotiated;
        self.compressed_messages += o.compressed_messages;
        self.measured += o.measured;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.gaps += o.gaps;
        self.skipped += o.skipped;
        self.foreign += o.foreign;
        self.probes += o.probes;
        self.pings += o.pings;
        self.reads += o.reads;
        self.acks += o.acks;
        self.error_replies += o.error_replies;
        self.gap_notices += o.gap_notices;
    }
}

/// Why a connection failed to open, or ended before the run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// Connection refused (nothing listening, or the backlog overflowed).
    Refused,
    /// Connect plus handshake took longer than `--connect-timeout`.
    Timeout,
    /// No local address or port left (`EADDRNOTAVAIL`): spread over `--source-ips`.
    AddrUnavailable,
    /// Reset by the server.
    Reset,
    /// Any other socket error.
    Io,
    /// The server answered the upgrade with this HTTP status instead of 101.
    HttpStatus(u16),
    /// A 101 that failed validation, or an unparseable response.
    Handshake,
    /// The server broke RFC 6455 (e.g. a masked frame).
    Protocol,
    /// The server sent a close frame with this code (0: no code).
    ClosedByServer(u16),
    /// The server closed the TCP connection without a close frame.
    Eof,
    /// `--protocol json`: the server answered a request made while opening (auth, subscribe) with an
    /// `error` reply carrying this code.
    ErrorReply(ReplyCode),
    /// `wss://`: the server's certificate was rejected, for this reason (see `--ca`, `--insecure`).
    TlsCertificate(&'static str),
    /// `wss://`: any other TLS failure (a protocol error, an alert from the server).
    Tls,
}

/// An `error` reply's `code`, kept inline (at most 31 bytes) so that a [`Failure`] stays `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyCode {
    len: u8,
    bytes: [u8; 31],
}

impl ReplyCode {
    /// The code from the reply's bytes (cut at 31 bytes; `?` when empty or not printable ASCII).
    pub fn new(code: &[u8]) -> ReplyCode {
        let code = if !code.is_empty() && code.iter().all(u8::is_ascii_graphic) { code } else { b"?" };
        let len = code.len().min(31);
        let mut bytes = [0u8; 31];
        bytes[..len].copy_from_slice(&code[..len]);
        ReplyCode { len: len as u8, bytes }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

/// Failure counts by class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Failures {
    /// Connection refused.
    pub refused: u64,
    /// Connect or handshake timeout.
    pub timeout: u64,
    /// `EADDRNOTAVAIL`: out of local ports or addresses.
    pub addr_unavailable: u64,
    /// Reset by peer.
    pub reset: u64,
    /// Other socket errors.
    pub io: u64,
    /// Upgrade answered with a non-101 status: status -> count.
    pub http_status: BTreeMap<u16, u64>,
    /// Invalid 101 response.
    pub handshake: u64,
    /// RFC 6455 violations by the server.
    pub protocol: u64,
    /// Close frames from the server: code -> count.
    pub closed_by_server: BTreeMap<u16, u64>,
    /// TCP closed by the server without a close frame.
    pub eof: u64,
    /// `--protocol json`: error replies to the requests made while opening: code -> count.
    pub error_reply: BTreeMap<String, u64>,
    /// `wss://`: server certificates rejected: reason -> count.
    pub tls_certificate: BTreeMap<String, u64>,
    /// `wss://`: other TLS failures.
    pub tls: u64,
}

impl Failures {
    /// Counts one failure.
    pub fn count(&mut self, f: Failure) {
        match f {
            Failure::Refused => self.refused += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::AddrUnavailable => self.addr_unavailable += 1,
            Failure::Reset => self.reset += 1,
            Failure::Io => self.io += 1,
            Failure::HttpStatus(s) => *self.http_status.entry(s).or_default() += 1,
            Failure::Handshake => self.handshake += 1,
            Failure::Protocol => self.protocol += 1,
            Failure::ClosedByServer(c) => *self.closed_by_server.entry(c).or_default() += 1,
            Failure::Eof => self.eof += 1,
            Failure::ErrorReply(code) => *self.error_reply.entry(code.as_str().to_owned()).or_default() += 1,
            Failure::TlsCertificate(why) => *self.tls_certificate.entry(why.to_owned()).or_default() += 1,
            Failure::Tls => self.tls += 1,
        }
    }

    /// Adds another set of counts.
    pub fn add(&mut self, o: &Failures) {
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.addr_unavailable += o.addr_unavailable;
        self.reset += o.reset;
        self.io += o.io;
        for (k, v) in &o.http_status {
            *self.http_status.entry(*k).or_default() += v;
        }
        self.handshake += o.handshake;
        self.protocol += o.protocol;
        for (k, v) in &o.closed_by_server {
            *self.closed_by_server.entry(*k).or_default() += v;
        }
        self.eof += o.eof;
        for (k, v) in &o.error_reply {
            *self.error_reply.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.tls_certificate {
            *self.tls_certificate.entry(k.clone()).or_default() += v;
        }
        self.tls += o.tls;
    }

    /// Total failures of every class.
    pub fn total(&self) -> u64 {
        self.refused
            + self.timeout
            + self.addr_unavailable
            + self.reset
            + self.io
            + self.http_status.values().sum::<u64>()
            + self.handshake
            + self.protocol
            + self.closed_by_server.values().sum::<u64>()
            + self.eof
            + self.error_reply.values().sum::<u64>()
            + self.tls_certificate.values().sum::<u64>()
            + self.tls
    }

    /// A one-line summary of the non-zero classes, e.g. `refused 3, http 503 x2`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let mut push = |name: &str, n: u64| {
            if n > 0 {
                parts.push(format!("{name} {n}"));
            }
        };
        push("refused", self.refused);
        push("timeout", self.timeout);
        push("addr-unavailable", self.addr_unavailable);
        push("reset", self.reset);
        push("io", self.io);
        push("handshake", self.handshake);
        push("protocol", self.protocol);
        push("eof", self.eof);
        push("tls", self.tls);
        for (s, n) in &self.http_status {
            parts.push(format!("http {s} x{n}"));
        }
        for (c, n) in &self.closed_by_server {
            parts.push(format!("close {c} x{n}"));
        }
        for (c, n) in &self.error_reply {
            parts.push(format!("error reply {c} x{n}"));
        }
        for (why, n) in &self.tls_certificate {
            parts.push(format!("server certificate rejected ({why}; check --ca or use --insecure) x{n}"));
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// The delivery accounting of a whole run (every figure in messages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Messages the publishers sent in the measured window.
    pub published: u64,
    /// Deliveries those should make: each one times the subscribers of its topic that were connected.
    pub expected: u64,
    /// Deliveries of those messages that arrived (duplicates excluded), including during the grace period.
    pub delivered: u64,
    /// Missing, with a later message of the same publisher received: dropped by the server.
    pub lost: u64,
    /// Missing at the end of the grace period with nothing later received: still in flight (queued).
    pub in_flight: u64,
    /// Missing on subscribers whose connection ended during the run.
    pub lost_disconnected: u64,
}

impl Delivery {
    /// Every expected delivery that did not arrive, whatever the reason.
    pub fn undelivered(&self) -> u64 {
        self.lost + self.in_flight + self.lost_disconnected
    }

    /// Undelivered as a fraction of expected (0 when nothing was expected).
    pub fn loss_ratio(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.undelivered() as f64 / self.expected as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_counts_the_messages_it_skipped_until_they_arrive_late() {
        let mut c = RecvCounters::default();
        let mut p = Pair::default();
        for seq in [0, 1, 5, 3] {
            c.count_sequence(p.record(seq));
        }
        assert_eq!((c.gaps, c.skipped, c.reordered), (1, 3, 1), "2, 3 and 4 skipped; 3 came late");
        assert_eq!(c.skipped - c.reordered, 2, "2 and 4 are missing so far");
    }

    #[test]
    fn in_order_sequence_has_no_gaps() {
        let mut p = Pair::default();
        for s in 0..1000 {
            assert_eq!(p.record(s), SeqOutcome::InOrder);
        }
        assert_eq!(p.next, 1000);
    }

    #[test]
    fn gap_then_late_then_duplicate() {
        let mut p = Pair::default();
        assert_eq!(p.record(0), SeqOutcome::InOrder);
        assert_eq!(p.record(3), SeqOutcome::Gap(2));
        assert_eq!(p.record(1), SeqOutcome::Late);
        assert_eq!(p.record(1), SeqOutcome::Duplicate);
        assert_eq!(p.record(3), SeqOutcome::Duplicate);
        assert_eq!(p.record(2), SeqOutcome::Late);
        assert_eq!(p.record(4), SeqOutcome::InOrder);
        assert_eq!(p.record(100), SeqOutcome::Gap(95));
        assert_eq!(p.record(99), SeqOutcome::Late);
        assert_eq!(p.record(4), SeqOutcome::Duplicate, "too old to tell: counted as duplicate");
    }

    #[test]
    fn accounting_splits_lost_from_in_flight() {
        // Measured sequences 10..20; received 10..13 and 15, nothing after.
        let mut p = Pair::default();
        for s in (0..13).chain([15]) {
            p.record(s);
            if s >= 10 {
                p.measured += 1;
            }
        }
        // 10,11,12,15 delivered; 13,14 lost (15 came later); 16..20 in flight.
        assert_eq!(p.account(10, 20), (4, 2, 4));
        // Nothing received at all: everything in flight.
        assert_eq!(Pair::default().account(5, 8), (0, 0, 3));
        // All received.
        let mut q = Pair::default();
        for s in 0..8 {
            q.record(s);
            q.measured += 1;
        }
        assert_eq!(q.account(0, 8), (8, 0, 0));
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            record(&mut h, v * 1000);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((499_000..=501_000).contains(&p.p50_ns), "{}", p.p50_ns);
        assert!((989_000..=991_000).contains(&p.p99_ns), "{}", p.p99_ns);
        assert!(p.max_ns >= 999_000);
        record(&mut h, u64::MAX);
        assert!(Percentiles::of(&h).max_ns >= HIST_MAX_NS / 2, "huge values are clamped, not dropped");
    }

    #[test]
    fn fast_histogram_matches_hdrhistogram_buckets() {
        let values: Vec<u64> = (0..64)
            .flat_map(|e| [0u64, 1, 3, 1023, 1024, 2047].map(|d| (1u64 << e).saturating_add(d)))
            .chain([1, 2, 999, 2048, 123_456_789, HIST_MAX_NS, u64::MAX])
            .collect();
        let mut fast = FastHist::default();
        let mut reference = new_histogram();
        for &v in &values {
            fast.record(v);
            record(&mut reference, v);
        }
        let mut drained = new_histogram();
        fast.drain_into(&mut drained);
        assert!(fast.is_empty());
        assert_eq!(drained.len(), reference.len());
        for q in [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                drained.highest_equivalent(drained.value_at_quantile(q)),
                reference.highest_equivalent(reference.value_at_quantile(q)),
                "quantile {q}"
            );
        }
        for v in [1u64, 2047, 2048, 4095, 4096, 1 << 30, HIST_MAX_NS] {
            let i = FastHist::index(v);
            assert!(FastHist::value(i) <= v && reference.equivalent(FastHist::value(i), v), "{v}");
        }
    }

    #[test]
    fn failures_count_and_summarise() {
        let mut f = Failures::default();
        f.count(Failure::Refused);
        f.count(Failure::HttpStatus(503));
        f.count(Failure::HttpStatus(503));
        f.count(Failure::ClosedByServer(1008));
        assert_eq!(f.total(), 4);
        assert_eq!(f.summary(), "refused 1, http 503 x2, close 1008 x1");
        let mut g = Failures::default();
        g.add(&f);
        g.add(&f);
        assert_eq!(g.total(), 8);
    }

    #[test]
    fn auth_failures_show_status_close_code_and_reply_code() {
        let mut f = Failures::default();
        f.count(Failure::HttpStatus(401));
        f.count(Failure::HttpStatus(403));
        f.count(Failure::ClosedByServer(4401));
        f.count(Failure::ErrorReply(ReplyCode::new(b"forbidden")));
        f.count(Failure::ErrorReply(ReplyCode::new(b"forbidden")));
        f.count(Failure::ErrorReply(ReplyCode::new(b"")));
        assert_eq!(f.total(), 6);
        assert_eq!(f.summary(), "http 401 x1, http 403 x1, close 4401 x1, error reply ? x1, error reply forbidden x2");
        let long = ReplyCode::new(&[b'a'; 40]);
        assert_eq!(long.as_str().len(), 31);
    }
}
