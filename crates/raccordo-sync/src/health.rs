//! How the sync is doing, for `GET /api/v1/sync/health` and the dashboard: what the worker
//! decided, how long changes took to reach the other side, and what the CRM clients saw.
//! The stores add the rest (pairs in sync, the queue, the dead letters).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use raccordo_core::QueueDepth;
use raccordo_crm::{CallCounts, CallStats};
use serde::Serialize;

/// Shared by the worker (which records) and the health route (which reads).
pub struct SyncStats {
    decisions: Mutex<BTreeMap<(String, String), u64>>,
    /// Milliseconds from a change's arrival to the write acknowledged on the other side.
    delay_ms: Mutex<hdrhistogram::Histogram<u64>>,
    hubspot: Arc<CallStats>,
    zoho: Arc<CallStats>,
    mapping_problems: Mutex<Vec<String>>,
}

impl SyncStats {
    pub fn new(hubspot: Arc<CallStats>, zoho: Arc<CallStats>) -> Self {
        Self {
            decisions: Mutex::new(BTreeMap::new()),
            delay_ms: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 24 * 3_600_000, 2)
                    .expect("static histogram bounds are valid"),
            ),
            hubspot,
            zoho,
            mapping_problems: Mutex::new(Vec::new()),
        }
    }

    /// What checking the mappings against the CRMs' field metadata found.
    pub fn set_mapping_problems(&self, problems: Vec<String>) {
        *self
            .mapping_problems
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = problems;
    }

    pub(crate) fn decided(&self, kind: &str, decision: &str) {
        *self
            .decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((kind.to_string(), decision.to_string()))
            .or_default() += 1;
    }

    pub(crate) fn synced_after(&self, delay_ms: i64) {
        let _ = self
            .delay_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(delay_ms.clamp(1, 24 * 3_600_000) as u64);
        metrics::histogram!("raccordo_sync_delay_seconds").record(delay_ms as f64 / 1000.0);
    }

    /// The in-memory part of the health view (since the hub started).
    pub fn snapshot(&self) -> SyncActivity {
        let delay = self.delay_ms.lock().unwrap_or_else(|p| p.into_inner());
        let at = |q: f64| (!delay.is_empty()).then(|| delay.value_at_quantile(q));
        SyncActivity {
            decisions: self
                .decisions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|((kind, decision), n)| Decision {
                    kind: kind.clone(),
                    decision: decision.clone(),
                    count: *n,
                })
                .collect(),
            delay_ms: Delay {
                count: delay.len(),
                p50: at(0.5),
                p99: at(0.99),
                max: (!delay.is_empty()).then(|| delay.max()),
            },
            hubspot_calls: self.hubspot.counts(),
            zoho_calls: self.zoho.counts(),
            mapping_problems: self
                .mapping_problems
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// Decisions, delays and calls since the hub started.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncActivity {
    pub decisions: Vec<Decision>,
    /// From a change's arrival (webhook, notification or poll) to the write acknowledged on
    /// the other side.
    pub delay_ms: Delay,
    pub hubspot_calls: CallCounts,
    pub zoho_calls: CallCounts,
    /// Mapped fields or picklist options one of the CRMs does not have, and mapping types
    /// that do not suit the CRM's (checked at start against the CRMs' field metadata).
    pub mapping_problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Decision {
    /// `contact` or `company`.
    pub kind: String,
    /// `write`, `in_sync`, `not_hot`, `deletion_ignored`, `failed`.
    pub decision: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delay {
    pub count: u64,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
}

/// One reason operations failed for good, and how many did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FailureReason {
    pub reason: String,
    pub count: u64,
}

/// `GET /api/v1/sync/health`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncHealth {
    /// Pairs linked between HubSpot and Zoho, by kind (`contact`, `company`).
    pub pairs: BTreeMap<String, u64>,
    /// The `sync` work queue: waiting, in flight, retrying, dead letters.
    pub queue: QueueDepth,
    /// Dead letters grouped by reason (the record's name left out), most frequent first.
    pub failures: Vec<FailureReason>,
    pub activity: SyncActivity,
}

/// Groups dead-letter errors by reason, dropping the record name each ends with.
pub fn failure_reasons<'a>(errors: impl Iterator<Item = &'a str>) -> Vec<FailureReason> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for e in errors {
        let reason = e.split(" (record: ").next().unwrap_or(e).to_string();
        *counts.entry(reason).or_default() += 1;
    }
    let mut out: Vec<FailureReason> = counts
        .into_iter()
        .map(|(reason, count)| FailureReason { reason, count })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_grouped_without_the_record_names() {
        let reasons = failure_reasons(
            [
                "field `email` (hubspot): missing (record: Anna Rossi)",
                "field `email` (hubspot): missing (record: Luca Bianchi)",
                "hubspot: HTTP 400: bad",
            ]
            .into_iter(),
        );
        assert_eq!(reasons.len(), 2);
        assert_eq!(reasons[0].reason, "field `email` (hubspot): missing");
        assert_eq!(reasons[0].count, 2);
    }

    #[test]
    fn delays_and_decisions_add_up() {
        let s = SyncStats::new(Arc::new(CallStats::new()), Arc::new(CallStats::new()));
        for ms in [10, 20, 30, 4000] {
            s.synced_after(ms);
        }
        s.decided("contact", "write");
        s.decided("contact", "write");
        let snap = s.snapshot();
        assert_eq!(snap.delay_ms.count, 4);
        assert!(snap.delay_ms.p50.unwrap() >= 20 && snap.delay_ms.p50.unwrap() <= 30);
        assert!(snap.delay_ms.max.unwrap() >= 4000);
        assert_eq!(snap.decisions[0].count, 2);
        assert_eq!(snap.hubspot_calls.remaining, None);
    }
}
