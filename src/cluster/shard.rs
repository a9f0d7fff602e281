//! Which Redis instance carries a topic: a stable hash of its name over the configured instances.
//!
//! FNV-1a of the name, then jump consistent hashing (Lamping and Veach, 2014): every node computes the same
//! instance for a topic without talking to the others, and going from n to n+1 instances moves only about
//! 1/(n+1) of the topics.

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The instance (0..n) that carries `topic`; 0 when `n` is 0 or 1.
pub fn shard_of(topic: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let mut key = fnv1a(topic.as_bytes());
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_topic_always_lands_on_the_same_instance() {
        for n in 1..6 {
            for t in ["a", "news", "prices:eu", "x.y-z"] {
                let s = shard_of(t, n);
                assert!(s < n);
                assert_eq!(s, shard_of(t, n));
            }
        }
        assert_eq!(shard_of("anything", 0), 0);
    }

    #[test]
    fn topics_spread_over_the_instances_and_adding_one_moves_few() {
        let names: Vec<String> = (0..10_000).map(|i| format!("topic-{i}")).collect();
        let mut counts = [0usize; 3];
        for t in &names {
            counts[shard_of(t, 3)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 2_800 && c < 3_900), "roughly even: {counts:?}");
        let moved = names.iter().filter(|t| shard_of(t, 3) != shard_of(t, 4)).count();
        assert!(moved < 3_000, "about a quarter move to the new instance, not all: {moved}");
        assert!(names.iter().all(|t| shard_of(t, 4) == 3 || shard_of(t, 4) == shard_of(t, 3)), "only to the new one");
    }
}
