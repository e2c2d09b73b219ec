//! The JetStream stream: publishing committed events and reading them back per partition.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use raccordo_core::{EventId, LogPosition, LogPositions, RawEvent, SourceName};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{Partitioner, StreamError, StreamOptions, unavailable};

/// One event as a stream message carries it (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub source: String,
    pub event_time_ms: i64,
    pub received_at_ms: i64,
    /// The stored payload's text, as the log keeps it.
    pub payload: String,
    /// A business-key duplicate of an earlier event (kept for the metrics' duplicate count).
    pub duplicate: bool,
}

impl Envelope {
    pub fn of(event: &RawEvent) -> Self {
        Self {
            id: event.id.to_string(),
            source: event.source.to_string(),
            event_time_ms: event.event_time_ms,
            received_at_ms: event.received_at_ms,
            payload: event.payload.clone(),
            duplicate: event.duplicate,
        }
    }

    fn into_event(self, position: LogPosition) -> Result<RawEvent, StreamError> {
        let bad = |what: &str| StreamError::Corrupt(format!("{what} at {position:?}"));
        Ok(RawEvent {
            position,
            id: self.id.parse::<EventId>().map_err(|_| bad("an event id"))?,
            source: SourceName::new(self.source).map_err(|_| bad("a source name"))?,
            event_time_ms: self.event_time_ms,
            received_at_ms: self.received_at_ms,
            payload: self.payload,
            duplicate: self.duplicate,
        })
    }
}

/// The stream of one hub, shared by its nodes.
pub struct ConversionStream {
    context: jetstream::Context,
    stream: stream::Stream,
    client: async_nats::Client,
    options: StreamOptions,
    partitioner: Partitioner,
    /// Per partition, a consumer already positioned where the last read stopped: the next
    /// read from there costs one fetch, not a new consumer.
    readers: Mutex<HashMap<u32, (u64, consumer::PullConsumer)>>,
}

impl ConversionStream {
    /// Connects and creates the stream when it is missing.
    pub async fn open(options: &StreamOptions) -> Result<Self, StreamError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(options.url.as_str())
            .await
            .map_err(unavailable)?;
        let context = jetstream::new(client.clone());
        let subjects = format!("{}.*", options.subject_prefix);
        let stream = context
            .get_or_create_stream(stream::Config {
                name: options.stream.clone(),
                subjects: vec![subjects.clone()],
                duplicate_window: options.duplicate_window,
                num_replicas: options.replicas,
                max_age: options.max_age,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut stream = stream;
        let info = stream.info().await.map_err(unavailable)?;
        if info.config.subjects != [subjects] {
            return Err(StreamError::Mismatch(options.stream.clone()));
        }
        Ok(Self {
            context,
            stream,
            client,
            partitioner: Partitioner::new(options.customer_pointer.clone(), options.partitions),
            options: options.clone(),
            readers: Mutex::new(HashMap::new()),
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitioner.partitions()
    }

    fn subject(&self, partition: u32) -> String {
        format!("{}.{partition}", self.options.subject_prefix)
    }

    /// The server's version and how many messages the stream holds.
    pub(crate) async fn describe(&self) -> Result<(String, u64), StreamError> {
        let mut stream = self.stream.clone();
        let info = stream.info().await.map_err(unavailable)?;
        Ok((
            self.client.server_info().version.clone(),
            info.state.messages,
        ))
    }

    /// Publishes `events` (in log order) and waits for the stream to have them all; their
    /// positions in the stream, in order. An event the stream already holds (published
    /// before, within the duplicate window) is not stored again.
    pub async fn publish(&self, events: &[RawEvent]) -> Result<Vec<LogPosition>, StreamError> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let envelope = Envelope::of(event);
            let partition = self.partitioner.place(&event.payload, &envelope.id);
            let body = serde_json::to_vec(&envelope).map_err(unavailable)?;
            let ack = self
                .context
                .send_publish(
                    self.subject(partition),
                    jetstream::message::PublishMessage::build()
                        .message_id(envelope.id)
                        .payload(body.into()),
                )
                .await
                .map_err(unavailable)?;
            pending.push((partition, ack));
        }
        let mut positions = Vec::with_capacity(pending.len());
        let mut duplicates = 0u64;
        for (partition, ack) in pending {
            let ack = ack.await.map_err(unavailable)?;
            duplicates += u64::from(ack.duplicate);
            positions.push(LogPosition {
                partition,
                offset: ack.sequence as i64,
            });
        }
        metrics::counter!("raccordo_stream_published_total").increment(events.len() as u64);
        if duplicates > 0 {
            metrics::counter!("raccordo_stream_republished_total").increment(duplicates);
        }
        Ok(positions)
    }

    /// Up to `limit` events after `after`, in stream order within each partition (all
    /// partitions, or only `only` when given).
    pub async fn tail(
        &self,
        after: &LogPositions,
        limit: usize,
        only: Option<&[u32]>,
    ) -> Result<Vec<RawEvent>, StreamError> {
        let partitions: Vec<u32> = match only {
            Some(only) => only.to_vec(),
            None => (0..self.partitions()).collect(),
        };
        let per_partition = limit.div_ceil(partitions.len().max(1)).max(1);
        let mut events = Vec::new();
        for partition in partitions {
            let from = after.get(partition) as u64 + 1;
            events.extend(self.read_partition(partition, from, per_partition).await?);
        }
        Ok(events)
    }

    async fn read_partition(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RawEvent>, StreamError> {
        let mut readers = self.readers.lock().await;
        let consumer = match readers.remove(&partition) {
            Some((next, consumer)) if next == from => consumer,
            _ => self
                .stream
                .create_consumer(consumer::pull::Config {
                    filter_subject: self.subject(partition),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: from,
                    },
                    ack_policy: consumer::AckPolicy::None,
                    // A reader that stops reading leaves nothing behind on the server.
                    inactive_threshold: Duration::from_secs(60),
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?,
        };
        let mut batch = consumer
            .fetch()
            .max_messages(limit)
            .messages()
            .await
            .map_err(unavailable)?;
        let mut events = Vec::new();
        let mut next = from;
        while let Some(message) = batch.next().await {
            let message = message.map_err(unavailable)?;
            let sequence = message.info().map_err(unavailable)?.stream_sequence;
            let envelope: Envelope = serde_json::from_slice(&message.payload)
                .map_err(|e| StreamError::Corrupt(format!("message {sequence}: {e}")))?;
            events.push(envelope.into_event(LogPosition {
                partition,
                offset: sequence as i64,
            })?);
            next = sequence + 1;
        }
        readers.insert(partition, (next, consumer));
        Ok(events)
    }
}
