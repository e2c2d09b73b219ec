//! Reading the log: the tailer's pages and the query API's filtered pages, straight from
//! the segment files, never past the committed head.

use std::sync::Arc;

use raccordo_core::{
    EventFilter, EventId, EventPage, LogPosition, RawEvent, SourceName, StoreError, StoredEvent,
};

use crate::Shared;
use crate::format::{self, EventRecord, Record};
use crate::segment::{Segment, Step};

/// The segments that may hold events after `after`, oldest first.
fn segments_from(shared: &Shared, after: i64) -> Vec<Arc<Segment>> {
    let all = shared.segments();
    // The last segment starting at or before the first wanted event; retention may have
    // removed older ones, and then reading starts at the oldest left.
    let start = all
        .iter()
        .rposition(|s| s.first_seq <= after + 1)
        .unwrap_or(0);
    all[start..].to_vec()
}

fn corrupt(segment: &Segment, offset: u64, what: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "the event log is damaged in {} at byte {offset}: {what}",
        segment.path.display()
    ))
}

/// Calls `visit` with every event after `after` up to `head`, in order, until it returns
/// `false`. Where it stopped is noted on the segment, so that the same reader's next call
/// starts at that frame.
fn for_each_event(
    shared: &Shared,
    after: i64,
    head: i64,
    mut visit: impl FnMut(&EventRecord<'_>) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut last_read = None;
    let result = visit_events(shared, after, head, &mut last_read, &mut visit);
    if let Some((segment, seq, offset)) = last_read {
        segment.note_read(after, seq, offset);
    }
    result
}

fn visit_events(
    shared: &Shared,
    after: i64,
    head: i64,
    last_read: &mut Option<(Arc<Segment>, i64, u64)>,
    visit: &mut impl FnMut(&EventRecord<'_>) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    for segment in segments_from(shared, after) {
        if segment.last_seq() <= after {
            continue;
        }
        let mut cursor = segment.cursor(segment.offset_for(after + 1));
        loop {
            let step = cursor.next_frame().map_err(|e| {
                StoreError::Backend(format!("reading {}: {e}", segment.path.display()))
            })?;
            match step {
                Step::End => break,
                Step::Torn { offset } => {
                    return Err(corrupt(&segment, offset, "a frame is cut short"));
                }
                Step::Bad { offset, reason } => return Err(corrupt(&segment, offset, reason)),
                Step::Frame {
                    offset,
                    header,
                    body,
                } => {
                    if header.events == 0 || header.last_seq() <= after {
                        continue;
                    }
                    if header.first_seq > head {
                        return Ok(());
                    }
                    for record in format::records(body) {
                        let record = record.map_err(|e| corrupt(&segment, offset, e.0))?;
                        if let Record::Event(e) = record {
                            if e.seq <= after {
                                continue;
                            }
                            if e.seq > head {
                                return Ok(());
                            }
                            let more = visit(&e)?;
                            *last_read = Some((segment.clone(), e.seq, offset));
                            if !more {
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn source_name(e: &EventRecord<'_>) -> Result<SourceName, StoreError> {
    SourceName::new(e.source.to_string())
        .map_err(|err| StoreError::Corrupt(format!("event {}: {err}", e.seq)))
}

pub fn tail(
    shared: &Shared,
    after: i64,
    head: i64,
    limit: usize,
) -> Result<Vec<RawEvent>, StoreError> {
    let mut out = Vec::with_capacity(limit.min(4096));
    if after >= head || limit == 0 {
        return Ok(out);
    }
    for_each_event(shared, after, head, |e| {
        out.push(RawEvent {
            position: LogPosition {
                partition: 0,
                offset: e.seq,
            },
            id: EventId::from_u128(e.id),
            source: source_name(e)?,
            event_time_ms: e.event_time_ms,
            received_at_ms: e.received_at_ms,
            payload: e.payload.to_string(),
            duplicate: e.duplicate_of.is_some(),
        });
        Ok(out.len() < limit)
    })?;
    Ok(out)
}

/// Events after `after` as the log keeps them (with the event each duplicate repeats), for
/// `raccordo migrate`.
pub fn export(
    shared: &Shared,
    after: i64,
    head: i64,
    limit: usize,
) -> Result<Vec<raccordo_core::migrate::LogRecord>, StoreError> {
    let mut out = Vec::with_capacity(limit.min(4096));
    if after >= head || limit == 0 {
        return Ok(out);
    }
    for_each_event(shared, after, head, |e| {
        out.push(raccordo_core::migrate::LogRecord {
            seq: e.seq,
            id: EventId::from_u128(e.id),
            source: source_name(e)?,
            event_time_ms: e.event_time_ms,
            received_at_ms: e.received_at_ms,
            payload: e.payload.to_string(),
            duplicate_of: e.duplicate_of.map(EventId::from_u128),
        });
        Ok(out.len() < limit)
    })?;
    Ok(out)
}

/// The query API: stored events (duplicates left out) matching the filter, in log order.
/// Field filters match a top-level string field of the payload exactly.
pub fn query(shared: &Shared, filter: &EventFilter, head: i64) -> Result<EventPage, StoreError> {
    let limit = filter.limit.clamp(1, 1000);
    let mut events = Vec::with_capacity(limit.min(128));
    let after = filter.after_seq.unwrap_or(0);
    for_each_event(shared, after, head, |e| {
        if e.duplicate_of.is_some()
            || filter
                .source
                .as_ref()
                .is_some_and(|s| s.as_str() != e.source)
            || filter
                .event_time_from_ms
                .is_some_and(|from| e.event_time_ms < from)
            || filter
                .event_time_to_ms
                .is_some_and(|to| e.event_time_ms >= to)
        {
            return Ok(true);
        }
        let payload: serde_json::Value = serde_json::from_str(e.payload)
            .map_err(|err| StoreError::Corrupt(format!("event {}: {err}", e.seq)))?;
        let matches = filter.fields.iter().all(|(field, value)| {
            payload.get(field).and_then(|v| v.as_str()) == Some(value.as_str())
        });
        if matches {
            events.push(StoredEvent {
                seq: e.seq,
                id: EventId::from_u128(e.id),
                source: source_name(e)?,
                event_time_ms: e.event_time_ms,
                received_at_ms: e.received_at_ms,
                payload,
            });
        }
        Ok(events.len() <= limit)
    })?;
    let next_after_seq = if events.len() > limit {
        events.truncate(limit);
        events.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(EventPage {
        events,
        next_after_seq,
    })
}

/// Every event `select` picks (duplicates included), for a data-subject export.
pub fn find(
    shared: &Shared,
    head: i64,
    select: &raccordo_core::EventSelector,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut out = Vec::new();
    for_each_event(shared, 0, head, |e| {
        if select(e.source, e.payload) {
            out.push(StoredEvent {
                seq: e.seq,
                id: EventId::from_u128(e.id),
                source: source_name(e)?,
                event_time_ms: e.event_time_ms,
                received_at_ms: e.received_at_ms,
                payload: serde_json::from_str(e.payload)
                    .map_err(|err| StoreError::Corrupt(format!("event {}: {err}", e.seq)))?,
            });
        }
        Ok(true)
    })?;
    Ok(out)
}
