//! Rate-limit buckets shared by everything that calls out (CRM clients, AI providers) or lets
//! in (per-source limits). The arithmetic is a pure token bucket; a store keeps each bucket's
//! state so that several workers, or several nodes, draw from the same bucket.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// A bucket holding up to `capacity` tokens, refilled at `refill_per_s`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BucketSpec {
    pub capacity: f64,
    pub refill_per_s: f64,
}

impl BucketSpec {
    /// `n` requests per `interval_ms`, all of which may come at once (HubSpot's "100 per
    /// 10 seconds" is `per_interval(100, 10_000)`).
    pub fn per_interval(n: u32, interval_ms: i64) -> Self {
        Self {
            capacity: f64::from(n),
            refill_per_s: f64::from(n) * 1000.0 / interval_ms.max(1) as f64,
        }
    }
}

/// A bucket's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BucketState {
    pub tokens: f64,
    pub updated_at_ms: i64,
}

/// The answer to "may I spend `cost` now?".
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    Allowed {
        remaining: f64,
    },
    /// Nothing was taken; enough tokens will be there after this wait.
    Limited {
        retry_after_ms: i64,
    },
}

impl BucketState {
    /// Takes `cost` tokens if the bucket holds them at `now_ms`. A missing state is a full
    /// bucket; a clock that went backwards refills nothing.
    pub fn take(
        state: Option<Self>,
        spec: BucketSpec,
        cost: f64,
        now_ms: i64,
    ) -> (Self, Admission) {
        let state = state.unwrap_or(Self {
            tokens: spec.capacity,
            updated_at_ms: now_ms,
        });
        let elapsed_s = (now_ms - state.updated_at_ms).max(0) as f64 / 1000.0;
        let tokens = (state.tokens + elapsed_s * spec.refill_per_s).min(spec.capacity);
        let updated_at_ms = now_ms.max(state.updated_at_ms);
        if tokens + 1e-9 >= cost {
            let left = (tokens - cost).max(0.0);
            (
                Self {
                    tokens: left,
                    updated_at_ms,
                },
                Admission::Allowed { remaining: left },
            )
        } else {
            let missing = cost - tokens;
            let retry_after_ms = if spec.refill_per_s > 0.0 && cost <= spec.capacity {
                (missing / spec.refill_per_s * 1000.0).ceil() as i64
            } else {
                i64::MAX // can never be served
            };
            (
                Self {
                    tokens,
                    updated_at_ms,
                },
                Admission::Limited {
                    retry_after_ms: retry_after_ms.max(1),
                },
            )
        }
    }
}

#[async_trait]
pub trait RateLimitStore: Send + Sync + 'static {
    /// Takes `cost` tokens from `bucket` atomically (two callers never both spend the last
    /// token).
    async fn take(
        &self,
        bucket: &str,
        spec: BucketSpec,
        cost: f64,
        now_ms: i64,
    ) -> Result<Admission, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_spends_refills_and_says_how_long_to_wait() {
        let spec = BucketSpec::per_interval(10, 10_000); // 1 token per second
        let mut state = None;
        for _ in 0..10 {
            let (s, a) = BucketState::take(state, spec, 1.0, 0);
            assert!(matches!(a, Admission::Allowed { .. }));
            state = Some(s);
        }
        let (s, a) = BucketState::take(state, spec, 1.0, 0);
        assert_eq!(
            a,
            Admission::Limited {
                retry_after_ms: 1000
            }
        );
        let (_, a) = BucketState::take(Some(s), spec, 1.0, 1000);
        assert!(matches!(a, Admission::Allowed { .. }), "refilled one token");
        let (_, a) = BucketState::take(None, spec, 11.0, 0);
        assert_eq!(
            a,
            Admission::Limited {
                retry_after_ms: i64::MAX
            },
            "more than fits"
        );
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let spec = BucketSpec::per_interval(1, 1000);
        let (s, _) = BucketState::take(None, spec, 1.0, 5_000);
        let (_, a) = BucketState::take(Some(s), spec, 1.0, 1_000);
        assert!(matches!(a, Admission::Limited { .. }));
    }
}
