//! The store traits. Business logic depends on these, never on a database: the embedded
//! backend (`raccordo-storage-*` for the embedded file) implements every one of them, a cluster backend
//! implements the same set, and `raccordo-storage-tests` holds the conformance suite each
//! implementation must pass unchanged.
//!
//! Every method takes the current time from its caller (`now_ms`) instead of reading a clock,
//! so that expiry, leases and buckets can be tested with a `ManualClock`.

mod alerts;
mod audit;
mod costs;
mod kv;
mod log;
mod mappings;
pub mod migrate;
mod offsets;
pub mod queue;
mod ratelimit;
mod requests;
mod runs;
mod secrets;
pub mod stream;
mod windows;

use std::sync::Arc;

pub use alerts::{AlertHistory, AlertRecord, DeliveryRecord, DeliveryStatus};
pub use audit::{AuditLog, AuditRecord};
pub use costs::CampaignCosts;
pub use kv::{KeyValueStore, Versioned};
pub use log::{
    ErasedEvents, EventLog, EventQuery, EventSelector, LogPosition, LogPositions, PayloadRewrite,
};
pub use mappings::{IdMappings, RecordRef};
pub use offsets::ConsumerOffsets;
pub use ratelimit::{Admission, BucketSpec, BucketState, RateLimitStore};
pub use requests::{RejectedFilter, RejectedRequest, RejectedRequests, ReplayRecord};
pub use runs::{NewRun, Run, RunStatus, RunStore, RunSummary, StepRecord, StepStatus};
pub use secrets::{SecretStore, StoredSecret};
pub use stream::{
    ConversionStream, Envelope, Outgoing, Partitioner, Relay, RelayProgress, StreamDescription,
    StreamItem, partition_of,
};
pub use windows::{WindowCheckpoint, WindowResult, WindowStore};

/// Why a store operation failed, and whether trying again can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The writer's queue is full: the caller should back off (HTTP 429).
    #[error("the storage writer is saturated; retry after {retry_after_ms} ms")]
    Overloaded { retry_after_ms: u64 },
    /// The store is shutting down, its writer stopped, or its server cannot be reached.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The disk (or the configured size limit) is full: nothing was written; writes succeed
    /// again once space is freed.
    #[error("the store is full: {0}")]
    Full(String),
    /// Stored data cannot be read (a damaged page, an undecodable row).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("storage failure: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether the same call may succeed later without anyone changing the request: the
    /// work queue retries these, HTTP answers them with `Retry-After`.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Overloaded { .. } | StoreError::Unavailable(_) | StoreError::Full(_)
        )
    }

    /// A suggested wait before retrying, for `Retry-After`.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            StoreError::Overloaded { retry_after_ms } => Some(*retry_after_ms),
            StoreError::Unavailable(_) => Some(1_000),
            StoreError::Full(_) => Some(30_000),
            StoreError::Corrupt(_) | StoreError::Backend(_) => None,
        }
    }
}

/// Every store the hub uses, as trait objects. The binary builds one from `[storage]`
/// (the only place that names a backend); everything else takes what it needs from here.
#[derive(Clone)]
pub struct Stores {
    pub log: Arc<dyn EventLog>,
    pub query: Arc<dyn EventQuery>,
    pub queue: Arc<dyn queue::WorkQueue>,
    pub kv: Arc<dyn KeyValueStore>,
    /// Entries that may be lost without harm (the AI result cache): a cluster keeps them
    /// in Redis, next to the nodes; embedded, they share `kv`'s file.
    pub cache: Arc<dyn KeyValueStore>,
    pub mappings: Arc<dyn IdMappings>,
    pub secrets: Arc<dyn SecretStore>,
    pub rate_limits: Arc<dyn RateLimitStore>,
    pub runs: Arc<dyn RunStore>,
    pub windows: Arc<dyn WindowStore>,
    pub offsets: Arc<dyn ConsumerOffsets>,
    pub alerts: Arc<dyn AlertHistory>,
    pub costs: Arc<dyn CampaignCosts>,
    pub requests: Arc<dyn RejectedRequests>,
    pub audit: Arc<dyn AuditLog>,
}
