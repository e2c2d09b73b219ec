//! Domain types shared by every raccordo crate: typed ids, the clock, the event model
//! and the storage traits that backends (embedded now; PostgreSQL, Redis, Kafka/NATS later)
//! implement. Nothing here performs I/O.

pub mod clock;
pub mod event;
pub mod ids;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use event::{
    AppendBatch, AppendOutcome, DedupKey, DeliveryClaim, EventFilter, EventPage, ItemOutcome,
    NewEvent, RawEvent, StoredEvent,
};
pub use ids::{EventId, SourceName, SourceNameError};
pub use store::queue::{
    Completion, CompletionOutcome, DeadLetter, Enqueued, Job, NewWorkItem, RetryPolicy, WorkItem,
    WorkQueue,
};
pub use store::*;
