//! The relay and the stream against the NATS JetStream server at `RACCORDO_TEST_NATS`
//! (default `nats://127.0.0.1:4222`), each test on a stream of its own. Without a server:
//! under `CI` the tests fail; elsewhere they say so and pass.

use std::collections::HashMap;
use std::sync::Arc;

use raccordo_core::{AppendBatch, EventId, LogPositions, NewEvent, SourceName, Stores};
use raccordo_log_nats::{ConversionStream, Relay, StreamOptions, partition_of};

fn url() -> String {
    std::env::var("RACCORDO_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A stream of its own, or `None` (after saying why) when no server answers outside CI.
async fn fresh() -> Option<(StreamOptions, ConversionStream)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let name = format!("RACCORDO_TEST_{}_{}", now.as_secs(), now.subsec_nanos());
    let mut options = StreamOptions::new(url());
    options.stream = name.clone();
    options.subject_prefix = format!("raccordo_test.{}_{}", now.as_secs(), now.subsec_nanos());
    options.partitions = 4;
    match ConversionStream::open(&options).await {
        Ok(stream) => Some((options, stream)),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED: no NATS JetStream at `{}` ({e}); CI runs this",
                url()
            );
            None
        }
        Err(e) => panic!("NATS JetStream at `{}` cannot be used: {e}", url()),
    }
}

/// Removes the test's stream, and those earlier runs left (older than an hour).
async fn clean_up(options: &StreamOptions) {
    let client = async_nats::connect(options.url.as_str()).await.unwrap();
    let context = async_nats::jetstream::new(client);
    let _ = context.delete_stream(&options.stream).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut names = context.stream_names();
    let mut stale = Vec::new();
    while let Some(Ok(name)) = futures_util::StreamExt::next(&mut names).await {
        let born = name
            .strip_prefix("RACCORDO_TEST_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|t| t.parse::<u64>().ok());
        if born.is_some_and(|b| b + 3600 < now) {
            stale.push(name);
        }
    }
    for name in stale {
        let _ = context.delete_stream(&name).await;
    }
}

fn customer(n: usize) -> String {
    format!("CLIENTE-{:03}", n % 20)
}

/// Appends `count` conversions, customer `n % 20` for the `n`-th, to the embedded log.
async fn append(stores: &Stores, ids: &mut ulid::Generator, first: usize, count: usize) {
    for n in first..first + count {
        let now = 1_800_000_000_000 + n as i64;
        let id = EventId::generate(ids, now);
        let outcome = stores
            .log
            .append(AppendBatch {
                received_at_ms: now,
                delivery: None,
                business_key_retention_ms: 60_000,
                events: vec![NewEvent {
                    id,
                    source: SourceName::new("web").unwrap(),
                    event_time_ms: now,
                    payload: format!(r#"{{"id_cliente":"{}","n":{n}}}"#, customer(n)),
                    business_key: None,
                }],
            })
            .await
            .unwrap();
        assert!(matches!(outcome, raccordo_core::AppendOutcome::Appended(_)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_copies_the_log_once_in_order_per_customer_and_resumes_after_dying() {
    let Some((options, stream)) = fresh().await else {
        return;
    };
    let stream = Arc::new(stream);
    let dir = tempfile::tempdir().unwrap();
    let store = raccordo_storage_sqlite::SqliteStore::open(
        raccordo_storage_sqlite::SqliteOptions::new(dir.path().join("raccordo.db")),
    )
    .unwrap();
    let stores = store.stores();
    let mut ids = ulid::Generator::new();
    append(&stores, &mut ids, 0, 300).await;

    // A relay that died after the stream acknowledged 100 events, before it stored how far
    // it got: the next one starts from the beginning again.
    let first_hundred = stores
        .log
        .tail(&LogPositions::default(), 100)
        .await
        .unwrap();
    stream.publish(&first_hundred).await.unwrap();
    let relay = Relay {
        log: stores.log.clone(),
        offsets: stores.offsets.clone(),
        stream: stream.clone(),
    };
    let progress = relay.catch_up().await.unwrap();
    assert_eq!(progress.published, 300, "it read the whole log");
    assert_eq!(
        raccordo_log_nats::probe(&options).await.unwrap().messages,
        300,
        "the hundred published twice are in the stream once"
    );

    // Later commits go on from the stored position.
    append(&stores, &mut ids, 300, 50).await;
    assert_eq!(relay.catch_up().await.unwrap().published, 50);
    assert_eq!(relay.catch_up().await.unwrap().published, 0, "caught up");

    // Read back: every event once; each customer in one partition, in log order.
    let log_order: Vec<EventId> = stores
        .log
        .tail(&LogPositions::default(), 1_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let mut read = LogPositions::default();
    let mut events = Vec::new();
    loop {
        let page = stream.tail(&read, 64, None).await.unwrap();
        if page.is_empty() {
            break;
        }
        for e in &page {
            read.advance(e.position);
        }
        events.extend(page);
    }
    assert_eq!(events.len(), 350);
    let mut seen: Vec<EventId> = events.iter().map(|e| e.id).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 350, "none twice");
    let mut by_customer: HashMap<String, Vec<(u32, i64, EventId)>> = HashMap::new();
    for e in &events {
        let payload: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
        let who = payload["id_cliente"].as_str().unwrap().to_string();
        assert_eq!(e.position.partition, partition_of(who.as_bytes(), 4));
        by_customer
            .entry(who)
            .or_default()
            .push((e.position.partition, e.position.offset, e.id));
    }
    assert_eq!(by_customer.len(), 20);
    for (who, mut got) in by_customer {
        got.sort_by_key(|(_, offset, _)| *offset);
        let in_stream: Vec<EventId> = got.iter().map(|(_, _, id)| *id).collect();
        let in_log: Vec<EventId> = log_order
            .iter()
            .copied()
            .filter(|id| in_stream.contains(id))
            .collect();
        assert_eq!(in_stream, in_log, "{who}'s events in commit order");
    }

    // A reader of some partitions only, from where it stopped.
    assert!(
        stream
            .tail(&read, 100, Some(&[1, 3]))
            .await
            .unwrap()
            .is_empty()
    );
    append(&stores, &mut ids, 350, 20).await;
    relay.catch_up().await.unwrap();
    let two = stream.tail(&read, 100, Some(&[1, 3])).await.unwrap();
    assert!(!two.is_empty() && two.len() < 20, "{} of 20", two.len());
    assert!(two.iter().all(|e| [1, 3].contains(&e.position.partition)));

    store.stores().log.close().await;
    clean_up(&options).await;
}
