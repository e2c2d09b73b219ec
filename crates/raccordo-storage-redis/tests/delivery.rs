//! The delivery-id front cache answers a sender's retry without the log, exactly as the log
//! would have, and sends everything else to the log. Redis at `RACCORDO_TEST_REDIS`
//! (default `redis://127.0.0.1:6379`); without it, CI fails and a laptop skips (saying so).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use raccordo_core::{
    AppendBatch, AppendOutcome, DedupKey, DeliveryClaim, ErasedEvents, EventId, EventLog,
    ItemOutcome, LogPositions, NewEvent, PayloadRewrite, RawEvent, SourceName, StoreError,
};
use raccordo_storage_redis::{DeliveryFrontCache, Redis, RedisOptions};

/// A log that accepts everything and counts the appends that reach it.
#[derive(Default)]
struct CountingLog {
    appends: AtomicUsize,
}

#[async_trait]
impl EventLog for CountingLog {
    async fn append(&self, batch: AppendBatch) -> Result<AppendOutcome, StoreError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        Ok(AppendOutcome::Appended(
            batch
                .events
                .iter()
                .map(|e| ItemOutcome::Accepted(e.id))
                .collect(),
        ))
    }
    async fn tail(&self, _: &LogPositions, _: usize) -> Result<Vec<RawEvent>, StoreError> {
        Ok(Vec::new())
    }
    fn is_ready(&self) -> bool {
        true
    }
    fn committed(&self) -> tokio::sync::watch::Receiver<LogPositions> {
        tokio::sync::watch::channel(LogPositions::default()).1
    }
    async fn erase(&self, _: PayloadRewrite) -> Result<ErasedEvents, StoreError> {
        Ok(ErasedEvents::default())
    }
}

async fn redis() -> Option<(Redis, RedisOptions)> {
    let url =
        std::env::var("RACCORDO_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut options = RedisOptions::new(url.clone());
    options.key_prefix = format!("raccordo_test_{}_delivery:", ulid::Ulid::new());
    match Redis::connect(&options).await {
        Ok(redis) => Some((redis, options)),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: no Redis at `{url}` ({e}); CI runs this");
            None
        }
        Err(e) => panic!("Redis at `{url}` cannot be reached: {e}"),
    }
}

fn batch(delivery: u8, body: u8, received_at_ms: i64, events: u128) -> AppendBatch {
    AppendBatch {
        received_at_ms,
        delivery: Some(DeliveryClaim {
            key: DedupKey([delivery; 16]),
            body_hash: DedupKey([body; 16]),
            retention_ms: 60_000,
        }),
        business_key_retention_ms: 60_000,
        events: (0..events)
            .map(|i| NewEvent {
                id: EventId::from_u128(1_000 + i),
                source: SourceName::new("web").unwrap(),
                event_time_ms: received_at_ms,
                payload: "{}".into(),
                business_key: None,
            })
            .collect(),
    }
}

/// Waits until the background write of the delivery's answer has reached Redis.
async fn remembered(options: &RedisOptions, delivery: u8) {
    let client = redis::Client::open(options.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!(
        "{}delivery:{}",
        options.key_prefix,
        format!("{delivery:02x}").repeat(16)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        if exists {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{key} never written");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_retried_delivery_is_answered_from_redis_as_the_log_would() {
    let Some((redis, options)) = redis().await else {
        return;
    };
    let inner = Arc::new(CountingLog::default());
    let log = DeliveryFrontCache::new(inner.clone(), redis, 3_600_000);

    let first = log.append(batch(1, 7, 1_000, 2)).await.unwrap();
    let AppendOutcome::Appended(items) = first else {
        panic!("first delivery: {first:?}")
    };
    remembered(&options, 1).await;

    let retry = log.append(batch(1, 7, 2_000, 2)).await.unwrap();
    assert_eq!(
        retry,
        AppendOutcome::DeliveryReplayed(
            items
                .iter()
                .map(|i| ItemOutcome::Duplicate(i.id()))
                .collect()
        )
    );
    assert_eq!(
        log.append(batch(1, 8, 2_000, 2)).await.unwrap(),
        AppendOutcome::DeliveryConflict,
        "same id, another body"
    );
    assert_eq!(
        inner.appends.load(Ordering::SeqCst),
        1,
        "the log saw the first only"
    );

    // Once the claim has expired (60 s after the first), the log decides again; so does a
    // delivery id never seen, and a batch without one.
    log.append(batch(1, 7, 61_000, 1)).await.unwrap();
    log.append(batch(2, 7, 2_000, 1)).await.unwrap();
    let mut plain = batch(3, 7, 2_000, 1);
    plain.delivery = None;
    log.append(plain).await.unwrap();
    assert_eq!(inner.appends.load(Ordering::SeqCst), 4);
}
