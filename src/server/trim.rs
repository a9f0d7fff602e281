//! Giving memory back after a load, from the worker's timer, at most once per [`TRIM_EVERY`]:
//!
//! - the connection slab and the topic index drop the room of entries that are gone once at most a quarter of
//!   it is in use. Keys stay valid: a slab only drops the vacant slots after its last live entry
//!   (`Slab::shrink_to_fit`), so a long-lived connection or topic high in the slab keeps the room below it;
//! - when the worker goes quiet after a busy spell (bytes moved, connections or topics come and gone, or half
//!   its connections closed), glibc's
//!   `malloc_trim(0)` hands the freed pages of every arena back to the kernel. glibc only returns the top of
//!   each heap by itself, so without this the high-water mark of a load stays resident (tuning.md, "Memory
//!   after load"). Set `HERALD_MALLOC_TRIM=0` to leave glibc alone (for measurements).

use std::cell::Cell;
use std::time::{Duration, Instant};

use slab::Slab;

use super::worker::Worker;
use crate::metrics::Metric;

/// How often the worker's structures and activity are looked at.
pub const TRIM_EVERY: Duration = Duration::from_secs(1);
/// Below this many slots a slab is left alone.
const MIN_SLOTS: usize = 256;
/// Activity (bytes, plus [`PER_ENTRY`] per connection or topic that came or went) in one [`TRIM_EVERY`] that
/// makes a spell busy.
const BUSY: u64 = 4 << 20;
/// Activity below which a second is quiet.
const QUIET: u64 = 256 << 10;
/// What one connection or topic that came or went counts for.
const PER_ENTRY: u64 = 1024;
/// Fewest connections gone (and at least half of them) that make a spell busy whatever the bytes.
const MIN_GONE: usize = 16;

#[derive(Clone, Copy, Default)]
struct State {
    next: Option<Instant>,
    bytes: u64,
    conns: usize,
    topics: usize,
    /// Most connections since the last release.
    high: usize,
    busy: bool,
}

thread_local! {
    /// This worker's (one per thread) trim state.
    static STATE: Cell<State> = Cell::new(State::default());
}

/// Called from the worker's timer: at most once per [`TRIM_EVERY`], shrinks what is mostly empty, and gives
/// freed memory back to the kernel when a busy spell has ended.
pub(super) fn on_tick(worker: &mut Worker) {
    let now = worker.now;
    let mut st = STATE.with(Cell::get);
    if st.next.is_some_and(|at| now < at) {
        return;
    }
    st.next = Some(now + TRIM_EVERY);
    shrink_slab(&mut worker.conns);
    if worker.dirty.is_empty() {
        worker.dirty.shrink_to(MIN_SLOTS);
    }
    let _ = worker.index.shrink();

    let bytes = worker.metrics.get(Metric::BytesIn) + worker.metrics.get(Metric::BytesOut);
    let (conns, topics) = (worker.conns.len(), worker.index.topics());
    let activity =
        bytes.wrapping_sub(st.bytes) + (conns.abs_diff(st.conns) + topics.abs_diff(st.topics)) as u64 * PER_ENTRY;
    (st.bytes, st.conns, st.topics) = (bytes, conns, topics);
    st.high = st.high.max(conns);
    // Busy: much traffic, or at least half the connections seen since the last release are gone (a few
    // connections can hold a lot: 1 MiB messages being assembled).
    if activity >= BUSY || (st.high - conns >= MIN_GONE && conns <= st.high / 2) {
        st.busy = true;
    }
    if st.busy && activity < QUIET {
        st.busy = false;
        st.high = conns;
        release_free_memory();
    }
    STATE.with(|c| c.set(st));
}

/// Asks the C allocator to return free pages to the kernel (glibc only; elsewhere nothing to do).
#[allow(unsafe_code)]
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *ENABLED.get_or_init(|| std::env::var("HERALD_MALLOC_TRIM").map_or(true, |v| v != "0")) {
            // SAFETY: malloc_trim takes no pointers and only walks glibc's own arenas under their locks; it is
            // safe to call from any thread at any time.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// Drops a slab's vacant tail once at most a quarter of its slots are live; returns the slots given back.
pub(super) fn shrink_slab<T>(slab: &mut Slab<T>) -> usize {
    let before = slab.capacity();
    if before > MIN_SLOTS && slab.len() <= before / 4 {
        slab.shrink_to_fit();
    }
    before - slab.capacity()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::broker::index::{ConnKey, Deliver, SubKind, TopicIndex};
    use crate::broker::mesh::{inboxes, MeshEnd};

    struct Nowhere;
    impl Deliver for Nowhere {
        fn deliver(&mut self, _: ConnKey, _: &Bytes, _: u32) {}
    }

    #[test]
    fn topics_that_came_and_went_give_their_room_back_and_live_ids_stay_valid() {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let (handles, _inboxes) = inboxes(vec![waker as Arc<dyn crate::broker::mesh::Wake>], 16);
        let mut mesh = MeshEnd::new(0, handles);
        let mut index = TopicIndex::new(100_000, 64 * 1024);
        let keep = index.subscribe("keep", 1, SubKind::Raw).expect("room");
        let keep_topic = index.lookup("keep");
        let gone: Vec<_> =
            (0..10_000).map(|i| index.subscribe(&format!("t{i}"), 2, SubKind::Json).expect("room")).collect();
        for id in gone {
            index.unsubscribe(id, 2);
        }
        index.flush(&mut Nowhere, &mut mesh);
        assert_eq!(index.topics(), 1, "unused topics are dropped at the flush");
        assert!(index.shrink() >= 9_000, "their slots are given back");
        assert_eq!(index.lookup("keep"), keep_topic, "a live topic keeps its id");
        let _ = keep;
        assert_eq!(index.publish("keep", false, b"x", None, &mut Nowhere, &mut mesh), 1);
        assert!(index.subscribe("again", 3, SubKind::Raw).is_ok());
    }

    #[test]
    fn an_emptied_slab_gives_its_room_back() {
        let mut slab = Slab::new();
        let keys: Vec<usize> = (0..19_000).map(|i| slab.insert(i)).collect();
        for k in keys {
            slab.remove(k);
        }
        assert!(shrink_slab(&mut slab) >= 19_000);
        assert_eq!(slab.capacity(), 0);
    }

    #[test]
    fn live_entries_keep_their_keys_and_the_slab_stays_usable() {
        let mut slab = Slab::new();
        let keys: Vec<usize> = (0..10_000).map(|i| slab.insert(i)).collect();
        for &k in &keys[100..] {
            slab.remove(k);
        }
        assert!(shrink_slab(&mut slab) >= 9_000);
        assert!(slab.capacity() < 1_000);
        for &k in &keys[..100] {
            assert_eq!(slab[k], k, "a live key still finds its entry");
        }
        let fresh = slab.insert(42);
        assert_eq!(slab[fresh], 42);
        assert_eq!(slab.len(), 101);
    }

    #[test]
    fn a_busy_slab_is_left_alone() {
        let mut slab = Slab::new();
        let keys: Vec<usize> = (0..1_000).map(|i| slab.insert(i)).collect();
        for &k in &keys[..500] {
            slab.remove(k);
        }
        let cap = slab.capacity();
        assert_eq!(shrink_slab(&mut slab), 0);
        assert_eq!(slab.capacity(), cap);
    }
}
