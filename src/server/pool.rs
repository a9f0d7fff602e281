//! The worker's spare read buffers: taken while a connection has bytes to read or a message half-received,
//! given back when it goes idle. Under load the pool grows to [`POOL_MAX`]; once load passes, the buffers not
//! taken during a whole trim period are freed, down to [`POOL_IDLE`], so a worker's memory goes back down after
//! a burst instead of holding its peak forever.

use std::time::{Duration, Instant};

use bytes::BytesMut;

/// Most spare read buffers kept per worker.
pub const POOL_MAX: usize = 256;
/// Spare buffers kept however long the worker stays idle.
pub const POOL_IDLE: usize = 16;
/// How often unused spares are freed.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Spare read buffers of one size.
#[derive(Debug)]
pub struct ReadPool {
    size: usize,
    free: Vec<BytesMut>,
    /// Fewest spares held since the last trim: that many were not needed during the period.
    low: usize,
    next_trim: Instant,
}

impl ReadPool {
    /// An empty pool of buffers of `size` bytes.
    pub fn new(size: usize, now: Instant) -> Self {
        ReadPool { size, free: Vec::new(), low: 0, next_trim: now + TRIM_EVERY }
    }

    /// A spare buffer, or a new one.
    pub fn take(&mut self) -> BytesMut {
        let buf = self.free.pop().unwrap_or_else(|| BytesMut::with_capacity(self.size));
        self.low = self.low.min(self.free.len());
        buf
    }

    /// Keeps `buf` (cleared) for reuse, unless the pool is full or `buf` grew far from the pool's size.
    pub fn give(&mut self, mut buf: BytesMut) {
        buf.clear();
        if buf.capacity() < self.size / 2 && buf.capacity() > 0 {
            // Consumed bytes were split off its front: take back the whole allocation when this view is its
            // only user (no copy: it is empty); otherwise this allocates, as `take` would have.
            buf.reserve(self.size);
        }
        if self.free.len() < POOL_MAX && buf.capacity() >= self.size / 2 && buf.capacity() <= self.size * 4 {
            self.free.push(buf);
        }
    }

    /// Once per [`TRIM_EVERY`]: frees the spares that were never taken during the period (keeping
    /// [`POOL_IDLE`]). Returns how many were freed.
    pub fn trim(&mut self, now: Instant) -> usize {
        if now < self.next_trim {
            return 0;
        }
        self.next_trim = now + TRIM_EVERY;
        let unused = self.low.min(self.free.len().saturating_sub(POOL_IDLE));
        self.free.truncate(self.free.len() - unused);
        self.free.shrink_to(POOL_IDLE.max(self.free.len()));
        self.low = self.free.len();
        unused
    }

    /// Spare buffers held now.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether no spare is held.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: usize, now: Instant) -> ReadPool {
        let mut pool = ReadPool::new(1024, now);
        let taken: Vec<BytesMut> = (0..n).map(|_| pool.take()).collect();
        for buf in taken {
            pool.give(buf);
        }
        pool
    }

    #[test]
    fn a_burst_leaves_its_buffers_for_reuse() {
        let t0 = Instant::now();
        let pool = filled(100, t0);
        assert_eq!(pool.len(), 100);
    }

    #[test]
    fn spares_unused_for_a_whole_period_are_freed_down_to_the_idle_size() {
        let t0 = Instant::now();
        let mut pool = filled(100, t0);
        assert_eq!(pool.trim(t0 + TRIM_EVERY), 0, "the burst happened during the first period");
        assert_eq!(pool.trim(t0 + TRIM_EVERY * 2), 100 - POOL_IDLE, "nothing was taken in the second");
        assert_eq!(pool.len(), POOL_IDLE);
        assert_eq!(pool.trim(t0 + TRIM_EVERY * 3), 0, "the idle spares stay");
    }

    #[test]
    fn spares_in_use_during_the_period_are_kept() {
        let t0 = Instant::now();
        let mut pool = filled(100, t0);
        pool.trim(t0 + TRIM_EVERY);
        // 60 of the 100 are taken at once and come back: only the 40 never taken are surplus.
        let taken: Vec<BytesMut> = (0..60).map(|_| pool.take()).collect();
        for buf in taken {
            pool.give(buf);
        }
        assert_eq!(pool.trim(t0 + TRIM_EVERY * 2), 40);
        assert_eq!(pool.len(), 60);
    }

    #[test]
    fn the_pool_is_bounded_and_keeps_only_buffers_near_its_size() {
        let t0 = Instant::now();
        let mut pool = filled(POOL_MAX + 10, t0);
        assert_eq!(pool.len(), POOL_MAX);
        let before = pool.len();
        pool.give(BytesMut::with_capacity(1024 * 64));
        pool.give(BytesMut::new());
        assert_eq!(pool.len(), before, "a grown or empty buffer is not kept");
    }

    #[test]
    fn nothing_is_freed_before_the_period_ends() {
        let t0 = Instant::now();
        let mut pool = filled(100, t0);
        assert_eq!(pool.trim(t0 + TRIM_EVERY / 2), 0);
        assert_eq!(pool.len(), 100);
    }
}
