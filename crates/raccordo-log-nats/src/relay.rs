//! Copies the committed event log into the stream, in order, resuming where it stopped.
//!
//! Runs on one node at a time (the leader). Its progress — the log position of the last
//! event the stream acknowledged — is a consumer offset in the shared database, committed
//! after each batch's acks: a relay that dies in between publishes that batch again, and
//! the stream's duplicate window drops what it already holds.

use std::sync::Arc;
use std::time::Duration;

use raccordo_core::{ConsumerOffsets, EventLog, StoreError};
use tokio_util::sync::CancellationToken;

use crate::ConversionStream;

/// The consumer-offset name of the relay's progress.
pub const RELAY_CONSUMER: &str = "stream-relay";

/// Events read from the log and published per batch.
const BATCH: usize = 1_000;

pub struct Relay {
    pub log: Arc<dyn EventLog>,
    pub offsets: Arc<dyn ConsumerOffsets>,
    pub stream: Arc<ConversionStream>,
}

/// What one pass of the relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayProgress {
    pub published: usize,
    /// The log's last position now in the stream (its total over partitions).
    pub relayed_to: i64,
}

impl Relay {
    /// Publishes everything committed since the last stored position, a batch at a time;
    /// returns once the stream has caught up with the log's head as it was when called.
    pub async fn catch_up(&self) -> Result<RelayProgress, StoreError> {
        let mut at = self.offsets.load(RELAY_CONSUMER).await?;
        let mut published = 0;
        loop {
            let events = self.log.tail(&at, BATCH).await?;
            if events.is_empty() {
                return Ok(RelayProgress {
                    published,
                    relayed_to: at.total(),
                });
            }
            self.stream.publish(&events).await?;
            for event in &events {
                at.advance(event.position);
            }
            self.offsets.commit(RELAY_CONSUMER, &at).await?;
            published += events.len();
        }
    }

    /// Relays until `cancel`: after each commit the log signals, and at least every second
    /// (a stream that was unreachable is tried again then).
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), StoreError> {
        let mut committed = self.log.committed();
        loop {
            let head = committed.borrow_and_update().total();
            match self.catch_up().await {
                Ok(progress) => {
                    // Events committed but not yet in the stream, as of the last signal.
                    metrics::gauge!("raccordo_stream_relay_lag")
                        .set((head - progress.relayed_to).max(0) as f64);
                    if progress.published > 0 {
                        tracing::debug!(published = progress.published, "relayed to the stream");
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "the stream relay waits for NATS");
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                _ = committed.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cancel.cancelled() => return Ok(()),
            }
        }
    }
}
