//! A per-worker budget of log lines for events a client can cause at will (refused upgrades), so a flood of
//! bad requests cannot fill the disk: at most `per_second` lines a second, and the next line that gets out
//! says how many were left out.

use std::time::{Duration, Instant};

/// Lines allowed per second for client-caused events.
#[derive(Debug)]
pub struct LogLimit {
    per_second: u32,
    left: u32,
    window_end: Instant,
    suppressed: u64,
}

impl LogLimit {
    /// A budget of `per_second` lines a second.
    pub fn new(per_second: u32, now: Instant) -> Self {
        LogLimit { per_second, left: per_second, window_end: now + Duration::from_secs(1), suppressed: 0 }
    }

    /// Whether a line may be logged now: `Some(n)` with the number of lines left out since the last one that
    /// got out, or `None` (the line is counted as left out).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if now >= self.window_end {
            self.left = self.per_second;
            self.window_end = now + Duration::from_secs(1);
        }
        if self.left == 0 {
            self.suppressed += 1;
            return None;
        }
        self.left -= 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gets_the_budget_then_silence_then_a_count_of_what_was_left_out() {
        let t0 = Instant::now();
        let mut limit = LogLimit::new(3, t0);
        let first: Vec<Option<u64>> = (0..10).map(|_| limit.allow(t0)).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None, None, None, None, None, None]);
        assert_eq!(limit.allow(t0 + Duration::from_millis(1001)), Some(7), "the next line says 7 were left out");
        assert_eq!(limit.allow(t0 + Duration::from_millis(1002)), Some(0));
    }
}
