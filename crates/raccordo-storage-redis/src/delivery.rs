//! A front cache of delivery ids before the event log: a sender retrying a webhook it already
//! delivered (the usual duplicate: it timed out, or it retries on any non-2xx it saw before)
//! is answered from Redis, without taking a database transaction.
//!
//! The log's claim stays the authority. An entry is written only after the log committed the
//! delivery, and only says what the log would say (the original ids, or a conflict for
//! another body) until the claim's own expiry; a miss, an evicted key or an unreachable
//! Redis goes to the log as if there were no cache.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raccordo_core::{
    AppendBatch, AppendOutcome, DedupKey, ErasedEvents, EventId, EventLog, ItemOutcome,
    LogPositions, PayloadRewrite, RawEvent, StoreError,
};

use crate::Redis;

/// How long a lookup may take before the log is asked instead: a slow Redis must not slow
/// ingestion down by more than this.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(50);

pub struct DeliveryFrontCache {
    log: Arc<dyn EventLog>,
    redis: Redis,
    max_ttl_ms: i64,
}

/// What the log answered for one delivery id.
#[derive(Debug, Clone, PartialEq)]
struct Remembered {
    /// The claim's expiry (epoch ms): after it, the log would accept the id again.
    until_ms: i64,
    body_hash: DedupKey,
    events: Vec<EventId>,
}

impl Remembered {
    fn encode(&self) -> String {
        let mut text = format!("{}|{}|", self.until_ms, hex(&self.body_hash.0));
        for (i, id) in self.events.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!("{:032x}", id.as_u128()));
        }
        text
    }

    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '|');
        let until_ms = parts.next()?.parse().ok()?;
        let body = u128::from_str_radix(parts.next()?, 16).ok()?;
        let events = parts
            .next()?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|id| u128::from_str_radix(id, 16).ok().map(EventId::from_u128))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            until_ms,
            body_hash: DedupKey(body.to_be_bytes()),
            events,
        })
    }

    /// The log's answer to this delivery id arriving again (with `body_hash`) at `now_ms`,
    /// or `None` when the claim has expired and the log must decide.
    fn answer(&self, body_hash: DedupKey, now_ms: i64) -> Option<AppendOutcome> {
        if self.until_ms <= now_ms {
            return None;
        }
        Some(if self.body_hash == body_hash {
            AppendOutcome::DeliveryReplayed(
                self.events
                    .iter()
                    .copied()
                    .map(ItemOutcome::Duplicate)
                    .collect(),
            )
        } else {
            AppendOutcome::DeliveryConflict
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl DeliveryFrontCache {
    /// `max_ttl_ms`: the longest an id stays in Redis (claims often live days; the retries
    /// worth answering fast come within hours).
    pub fn new(log: Arc<dyn EventLog>, redis: Redis, max_ttl_ms: i64) -> Self {
        Self {
            log,
            redis,
            max_ttl_ms,
        }
    }

    fn key(&self, delivery: DedupKey) -> String {
        self.redis.key(&["delivery", &hex(&delivery.0)])
    }

    async fn lookup(&self, delivery: DedupKey) -> Option<Remembered> {
        let mut connection = self.redis.connection();
        let mut get = redis::cmd("GET");
        get.arg(self.key(delivery));
        let lookup = get.query_async::<Option<String>>(&mut connection);
        match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(found)) => found.as_deref().and_then(Remembered::decode),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "delivery cache unreadable; asking the log");
                None
            }
            Err(_) => None,
        }
    }

    /// Remembers the log's answer, in the background: the `202` does not wait for Redis.
    fn remember(&self, delivery: DedupKey, remembered: Remembered, now_ms: i64) {
        let ttl_ms = (remembered.until_ms - now_ms).min(self.max_ttl_ms);
        if ttl_ms <= 0 {
            return;
        }
        let (key, value) = (self.key(delivery), remembered.encode());
        let mut connection = self.redis.connection();
        tokio::spawn(async move {
            let set: Result<(), _> = redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut connection)
                .await;
            if let Err(e) = set {
                tracing::debug!(error = %e, "delivery not cached");
            }
        });
    }
}

#[async_trait]
impl EventLog for DeliveryFrontCache {
    async fn append(&self, batch: AppendBatch) -> Result<AppendOutcome, StoreError> {
        let Some(claim) = batch.delivery.clone() else {
            return self.log.append(batch).await;
        };
        let now_ms = batch.received_at_ms;
        if let Some(answer) = self
            .lookup(claim.key)
            .await
            .and_then(|r| r.answer(claim.body_hash, now_ms))
        {
            metrics::counter!("raccordo_delivery_cache_hits_total").increment(1);
            return Ok(answer);
        }
        let outcome = self.log.append(batch).await?;
        if let AppendOutcome::Appended(items) | AppendOutcome::DeliveryReplayed(items) = &outcome {
            let remembered = Remembered {
                until_ms: now_ms.saturating_add(claim.retention_ms),
                body_hash: claim.body_hash,
                events: items.iter().map(ItemOutcome::id).collect(),
            };
            self.remember(claim.key, remembered, now_ms);
        }
        Ok(outcome)
    }

    async fn tail(&self, after: &LogPositions, limit: usize) -> Result<Vec<RawEvent>, StoreError> {
        self.log.tail(after, limit).await
    }

    fn is_ready(&self) -> bool {
        self.log.is_ready()
    }

    fn committed(&self) -> tokio::sync::watch::Receiver<LogPositions> {
        self.log.committed()
    }

    /// Delivery entries hold ids and hashes only, no personal data: nothing to erase here.
    async fn erase(&self, rewrite: PayloadRewrite) -> Result<ErasedEvents, StoreError> {
        self.log.erase(rewrite).await
    }

    async fn close(&self) {
        self.log.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remembered() -> Remembered {
        Remembered {
            until_ms: 10_000,
            body_hash: DedupKey([7; 16]),
            events: vec![EventId::from_u128(1), EventId::from_u128(u128::MAX)],
        }
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let r = remembered();
        assert_eq!(Remembered::decode(&r.encode()), Some(r));
        assert_eq!(Remembered::decode("garbage"), None);
        assert_eq!(Remembered::decode("1|zz|"), None);
    }

    #[test]
    fn it_answers_as_the_log_would_until_the_claim_expires() {
        let r = remembered();
        assert_eq!(
            r.answer(DedupKey([7; 16]), 9_999),
            Some(AppendOutcome::DeliveryReplayed(vec![
                ItemOutcome::Duplicate(EventId::from_u128(1)),
                ItemOutcome::Duplicate(EventId::from_u128(u128::MAX)),
            ]))
        );
        assert_eq!(
            r.answer(DedupKey([8; 16]), 9_999),
            Some(AppendOutcome::DeliveryConflict)
        );
        assert_eq!(r.answer(DedupKey([7; 16]), 10_000), None, "expired");
    }
}
