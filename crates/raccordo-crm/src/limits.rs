//! Staying under a CRM's rate limits instead of feeding on 429s.
//!
//! Each limit is a token bucket in the shared [`RateLimitStore`] (so every worker, and every
//! node of a cluster, draws from the same budget). A call takes one token from each bucket
//! of its class, waiting when one is empty. The CRMs count calls in *rolling windows*
//! ("100 per 10 seconds"), which a plain bucket of capacity 100 would overrun (a full burst,
//! then the refill, inside one window): [`rolling_window`] sizes the bucket so that no
//! window can ever see more than the limit.

use std::sync::Arc;
use std::time::Duration;

use raccordo_core::{Admission, BucketSpec};
use raccordo_core::{Clock, RateLimitStore};

use crate::error::CrmError;

/// A bucket that never lets more than `limit` calls into any window of `window_ms`: a burst
/// of `burst_share` of the limit, refilled at the rest spread over the window. Sustained
/// throughput is `1 - burst_share` of the limit.
pub fn rolling_window(limit: u32, window_ms: i64, burst_share: f64) -> BucketSpec {
    let limit = f64::from(limit);
    let burst = (limit * burst_share.clamp(0.0, 1.0)).floor().max(1.0);
    BucketSpec {
        capacity: burst,
        refill_per_s: (limit - burst).max(0.0) * 1000.0 / window_ms.max(1) as f64,
    }
}

/// A named bucket.
#[derive(Debug, Clone)]
pub struct Limit {
    pub bucket: String,
    pub spec: BucketSpec,
}

/// The buckets of one client.
pub struct Budget {
    store: Arc<dyn RateLimitStore>,
    clock: Arc<dyn Clock>,
}

/// Longest single wait; a longer one (a daily cap) is returned as a retryable error, so the
/// work item goes back to the queue with that delay instead of holding a worker.
const MAX_WAIT_MS: i64 = 30_000;

impl Budget {
    pub fn new(store: Arc<dyn RateLimitStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Takes one call from every limit, waiting while one is used up.
    pub async fn take(&self, system: &'static str, limits: &[&Limit]) -> Result<(), CrmError> {
        for limit in limits {
            loop {
                let admission = self
                    .store
                    .take(&limit.bucket, limit.spec, 1.0, self.clock.now_ms())
                    .await
                    .map_err(|e| CrmError::Retryable {
                        system,
                        status: None,
                        message: format!("rate-limit store: {e}"),
                        retry_after_ms: Some(1_000),
                    })?;
                match admission {
                    Admission::Allowed { .. } => break,
                    Admission::Limited { retry_after_ms } if retry_after_ms <= MAX_WAIT_MS => {
                        tokio::time::sleep(Duration::from_millis(retry_after_ms as u64)).await;
                    }
                    Admission::Limited { retry_after_ms } => {
                        return Err(CrmError::Retryable {
                            system,
                            status: None,
                            message: format!("{} used up", limit.bucket),
                            retry_after_ms: Some(retry_after_ms),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raccordo_core::BucketState;

    /// Drains the bucket greedily, one call per millisecond at most, and checks every
    /// rolling window.
    fn max_in_any_window(spec: BucketSpec, window_ms: i64, run_ms: i64) -> usize {
        let mut state = None;
        let mut calls = Vec::new();
        for t in 0..run_ms {
            let (next, admission) = BucketState::take(state, spec, 1.0, t);
            state = Some(next);
            if matches!(admission, Admission::Allowed { .. }) {
                calls.push(t);
            }
        }
        let mut max = 0;
        let mut start = 0;
        for (end, &t) in calls.iter().enumerate() {
            while calls[start] <= t - window_ms {
                start += 1;
            }
            max = max.max(end - start + 1);
        }
        max
    }

    #[test]
    fn no_rolling_window_sees_more_than_the_limit() {
        for (limit, window) in [(100, 10_000), (190, 10_000), (4, 1_000)] {
            let spec = rolling_window(limit, window, 0.05);
            let max = max_in_any_window(spec, window, window * 4);
            assert!(max <= limit as usize, "{limit}/{window}: {max}");
            // And it is not timid: at least 90 % of the limit per window, sustained.
            assert!(
                max as f64 >= (0.9 * f64::from(limit)).floor(),
                "{limit}: {max}"
            );
        }
        let naive = BucketSpec::per_interval(100, 10_000);
        assert!(
            max_in_any_window(naive, 10_000, 40_000) > 100,
            "the naive bucket overruns"
        );
    }
}
