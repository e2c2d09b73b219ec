//! The relay and the stream against the NATS JetStream server at `RACCORDO_TEST_NATS`
//! (default `nats://127.0.0.1:4222`), each test on a stream of its own. Without a server:
//! under `CI` the tests fail; elsewhere they say so and pass.

use std::sync::Arc;

use raccordo_log_nats::{NatsStream, StreamOptions};

fn url() -> String {
    std::env::var("RACCORDO_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A stream of its own, or `None` (after saying why) when no server answers outside CI.
async fn fresh() -> Option<(StreamOptions, NatsStream)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let name = format!("RACCORDO_TEST_{}_{}", now.as_secs(), now.subsec_nanos());
    let mut options = StreamOptions::new(url());
    options.stream = name.clone();
    options.subject_prefix = format!("raccordo_test.{}_{}", now.as_secs(), now.subsec_nanos());
    options.partitions = 4;
    match NatsStream::open(&options).await {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_copies_the_log_once_in_order_per_customer_and_resumes_after_dying() {
    let Some((options, stream)) = fresh().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = raccordo_storage_sqlite::SqliteStore::open(
        raccordo_storage_sqlite::SqliteOptions::new(dir.path().join("raccordo.db")),
    )
    .unwrap();
    let stores = store.stores();
    raccordo_storage_tests::stream::relay_and_read_back(&stores, Arc::new(stream)).await;
    assert_eq!(
        raccordo_log_nats::probe(&options).await.unwrap().messages,
        374,
        "what the stream holds (371 events, 3 ticks), seen by a new connection"
    );
    stores.log.close().await;
    clean_up(&options).await;
}
