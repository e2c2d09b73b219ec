//! The JetStream stream: publishing committed events and reading them back per partition.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use raccordo_core::{
    ConversionStream, Envelope, LogPosition, LogPositions, Outgoing, StoreError, StreamDescription,
    StreamItem,
};
use tokio::sync::Mutex;

use crate::{StreamOptions, unavailable};

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!(
        "the stream holds a message that is not an event: {what}"
    ))
}

/// The stream of one hub, shared by its nodes.
pub struct NatsStream {
    context: jetstream::Context,
    stream: stream::Stream,
    client: async_nats::Client,
    options: StreamOptions,
    /// Per partition, a consumer already positioned where the last read stopped: the next
    /// read from there costs one fetch, not a new consumer.
    readers: Mutex<HashMap<u32, (u64, consumer::PullConsumer)>>,
}

impl NatsStream {
    /// Connects and creates the stream when it is missing.
    pub async fn open(options: &StreamOptions) -> Result<Self, StoreError> {
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
            return Err(StoreError::Backend(format!(
                "the NATS stream `{}` exists with other subjects; choose another name or prefix",
                options.stream
            )));
        }
        Ok(Self {
            context,
            stream,
            client,
            options: options.clone(),
            readers: Mutex::new(HashMap::new()),
        })
    }

    fn subject(&self, partition: u32) -> String {
        format!("{}.{partition}", self.options.subject_prefix)
    }

    async fn read_partition(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StreamItem>, StoreError> {
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
                .map_err(|e| corrupt(format!("message {sequence}: {e}")))?;
            events.push(envelope.into_item(LogPosition {
                partition,
                offset: sequence as i64,
            })?);
            next = sequence + 1;
        }
        readers.insert(partition, (next, consumer));
        Ok(events)
    }
}

#[async_trait::async_trait]
impl ConversionStream for NatsStream {
    fn partitions(&self) -> u32 {
        self.options.partitions.max(1)
    }

    async fn publish(&self, messages: &[Outgoing]) -> Result<(), StoreError> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let body = serde_json::to_vec(&message.envelope).map_err(unavailable)?;
            let ack = self
                .context
                .send_publish(
                    self.subject(message.partition),
                    jetstream::message::PublishMessage::build()
                        .message_id(message.envelope.id.clone())
                        .payload(body.into()),
                )
                .await
                .map_err(unavailable)?;
            pending.push(ack);
        }
        let mut duplicates = 0u64;
        for ack in pending {
            duplicates += u64::from(ack.await.map_err(unavailable)?.duplicate);
        }
        if duplicates > 0 {
            metrics::counter!("raccordo_stream_republished_total").increment(duplicates);
        }
        Ok(())
    }

    async fn last_cursors(&self) -> Result<BTreeMap<u32, LogPositions>, StoreError> {
        let mut cursors = BTreeMap::new();
        for partition in 0..self.partitions() {
            let last = self
                .stream
                .get_last_raw_message_by_subject(&self.subject(partition))
                .await;
            let message = match last {
                Ok(message) => message,
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    continue;
                }
                Err(e) => return Err(unavailable(e)),
            };
            let envelope: Envelope = serde_json::from_slice(&message.payload)
                .map_err(|e| corrupt(format!("message {}: {e}", message.sequence)))?;
            if let Some(cursor) = envelope.cursor {
                cursors.insert(partition, cursor);
            }
        }
        Ok(cursors)
    }

    async fn read(
        &self,
        after: &LogPositions,
        limit: usize,
        only: Option<&[u32]>,
    ) -> Result<Vec<StreamItem>, StoreError> {
        let (partitions, per_partition) =
            raccordo_core::store::stream::read_plan(self.partitions(), only, limit);
        let mut events = Vec::new();
        for partition in partitions {
            let from = after.get(partition) as u64 + 1;
            events.extend(self.read_partition(partition, from, per_partition).await?);
        }
        Ok(events)
    }

    async fn describe(&self) -> Result<StreamDescription, StoreError> {
        let mut stream = self.stream.clone();
        let info = stream.info().await.map_err(unavailable)?;
        Ok(StreamDescription {
            engine: format!("NATS {}", self.client.server_info().version),
            messages: info.state.messages,
            partitions: self.partitions(),
        })
    }
}
