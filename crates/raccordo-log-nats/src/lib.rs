//! The conversion stream on NATS JetStream: one stream whose subjects are the partitions
//! (`<prefix>.<partition>`), an implementation of `raccordo_core::ConversionStream`. The
//! relay, the placement by customer and the exactly-once resume are the core's
//! (`raccordo_core::store::stream`); this crate only speaks JetStream.
//!
//! Besides the cursors every relay uses, each message carries the event id as `Nats-Msg-Id`,
//! so the stream's duplicate window (default 10 minutes) is a second guard against an event
//! published twice.
//!
//! A position read back is `(partition, stream sequence)`, strictly growing within a
//! partition.

mod stream;

pub use stream::NatsStream;

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
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> raccordo_core::StoreError {
    raccordo_core::StoreError::Unavailable(format!("NATS: {e}"))
}

/// Connects, makes sure the stream exists with the expected subjects, and describes it
/// (what `raccordo check` reports).
pub async fn probe(
    options: &StreamOptions,
) -> Result<raccordo_core::StreamDescription, raccordo_core::StoreError> {
    use raccordo_core::ConversionStream;
    NatsStream::open(options).await?.describe().await
}
