//! The conversion log on NATS JetStream, partitioned by customer.
//!
//! The database stays the commit point: an event and its dedup claims commit together
//! there, and only then is the event acknowledged (the claim is the dedup authority). A
//! [`Relay`] then copies the committed log, in order, into one JetStream stream whose
//! subjects are the partitions (`<prefix>.<partition>`): every event of one customer lands
//! in the same partition, in commit order, so per-customer state (distinct customers,
//! windows per partition) can be built by one consumer per partition.
//!
//! Exactly once in the stream: each message carries the event id as `Nats-Msg-Id`, so a
//! batch published again after a relay died between the stream's acks and the stored offset
//! is dropped by the stream's duplicate window (default 10 minutes, far longer than a leader
//! hand-over, ~18 s).
//!
//! [`ConversionStream::tail`] reads it back per partition: a position is `(partition, stream
//! sequence)`, strictly growing within a partition.

mod partition;
mod relay;
mod stream;

pub use partition::{Partitioner, partition_of};
pub use relay::{Relay, RelayProgress};
pub use stream::{ConversionStream, Envelope};

use std::time::Duration;

/// `[storage.stream]`.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// `nats://host:4222` (several, comma-separated, for a NATS cluster).
    pub url: String,
    /// The JetStream stream's name.
    pub stream: String,
    /// Subjects are `<subject_prefix>.<partition>`.
    pub subject_prefix: String,
    /// How many partitions customers are spread over. Fixed for a stream's life: changing it
    /// moves customers between partitions.
    pub partitions: u32,
    /// How long the stream remembers message ids to drop a republished event.
    pub duplicate_window: Duration,
    /// Copies of each message in a NATS cluster (1 on a single server).
    pub replicas: usize,
    /// The JSON pointer of the customer id in a stored payload.
    pub customer_pointer: String,
    /// How long the stream keeps an event (the database keeps it by its own retention).
    pub max_age: Duration,
}

impl StreamOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "RACCORDO_EVENTS".into(),
            subject_prefix: "raccordo.events".into(),
            partitions: 8,
            duplicate_window: Duration::from_secs(600),
            replicas: 1,
            customer_pointer: "/id_cliente".into(),
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Why the stream could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("NATS: {0}")]
    Unavailable(String),
    #[error("the stream holds a message that is not an event: {0}")]
    Corrupt(String),
    #[error("the stream `{0}` exists with other subjects; choose another name or prefix")]
    Mismatch(String),
}

impl From<StreamError> for raccordo_core::StoreError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Unavailable(m) => raccordo_core::StoreError::Unavailable(m),
            StreamError::Corrupt(m) => raccordo_core::StoreError::Corrupt(m),
            StreamError::Mismatch(m) => raccordo_core::StoreError::Backend(m),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StreamError {
    StreamError::Unavailable(e.to_string())
}

/// What `raccordo check` reports.
#[derive(Debug, Clone)]
pub struct Probe {
    pub server_version: String,
    pub messages: u64,
}

/// Connects, makes sure the stream exists with the expected subjects, and counts it.
pub async fn probe(options: &StreamOptions) -> Result<Probe, StreamError> {
    let stream = ConversionStream::open(options).await?;
    let (server_version, messages) = stream.describe().await?;
    Ok(Probe {
        server_version,
        messages,
    })
}
