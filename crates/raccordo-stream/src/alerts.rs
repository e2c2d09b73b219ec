//! Alert rules as pure state machines: they see observations with their times and say when
//! to alert; delivery (Slack, webhooks, e-mail) is someone else's job.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// "More than `threshold` duplicates from one source within `window_ms`" (the seed's rule:
/// more than 3 in 10 minutes), at most once per `cooldown_ms` per source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateBurstRule {
    pub threshold: u32,
    pub window_ms: i64,
    pub cooldown_ms: i64,
}

impl Default for DuplicateBurstRule {
    fn default() -> Self {
        Self {
            threshold: 3,
            window_ms: 600_000,
            cooldown_ms: 1_800_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateBurst {
    pub source: String,
    /// Duplicates within the rule's window when it fired.
    pub count: u32,
    pub at_ms: i64,
}

/// Tracks duplicate times per source.
#[derive(Debug, Clone, Default)]
pub struct DuplicateBurstDetector {
    rule: DuplicateBurstRule,
    seen: HashMap<String, VecDeque<i64>>,
    last_alert: HashMap<String, i64>,
}

impl DuplicateBurstDetector {
    pub fn new(rule: DuplicateBurstRule) -> Self {
        Self {
            rule,
            ..Self::default()
        }
    }

    /// Records a duplicate from `source` at `at_ms` (arrival time, so that a burst is
    /// noticed when it happens); returns the alert to send, if any.
    pub fn observe(&mut self, source: &str, at_ms: i64) -> Option<DuplicateBurst> {
        let times = self.seen.entry(source.to_string()).or_default();
        times.push_back(at_ms);
        while times
            .front()
            .is_some_and(|t| *t <= at_ms - self.rule.window_ms)
        {
            times.pop_front();
        }
        let count = times.len() as u32;
        if count <= self.rule.threshold {
            return None;
        }
        let cooling = self
            .last_alert
            .get(source)
            .is_some_and(|last| at_ms - last < self.rule.cooldown_ms);
        if cooling {
            return None;
        }
        self.last_alert.insert(source.to_string(), at_ms);
        Some(DuplicateBurst {
            source: source.to_string(),
            count,
            at_ms,
        })
    }
}

/// A threshold on a ratio (failure rate, conversion drop) with hysteresis by cooldown.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdRule {
    /// Alert when the value goes above (or, with `below`, under) this.
    pub threshold: f64,
    pub below: bool,
    /// Ignore windows with fewer observations than this (a 1-of-2 failure rate is noise).
    pub min_samples: u64,
    pub cooldown_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ThresholdDetector {
    last_alert: HashMap<String, i64>,
}

impl ThresholdDetector {
    /// Whether `value` (over `samples` observations) for `subject` should alert now.
    pub fn check(
        &mut self,
        rule: &ThresholdRule,
        subject: &str,
        value: f64,
        samples: u64,
        at_ms: i64,
    ) -> bool {
        let breached = if rule.below {
            value < rule.threshold
        } else {
            value > rule.threshold
        };
        if !breached || samples < rule.min_samples {
            return false;
        }
        if self
            .last_alert
            .get(subject)
            .is_some_and(|last| at_ms - last < rule.cooldown_ms)
        {
            return false;
        }
        self.last_alert.insert(subject.to_string(), at_ms);
        true
    }
}

/// Relative drop of the current conversion rate against the mean of previous windows
/// (0.4 = 40 % lower); `None` without a baseline.
pub fn conversion_drop(current: f64, previous: &[f64]) -> Option<f64> {
    let baseline = previous.iter().sum::<f64>() / previous.len().max(1) as f64;
    (!previous.is_empty() && baseline > 0.0).then(|| (baseline - current) / baseline)
}

/// "The conversion rate of a window fell by more than `threshold` (0.5 = half) against the
/// mean of the `baseline_windows` windows before it."
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConversionDropRule {
    pub threshold: f64,
    pub baseline_windows: usize,
    /// Windows with fewer events neither alert nor count in a baseline.
    pub min_events: u64,
    pub cooldown_ms: i64,
}

/// What a final window says about one subject (overall, or one channel).
#[derive(Debug, Clone, Copy)]
pub struct WindowOutcome<'a> {
    pub subject: &'a str,
    pub window_start: i64,
    pub events: u64,
    pub failures: u64,
    pub conversion_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WindowAlert {
    FailureRate {
        subject: String,
        window_start: i64,
        rate: f64,
        events: u64,
    },
    ConversionDrop {
        subject: String,
        window_start: i64,
        current: f64,
        baseline: f64,
        drop: f64,
    },
}

/// Failure-rate and conversion-drop rules over final windows. Windows may arrive again
/// (late updates) and out of order; the baseline is always the windows before this one.
#[derive(Debug, Clone, Default)]
pub struct WindowAlertEvaluator {
    failure_rate: Option<ThresholdRule>,
    drop: Option<ConversionDropRule>,
    failures: ThresholdDetector,
    drops: ThresholdDetector,
    /// Conversion rate per subject and window start, for baselines.
    rates: HashMap<String, std::collections::BTreeMap<i64, f64>>,
}

impl WindowAlertEvaluator {
    pub fn new(failure_rate: Option<ThresholdRule>, drop: Option<ConversionDropRule>) -> Self {
        Self {
            failure_rate,
            drop,
            ..Self::default()
        }
    }

    /// Takes in a final (or late-updated) window. With `may_alert` false the window only
    /// feeds baselines (windows replayed from the log at start must not page anyone).
    pub fn observe(
        &mut self,
        o: &WindowOutcome<'_>,
        now_ms: i64,
        may_alert: bool,
    ) -> Vec<WindowAlert> {
        let mut alerts = Vec::new();
        if let Some(rule) = &self.failure_rate
            && o.events > 0
        {
            let rate = o.failures as f64 / o.events as f64;
            if may_alert && self.failures.check(rule, o.subject, rate, o.events, now_ms) {
                alerts.push(WindowAlert::FailureRate {
                    subject: o.subject.to_string(),
                    window_start: o.window_start,
                    rate,
                    events: o.events,
                });
            }
        }
        if let Some(rule) = self.drop
            && let Some(current) = o.conversion_rate
            && o.events >= rule.min_events
        {
            let rates = self.rates.entry(o.subject.to_string()).or_default();
            let previous: Vec<f64> = rates
                .range(..o.window_start)
                .rev()
                .take(rule.baseline_windows)
                .map(|(_, r)| *r)
                .collect();
            rates.insert(o.window_start, current);
            // Keep what later baselines can still need.
            while rates.len() > rule.baseline_windows * 4 + 8 {
                rates.pop_first();
            }
            let threshold = ThresholdRule {
                threshold: rule.threshold,
                below: false,
                min_samples: rule.min_events,
                cooldown_ms: rule.cooldown_ms,
            };
            if previous.len() == rule.baseline_windows
                && let Some(drop) = conversion_drop(current, &previous)
                && may_alert
                && self
                    .drops
                    .check(&threshold, o.subject, drop, o.events, now_ms)
            {
                alerts.push(WindowAlert::ConversionDrop {
                    subject: o.subject.to_string(),
                    window_start: o.window_start,
                    current,
                    baseline: previous.iter().sum::<f64>() / previous.len() as f64,
                    drop,
                });
            }
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn more_than_three_duplicates_in_ten_minutes_alerts_once_per_cooldown() {
        let mut d = DuplicateBurstDetector::new(DuplicateBurstRule::default());
        assert_eq!(d.observe("web", 0), None);
        assert_eq!(d.observe("web", MIN), None);
        assert_eq!(d.observe("web", 2 * MIN), None);
        assert_eq!(
            d.observe("other", 2 * MIN),
            None,
            "sources are counted apart"
        );
        let alert = d
            .observe("web", 3 * MIN)
            .expect("the 4th duplicate within 10 minutes");
        assert_eq!((alert.count, alert.at_ms), (4, 3 * MIN));
        assert_eq!(d.observe("web", 4 * MIN), None, "cooling down");
        assert!(
            d.observe("web", 34 * MIN).is_none(),
            "after the cooldown, but only 1 in the last 10 minutes"
        );
    }

    #[test]
    fn duplicates_spread_over_more_than_the_window_do_not_alert() {
        let mut d = DuplicateBurstDetector::new(DuplicateBurstRule::default());
        for i in 0..20 {
            assert_eq!(
                d.observe("web", i * 4 * MIN),
                None,
                "one every 4 minutes is at most 3 per 10"
            );
        }
    }

    #[test]
    fn thresholds_need_enough_samples_and_respect_the_cooldown() {
        let rule = ThresholdRule {
            threshold: 0.1,
            below: false,
            min_samples: 20,
            cooldown_ms: 10 * MIN,
        };
        let mut t = ThresholdDetector::default();
        assert!(!t.check(&rule, "failures", 0.5, 2, 0), "too few samples");
        assert!(t.check(&rule, "failures", 0.5, 100, 0));
        assert!(!t.check(&rule, "failures", 0.5, 100, MIN));
        assert!(t.check(&rule, "failures", 0.5, 100, 10 * MIN));
        let drop = conversion_drop(0.03, &[0.05, 0.05]).unwrap();
        assert!((drop - 0.4).abs() < 1e-12, "{drop}");
        assert_eq!(conversion_drop(0.03, &[]), None);
    }

    fn outcome(start: i64, events: u64, failures: u64, rate: f64) -> WindowOutcome<'static> {
        WindowOutcome {
            subject: "all",
            window_start: start,
            events,
            failures,
            conversion_rate: Some(rate),
        }
    }

    #[test]
    fn a_failure_rate_over_the_threshold_alerts_once_per_cooldown() {
        let rule = ThresholdRule {
            threshold: 0.2,
            below: false,
            min_samples: 10,
            cooldown_ms: 30 * MIN,
        };
        let mut e = WindowAlertEvaluator::new(Some(rule), None);
        assert!(
            e.observe(&outcome(0, 100, 20, 0.1), 0, true).is_empty(),
            "20% is not above 20%"
        );
        assert!(
            e.observe(&outcome(0, 5, 5, 0.1), 0, true).is_empty(),
            "too few events"
        );
        assert!(
            e.observe(&outcome(0, 100, 30, 0.1), 0, false).is_empty(),
            "replayed windows do not alert"
        );
        let alerts = e.observe(&outcome(5 * MIN, 100, 30, 0.1), MIN, true);
        assert!(
            matches!(alerts.as_slice(), [WindowAlert::FailureRate { rate, .. }] if (*rate - 0.3).abs() < 1e-12)
        );
        assert!(
            e.observe(&outcome(10 * MIN, 100, 30, 0.1), 2 * MIN, true)
                .is_empty(),
            "cooldown"
        );
    }

    #[test]
    fn a_conversion_drop_needs_a_full_baseline_of_earlier_windows() {
        let rule = ConversionDropRule {
            threshold: 0.5,
            baseline_windows: 3,
            min_events: 10,
            cooldown_ms: 30 * MIN,
        };
        let mut e = WindowAlertEvaluator::new(None, Some(rule));
        // Windows arrive out of order; the baseline is the three before the window.
        for start in [10, 5, 0] {
            assert!(
                e.observe(&outcome(start * MIN, 50, 0, 0.2), 0, true)
                    .is_empty()
            );
        }
        assert!(
            e.observe(&outcome(15 * MIN, 50, 0, 0.15), 0, true)
                .is_empty(),
            "25% lower is within threshold"
        );
        assert!(
            e.observe(&outcome(20 * MIN, 5, 0, 0.0), 0, true).is_empty(),
            "too few events to judge"
        );
        let alerts = e.observe(&outcome(25 * MIN, 50, 0, 0.05), 0, true);
        match alerts.as_slice() {
            [WindowAlert::ConversionDrop { baseline, drop, .. }] => {
                assert!(
                    (baseline - (0.2 + 0.2 + 0.15) / 3.0).abs() < 1e-12,
                    "{baseline}"
                );
                assert!(*drop > 0.5, "{drop}");
            }
            other => panic!("expected one drop alert, got {other:?}"),
        }
    }
}
