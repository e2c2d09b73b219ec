//! The event model as the storage layer sees it: what is appended, what is read back,
//! and the dedup claims that travel with an append.

use serde::Serialize;

use crate::ids::{EventId, SourceName};
use crate::store::LogPosition;

/// A 128-bit dedup key (a truncated SHA-256 of the key material; see `raccordo-ingest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupKey(pub [u8; 16]);

/// One validated event ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub source: SourceName,
    /// Event time from the payload, epoch ms.
    pub event_time_ms: i64,
    /// Canonical JSON of the payload (sorted keys, no insignificant whitespace).
    pub payload: String,
    /// Business-key claim; `None` when business-key dedup is off for the source.
    pub business_key: Option<DedupKey>,
}

/// The delivery-id claim of one HTTP request (`webhook-id` / `Idempotency-Key`).
#[derive(Debug, Clone)]
pub struct DeliveryClaim {
    pub key: DedupKey,
    /// Hash of the request body: the same delivery id with another body is a conflict.
    pub body_hash: DedupKey,
    pub retention_ms: i64,
}

/// Everything one request wants stored, appended atomically: all of it or none of it.
#[derive(Debug, Clone)]
pub struct AppendBatch {
    pub received_at_ms: i64,
    pub delivery: Option<DeliveryClaim>,
    pub business_key_retention_ms: i64,
    pub events: Vec<NewEvent>,
}

/// What happened to one item of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "status", content = "id", rename_all = "snake_case")]
pub enum ItemOutcome {
    /// Stored now under this id.
    Accepted(EventId),
    /// Already stored (within the retention window) under this id.
    Duplicate(EventId),
}

impl ItemOutcome {
    pub fn id(&self) -> EventId {
        match self {
            ItemOutcome::Accepted(id) | ItemOutcome::Duplicate(id) => *id,
        }
    }
    pub fn is_duplicate(&self) -> bool {
        matches!(self, ItemOutcome::Duplicate(_))
    }
}

/// The result of appending one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The batch was new; per-item outcomes in input order (business-key duplicates included).
    Appended(Vec<ItemOutcome>),
    /// The delivery id was seen before with the same body: the original answer, all duplicates.
    DeliveryReplayed(Vec<ItemOutcome>),
    /// The delivery id was seen before with a different body. Nothing was stored.
    DeliveryConflict,
}

/// An event as read back from the log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredEvent {
    /// Position in the log (the offset in its partition); strictly increasing in commit
    /// order on the embedded log.
    pub seq: i64,
    pub id: EventId,
    pub source: SourceName,
    pub event_time_ms: i64,
    pub received_at_ms: i64,
    pub payload: serde_json::Value,
}

/// Filters for reading the log; all optional and combined with AND.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events with `seq` greater than this (the paging cursor).
    pub after_seq: Option<i64>,
    pub source: Option<SourceName>,
    /// Top-level payload fields that must equal the given string (e.g. `evento`, `canale`).
    pub fields: Vec<(String, String)>,
    pub event_time_from_ms: Option<i64>,
    pub event_time_to_ms: Option<i64>,
    pub limit: usize,
}

/// An event as consumers that tail the log read it: the payload left as JSON text, so each
/// consumer parses only what it needs.
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub position: LogPosition,
    pub id: EventId,
    pub source: SourceName,
    pub event_time_ms: i64,
    pub received_at_ms: i64,
    pub payload: String,
    /// A business-key duplicate of an earlier event, recorded for the metrics only.
    pub duplicate: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// Cursor for the next page, absent on the last page.
    pub next_after_seq: Option<i64>,
}
