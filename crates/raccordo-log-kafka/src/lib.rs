//! The conversion stream on Kafka: one topic whose partitions are the stream's partitions,
//! an implementation of `raccordo_core::ConversionStream`. The relay, the placement by
//! customer and the exactly-once resume are the core's (`raccordo_core::store::stream`);
//! this crate only speaks Kafka (librdkafka, through `rdkafka`).
//!
//! - **Producing**: an idempotent producer (`acks=all`, gapless), so within one producer a
//!   partition never holds a message twice or a hole; the partition is chosen by the relay,
//!   never by Kafka's partitioner. A failed publish closes the producer and opens a new one:
//!   the relay then reads the partitions' newest cursors before it publishes again.
//! - **Reading**: a position is `(partition, Kafka offset + 1)`, so 0 means "nothing read",
//!   as for every other log. Readers also drop a message whose cursor does not move past the
//!   partition's previous one: an event published twice (a produce request the broker
//!   applied after the relay had already looked) is still read once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raccordo_core::{
    ConversionStream, Envelope, LogPosition, LogPositions, Outgoing, StoreError, StreamDescription,
    StreamItem,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// How long a metadata, watermark or read request may take before the stream counts as
/// unreachable (the relay tries again; readers report it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `[storage.stream]` with a `kafka://` URL.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `host:9092,host2:9092` (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    pub topic: String,
    /// Partitions customers are spread over; the topic is created with them and must keep
    /// them (changing it moves customers between partitions).
    pub partitions: u32,
    /// Replication factor of a topic this crate creates.
    pub replicas: i32,
    /// How long the topic keeps an event (`retention.ms` of a topic this crate creates).
    pub max_age: Duration,
    /// More librdkafka settings for every client (`security.protocol`, `sasl.*`, …).
    pub properties: BTreeMap<String, String>,
}

impl KafkaOptions {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: "raccordo.events".into(),
            partitions: 8,
            replicas: 1,
            max_age: Duration::from_secs(7 * 24 * 3600),
            properties: BTreeMap::new(),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("socket.timeout.ms", "10000");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("Kafka: {e}"))
}

fn corrupt(partition: u32, offset: i64, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!(
        "Kafka partition {partition} offset {offset} holds a message that is not an event: {e}"
    ))
}

/// Where a reader of one partition stopped: the next offset, and the cursor of the message
/// before it (to drop a message published twice).
#[derive(Debug, Clone)]
struct ReadState {
    next: i64,
    cursor: Option<LogPositions>,
}

pub struct KafkaStream {
    options: KafkaOptions,
    producer: Mutex<FutureProducer>,
    /// Reads are blocking librdkafka calls: they run on the blocking pool, one at a time.
    reader: Arc<Mutex<Reader>>,
}

struct Reader {
    consumer: BaseConsumer,
    topic: String,
    states: HashMap<u32, ReadState>,
}

impl KafkaStream {
    /// Connects, creates the topic when it is missing (operators who create topics
    /// themselves, with auto-creation and admin rights off, give the hub an existing one),
    /// and checks its partitions.
    pub async fn open(options: &KafkaOptions) -> Result<Self, StoreError> {
        let consumer: BaseConsumer = options
            .client_config()
            .set("group.id", "raccordo-stream-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false")
            // Reads ask only for what is below the high watermark: no need to wait for more.
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(unavailable)?;
        let stream = Self {
            producer: Mutex::new(Self::producer(options)?),
            reader: Arc::new(Mutex::new(Reader {
                consumer,
                topic: options.topic.clone(),
                states: HashMap::new(),
            })),
            options: options.clone(),
        };
        let mut held = stream.blocking(|reader| reader.partition_count()).await?;
        if held == 0 {
            stream.create_topic().await?;
            held = stream.blocking(|reader| reader.partition_count()).await?;
        }
        if held != stream.partitions() {
            return Err(StoreError::Backend(format!(
                "the Kafka topic `{}` has {held} partition(s), the config says {}; the count \
                 is fixed for a stream's life",
                options.topic,
                stream.partitions()
            )));
        }
        Ok(stream)
    }

    async fn create_topic(&self) -> Result<(), StoreError> {
        let options = &self.options;
        let admin: AdminClient<DefaultClientContext> =
            options.client_config().create().map_err(unavailable)?;
        let retention = options.max_age.as_millis().to_string();
        let topic = NewTopic::new(
            &options.topic,
            options.partitions.max(1) as i32,
            TopicReplication::Fixed(options.replicas.max(1)),
        )
        .set("retention.ms", &retention);
        let created = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)),
            )
            .await
            .map_err(|e| unavailable(format!("creating topic `{}`: {e}", options.topic)))?;
        for result in created {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(unavailable(format!("creating topic `{name}`: {code}")));
                }
            }
        }
        Ok(())
    }

    fn producer(options: &KafkaOptions) -> Result<FutureProducer, StoreError> {
        options
            .client_config()
            .set("enable.idempotence", "true")
            .set("enable.gapless.guarantee", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(unavailable)
    }

    /// Runs `f` on the reader, on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut reader)
        })
        .await
        .map_err(unavailable)?
    }

    async fn send_all(
        producer: &FutureProducer,
        topic: &str,
        messages: &[Outgoing],
    ) -> Result<(), StoreError> {
        let mut pending = std::collections::VecDeque::with_capacity(messages.len());
        for message in messages {
            let body = serde_json::to_vec(&message.envelope).map_err(unavailable)?;
            let mut record = FutureRecord::to(topic)
                .partition(message.partition as i32)
                .key(message.envelope.id.as_str())
                .payload(&body);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    // The producer's queue is full: wait for the oldest message, then retry.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        match pending.pop_front() {
                            Some(delivery) => Self::delivered(delivery.await)?,
                            None => return Err(unavailable("the producer queue is full")),
                        }
                    }
                    Err((e, _)) => return Err(unavailable(e)),
                }
            }
        }
        for delivery in pending {
            Self::delivered(delivery.await)?;
        }
        Ok(())
    }

    fn delivered<E>(
        result: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, E>,
    ) -> Result<(), StoreError> {
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(unavailable(e)),
            Err(_) => Err(unavailable("the producer closed before answering")),
        }
    }
}

impl Reader {
    fn partition_count(&self) -> Result<u32, StoreError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), REQUEST_TIMEOUT)
            .map_err(unavailable)?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .map_or(0, |t| t.partitions().len() as u32))
    }

    fn watermarks(&self, partition: u32) -> Result<(i64, i64), StoreError> {
        self.consumer
            .fetch_watermarks(&self.topic, partition as i32, REQUEST_TIMEOUT)
            .map_err(unavailable)
    }

    /// The messages of `partition` in `[from, to)`, in order.
    fn read(&self, partition: u32, from: i64, to: i64) -> Result<Vec<(i64, Envelope)>, StoreError> {
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.topic, partition as i32, Offset::Offset(from))
            .map_err(unavailable)?;
        self.consumer.assign(&assignment).map_err(unavailable)?;
        let mut read = Vec::with_capacity((to - from).max(0) as usize);
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        while read.last().map_or(from, |(offset, _)| offset + 1) < to {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(unavailable(format!(
                    "partition {partition}: offsets up to {to} not readable in time"
                )));
            }
            let Some(message) = self.consumer.poll(left) else {
                continue;
            };
            let message = message.map_err(unavailable)?;
            if message.partition() != partition as i32 || message.offset() < from {
                continue;
            }
            let offset = message.offset();
            let envelope: Envelope = serde_json::from_slice(message.payload().unwrap_or_default())
                .map_err(|e| corrupt(partition, offset, e))?;
            read.push((offset, envelope));
        }
        Ok(read)
    }
}

#[async_trait::async_trait]
impl ConversionStream for KafkaStream {
    fn partitions(&self) -> u32 {
        self.options.partitions.max(1)
    }

    async fn publish(&self, messages: &[Outgoing]) -> Result<(), StoreError> {
        let producer = self
            .producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let sent = Self::send_all(&producer, &self.options.topic, messages).await;
        if sent.is_err() {
            // Start over with a new producer: whatever the old one still held is dropped,
            // and the relay looks at the partitions again before publishing.
            let fresh = Self::producer(&self.options)?;
            let old = std::mem::replace(
                &mut *self.producer.lock().unwrap_or_else(|p| p.into_inner()),
                fresh,
            );
            old.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        }
        sent
    }

    async fn last_cursors(&self) -> Result<BTreeMap<u32, LogPositions>, StoreError> {
        let partitions = self.partitions();
        self.blocking(move |reader| {
            let mut cursors = BTreeMap::new();
            for partition in 0..partitions {
                let (low, high) = reader.watermarks(partition)?;
                if high <= low {
                    continue;
                }
                if let Some((_, envelope)) = reader.read(partition, high - 1, high)?.pop()
                    && let Some(cursor) = envelope.cursor
                {
                    cursors.insert(partition, cursor);
                }
            }
            Ok(cursors)
        })
        .await
    }

    async fn read(
        &self,
        after: &LogPositions,
        limit: usize,
        only: Option<&[u32]>,
    ) -> Result<Vec<StreamItem>, StoreError> {
        let (partitions, per_partition) =
            raccordo_core::store::stream::read_plan(self.partitions(), only, limit);
        let per_partition = per_partition as i64;
        let after = after.clone();
        self.blocking(move |reader| {
            let mut events = Vec::new();
            for partition in partitions {
                let (low, high) = reader.watermarks(partition)?;
                // Positions are offset + 1: `after` is also the next offset to read.
                let from = after.get(partition).max(low);
                if from >= high {
                    continue;
                }
                let to = high.min(from + per_partition);
                // The cursor before `from`: known from the last read, or read once.
                let state = match reader.states.get(&partition) {
                    Some(state) if state.next == from => state.clone(),
                    _ if from > low => ReadState {
                        next: from,
                        cursor: reader
                            .read(partition, from - 1, from)?
                            .pop()
                            .and_then(|(_, envelope)| envelope.cursor),
                    },
                    _ => ReadState {
                        next: from,
                        cursor: None,
                    },
                };
                let mut cursor = state.cursor;
                for (offset, envelope) in reader.read(partition, from, to)? {
                    let republished = match (&cursor, &envelope.cursor) {
                        (Some(before), Some(this)) => before.covers(this),
                        _ => false,
                    };
                    if let Some(this) = &envelope.cursor {
                        cursor = Some(match cursor.take() {
                            Some(mut before) => {
                                for position in this.iter() {
                                    before.advance(position);
                                }
                                before
                            }
                            None => this.clone(),
                        });
                    }
                    if republished {
                        metrics::counter!("raccordo_stream_republished_total").increment(1);
                        continue;
                    }
                    events.push(envelope.into_item(LogPosition {
                        partition,
                        offset: offset + 1,
                    })?);
                }
                reader
                    .states
                    .insert(partition, ReadState { next: to, cursor });
            }
            Ok(events)
        })
        .await
    }

    async fn describe(&self) -> Result<StreamDescription, StoreError> {
        let partitions = self.partitions();
        self.blocking(move |reader| {
            let metadata = reader
                .consumer
                .fetch_metadata(Some(&reader.topic), REQUEST_TIMEOUT)
                .map_err(unavailable)?;
            let mut messages = 0u64;
            for partition in 0..partitions {
                let (low, high) = reader.watermarks(partition)?;
                messages += (high - low).max(0) as u64;
            }
            Ok(StreamDescription {
                engine: format!("Kafka ({} broker(s))", metadata.brokers().len()),
                messages,
                partitions,
            })
        })
        .await
    }
}

/// For tests of this crate and of the binary: librdkafka's mock cluster (real Kafka-protocol
/// brokers on loopback sockets, inside the process).
pub mod testing {
    pub use rdkafka::mocking::MockCluster;
}

/// Connects, makes sure the topic exists with the expected partitions, and describes it
/// (what `raccordo check` reports).
pub async fn probe(options: &KafkaOptions) -> Result<StreamDescription, StoreError> {
    KafkaStream::open(options).await?.describe().await
}
