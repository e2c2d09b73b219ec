//! The conversion stream of a cluster: the committed event log copied, in order, into a
//! partitioned log (NATS JetStream or Kafka), partitioned by customer.
//!
//! The database stays the commit point: an event and its dedup claims commit together there,
//! and only then is the event acknowledged. A [`Relay`] then copies the committed log into the
//! stream: every event of one customer lands in the same partition, in commit order, so
//! per-customer state (distinct customers, windows per partition) is built by one reader per
//! partition.
//!
//! **Exactly once in the stream, whatever the engine.** Each message carries the relay's
//! cursor after it (the log position it had reached). Within a partition messages keep the
//! relay's order, so an event placed in partition `p` is already in the stream exactly when
//! its log position is at or before the cursor of `p`'s newest message. A relay that starts
//! (or recovers from a failed publish) reads those cursors once and skips what they cover:
//! no deduplication window of the engine is needed (JetStream's message ids remain a second
//! guard; Kafka has none across producers).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ConsumerOffsets, EventId, EventLog, LogPosition, LogPositions, RawEvent, SourceName};

use super::StoreError;

/// The partition of `customer` among `partitions` (at least 1): a pure function, stable
/// across nodes, restarts and versions (SHA-256, not the process's randomly keyed hasher).
pub fn partition_of(customer: &[u8], partitions: u32) -> u32 {
    let digest = Sha256::digest(customer);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(partitions.max(1))) as u32
}

/// How the consumers of the stream tell an event's customer (e.g. the live windows, through
/// the sources' mappings): a number standing for it, or `None` when the event names none.
pub type CustomerOf = Arc<dyn Fn(&RawEvent) -> Option<u64> + Send + Sync>;

/// Reads the customer from a stored payload and places the event.
#[derive(Clone)]
pub struct Partitioner {
    pointer: String,
    partitions: u32,
    /// Where set, the customer as the stream's consumers tell it, before `pointer`: a
    /// partition then holds every event of its customers however their sources name them.
    customer_of: Option<CustomerOf>,
}

impl std::fmt::Debug for Partitioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitioner")
            .field("pointer", &self.pointer)
            .field("partitions", &self.partitions)
            .field("customer_of", &self.customer_of.is_some())
            .finish()
    }
}

impl Partitioner {
    pub fn new(pointer: impl Into<String>, partitions: u32) -> Self {
        Self {
            pointer: pointer.into(),
            partitions: partitions.max(1),
            customer_of: None,
        }
    }

    /// Places events by the customer `customer_of` tells (falling back to the pointer).
    pub fn with_customer_of(mut self, customer_of: CustomerOf) -> Self {
        self.customer_of = Some(customer_of);
        self
    }

    /// The partition of a stored event: [`Self::place`], or by the customer `customer_of`
    /// tells where set.
    pub fn place_event(&self, event: &RawEvent) -> u32 {
        match self.customer_of.as_ref().and_then(|of| of(event)) {
            Some(customer) => partition_of(&customer.to_le_bytes(), self.partitions),
            None => self.place(&event.payload, &event.id.to_string()),
        }
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of an event: its customer's, or — for an event without one (a source
    /// whose payload names no customer) — its own id's, which spreads such events evenly.
    pub fn place(&self, payload: &str, event_id: &str) -> u32 {
        let customer = serde_json::from_str::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| match v.pointer(&self.pointer)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            });
        match customer {
            Some(customer) => partition_of(customer.as_bytes(), self.partitions),
            None => partition_of(event_id.as_bytes(), self.partitions),
        }
    }
}

/// One event as a stream message carries it (JSON), whatever the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub source: String,
    pub event_time_ms: i64,
    pub received_at_ms: i64,
    /// The stored payload's text, as the log keeps it.
    pub payload: String,
    /// A business-key duplicate of an earlier event (kept for the metrics' duplicate count).
    pub duplicate: bool,
    /// The relay's log cursor once this event was published (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<LogPositions>,
    /// The newest event time of the whole log before this event: what a reader of one
    /// partition needs to advance its windows exactly as one reader of the whole log would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_time_ms: Option<i64>,
    /// A tick: no event, only `stream_time_ms`, for a partition that had none of the latest
    /// events (its windows still close).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tick: bool,
}

impl Envelope {
    pub fn of(event: &RawEvent, cursor: Option<LogPositions>) -> Self {
        Self {
            id: event.id.to_string(),
            source: event.source.to_string(),
            event_time_ms: event.event_time_ms,
            received_at_ms: event.received_at_ms,
            payload: event.payload.clone(),
            duplicate: event.duplicate,
            cursor,
            stream_time_ms: None,
            tick: false,
        }
    }

    /// A tick telling a partition the stream's time.
    pub fn tick(stream_time_ms: i64, cursor: LogPositions) -> Self {
        Self {
            id: String::new(),
            source: String::new(),
            event_time_ms: stream_time_ms,
            received_at_ms: 0,
            payload: String::new(),
            duplicate: false,
            cursor: Some(cursor),
            stream_time_ms: Some(stream_time_ms),
            tick: true,
        }
    }

    /// What this message holds, at `position` in the stream.
    pub fn into_item(self, position: LogPosition) -> Result<StreamItem, StoreError> {
        let stream_time_ms = self.stream_time_ms;
        if self.tick {
            return Ok(StreamItem {
                position,
                stream_time_ms,
                event: None,
            });
        }
        let bad = |what: &str| StoreError::Corrupt(format!("{what} at {position:?}"));
        Ok(StreamItem {
            position,
            stream_time_ms,
            event: Some(RawEvent {
                position,
                id: self.id.parse::<EventId>().map_err(|_| bad("an event id"))?,
                source: SourceName::new(self.source).map_err(|_| bad("a source name"))?,
                event_time_ms: self.event_time_ms,
                received_at_ms: self.received_at_ms,
                payload: self.payload,
                duplicate: self.duplicate,
            }),
        })
    }
}

/// One message read back from a partition.
#[derive(Debug, Clone)]
pub struct StreamItem {
    pub position: LogPosition,
    /// The newest event time of the whole log before this message (see [`Envelope`]).
    pub stream_time_ms: Option<i64>,
    /// `None` for a tick.
    pub event: Option<RawEvent>,
}

/// A message for the stream: an event and the partition it goes to.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub partition: u32,
    pub envelope: Envelope,
}

/// What `raccordo check` reports of a stream.
#[derive(Debug, Clone)]
pub struct StreamDescription {
    /// The engine and its version (`NATS 2.9.10`, `Kafka (3 brokers)`).
    pub engine: String,
    /// Messages the stream holds now.
    pub messages: u64,
    pub partitions: u32,
}

/// A partitioned log the committed events are copied into. Positions read from it are
/// `(partition, offset)`, strictly growing within a partition; `tail` reads after them.
#[async_trait::async_trait]
pub trait ConversionStream: Send + Sync {
    fn partitions(&self) -> u32;

    /// Publishes `messages` (in relay order) and returns once the stream holds them all.
    async fn publish(&self, messages: &[Outgoing]) -> Result<(), StoreError>;

    /// Per partition, the cursor of its newest message (a partition without any is absent).
    async fn last_cursors(&self) -> Result<BTreeMap<u32, LogPositions>, StoreError>;

    /// Up to about `limit` messages after `after`, in stream order within each partition
    /// (all partitions, or only `only`), ticks included.
    async fn read(
        &self,
        after: &LogPositions,
        limit: usize,
        only: Option<&[u32]>,
    ) -> Result<Vec<StreamItem>, StoreError>;

    /// The events of [`Self::read`], without ticks and stream times.
    async fn tail(
        &self,
        after: &LogPositions,
        limit: usize,
        only: Option<&[u32]>,
    ) -> Result<Vec<RawEvent>, StoreError> {
        Ok(self
            .read(after, limit, only)
            .await?
            .into_iter()
            .filter_map(|item| item.event)
            .collect())
    }

    async fn describe(&self) -> Result<StreamDescription, StoreError>;
}

/// The partitions a read covers (all of `partitions`, or `only`) and how many messages to
/// ask of each so that the read returns about `limit`.
pub fn read_plan(partitions: u32, only: Option<&[u32]>, limit: usize) -> (Vec<u32>, usize) {
    let partitions: Vec<u32> = match only {
        Some(only) => only.to_vec(),
        None => (0..partitions.max(1)).collect(),
    };
    let per_partition = limit.div_ceil(partitions.len().max(1)).max(1);
    (partitions, per_partition)
}

/// Whether `event`, placed in `partition`, is already in the stream by `cursors` (each
/// partition's newest message's cursor).
pub fn already_in_stream(
    event: &RawEvent,
    partition: u32,
    cursors: &BTreeMap<u32, LogPositions>,
) -> bool {
    cursors
        .get(&partition)
        .is_some_and(|cursor| cursor.holds(event.position))
}

/// The consumer-offset name of the relay's progress.
pub const RELAY_CONSUMER: &str = "stream-relay";

/// The consumer-offset name under which the relay keeps the newest event time it published
/// (as partition 0's offset), committed before its progress: a relay taking over stamps the
/// next events exactly as its predecessor would have.
pub const RELAY_STREAM_TIME: &str = "stream-relay:stream-time";

/// A partition that had no event in a batch is told the stream's time when it moved by at
/// least this much event time since the partition last heard it.
pub const TICK_EVERY_MS: i64 = 1_000;

/// Events read from the log and published per batch.
const RELAY_BATCH: usize = 1_000;

/// Copies the committed event log into the stream, in order, resuming where it stopped. Runs
/// on one node at a time (the leader). Its progress is a consumer offset in the shared
/// database, committed after each batch's acks; what a relay that died in between had already
/// published is recognised by the cursors in the stream and not published again.
pub struct Relay {
    log: Arc<dyn EventLog>,
    offsets: Arc<dyn ConsumerOffsets>,
    stream: Arc<dyn ConversionStream>,
    partitioner: Partitioner,
    state: tokio::sync::Mutex<RelayState>,
}

#[derive(Default)]
struct RelayState {
    /// Read the stream's cursors and the stored stream time (at start and after a failed
    /// publish).
    loaded: bool,
    /// The stream's cursors: events they cover are skipped. `None` once the relay is past all.
    guard: Option<BTreeMap<u32, LogPositions>>,
    /// The newest event time published so far (the next event's stream time).
    stream_time: Option<i64>,
    /// Per partition, the stream time it last heard.
    told: BTreeMap<u32, i64>,
}

/// What one pass of the relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayProgress {
    pub published: usize,
    /// Events of the log found already in the stream (published by a relay that died).
    pub skipped: usize,
    /// Ticks sent to partitions that had no event of their own.
    pub ticks: usize,
    /// The log's last position now in the stream (its total over partitions).
    pub relayed_to: i64,
}

impl Relay {
    pub fn new(
        log: Arc<dyn EventLog>,
        offsets: Arc<dyn ConsumerOffsets>,
        stream: Arc<dyn ConversionStream>,
        partitioner: Partitioner,
    ) -> Self {
        Self {
            log,
            offsets,
            stream,
            partitioner,
            state: tokio::sync::Mutex::new(RelayState::default()),
        }
    }

    async fn load(&self, state: &mut RelayState) -> Result<(), StoreError> {
        let cursors = self.stream.last_cursors().await?;
        let stored = self.offsets.load(RELAY_STREAM_TIME).await?;
        state.guard = (!cursors.is_empty()).then_some(cursors);
        state.stream_time = stored.iter().next().map(|p| p.offset);
        state.told.clear();
        state.loaded = true;
        Ok(())
    }

    /// Publishes everything committed since the last stored position, a batch at a time;
    /// returns once the stream has caught up with the log's head as it was when called.
    pub async fn catch_up(&self) -> Result<RelayProgress, StoreError> {
        let mut state = self.state.lock().await;
        if !state.loaded {
            self.load(&mut state).await?;
        }
        let mut at = self.offsets.load(RELAY_CONSUMER).await?;
        let mut progress = RelayProgress::default();
        loop {
            let events = self.log.tail(&at, RELAY_BATCH).await?;
            if events.is_empty() {
                progress.relayed_to = at.total();
                return Ok(progress);
            }
            let mut messages = Vec::with_capacity(events.len());
            let mut had_event = std::collections::BTreeSet::new();
            for event in &events {
                at.advance(event.position);
                let stamp = state.stream_time;
                state.stream_time =
                    Some(stamp.map_or(event.event_time_ms, |t| t.max(event.event_time_ms)));
                let partition = self.partitioner.place_event(event);
                if state
                    .guard
                    .as_ref()
                    .is_some_and(|cursors| already_in_stream(event, partition, cursors))
                {
                    progress.skipped += 1;
                    continue;
                }
                had_event.insert(partition);
                if let Some(stamp) = stamp {
                    state.told.insert(partition, stamp);
                }
                let mut envelope = Envelope::of(event, Some(at.clone()));
                envelope.stream_time_ms = stamp;
                messages.push(Outgoing {
                    partition,
                    envelope,
                });
            }
            let published = messages.len();
            if let Some(now) = state.stream_time {
                for partition in 0..self.partitioner.partitions() {
                    let heard = state.told.get(&partition).copied();
                    if !had_event.contains(&partition)
                        && heard.is_none_or(|heard| now - heard >= TICK_EVERY_MS)
                    {
                        state.told.insert(partition, now);
                        messages.push(Outgoing {
                            partition,
                            envelope: Envelope::tick(now, at.clone()),
                        });
                        progress.ticks += 1;
                    }
                }
            }
            if let Err(e) = self.stream.publish(&messages).await {
                // Some of the batch may be in the stream: look again before the next try.
                state.loaded = false;
                return Err(e);
            }
            if state
                .guard
                .as_ref()
                .is_some_and(|cursors| cursors.values().all(|cursor| at.covers(cursor)))
            {
                // Past every cursor: nothing further can be in the stream already.
                state.guard = None;
            }
            // The stream time first: a successor that finds this offset finds it too.
            if let Some(time) = state.stream_time {
                self.offsets
                    .commit(RELAY_STREAM_TIME, &LogPositions::single(time))
                    .await?;
            }
            self.offsets.commit(RELAY_CONSUMER, &at).await?;
            metrics::counter!("raccordo_stream_published_total").increment(published as u64);
            progress.published += published;
        }
    }

    /// Relays until `cancelled` completes: after each commit the log signals, and at least
    /// every second (a stream that was unreachable is tried again then).
    pub async fn run(&self, cancelled: impl Future<Output = ()>) -> Result<(), StoreError> {
        let mut committed = self.log.committed();
        let mut cancelled = std::pin::pin!(cancelled);
        loop {
            let head = committed.borrow_and_update().total();
            match self.catch_up().await {
                Ok(progress) => {
                    // Events committed but not yet in the stream, as of the last signal.
                    metrics::gauge!("raccordo_stream_relay_lag")
                        .set((head - progress.relayed_to).max(0) as f64);
                    if progress.skipped > 0 {
                        metrics::counter!("raccordo_stream_republish_skipped_total")
                            .increment(progress.skipped as u64);
                    }
                }
                Err(e) if e.is_retryable() => {
                    metrics::counter!("raccordo_stream_relay_errors_total").increment(1);
                    tracing::warn!(error = %e, "the stream relay waits for the stream");
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                _ = committed.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = &mut cancelled => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_customer_always_lands_in_one_partition() {
        let p = Partitioner::new("/id_cliente", 8);
        let a = p.place(r#"{"id_cliente":"CLIENTE-1","valore":1}"#, "evt_a");
        let b = p.place(r#"{"valore":2,"id_cliente":"CLIENTE-1"}"#, "evt_b");
        assert_eq!(a, b, "by customer, not by event");
        // Fixed values: the placement must never change between versions (a stream written
        // by one release is read by the next).
        assert_eq!(partition_of(b"CLIENTE-1", 8), a);
        assert_eq!(
            partition_of(b"CLIENTE-1", 8),
            1,
            "pinned: a release must never move customers"
        );
        assert_eq!(partition_of(b"anything", 1), 0);
        assert_eq!(partition_of(b"anything", 0), 0, "no partitions means one");
    }

    #[test]
    fn events_without_a_customer_are_placed_by_their_id() {
        let p = Partitioner::new("/id_cliente", 16);
        assert_eq!(
            p.place(r#"{"valore":1}"#, "evt_x"),
            partition_of(b"evt_x", 16)
        );
        assert_eq!(p.place("not json", "evt_y"), partition_of(b"evt_y", 16));
    }

    fn event_at(partition: u32, offset: i64) -> RawEvent {
        RawEvent {
            position: LogPosition { partition, offset },
            id: EventId::generate(&mut ulid::Generator::new(), 1_800_000_000_000),
            source: SourceName::new("web").unwrap(),
            event_time_ms: 0,
            received_at_ms: 0,
            payload: "{}".into(),
            duplicate: false,
        }
    }

    #[test]
    fn an_event_is_in_the_stream_when_its_partition_s_newest_cursor_covers_it() {
        let mut cursors = BTreeMap::new();
        cursors.insert(2, LogPositions::single(40));
        // Placed in partition 2, at or before its newest message: published already.
        assert!(already_in_stream(&event_at(0, 40), 2, &cursors));
        assert!(already_in_stream(&event_at(0, 7), 2, &cursors));
        // After it: not yet.
        assert!(!already_in_stream(&event_at(0, 41), 2, &cursors));
        // Another partition's cursor says nothing of partition 2's events and vice versa:
        // partition 3 has no message at all.
        assert!(!already_in_stream(&event_at(0, 7), 3, &cursors));
        // A log partition the cursor never saw.
        assert!(!already_in_stream(&event_at(1, 7), 2, &cursors));
    }

    proptest! {
        #[test]
        fn placement_is_in_range_and_even(partitions in 1u32..64) {
            let mut counts = vec![0u32; partitions as usize];
            for i in 0..(partitions * 200) {
                let at = partition_of(format!("CLIENTE-{i}").as_bytes(), partitions);
                prop_assert!(at < partitions);
                counts[at as usize] += 1;
            }
            // 200 expected per partition; SHA-256 keeps every one within a wide margin.
            prop_assert!(counts.iter().all(|c| (100..=300).contains(c)), "{counts:?}");
        }

        /// A relay that dies after publishing any prefix of what it read, per partition in
        /// order, and a new relay that skips what the cursors cover, leave each event in the
        /// stream exactly once.
        #[test]
        fn resuming_from_the_cursors_publishes_each_event_once(
            customers in proptest::collection::vec(0u32..12, 1..200),
            acked in proptest::collection::vec(0usize..200, 4),
        ) {
            let partitions = 4;
            let partitioner = Partitioner::new("/c", partitions);
            let events: Vec<(RawEvent, u32)> = customers.iter().enumerate().map(|(i, c)| {
                let mut e = event_at(0, i as i64 + 1);
                e.payload = format!(r#"{{"c":"{c}"}}"#);
                let p = partitioner.place(&e.payload, &e.id.to_string());
                (e, p)
            }).collect();
            // The first relay: in partition p, the first `acked[p]` of its events made it.
            let mut stream: BTreeMap<u32, Vec<(EventId, LogPositions)>> = BTreeMap::new();
            let mut cursor = LogPositions::default();
            for (e, p) in &events {
                cursor.advance(e.position);
                let held = stream.entry(*p).or_default();
                let sent_in_p = events.iter().take_while(|(x, _)| x.id != e.id).filter(|(_, q)| q == p).count();
                if sent_in_p < acked[*p as usize] {
                    held.push((e.id, cursor.clone()));
                }
            }
            let cursors: BTreeMap<u32, LogPositions> = stream.iter()
                .filter_map(|(p, held)| Some((*p, held.last()?.1.clone())))
                .collect();
            // The second relay starts from the beginning (no stored offset).
            for (e, p) in &events {
                if !already_in_stream(e, *p, &cursors) {
                    stream.entry(*p).or_default().push((e.id, LogPositions::default()));
                }
            }
            let mut all: Vec<EventId> = stream.values().flatten().map(|(id, _)| *id).collect();
            all.sort();
            let before = all.len();
            all.dedup();
            prop_assert_eq!(before, all.len(), "an event twice");
            prop_assert_eq!(all.len(), events.len(), "an event missing");
        }
    }
}
