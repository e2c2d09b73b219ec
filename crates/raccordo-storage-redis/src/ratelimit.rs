//! Token buckets shared by every node: one script per take, so two nodes never both spend
//! the last token.

use std::sync::LazyLock;

use async_trait::async_trait;
use raccordo_core::{Admission, BucketSpec, BucketState, RateLimitStore, StoreError};

use crate::{Redis, store_error};

/// Refills the bucket to `now`, spends `cost` if it is there, stores the state, and returns
/// the tokens left (after the take, or after the refill when refused). The arithmetic is
/// `BucketState::take`'s; the answer is worked out again from the returned state by that
/// same pure function, so the two cannot drift apart in what the caller sees.
///
/// A bucket left alone refills to full, and a full bucket is the same as none: the key
/// expires once a refill would have filled it (plus a minute, for callers whose clocks
/// disagree a little).
static TAKE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local capacity = tonumber(ARGV[1])
local refill = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 't', 'u')
local tokens, updated = capacity, now
if state[1] then
  tokens = tonumber(state[1])
  updated = tonumber(state[2])
end
tokens = math.min(tokens + math.max(now - updated, 0) / 1000 * refill, capacity)
updated = math.max(now, updated)
local allowed = 0
if tokens + 1e-9 >= cost then
  tokens = math.max(tokens - cost, 0)
  allowed = 1
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'u', string.format('%d', updated))
if refill > 0 then
  redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / refill * 1000) + 60000)
end
return {allowed, string.format('%.17g', tokens)}
",
    )
});

pub struct RedisRateLimits {
    redis: Redis,
}

impl RedisRateLimits {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }
}

#[async_trait]
impl RateLimitStore for RedisRateLimits {
    async fn take(
        &self,
        bucket: &str,
        spec: BucketSpec,
        cost: f64,
        now_ms: i64,
    ) -> Result<Admission, StoreError> {
        let (allowed, tokens): (i64, String) = TAKE
            .key(self.redis.key(&["bucket", bucket]))
            .arg(spec.capacity)
            .arg(spec.refill_per_s)
            .arg(cost)
            .arg(now_ms)
            .invoke_async(&mut self.redis.connection())
            .await
            .map_err(store_error)?;
        let tokens: f64 = tokens
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("bucket `{bucket}` holds `{tokens}`")))?;
        if allowed == 1 {
            return Ok(Admission::Allowed { remaining: tokens });
        }
        // Refused: the same question on the state the script left gives the wait.
        let state = BucketState {
            tokens,
            updated_at_ms: now_ms,
        };
        Ok(BucketState::take(Some(state), spec, cost, now_ms).1)
    }
}
