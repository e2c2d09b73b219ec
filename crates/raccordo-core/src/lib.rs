//! Domain types shared by every raccordo crate: typed ids, the clock, the event model
//! and the storage traits that backends (embedded now; PostgreSQL, Redis, Kafka/NATS later)
//! implement. Nothing here performs I/O.

pub mod calls;
pub mod clock;
pub mod crm;
pub mod event;
pub mod ids;
pub mod privacy;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock, rfc3339};
pub use event::{
    AppendBatch, AppendOutcome, DedupKey, DeliveryClaim, EventFilter, EventPage, ItemOutcome,
    NewEvent, RawEvent, StoredEvent,
};
pub use ids::{EventId, SourceName, SourceNameError};
pub use store::queue::{
    Completion, CompletionOutcome, DeadLetter, Enqueued, Job, NewWorkItem, QueueDepth, RetryPolicy,
    WorkItem, WorkQueue,
};
pub use store::*;

/// `serialize_with` for secrets in config structs: a serialised config (the reference
/// docs, a printed config) shows that a secret is set, never the secret.
pub fn redacted<T, S: serde::Serializer>(_: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

/// [`redacted`] for optional secrets: absent stays absent.
pub fn redacted_option<T, S: serde::Serializer>(
    value: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}
