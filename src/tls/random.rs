//! [`PooledRandom`]: rustls' source of random bytes in herald. It draws from the kernel 4 KiB at a time per
//! thread, instead of making one `getrandom` system call for every request.
//!
//! A full TLS 1.3 handshake asks rustls' provider for random bytes five times: the server random, then a
//! nonce and an `age_add` for each of the two session tickets. Before this pool, that was five system calls
//! of 4 to 32 bytes each, on the worker's core, per connection. ring still draws its own bytes from the kernel
//! directly: the key share, the ECDSA nonce, and the tickets' AEAD nonces.
//!
//! What makes this safe:
//! - every byte comes from the kernel's CSPRNG (ring's `SystemRandom`, that is `getrandom`);
//! - every byte is handed out once and wiped from the pool as it goes, so the pool never holds a byte that
//!   was already used;
//! - the pool is per thread, with no lock and nothing shared;
//! - herald never forks, so no copy of the pool can appear in a child process.

use std::cell::RefCell;

use ring::rand::{SecureRandom as _, SystemRandom};
use rustls::crypto::{GetRandomFailed, SecureRandom};

/// Bytes drawn from the kernel per refill.
const POOL: usize = 4096;

/// The provider's `secure_random` (see the module docs).
#[derive(Debug)]
pub struct PooledRandom;

/// The one instance the provider points at.
pub static POOLED_RANDOM: PooledRandom = PooledRandom;

struct Pool {
    bytes: [u8; POOL],
    /// Bytes before `next` were handed out (and wiped); the rest are fresh.
    next: usize,
}

thread_local! {
    static THREAD_POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; POOL], next: POOL }) };
}

impl Pool {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), GetRandomFailed> {
        if out.len() > POOL / 4 {
            // Large requests do not go through the pool.
            return SystemRandom::new().fill(out).map_err(|_| GetRandomFailed);
        }
        if POOL - self.next < out.len() {
            SystemRandom::new().fill(&mut self.bytes).map_err(|_| GetRandomFailed)?;
            self.next = 0;
        }
        let taken = &mut self.bytes[self.next..self.next + out.len()];
        out.copy_from_slice(taken);
        taken.fill(0);
        self.next += out.len();
        Ok(())
    }
}

impl SecureRandom for PooledRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        THREAD_POOL.with(|pool| pool.borrow_mut().fill(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_handed_out_are_wiped_from_the_pool_and_never_handed_out_again() {
        let mut pool = Pool { bytes: [0; POOL], next: POOL };
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        pool.fill(&mut a).expect("kernel randomness");
        pool.fill(&mut b).expect("kernel randomness");
        assert_ne!(a, [0; 32]);
        assert_ne!(a, b, "two draws differ");
        assert_eq!(pool.next, 64);
        assert!(pool.bytes[..64].iter().all(|&x| x == 0), "what was handed out is not kept");
        assert!(pool.bytes[64..].iter().any(|&x| x != 0), "the rest is fresh");
    }

    #[test]
    fn a_draw_that_does_not_fit_what_is_left_refills_the_pool() {
        let mut pool = Pool { bytes: [0; POOL], next: POOL - 10 };
        let mut out = [0u8; 32];
        pool.fill(&mut out).expect("kernel randomness");
        assert_ne!(out, [0; 32], "not the 10 wiped bytes plus zeroes");
        assert_eq!(pool.next, 32);
    }

    #[test]
    fn a_large_draw_goes_straight_to_the_kernel() {
        let mut pool = Pool { bytes: [0; POOL], next: POOL };
        let mut out = vec![0u8; POOL];
        pool.fill(&mut out).expect("kernel randomness");
        assert!(out.iter().any(|&x| x != 0));
        assert_eq!(pool.next, POOL, "the pool was not touched");
    }

    #[test]
    fn herald_s_provider_draws_from_the_pool() {
        let provider = super::super::certs::provider();
        let mut out = [0u8; 16];
        provider.secure_random.fill(&mut out).expect("fill");
        assert_ne!(out, [0; 16]);
        assert_eq!(format!("{:?}", provider.secure_random), "PooledRandom");
    }
}
