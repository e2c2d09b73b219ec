//! Distinct counts that are exact up to a bound and then switch to HyperLogLog.
//!
//! Exact: a set of 64-bit hashes (collisions are negligible below billions of values).
//! Past `exact_limit` values the set is folded into a HyperLogLog sketch with 2^12
//! registers (4 KiB): relative standard error 1.04/√4096 ≈ 1.6 %, with the small-range
//! (linear counting) correction of the original paper. Written here rather than taken from a
//! crate because the switch point must be ours to configure and the algorithm is a few lines.

use std::collections::HashSet;

use rustc_hash::FxBuildHasher;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

const PRECISION: u32 = 12;
const REGISTERS: usize = 1 << PRECISION;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DistinctCount {
    Exact {
        /// The values are already hashes: a cheap hasher suffices.
        hashes: HashSet<u64, FxBuildHasher>,
        limit: usize,
    },
    Sketch {
        registers: Vec<u8>,
    },
    /// A final count whose members are no longer kept (a window that can no longer change):
    /// a few bytes instead of a set or a 4 KiB sketch. Nothing can be added to it.
    Counted {
        count: u64,
        exact: bool,
    },
}

impl Default for DistinctCount {
    fn default() -> Self {
        Self::with_limit(10_000)
    }
}

/// A stable 64-bit hash of a value (SipHash with fixed keys).
pub fn hash_of(value: &str) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x7261_6363_6f72_646f, 0x6469_7374_696e_6374);
    value.hash(&mut h);
    h.finish()
}

impl DistinctCount {
    pub fn with_limit(limit: usize) -> Self {
        Self::Exact {
            hashes: HashSet::default(),
            limit,
        }
    }

    pub fn insert(&mut self, value: &str) {
        self.insert_hash(hash_of(value));
    }

    pub fn insert_hash(&mut self, hash: u64) {
        match self {
            Self::Exact { hashes, limit } => {
                hashes.insert(hash);
                if hashes.len() > *limit {
                    let mut registers = vec![0u8; REGISTERS];
                    for h in hashes.iter() {
                        observe(&mut registers, *h);
                    }
                    *self = Self::Sketch { registers };
                }
            }
            Self::Sketch { registers } => observe(registers, hash),
            Self::Counted { .. } => debug_assert!(false, "a frozen count takes no new values"),
        }
    }

    pub fn is_exact(&self) -> bool {
        match self {
            Self::Exact { .. } => true,
            Self::Sketch { .. } => false,
            Self::Counted { exact, .. } => *exact,
        }
    }

    pub fn count(&self) -> u64 {
        match self {
            Self::Exact { hashes, .. } => hashes.len() as u64,
            Self::Sketch { registers } => estimate(registers),
            Self::Counted { count, .. } => *count,
        }
    }

    /// The same count without its members.
    pub fn frozen(&self) -> Self {
        Self::Counted {
            count: self.count(),
            exact: self.is_exact(),
        }
    }
}

fn observe(registers: &mut [u8], hash: u64) {
    let index = (hash >> (64 - PRECISION)) as usize;
    let rest = hash << PRECISION | (1 << (PRECISION - 1)); // guard bit bounds the rank
    let rank = rest.leading_zeros() as u8 + 1;
    registers[index] = registers[index].max(rank);
}

fn estimate(registers: &[u8]) -> u64 {
    let m = REGISTERS as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    // 2^-r built from its exponent bits (r ≤ 53, so always a normal number): the same value
    // as `2f64.powi(-r)`, without a call per register. The estimate runs for every sketch of
    // every open window each time provisional results are published.
    let sum: f64 = registers
        .iter()
        .map(|r| f64::from_bits((1023 - u64::from(*r)) << 52))
        .sum();
    let raw = alpha * m * m / sum;
    let zeros = registers.iter().filter(|r| **r == 0).count();
    if raw <= 2.5 * m && zeros > 0 {
        (m * (m / zeros as f64).ln()).round() as u64 // linear counting for small ranges
    } else {
        raw.round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_weights_are_the_powers_of_two_they_stand_for() {
        for r in 0..=(64 - PRECISION as u8 + 1) {
            assert_eq!(
                f64::from_bits((1023 - u64::from(r)) << 52),
                2f64.powi(-i32::from(r))
            );
        }
    }

    #[test]
    fn exact_below_the_limit_then_within_the_documented_error() {
        let mut d = DistinctCount::with_limit(1000);
        for i in 0..1000 {
            d.insert(&format!("CLIENTE-IT-{i:06}"));
            d.insert(&format!("CLIENTE-IT-{i:06}"));
        }
        assert!(d.is_exact());
        assert_eq!(d.count(), 1000);
        for n in [5_000u64, 50_000, 500_000] {
            let mut d = DistinctCount::with_limit(1000);
            for i in 0..n {
                d.insert(&format!("CLIENTE-IT-{i:09}"));
            }
            assert!(!d.is_exact());
            let error = (d.count() as f64 - n as f64).abs() / n as f64;
            assert!(
                error < 4.0 * 0.0163,
                "n={n} estimate={} error={error}",
                d.count()
            );
        }
    }

    #[test]
    fn a_frozen_count_reads_the_same() {
        let mut exact = DistinctCount::with_limit(10);
        let mut sketch = DistinctCount::with_limit(10);
        for i in 0..5 {
            exact.insert(&i.to_string());
        }
        for i in 0..500 {
            sketch.insert(&i.to_string());
        }
        for d in [exact, sketch] {
            let frozen = d.frozen();
            assert_eq!(
                (frozen.count(), frozen.is_exact()),
                (d.count(), d.is_exact())
            );
        }
    }

    #[test]
    fn the_switch_keeps_what_was_counted() {
        let mut d = DistinctCount::with_limit(10);
        for i in 0..11 {
            d.insert(&i.to_string());
        }
        assert!(!d.is_exact());
        assert_eq!(d.count(), 11, "linear counting is exact-ish for tiny sets");
    }
}
