//! Building blocks for event-log tests, shared by the conformance suite and by
//! backend-specific tests.

use raccordo_core::{AppendBatch, DedupKey, DeliveryClaim, EventId, NewEvent, SourceName};

/// A dedup key made of one repeated byte.
pub fn key(n: u8) -> DedupKey {
    DedupKey([n; 16])
}

/// An event of source `test` whose payload holds `tag`.
pub fn event(ids: &mut ulid::Generator, business_key: Option<DedupKey>, canale: &str) -> NewEvent {
    NewEvent {
        id: EventId::generate(ids, 1_000),
        source: SourceName::new("test").unwrap(),
        event_time_ms: 1_000,
        payload: format!(r#"{{"canale":"{canale}"}}"#),
        business_key,
    }
}

/// A request's append, with a one-hour business-key retention.
pub fn batch(now: i64, delivery: Option<DeliveryClaim>, events: Vec<NewEvent>) -> AppendBatch {
    AppendBatch {
        received_at_ms: now,
        delivery,
        business_key_retention_ms: 3_600_000,
        events,
    }
}
