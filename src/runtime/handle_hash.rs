//! A cheap hasher for the module's handle tables. The keys are handles the
//! module hands out itself (sequential integers) and random DEK ids, never
//! values a caller chooses to insert, so SipHash's flooding resistance buys
//! nothing here and costs a noticeable share of a small-message call.

use std::hash::{BuildHasher, Hasher};

#[derive(Clone, Copy, Default)]
pub struct HandleHash;

impl BuildHasher for HandleHash {
    type Hasher = HandleHasher;
    fn build_hasher(&self) -> HandleHasher {
        HandleHasher(0)
    }
}

pub struct HandleHasher(u64);

impl Hasher for HandleHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads sequential handles over the table.
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type HandleMap<K, V> = std::collections::HashMap<K, V, HandleHash>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_handles_spread() {
        let mut buckets = [0u32; 64];
        for h in 1u64..=6400 {
            let mut x = HandleHash.build_hasher();
            x.write_u64(h);
            buckets[(x.finish() >> 58) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (50..=150).contains(&n)),
            "{buckets:?}"
        );
    }
}
