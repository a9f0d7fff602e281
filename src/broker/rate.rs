//! A per-connection rate: how many topics new to its worker a connection may create, as a token bucket kept
//! in one timestamp (GCRA, the generic cell rate algorithm). The caller passes the time in; nothing here
//! reads a clock.

use std::time::{Duration, Instant};

/// A rate of `per_second` with bursts of up to `burst`, kept as the theoretical arrival time of the next
/// admitted event: 16 bytes per connection.
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    tat: Instant,
}

impl Gcra {
    /// A full bucket at `now`.
    pub fn new(now: Instant) -> Self {
        Gcra { tat: now }
    }

    /// Takes one token at `now` if there is one. `per_second == 0` means no limit. `burst` (at least 1) tokens
    /// are available at once; after that, one comes back every `1 / per_second` seconds.
    pub fn admit(&mut self, now: Instant, per_second: u32, burst: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        let interval = Duration::from_secs(1) / per_second;
        let tolerance = interval * burst.saturating_sub(1);
        let tat = self.tat.max(now);
        if tat.saturating_duration_since(now) > tolerance {
            return false;
        }
        self.tat = tat + interval;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_admits_the_burst_then_refuses() {
        let t0 = Instant::now();
        let mut g = Gcra::new(t0);
        for i in 0..4 {
            assert!(g.admit(t0, 2, 4), "token {i} of the burst");
        }
        assert!(!g.admit(t0, 2, 4), "the burst is spent");
    }

    #[test]
    fn tokens_come_back_at_the_rate_and_never_beyond_the_burst() {
        let t0 = Instant::now();
        let mut g = Gcra::new(t0);
        for _ in 0..3 {
            assert!(g.admit(t0, 2, 3));
        }
        assert!(!g.admit(t0 + Duration::from_millis(400), 2, 3), "half a second per token at 2/s");
        assert!(g.admit(t0 + Duration::from_millis(500), 2, 3), "one token back after 500 ms");
        assert!(!g.admit(t0 + Duration::from_millis(500), 2, 3));
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(g.admit(later, 2, 3), "a long pause refills the bucket");
        }
        assert!(!g.admit(later, 2, 3), "but only up to the burst");
    }

    #[test]
    fn a_zero_rate_is_no_limit() {
        let t0 = Instant::now();
        let mut g = Gcra::new(t0);
        assert!((0..10_000).all(|_| g.admit(t0, 0, 1)));
    }
}
