//! The conversion stream contract (`raccordo_core::ConversionStream`), run by each engine's
//! crate against its server (NATS JetStream, Kafka): the relay copies a log into the stream
//! once, in order per customer, also when a relay died after publishing part of the log;
//! readers read every partition or only some, from where they stopped.

use std::collections::HashMap;
use std::sync::Arc;

use raccordo_core::{
    AppendBatch, ConversionStream, Envelope, EventId, LogPositions, NewEvent, Outgoing,
    Partitioner, Relay, SourceName, Stores, partition_of,
};

fn customer(n: usize) -> String {
    format!("CLIENTE-{:03}", n % 20)
}

/// Appends `count` conversions, customer `n % 20` for the `n`-th.
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

/// Reads every partition from the start until nothing more comes, `page` events at a time.
async fn read_all(
    stream: &dyn ConversionStream,
    page: usize,
) -> (Vec<raccordo_core::RawEvent>, LogPositions) {
    let mut read = LogPositions::default();
    let mut events = Vec::new();
    loop {
        let got = stream.tail(&read, page, None).await.unwrap();
        if got.is_empty() {
            return (events, read);
        }
        for e in &got {
            read.advance(e.position);
        }
        events.extend(got);
    }
}

/// The whole contract on an empty stream of 4 partitions; `stores` is an empty store whose
/// log the relay reads.
pub async fn relay_and_read_back(stores: &Stores, stream: Arc<dyn ConversionStream>) {
    assert_eq!(
        stream.partitions(),
        4,
        "the suite wants a stream of 4 partitions"
    );
    assert!(
        stream.last_cursors().await.unwrap().is_empty(),
        "an empty stream"
    );
    let partitioner = Partitioner::new("/id_cliente", 4);
    let mut ids = ulid::Generator::new();
    append(stores, &mut ids, 0, 300).await;

    // A relay that died after the stream acknowledged the first 100 events, before it
    // stored how far it got: the next one reads from the beginning again and must not
    // publish those 100 twice (Kafka has nothing to drop them; the cursors do).
    let first_hundred = stores
        .log
        .tail(&LogPositions::default(), 100)
        .await
        .unwrap();
    let mut cursor = LogPositions::default();
    let mut stream_time: Option<i64> = None;
    let published: Vec<Outgoing> = first_hundred
        .iter()
        .map(|event| {
            cursor.advance(event.position);
            let mut envelope = Envelope::of(event, Some(cursor.clone()));
            envelope.stream_time_ms = stream_time;
            stream_time =
                Some(stream_time.map_or(event.event_time_ms, |t| t.max(event.event_time_ms)));
            Outgoing {
                partition: partitioner.place(&event.payload, &event.id.to_string()),
                envelope,
            }
        })
        .collect();
    stream.publish(&published).await.unwrap();
    assert_eq!(stream.describe().await.unwrap().messages, 100);
    let cursors = stream.last_cursors().await.unwrap();
    assert_eq!(cursors.len(), 4, "every partition got some of 20 customers");
    assert!(cursors.values().all(|c| c.total() <= 100));
    assert!(
        cursors.values().any(|c| c.total() == 100),
        "the last one published"
    );

    let relay = Relay::new(
        stores.log.clone(),
        stores.offsets.clone(),
        stream.clone(),
        partitioner.clone(),
    );
    let progress = relay.catch_up().await.unwrap();
    assert_eq!(
        (progress.published, progress.skipped),
        (200, 100),
        "the hundred already there are skipped"
    );
    assert_eq!(stream.describe().await.unwrap().messages, 300);

    // Later commits go on from the stored position.
    append(stores, &mut ids, 300, 50).await;
    assert_eq!(relay.catch_up().await.unwrap().published, 50);
    assert_eq!(relay.catch_up().await.unwrap().published, 0, "caught up");

    // A new relay (another leader) resumes from the stored offset and publishes nothing.
    let next = Relay::new(
        stores.log.clone(),
        stores.offsets.clone(),
        stream.clone(),
        partitioner,
    );
    assert_eq!(
        next.catch_up().await.unwrap(),
        raccordo_core::RelayProgress {
            published: 0,
            skipped: 0,
            ticks: 0,
            relayed_to: 350,
        }
    );

    // Read back: every event once; each customer in one partition, in log order.
    let log_order: Vec<EventId> = stores
        .log
        .tail(&LogPositions::default(), 1_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let (events, read) = read_all(stream.as_ref(), 64).await;
    assert_eq!(events.len(), 350);
    let mut seen: Vec<EventId> = events.iter().map(|e| e.id).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 350, "none twice");
    let mut by_customer: HashMap<String, Vec<(i64, EventId)>> = HashMap::new();
    for e in &events {
        let payload: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
        let who = payload["id_cliente"].as_str().unwrap().to_string();
        assert_eq!(e.position.partition, partition_of(who.as_bytes(), 4));
        by_customer
            .entry(who)
            .or_default()
            .push((e.position.offset, e.id));
    }
    assert_eq!(by_customer.len(), 20);
    for (who, mut got) in by_customer {
        got.sort_by_key(|(offset, _)| *offset);
        let in_stream: Vec<EventId> = got.iter().map(|(_, id)| *id).collect();
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
    append(stores, &mut ids, 350, 20).await;
    relay.catch_up().await.unwrap();
    let two = stream.tail(&read, 100, Some(&[1, 3])).await.unwrap();
    assert!(!two.is_empty() && two.len() < 20, "{} of 20", two.len());
    assert!(two.iter().all(|e| [1, 3].contains(&e.position.partition)));
    let rest = stream.tail(&read, 100, None).await.unwrap();
    assert_eq!(rest.len(), 20, "all partitions: the 20 new events");

    // Every event carries the stream's time before it: the newest event time of the log
    // before it, in log order (what a reader of one partition needs to close windows as a
    // reader of the whole log would). The relay that took over knew it too.
    let log = stores
        .log
        .tail(&LogPositions::default(), 1_000)
        .await
        .unwrap();
    let mut before = HashMap::new();
    let mut newest: Option<i64> = None;
    for e in &log {
        before.insert(e.id, newest);
        newest = Some(newest.map_or(e.event_time_ms, |t| t.max(e.event_time_ms)));
    }
    let items = stream
        .read(&LogPositions::default(), 1_000, None)
        .await
        .unwrap();
    let events: Vec<_> = items.iter().filter(|i| i.event.is_some()).collect();
    assert_eq!(events.len(), 370);
    for item in events {
        let event = item.event.as_ref().unwrap();
        assert_eq!(
            item.stream_time_ms, before[&event.id],
            "stream time of {}",
            event.id
        );
    }

    // Ten seconds later, one customer's event: the three other partitions, which had no
    // event, are told the stream's time by a tick each.
    let mut after = LogPositions::default();
    for item in &items {
        after.advance(item.position);
    }
    append(stores, &mut ids, 10_000, 1).await;
    let progress = relay.catch_up().await.unwrap();
    assert_eq!((progress.published, progress.ticks), (1, 3));
    let latest = stream.read(&after, 100, None).await.unwrap();
    assert_eq!(latest.len(), 4);
    let busy = partition_of(customer(10_000).as_bytes(), 4);
    for item in &latest {
        match &item.event {
            Some(e) => {
                assert_eq!(item.position.partition, busy);
                assert_eq!(item.stream_time_ms, newest, "{}", e.id);
            }
            None => {
                assert_ne!(item.position.partition, busy);
                assert_eq!(item.stream_time_ms, Some(1_800_000_010_000), "a tick");
            }
        }
    }
}
