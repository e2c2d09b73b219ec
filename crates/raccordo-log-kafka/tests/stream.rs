//! The Kafka stream against librdkafka's mock cluster: real Kafka-protocol brokers on
//! loopback sockets, inside the test process (no Kafka server is needed).

use std::sync::Arc;

use raccordo_core::{
    ConversionStream, Envelope, EventId, LogPosition, LogPositions, Outgoing, RawEvent, SourceName,
};
use raccordo_log_kafka::{KafkaOptions, KafkaStream};
use rdkafka::mocking::MockCluster;

/// The options of a stream of 4 partitions on `cluster`, whose topic the test made (the mock
/// brokers do not take `CreateTopics`; a real cluster's topic is created by the hub when it
/// may, or beforehand by its operators).
fn options(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) -> KafkaOptions {
    cluster.create_topic("conversions", 4, 1).unwrap();
    let mut options = KafkaOptions::new(cluster.bootstrap_servers());
    options.topic = "conversions".into();
    options.partitions = 4;
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_copies_the_log_once_in_order_per_customer_and_resumes_after_dying() {
    let cluster = MockCluster::new(3).unwrap();
    let options = options(&cluster);
    let stream = KafkaStream::open(&options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = raccordo_storage_sqlite::SqliteStore::open(
        raccordo_storage_sqlite::SqliteOptions::new(dir.path().join("raccordo.db")),
    )
    .unwrap();
    let stores = store.stores();
    raccordo_storage_tests::stream::relay_and_read_back(&stores, Arc::new(stream)).await;
    let seen = raccordo_log_kafka::probe(&options).await.unwrap();
    assert_eq!(
        seen.messages, 374,
        "what the topic holds (371 events, 3 ticks), seen by new clients"
    );
    assert_eq!(seen.engine, "Kafka (3 broker(s))");
    stores.log.close().await;
}

fn event(n: i64) -> RawEvent {
    RawEvent {
        position: LogPosition {
            partition: 0,
            offset: n,
        },
        id: EventId::generate(&mut ulid::Generator::new(), 1_800_000_000_000 + n),
        source: SourceName::new("web").unwrap(),
        event_time_ms: 1_800_000_000_000 + n,
        received_at_ms: 1_800_000_000_000 + n,
        payload: format!(r#"{{"id_cliente":"C{n}"}}"#),
        duplicate: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_twice_is_read_once() {
    let cluster = MockCluster::new(1).unwrap();
    let options = options(&cluster);
    let stream = KafkaStream::open(&options).await.unwrap();
    let messages: Vec<Outgoing> = (1..=3)
        .map(|n| Outgoing {
            partition: 2,
            envelope: Envelope::of(&event(n), Some(LogPositions::single(n))),
        })
        .collect();
    // Events 1 and 2, then 2 and 3 again (a relay that could not know 2 had landed).
    stream.publish(&messages[..2]).await.unwrap();
    stream.publish(&messages[1..]).await.unwrap();
    assert_eq!(
        stream.describe().await.unwrap().messages,
        4,
        "the topic holds 2 twice"
    );
    let ids = |events: &[RawEvent]| events.iter().map(|e| e.id.to_string()).collect::<Vec<_>>();
    let all = stream
        .tail(&LogPositions::default(), 100, None)
        .await
        .unwrap();
    assert_eq!(
        ids(&all),
        messages
            .iter()
            .map(|m| m.envelope.id.clone())
            .collect::<Vec<_>>(),
        "each once, in order"
    );
    // A reader that starts right after the first copy of 2 (a new node, no read state)
    // also drops the second copy: it reads the cursor before where it starts.
    let fresh = KafkaStream::open(&options).await.unwrap();
    let mut after = LogPositions::default();
    after.advance(all[1].position);
    let rest = fresh.tail(&after, 100, Some(&[2])).await.unwrap();
    assert_eq!(ids(&rest), vec![messages[2].envelope.id.clone()]);
    assert_eq!(rest[0].position.offset, 4, "offset 3 + 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_other_partitions_is_refused() {
    let cluster = MockCluster::new(1).unwrap();
    let mut options = options(&cluster);
    KafkaStream::open(&options).await.unwrap();
    options.partitions = 6;
    let refused = KafkaStream::open(&options).await.err().expect("refused");
    assert!(
        refused
            .to_string()
            .contains("has 4 partition(s), the config says 6"),
        "{refused}"
    );
}
