//! The durable event log and its query side.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::event::{AppendBatch, AppendOutcome, EventFilter, EventPage, RawEvent, StoredEvent};
use crate::ids::EventId;

/// Where one event sits in the log: its partition and its offset in that partition.
/// Offsets start at 1 and grow strictly in commit order within a partition; the embedded
/// log has one partition (0), a partitioned log (Kafka, JetStream) has several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogPosition {
    pub partition: u32,
    pub offset: i64,
}

/// How far a reader got: per partition, the offset of the last event read (absent: none).
/// Also the shape of the log's head (the newest committed offset per partition).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPositions(BTreeMap<u32, i64>);

impl LogPositions {
    /// One partition at `offset` (the embedded log's shape).
    pub fn single(offset: i64) -> Self {
        let mut p = Self::default();
        p.0.insert(0, offset);
        p
    }

    /// The last offset read in `partition` (0: nothing yet).
    pub fn get(&self, partition: u32) -> i64 {
        self.0.get(&partition).copied().unwrap_or(0)
    }

    /// Records that `position` was read; never moves a partition backwards.
    pub fn advance(&mut self, position: LogPosition) {
        let at = self.0.entry(position.partition).or_insert(0);
        *at = (*at).max(position.offset);
    }

    /// Whether `position` is at or before these positions (its partition was read that far).
    pub fn holds(&self, position: LogPosition) -> bool {
        self.0
            .get(&position.partition)
            .is_some_and(|at| position.offset <= *at)
    }

    /// Whether `head` holds anything past these positions.
    pub fn is_behind(&self, head: &LogPositions) -> bool {
        head.0.iter().any(|(p, offset)| *offset > self.get(*p))
    }

    /// Whether every partition is at or past `other`'s position.
    pub fn covers(&self, other: &LogPositions) -> bool {
        !self.is_behind(other)
    }

    /// Events read over all partitions (for progress figures such as `processed_seq`; on the
    /// embedded log this is the log sequence number).
    pub fn total(&self) -> i64 {
        self.0.values().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = LogPosition> + '_ {
        self.0.iter().map(|(partition, offset)| LogPosition {
            partition: *partition,
            offset: *offset,
        })
    }
}

/// The durable, deduplicating event log: the write side and tailing.
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

    /// Up to `limit` events after `after`, in log order within each partition, payloads as
    /// text, business-key duplicates included and flagged (queries leave them out).
    async fn tail(&self, after: &LogPositions, limit: usize) -> Result<Vec<RawEvent>, StoreError>;

    /// Whether the store accepts writes (for `/readyz`): false while stopped or while the
    /// last write failed because the disk is full.
    fn is_ready(&self) -> bool;

    /// The newest committed position of every partition, updated after every commit:
    /// consumers that tail the log wait on it instead of polling.
    fn committed(&self) -> tokio::sync::watch::Receiver<LogPositions>;

    /// Rewrites, durably and in place, every stored event `rewrite` picks, and drops the
    /// business-key claims of those events. A rewrite that changes a payload's length is
    /// refused (nothing changes). Idempotent when `rewrite` no longer picks what it changed.
    async fn erase(&self, rewrite: PayloadRewrite) -> Result<ErasedEvents, StoreError>;

    /// Stops taking appends, finishes what was accepted and releases the store.
    async fn close(&self) {}
}

/// Decides, for one stored event (its source and payload text), whether it belongs to the
/// data subject being erased and, if so, its new payload: the same byte length, with the
/// personal values replaced (see `privacy`). `None`: leave the event alone.
pub type PayloadRewrite = Arc<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

/// Picks stored events (by source and payload text) for a data-subject export.
pub type EventSelector = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// What an erasure changed in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErasedEvents {
    /// The events rewritten (business-key duplicates included).
    pub ids: Vec<EventId>,
    /// Business-key dedup claims of those events dropped (their keys hash personal data).
    pub claims: u64,
}

/// Filtered reads of stored events (`GET /api/v1/events`), split from the log because a
/// cluster serves them from a database while the log itself is a stream.
#[async_trait]
pub trait EventQuery: Send + Sync + 'static {
    /// Events in log order, business-key duplicates left out.
    async fn read(&self, filter: EventFilter) -> Result<EventPage, StoreError>;

    /// Every stored event `select` picks, in log order, duplicates included (a data-subject
    /// export reads the whole log: it is rare and runs off the ingest path).
    async fn find(&self, select: EventSelector) -> Result<Vec<StoredEvent>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_advance_per_partition_and_never_back() {
        let mut read = LogPositions::default();
        read.advance(LogPosition {
            partition: 1,
            offset: 5,
        });
        read.advance(LogPosition {
            partition: 1,
            offset: 3,
        });
        read.advance(LogPosition {
            partition: 0,
            offset: 2,
        });
        assert_eq!((read.get(0), read.get(1), read.get(7)), (2, 5, 0));
        assert_eq!(read.total(), 7);
        let mut head = read.clone();
        assert!(!read.is_behind(&head) && read.covers(&head));
        head.advance(LogPosition {
            partition: 2,
            offset: 1,
        });
        assert!(read.is_behind(&head), "a new partition with data");
        let text = serde_json::to_string(&read).unwrap();
        assert_eq!(serde_json::from_str::<LogPositions>(&text).unwrap(), read);
    }
}
