//! When each connection next needs the worker's timer: a min-heap of (tick, connection) entries, so that a
//! timer tick looks at the connections that have a deadline due (handshake, close, idle, ping, auth) and not
//! at every connection the worker holds.
//!
//! Entries are lazy. A connection records the tick of its live entry (`Conn::timer_at`); a deadline that moves
//! later (input arrived, so the idle and ping deadlines moved) leaves the entry where it is, and the visit it
//! causes finds nothing due and arms the connection again at its new deadline. A deadline that moves earlier
//! (a close sent, an upgrade with a short auth timeout) pushes a new entry at once, and the older one is
//! skipped when it comes up. Entries of closed connections are skipped the same way, and dropped in bulk when
//! they outnumber the live ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::broker::index::ConnKey;

/// A tick number: how many timer periods after the worker's start a deadline falls (0 means "no entry").
pub type Tick = u32;

/// The heap of timer entries of one worker.
#[derive(Debug)]
pub struct Timers {
    epoch: Instant,
    period: Duration,
    heap: BinaryHeap<Reverse<(Tick, ConnKey)>>,
}

impl Timers {
    /// No entries; ticks count `period`s from `epoch`.
    pub fn new(epoch: Instant, period: Duration) -> Self {
        Timers { epoch, period, heap: BinaryHeap::new() }
    }

    /// The tick `at` falls in (at least 1: 0 is "none"). A deadline is due at the first timer run in or after
    /// its tick, which looks again at the exact time.
    pub fn tick_of(&self, at: Instant) -> Tick {
        let millis = |d: Duration| d.as_secs().saturating_mul(1000).saturating_add(u64::from(d.subsec_millis()));
        let since = millis(at.saturating_duration_since(self.epoch)) / millis(self.period).max(1);
        Tick::try_from(since).unwrap_or(Tick::MAX - 1).saturating_add(1)
    }

    /// Makes sure connection `key`, whose live entry is at tick `armed` (0: none), is looked at by the tick of
    /// `at`: an entry is pushed unless the live one comes no later.
    pub fn arm(&mut self, armed: &mut Tick, key: ConnKey, at: Instant) {
        let tick = self.tick_of(at);
        if *armed == 0 || tick < *armed {
            *armed = tick;
            self.heap.push(Reverse((tick, key)));
        }
    }

    /// The next entry due at `now` (its tick is `now`'s or earlier): the connection and the entry's tick. The
    /// caller looks at the connection only if the tick is still its live one.
    pub fn pop_due(&mut self, now: Instant) -> Option<(ConnKey, Tick)> {
        let current = self.tick_of(now);
        match self.heap.peek() {
            Some(Reverse((tick, _))) if *tick <= current => self.heap.pop().map(|Reverse((t, k))| (k, t)),
            _ => None,
        }
    }

    /// How many entries there are, live or stale.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Keeps only the entries `live` says are a connection's live one.
    pub fn retain(&mut self, mut live: impl FnMut(ConnKey, Tick) -> bool) {
        self.heap.retain(|Reverse((tick, key))| live(*key, *tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_millis(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn only_entries_whose_tick_has_come_are_due() {
        let t0 = Instant::now();
        let mut timers = Timers::new(t0, PERIOD);
        let (mut a, mut b) = (0, 0);
        timers.arm(&mut a, 1, t0 + ms(250));
        timers.arm(&mut b, 2, t0 + ms(1_000));
        assert_eq!(timers.pop_due(t0 + ms(199)), None, "nothing is due before its tick");
        assert_eq!(timers.pop_due(t0 + ms(200)), Some((1, a)), "due in the tick its deadline falls in");
        assert_eq!(timers.pop_due(t0 + ms(999)), None);
        assert_eq!(timers.pop_due(t0 + ms(5_000)), Some((2, b)));
        assert!(timers.is_empty());
    }

    #[test]
    fn a_later_deadline_keeps_the_entry_and_an_earlier_one_pushes_another() {
        let t0 = Instant::now();
        let mut timers = Timers::new(t0, PERIOD);
        let mut armed = 0;
        timers.arm(&mut armed, 7, t0 + ms(500));
        let first = armed;
        timers.arm(&mut armed, 7, t0 + ms(900));
        assert_eq!((armed, timers.len()), (first, 1), "moving later is lazy: the earlier entry stays live");
        timers.arm(&mut armed, 7, t0 + ms(100));
        assert!(armed < first, "moving earlier takes effect at once");
        assert_eq!(timers.len(), 2, "the older entry stays until it comes up (stale)");
        assert_eq!(timers.pop_due(t0 + ms(100)), Some((7, armed)));
        let stale = timers.pop_due(t0 + ms(500)).expect("the older entry comes up");
        assert_ne!(stale.1, armed, "and is told apart from the live one by its tick");
    }

    #[test]
    fn stale_entries_can_be_dropped_in_bulk() {
        let t0 = Instant::now();
        let mut timers = Timers::new(t0, PERIOD);
        let mut live = vec![0; 100];
        for (key, armed) in live.iter_mut().enumerate() {
            timers.arm(armed, key, t0 + ms(1_000));
            timers.arm(armed, key, t0 + ms(300));
        }
        assert_eq!(timers.len(), 200);
        timers.retain(|key, tick| key % 2 == 0 && live[key] == tick);
        assert_eq!(timers.len(), 50, "the live entries of the connections still there");
    }

    #[test]
    fn ticks_count_from_one_and_saturate() {
        let t0 = Instant::now();
        let timers = Timers::new(t0, PERIOD);
        assert_eq!(timers.tick_of(t0), 1);
        assert_eq!(timers.tick_of(t0 + ms(99)), 1);
        assert_eq!(timers.tick_of(t0 + ms(100)), 2);
        assert_eq!(timers.tick_of(t0 + Duration::from_secs(u64::from(u32::MAX) * 10)), Tick::MAX);
    }
}
