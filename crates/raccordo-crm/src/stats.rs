//! What a client did: calls by outcome, and the limits the CRM last said remain. Read by the
//! sync health view; the same counts go to Prometheus as `raccordo_crm_calls_total`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

use crate::error::CrmError;

#[derive(Debug, Default)]
pub struct CallStats {
    ok: AtomicU64,
    retryable: AtomicU64,
    throttled: AtomicU64,
    permanent: AtomicU64,
    unauthorized: AtomicU64,
    /// From the CRM's own headers (HubSpot `X-HubSpot-RateLimit-Remaining`), -1 when unknown.
    remaining: AtomicI64,
    daily_remaining: AtomicI64,
}

/// A point-in-time copy, for the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CallCounts {
    pub ok: u64,
    /// Failures that may pass (5xx, timeouts, connection errors), 429s excluded.
    pub retryable: u64,
    /// 429 answers.
    pub throttled: u64,
    pub permanent: u64,
    pub unauthorized: u64,
    /// Calls left in the CRM's current rate-limit window, as it last said.
    pub remaining: Option<i64>,
    /// Calls left today, as the CRM last said (HubSpot private apps).
    pub daily_remaining: Option<i64>,
}

impl CallStats {
    pub fn new() -> Self {
        Self {
            remaining: AtomicI64::new(-1),
            daily_remaining: AtomicI64::new(-1),
            ..Self::default()
        }
    }

    pub(crate) fn record(&self, system: &'static str, outcome: Result<(), &CrmError>) {
        let (counter, label) = match outcome {
            Ok(()) => (&self.ok, "ok"),
            Err(CrmError::Retryable {
                status: Some(429), ..
            }) => (&self.throttled, "throttled"),
            Err(CrmError::Retryable { .. }) => (&self.retryable, "retryable"),
            Err(CrmError::Permanent { .. }) => (&self.permanent, "permanent"),
            Err(CrmError::Unauthorized { .. }) => (&self.unauthorized, "unauthorized"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("raccordo_crm_calls_total", "system" => system, "outcome" => label)
            .increment(1);
    }

    pub(crate) fn remaining(&self, headers: &reqwest::header::HeaderMap) {
        let read = |name: &str| -> Option<i64> { headers.get(name)?.to_str().ok()?.parse().ok() };
        if let Some(n) = read("x-hubspot-ratelimit-remaining") {
            self.remaining.store(n, Ordering::Relaxed);
        }
        if let Some(n) = read("x-hubspot-ratelimit-daily-remaining") {
            self.daily_remaining.store(n, Ordering::Relaxed);
        }
    }

    pub fn counts(&self) -> CallCounts {
        let known = |n: i64| (n >= 0).then_some(n);
        CallCounts {
            ok: self.ok.load(Ordering::Relaxed),
            retryable: self.retryable.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            permanent: self.permanent.load(Ordering::Relaxed),
            unauthorized: self.unauthorized.load(Ordering::Relaxed),
            remaining: known(self.remaining.load(Ordering::Relaxed)),
            daily_remaining: known(self.daily_remaining.load(Ordering::Relaxed)),
        }
    }
}
