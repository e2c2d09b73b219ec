//! A log consumer with stored offsets, on the embedded store: it resumes after a restart
//! where it committed, and a failed page is read again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use raccordo_core::{AppendBatch, EventId, NewEvent, RawEvent, SourceName, Stores};
use raccordo_runtime::Supervisor;
use raccordo_runtime::consumer::{LogConsumer, run_consumer};
use raccordo_storage_sqlite::{SqliteOptions, SqliteStore};

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<EventId>>,
    /// Fail this many pages before handling any.
    failures_left: Mutex<u32>,
    changed: tokio::sync::Notify,
}

#[async_trait]
impl LogConsumer for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn handle(&self, events: &[RawEvent]) -> anyhow::Result<()> {
        {
            let mut left = self.failures_left.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                anyhow::bail!("the downstream refused the page");
            }
        }
        self.seen
            .lock()
            .unwrap()
            .extend(events.iter().map(|e| e.id));
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Recorder {
    /// Waits (bounded) until `n` events were handled.
    async fn until(&self, n: usize) -> Vec<EventId> {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                let seen = self.seen.lock().unwrap().clone();
                if seen.len() >= n {
                    return seen;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("the consumer handled the events")
    }
}

async fn append(stores: &Stores, ids: &mut ulid::Generator, n: usize) -> Vec<EventId> {
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent {
            id: EventId::generate(ids, 1_000),
            source: SourceName::new("web").unwrap(),
            event_time_ms: 1_000,
            payload: format!("{{\"n\":{i}}}"),
            business_key: None,
        })
        .collect();
    let wanted = events.iter().map(|e| e.id).collect();
    stores
        .log
        .append(AppendBatch {
            received_at_ms: 1_000,
            delivery: None,
            business_key_retention_ms: 3_600_000,
            events,
        })
        .await
        .unwrap();
    wanted
}

fn start(stores: &Stores, consumer: &Arc<Recorder>) -> Supervisor {
    let supervisor = Supervisor::new();
    let (log, offsets, consumer) = (stores.log.clone(), stores.offsets.clone(), consumer.clone());
    supervisor.spawn("recorder", move |ctx| {
        run_consumer(consumer.clone(), log.clone(), offsets.clone(), ctx)
    });
    supervisor
}

#[tokio::test]
async fn a_consumer_resumes_where_it_committed_and_rereads_a_failed_page() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raccordo.db");
    let mut ids = ulid::Generator::new();

    let store = SqliteStore::open(SqliteOptions::new(&path)).unwrap();
    let stores = store.stores();
    let first = append(&stores, &mut ids, 3).await;
    // The first attempt at the page fails: the supervisor restarts the consumer, which reads
    // the same page again (nothing was committed) and then handles it.
    let consumer = Arc::new(Recorder {
        failures_left: Mutex::new(1),
        ..Recorder::default()
    });
    let supervisor = start(&stores, &consumer);
    assert_eq!(consumer.until(3).await, first);
    let second = append(&stores, &mut ids, 2).await;
    let seen = consumer.until(5).await;
    assert_eq!(seen[3..], second[..], "woken by the commit, in log order");
    assert_eq!(supervisor.health()[0].restarts, 1);
    supervisor.shutdown(Duration::from_secs(5)).await;
    stores.log.close().await;
    drop((stores, store));

    // After a restart only what came after the committed offsets is read.
    let store = SqliteStore::open(SqliteOptions::new(&path)).unwrap();
    let stores = store.stores();
    let third = append(&stores, &mut ids, 2).await;
    let consumer = Arc::new(Recorder::default());
    let supervisor = start(&stores, &consumer);
    assert_eq!(
        consumer.until(2).await,
        third,
        "nothing read twice across the restart"
    );
    supervisor.shutdown(Duration::from_secs(5)).await;
    assert_eq!(consumer.seen.lock().unwrap().len(), 2);
}
