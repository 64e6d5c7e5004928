//! A small seeded generator (SplitMix64) whose whole state is one `u64`, so that it can be
//! checkpointed and derived per item (`for_key`) independently of processing order.
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64 {
    pub state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A generator for one item (e.g. a query), from the run seed and the item's key.
    pub fn for_key(seed: u64, key: &str) -> Self {
        let mut h = Sha256::new();
        h.update(seed.to_le_bytes());
        h.update(key.as_bytes());
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        SplitMix64::new(u64::from_le_bytes(b))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// `k` distinct items of `items` chosen uniformly (partial Fisher-Yates), in the order
    /// drawn.
    pub fn sample<T: Clone>(&mut self, items: &[T], k: usize) -> Vec<T> {
        let mut pool: Vec<T> = items.to_vec();
        let k = k.min(pool.len());
        for i in 0..k {
            let j = i + self.below((pool.len() - i) as u64) as usize;
            pool.swap(i, j);
        }
        pool.truncate(k);
        pool
    }

    /// Shuffle in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_key_and_distinct_across_keys() {
        let a: Vec<u64> = (0..3)
            .map(|_| SplitMix64::for_key(1, "q1").next_u64())
            .collect();
        assert!(a.iter().all(|&x| x == a[0]));
        assert_ne!(SplitMix64::for_key(1, "q1"), SplitMix64::for_key(1, "q2"));
        assert_ne!(SplitMix64::for_key(1, "q1"), SplitMix64::for_key(2, "q1"));
    }

    #[test]
    fn sample_draws_distinct_items() {
        let mut r = SplitMix64::new(9);
        let items: Vec<u32> = (0..20).collect();
        let s = r.sample(&items, 7);
        let mut u = s.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), 7);
        assert_eq!(r.sample(&items[..3], 10).len(), 3);
        // Roughly uniform: every item gets drawn over many samples.
        let mut seen = [0u32; 20];
        for _ in 0..2000 {
            for x in r.sample(&items, 2) {
                seen[x as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c > 100), "{seen:?}");
    }
}
