//! Storage traits. Business logic depends on these, never on a database.

use async_trait::async_trait;

use crate::event::{AppendBatch, AppendOutcome, EventFilter, EventPage, RawEvent};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The writer's queue is full: the caller should back off (HTTP 429).
    #[error("the storage writer is saturated; retry after {retry_after_ms} ms")]
    Overloaded { retry_after_ms: u64 },
    /// The store is shutting down or its writer stopped.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Backend(String),
}

/// The durable, deduplicating event log.
///
/// Dedup claims (delivery id, business keys) are part of the append, not a separate store:
/// claiming a key and storing its event must commit together, or a crash between the two
/// would either lose an acknowledged event or store a duplicate. A cluster backend keeps the
/// same contract (e.g. a PostgreSQL unique index, with Redis only as a front cache).
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Stores the batch's new events and claims their keys in one durable commit.
    /// Returns only once the outcome is durable at the configured level.
    async fn append(&self, batch: AppendBatch) -> Result<AppendOutcome, StoreError>;

    /// Reads events in log order.
    async fn read(&self, filter: EventFilter) -> Result<EventPage, StoreError>;

    /// Up to `limit` events after `after_seq`, in log order, payloads as text (for tailing),
    /// business-key duplicates included and flagged (`read` leaves them out).
    async fn tail(&self, after_seq: i64, limit: usize) -> Result<Vec<RawEvent>, StoreError>;

    /// Whether the store accepts writes (for `/readyz`).
    fn is_ready(&self) -> bool;

    /// The `seq` of the newest committed event, updated after every commit: consumers
    /// that tail the log wait on it instead of polling.
    fn committed(&self) -> tokio::sync::watch::Receiver<i64>;
}
