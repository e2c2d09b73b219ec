//! What `raccordo migrate` carries from one backend to another: the event log as the log
//! keeps it (same sequence numbers, so consumer offsets and window checkpoints stay valid),
//! the live dedup claims, and the rows of the state tables. Backends export and import these
//! plain values; the binary moves them and checks the counts.

use crate::{DedupKey, EventId, SourceName};

/// One event of the log, with everything the log keeps of it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub seq: i64,
    pub id: EventId,
    pub source: SourceName,
    pub event_time_ms: i64,
    pub received_at_ms: i64,
    /// The stored payload's text (after any erasure).
    pub payload: String,
    /// The event whose business key this one repeated (a duplicate), if any.
    pub duplicate_of: Option<EventId>,
}

/// A live business-key claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRecord {
    pub key: DedupKey,
    pub event: EventId,
    pub expires_at_ms: i64,
}

/// A live delivery-id claim: the body's hash and the events the first delivery produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryClaimRecord {
    pub key: DedupKey,
    pub body_hash: DedupKey,
    pub events: Vec<EventId>,
    pub expires_at_ms: i64,
}

/// One value of a table row, in the few shapes both SQL backends share.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// The rows of one state table, by column name.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRows {
    pub table: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

/// The state tables a migration copies, in an order that keeps references valid. Leases
/// and rate-limit buckets are left behind: they are minutes-long and rebuilt at once.
pub const STATE_TABLES: &[&str] = &[
    "kv",
    "id_mappings",
    "secrets",
    "runs",
    "run_steps",
    "consumer_offsets",
    "alerts",
    "alert_deliveries",
    "campaign_costs",
    "window_results",
    "window_checkpoints",
    "rejected_requests",
    "audit_log",
    "work_items",
    "dead_letters",
];
