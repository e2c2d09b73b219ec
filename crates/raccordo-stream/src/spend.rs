//! Campaign spend for CPA: daily amounts pro-rated into windows.
//!
//! A campaign's spend for UTC day `d` is taken to accrue evenly over that day, so the spend
//! attributed to a window `[s, e)` is
//!
//! ```text
//! spend(s, e) = Σ_d amount(d) · |[s, e) ∩ [d, d + 24 h)| / 24 h
//! ```
//!
//! A 5-minute window inside one day gets amount/288; a window across midnight takes its share
//! of both days. Amounts are in cents; the result is fractional cents, rounded only for display.

use std::collections::BTreeMap;

pub const DAY_MS: i64 = 86_400_000;

/// Daily spend of one campaign: UTC day number (days since 1970-01-01) → cents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DailySpend(pub BTreeMap<i64, i64>);

impl DailySpend {
    pub fn set(&mut self, day: i64, cents: i64) {
        self.0.insert(day, cents);
    }

    /// Spend attributed to `[start, end)` (epoch ms), in cents.
    pub fn for_window(&self, start: i64, end: i64) -> f64 {
        if end <= start {
            return 0.0;
        }
        let first_day = start.div_euclid(DAY_MS);
        let last_day = (end - 1).div_euclid(DAY_MS);
        self.0
            .range(first_day..=last_day)
            .map(|(day, cents)| {
                let day_start = day * DAY_MS;
                let overlap = end.min(day_start + DAY_MS) - start.max(day_start);
                *cents as f64 * overlap as f64 / DAY_MS as f64
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_window_gets_its_share_of_each_day_it_touches() {
        let mut spend = DailySpend::default();
        spend.set(20_000, 288_000); // 2880.00 on day 20000
        spend.set(20_001, 576_000);
        let midnight = 20_001 * DAY_MS;
        assert_eq!(
            spend.for_window(midnight - 600_000, midnight - 300_000),
            1_000.0,
            "5 min of day one: 1/288"
        );
        assert_eq!(
            spend.for_window(midnight - 150_000, midnight + 150_000),
            500.0 + 1_000.0,
            "half of each side"
        );
        assert_eq!(
            spend.for_window(midnight + DAY_MS, midnight + DAY_MS + 300_000),
            0.0,
            "no figure, no spend"
        );
    }

    proptest! {
        /// Tiling a span with windows attributes exactly the span's spend, whatever the size.
        #[test]
        fn windows_that_tile_a_span_add_up(amounts in prop::collection::vec(0i64..10_000_000, 1..5), size in 1i64..7_200_000) {
            let mut spend = DailySpend::default();
            for (i, a) in amounts.iter().enumerate() {
                spend.set(19_000 + i as i64, *a);
            }
            let (from, to) = (19_000 * DAY_MS, (19_000 + amounts.len() as i64) * DAY_MS);
            let mut total = 0.0;
            let mut s = from;
            while s < to {
                total += spend.for_window(s, (s + size).min(to));
                s += size;
            }
            let expected: i64 = amounts.iter().sum();
            prop_assert!((total - expected as f64).abs() < 1e-3 * amounts.len() as f64 + 1e-6 * expected as f64, "{} vs {}", total, expected);
        }
    }
}
