//! The conversion metrics of one window and one dimension value (DESIGN §3).

use serde::{Deserialize, Serialize};

use crate::distinct::DistinctCount;
use crate::window::Aggregate;

/// What the windows need to know of one event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConversionRecord {
    /// `distinct::hash_of(customer)`, computed once per event rather than once per window
    /// and dimension it is counted in: the customer is counted by this hash only.
    pub customer_hash: u64,
    /// The event counts as a conversion (its `evento` is in the goal set and `stato` is
    /// `completato`); decided by the caller, which owns the goal set.
    pub is_conversion: bool,
    /// `stato = fallito`.
    pub is_failure: bool,
    /// `valore` in cents, so sums are exact.
    pub value_cents: i64,
    /// The ingest answered `duplicate`: counted as a duplicate and nothing else.
    pub is_duplicate: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConversionStats {
    pub events: u64,
    pub conversions: u64,
    pub failures: u64,
    pub duplicates: u64,
    pub total_value_cents: i64,
    pub conversion_value_cents: i64,
    pub active_customers: DistinctCount,
    pub converting_customers: DistinctCount,
}

impl Aggregate for ConversionStats {
    type Input<'a> = ConversionRecord;
    fn add(&mut self, r: &ConversionRecord) {
        self.record(r);
    }

    /// Emissions carry the counts, not the distinct sets (which can hold 10 000 hashes).
    fn emitted(&self) -> Self {
        self.frozen()
    }
}

impl ConversionStats {
    pub fn record(&mut self, r: &ConversionRecord) {
        if r.is_duplicate {
            self.duplicates += 1;
            return;
        }
        self.events += 1;
        self.total_value_cents += r.value_cents;
        self.active_customers.insert_hash(r.customer_hash);
        if r.is_failure {
            self.failures += 1;
        }
        if r.is_conversion {
            self.conversions += 1;
            self.conversion_value_cents += r.value_cents;
            self.converting_customers.insert_hash(r.customer_hash);
        }
    }

    /// The same figures with the distinct counts frozen to numbers: what a fired window
    /// needs to be shown and stored once the operator holds its live state.
    pub fn frozen(&self) -> Self {
        Self {
            active_customers: self.active_customers.frozen(),
            converting_customers: self.converting_customers.frozen(),
            ..*self
        }
    }

    /// Adds records to a window that has already fired and whose distinct sets were frozen
    /// (an admin re-aggregating late events): counts and values stay exact; the customers
    /// among the records are added to the frozen counts as an upper bound (whether they were
    /// already counted is no longer known), so the counts are marked inexact.
    pub fn absorb_late(&mut self, records: &[ConversionRecord]) {
        let mut active = DistinctCount::default();
        let mut converting = DistinctCount::default();
        for r in records {
            if r.is_duplicate {
                self.duplicates += 1;
                continue;
            }
            self.events += 1;
            self.total_value_cents += r.value_cents;
            active.insert_hash(r.customer_hash);
            self.failures += u64::from(r.is_failure);
            if r.is_conversion {
                self.conversions += 1;
                self.conversion_value_cents += r.value_cents;
                converting.insert_hash(r.customer_hash);
            }
        }
        let grow = |count: &mut DistinctCount, more: &DistinctCount| {
            if more.count() > 0 {
                *count = DistinctCount::Counted {
                    count: count.count() + more.count(),
                    exact: false,
                };
            }
        };
        grow(&mut self.active_customers, &active);
        grow(&mut self.converting_customers, &converting);
    }

    /// Adds the statistics of the same window and key over *other customers* (another
    /// partition of a stream partitioned by customer): counts and values add, and so do the
    /// distinct counts, since no customer is in both. Distinct sets are frozen to counts.
    pub fn merge_disjoint(&mut self, other: &ConversionStats) {
        self.events += other.events;
        self.conversions += other.conversions;
        self.failures += other.failures;
        self.duplicates += other.duplicates;
        self.total_value_cents += other.total_value_cents;
        self.conversion_value_cents += other.conversion_value_cents;
        let add = |mine: &DistinctCount, theirs: &DistinctCount| DistinctCount::Counted {
            count: mine.count() + theirs.count(),
            exact: mine.is_exact() && theirs.is_exact(),
        };
        self.active_customers = add(&self.active_customers, &other.active_customers);
        self.converting_customers = add(&self.converting_customers, &other.converting_customers);
    }

    /// Distinct converting customers / distinct active customers.
    pub fn conversion_rate(&self) -> Option<f64> {
        let active = self.active_customers.count();
        (active > 0).then(|| self.converting_customers.count() as f64 / active as f64)
    }

    /// The seed's "valore medio": value of conversions / conversions.
    pub fn average_conversion_value_cents(&self) -> Option<f64> {
        (self.conversions > 0).then(|| self.conversion_value_cents as f64 / self.conversions as f64)
    }

    /// Cost per acquisition: spend attributed to the window / conversions.
    pub fn cpa_cents(&self, spend_cents: f64) -> Option<f64> {
        (self.conversions > 0).then(|| spend_cents / self.conversions as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_disjoint_customers_merge_into_those_of_all() {
        let records = [
            rec("a", true, 100),
            rec("b", false, 50),
            rec("a", false, 30),
            rec("c", true, 70),
            rec("d", true, 10),
        ];
        let mut all = ConversionStats::default();
        let (mut left, mut right) = (ConversionStats::default(), ConversionStats::default());
        for r in &records {
            all.record(r);
            // By customer: a and b on the left, c and d on the right.
            if r.customer_hash == crate::distinct::hash_of("a")
                || r.customer_hash == crate::distinct::hash_of("b")
            {
                left.record(r);
            } else {
                right.record(r);
            }
        }
        left.merge_disjoint(&right);
        assert_eq!(left.frozen(), all.frozen());
        assert_eq!(left.conversion_rate(), Some(0.75));
    }

    fn rec(customer: &'static str, conversion: bool, value: i64) -> ConversionRecord {
        ConversionRecord {
            customer_hash: crate::distinct::hash_of(customer),
            is_conversion: conversion,
            is_failure: false,
            value_cents: value,
            is_duplicate: false,
        }
    }

    #[test]
    fn the_operator_aggregates_per_window_and_dimension() {
        use crate::window::{Firing, WindowOperator, WindowSpec};
        let mut op =
            WindowOperator::<(&str, &str), ConversionStats>::new(WindowSpec::tumbling(300_000));
        let mut out = Vec::new();
        let events = [
            (1_000, "email", "a", true, 4_999),
            (2_000, "sms", "b", false, 0),
            (3_000, "email", "c", true, 10_001),
        ];
        for (t, canale, customer, conversion, value) in events {
            for key in [("canale", canale), ("all", "")] {
                op.process(t, &key, &rec(customer, conversion, value), &mut |e| {
                    out.push(e)
                });
            }
        }
        assert_eq!(
            op.open_windows().count(),
            3,
            "email, sms and overall are open"
        );
        op.process(400_000, &("all", ""), &rec("z", false, 0), &mut |e| {
            out.push(e)
        });
        let email = out
            .iter()
            .find(|e| e.key == ("canale", "email") && e.firing == Firing::Final)
            .unwrap();
        assert_eq!(
            (email.value.conversions, email.value.conversion_value_cents),
            (2, 15_000)
        );
        let all = out.iter().find(|e| e.key == ("all", "")).unwrap();
        assert_eq!(
            (all.value.events, all.value.active_customers.count()),
            (3, 3)
        );
        assert_eq!(all.value.conversion_rate(), Some(2.0 / 3.0));
    }

    #[test]
    fn late_records_absorbed_after_firing_count_exactly_and_customers_as_a_bound() {
        let mut s = ConversionStats::default();
        s.record(&rec("a", true, 1_000));
        s.record(&rec("b", false, 0));
        let mut s = s.frozen();
        s.absorb_late(&[rec("a", true, 500), rec("c", false, 0), rec("c", true, 200)]);
        assert_eq!((s.events, s.conversions), (5, 3));
        assert_eq!(
            (s.total_value_cents, s.conversion_value_cents),
            (1_700, 1_700)
        );
        assert_eq!(
            s.active_customers.count(),
            4,
            "2 + the 2 distinct late ones"
        );
        assert!(!s.active_customers.is_exact());
        let before = s.clone();
        s.absorb_late(&[]);
        assert_eq!(s, before, "nothing to absorb changes nothing");
    }

    #[test]
    fn rates_and_averages_follow_the_design_formulas() {
        let mut s = ConversionStats::default();
        s.record(&rec("a", true, 10_000));
        s.record(&rec("a", true, 5_000));
        s.record(&rec("b", false, 0));
        s.record(&rec("c", false, 0));
        s.record(&ConversionRecord {
            is_duplicate: true,
            ..rec("a", true, 10_000)
        });
        assert_eq!((s.events, s.conversions, s.duplicates), (4, 2, 1));
        assert_eq!(
            s.conversion_rate(),
            Some(1.0 / 3.0),
            "1 converting of 3 active customers"
        );
        assert_eq!(s.average_conversion_value_cents(), Some(7_500.0));
        assert_eq!(s.cpa_cents(30_000.0), Some(15_000.0));
        assert_eq!(ConversionStats::default().conversion_rate(), None);
    }
}
