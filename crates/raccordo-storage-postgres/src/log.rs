//! The event log on PostgreSQL: every node appends to one `events` table, and the dedup
//! authority is the `dedup_claims` and `delivery_claims` tables, written in the same
//! transaction as the events — a claim and its event commit together or not at all, on
//! every node.
//!
//! Order: an append takes the single `log_head` row `FOR UPDATE`, numbers its events after
//! the head and commits; the next append waits for that row, so sequence numbers are
//! assigned — and become visible — in commit order, and a tailer reading `seq > n` never
//! skips an event that commits later with a smaller number. Every commit announces the new
//! head with `NOTIFY`; each node's `committed()` follows its own appends and the
//! notifications (and re-reads the head every second, should one be missed).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use raccordo_core::{
    AppendBatch, AppendOutcome, DedupKey, ErasedEvents, EventFilter, EventId, EventLog, EventPage,
    EventQuery, EventSelector, ItemOutcome, LogPosition, LogPositions, PayloadRewrite, RawEvent,
    SourceName, StoreError, StoredEvent,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{Pg, store_error};

/// The notification channel; the payload is `<schema>:<head>`.
const CHANNEL: &str = "raccordo_log";
/// Events per page when an erasure or an export reads the whole log.
const SCAN_PAGE: i64 = 5_000;

pub struct PgEventLog {
    pg: Pg,
    schema: String,
    head: watch::Sender<LogPositions>,
    committed: watch::Receiver<LogPositions>,
    ready: Arc<AtomicBool>,
    stop: tokio::sync::Notify,
    follower: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    appends: mpsc::Sender<Pending>,
}

/// Takes the log's head row: appends (of every node) and imports take turns here.
pub(crate) const LOCK_HEAD: &str = "SELECT seq FROM log_head WHERE id = 1 FOR UPDATE";

/// Inserts events given as seven parallel arrays: seq, id, source, event time, received at,
/// payload, duplicate of.
pub(crate) const INSERT_EVENTS: &str =
    "INSERT INTO events (seq, id, source, event_time, received_at, payload, duplicate_of)
     SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::text[], $4::bigint[],
                          $5::bigint[], $6::text[], $7::bytea[])";

fn id_bytes(id: u128) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

fn id_of(bytes: &[u8]) -> Result<u128, StoreError> {
    let array: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("an event id is not 16 bytes".into()))?;
    Ok(u128::from_be_bytes(array))
}

async fn read_head(pg: &Pg) -> Result<i64, StoreError> {
    let row = pg
        .client()
        .await?
        .query_one("SELECT seq FROM log_head WHERE id = 1", &[])
        .await
        .map_err(store_error)?;
    Ok(row.get(0))
}

impl PgEventLog {
    /// Opens the log (the migrations already ran) and starts following other nodes' commits.
    pub async fn open(pg: Pg, schema: &str) -> Result<Arc<Self>, StoreError> {
        let head = read_head(&pg).await?;
        let (tx, rx) = watch::channel(LogPositions::single(head));
        let (appends, pending) = mpsc::channel(QUEUE);
        let log = Arc::new(Self {
            appends,
            pg,
            schema: schema.to_string(),
            head: tx,
            committed: rx,
            ready: Arc::new(AtomicBool::new(true)),
            stop: tokio::sync::Notify::new(),
            follower: std::sync::Mutex::new(None),
        });
        tokio::spawn(write_groups(Arc::downgrade(&log), pending));
        let follower = tokio::spawn(follow(Arc::downgrade(&log)));
        *log.follower.lock().unwrap_or_else(|p| p.into_inner()) = Some(follower);
        Ok(log)
    }

    fn announce(&self, head: i64) {
        self.head.send_if_modified(|h| {
            let newer = head > h.get(0);
            if newer {
                *h = LogPositions::single(head);
            }
            newer
        });
    }
}

/// Follows the head: notifications from every node, and a re-read every second.
async fn follow(log: std::sync::Weak<PgEventLog>) {
    use futures_util::StreamExt;
    loop {
        let Some(strong) = log.upgrade() else { return };
        let config = strong.pg.config.clone();
        let schema = strong.schema.clone();
        drop(strong);
        let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel::<i64>();
        let listener = match config.connect(tokio_postgres::NoTls).await {
            Ok((client, mut connection)) => {
                let prefix = format!("{schema}:");
                tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(n) = message
                            && let Some(head) = n.payload().strip_prefix(&prefix)
                            && let Ok(head) = head.parse()
                            && notes_tx.send(head).is_err()
                        {
                            return;
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => Some(client),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot LISTEN for the log's commits; polling");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to follow the log's commits; polling");
                None
            }
        };
        // Until the listener's connection drops: notifications, and a poll every second.
        loop {
            let Some(strong) = log.upgrade() else { return };
            tokio::select! {
                head = notes.recv(), if listener.is_some() => match head {
                    Some(head) => strong.announce(head),
                    None => break, // the listener's connection ended: reconnect
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if let Ok(head) = read_head(&strong.pg).await {
                        strong.announce(head);
                    }
                    if listener.is_none() {
                        break; // try to listen again
                    }
                }
                _ = strong.stop.notified() => return,
            }
        }
    }
}

/// A new event's row, decided against the claims.
struct Row {
    seq: i64,
    id: u128,
    source: String,
    event_time: i64,
    received_at: i64,
    payload: String,
    duplicate_of: Option<u128>,
}

/// An append waiting for its group's commit.
struct Pending {
    batch: AppendBatch,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// Most events in one commit group.
const MAX_GROUP_EVENTS: usize = 5_000;
/// Appends that may wait for the node's writer before `append` answers `Overloaded`.
const QUEUE: usize = 1_024;

/// The node's writer: takes every append waiting at that moment and commits them in one
/// transaction — one turn on the head row and one `fsync` for the whole group, which is
/// what lets several nodes share the one sequence at a useful rate.
async fn write_groups(log: std::sync::Weak<PgEventLog>, mut appends: mpsc::Receiver<Pending>) {
    while let Some(first) = appends.recv().await {
        let mut events = first.batch.events.len();
        let mut group = vec![first];
        while events < MAX_GROUP_EVENTS {
            match appends.try_recv() {
                Ok(next) => {
                    events += next.batch.events.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let Some(log) = log.upgrade() else { return };
        let batches: Vec<&AppendBatch> = group.iter().map(|p| &p.batch).collect();
        let started = std::time::Instant::now();
        let committed = log.commit_group(&batches).await;
        // The same commit metrics as the embedded log's, so dashboards work on both.
        metrics::histogram!("raccordo_storage_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("raccordo_storage_commit_group_requests").record(group.len() as f64);
        metrics::histogram!("raccordo_storage_commit_group_events").record(events as f64);
        match committed {
            Ok(outcomes) => {
                for (pending, outcome) in group.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for pending in group {
                    let _ = pending.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn key_of(bytes: Vec<u8>) -> Result<DedupKey, StoreError> {
    Ok(DedupKey(bytes.try_into().map_err(|_| {
        StoreError::Corrupt("a dedup key is not 16 bytes".into())
    })?))
}

impl PgEventLog {
    /// Decides and stores a group of appends in one transaction, in order: what an earlier
    /// append of the group claimed holds for the later ones.
    async fn commit_group(
        &self,
        batches: &[&AppendBatch],
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        // Appends of every node take turns here: numbers are handed out in commit order.
        let head: i64 = tx
            .query_one(LOCK_HEAD, &[])
            .await
            .map_err(store_error)?
            .get(0);
        // The stored claims of every key in the group (expired or not: each append judges
        // them at its own time).
        let delivery_keys: Vec<&[u8]> = batches
            .iter()
            .filter_map(|b| b.delivery.as_ref().map(|d| d.key.0.as_slice()))
            .collect();
        let mut deliveries: HashMap<DedupKey, (DedupKey, Vec<u128>, i64)> = HashMap::new();
        if !delivery_keys.is_empty() {
            for row in tx
                .query(
                    "SELECT key, body_hash, events, expires_at FROM delivery_claims WHERE key = ANY($1)",
                    &[&delivery_keys],
                )
                .await
                .map_err(store_error)?
            {
                let events: Vec<Vec<u8>> = row.get(2);
                deliveries.insert(
                    key_of(row.get(0))?,
                    (
                        key_of(row.get(1))?,
                        events.iter().map(|e| id_of(e)).collect::<Result<_, _>>()?,
                        row.get(3),
                    ),
                );
            }
        }
        let business_keys: Vec<&[u8]> = batches
            .iter()
            .flat_map(|b| b.events.iter())
            .filter_map(|e| e.business_key.as_ref().map(|k| k.0.as_slice()))
            .collect();
        let mut holders: HashMap<DedupKey, (u128, i64)> = HashMap::new();
        if !business_keys.is_empty() {
            for row in tx
                .query(
                    "SELECT key, event, expires_at FROM dedup_claims WHERE key = ANY($1)",
                    &[&business_keys],
                )
                .await
                .map_err(store_error)?
            {
                holders.insert(key_of(row.get(0))?, (id_of(row.get(1))?, row.get(2)));
            }
        }

        let mut outcomes = Vec::with_capacity(batches.len());
        let mut rows: Vec<Row> = Vec::new();
        let mut claims: HashMap<DedupKey, (u128, i64)> = HashMap::new();
        let mut new_deliveries: Vec<(DedupKey, DedupKey, Vec<u128>, i64)> = Vec::new();
        for batch in batches {
            let now = batch.received_at_ms;
            if let Some(claim) = &batch.delivery
                && let Some((body_hash, events, expires_at)) = deliveries.get(&claim.key)
                && *expires_at > now
            {
                outcomes.push(if *body_hash == claim.body_hash {
                    AppendOutcome::DeliveryReplayed(
                        events
                            .iter()
                            .map(|id| ItemOutcome::Duplicate(EventId::from_u128(*id)))
                            .collect(),
                    )
                } else {
                    AppendOutcome::DeliveryConflict
                });
                continue;
            }
            let expires_at = now.saturating_add(batch.business_key_retention_ms);
            let mut items = Vec::with_capacity(batch.events.len());
            for event in &batch.events {
                let id = event.id.as_u128();
                let mut duplicate_of = None;
                match event.business_key {
                    Some(key) => match holders.get(&key).filter(|(_, until)| *until > now) {
                        Some((original, _)) => {
                            duplicate_of = Some(*original);
                            items.push(ItemOutcome::Duplicate(EventId::from_u128(*original)));
                        }
                        None => {
                            holders.insert(key, (id, expires_at));
                            claims.insert(key, (id, expires_at));
                            items.push(ItemOutcome::Accepted(event.id));
                        }
                    },
                    None => items.push(ItemOutcome::Accepted(event.id)),
                }
                rows.push(Row {
                    seq: head + 1 + rows.len() as i64,
                    id,
                    source: event.source.to_string(),
                    event_time: event.event_time_ms,
                    received_at: now,
                    payload: event.payload.clone(),
                    duplicate_of,
                });
            }
            if let Some(claim) = &batch.delivery {
                let events: Vec<u128> = items.iter().map(|o| o.id().as_u128()).collect();
                let until = now.saturating_add(claim.retention_ms);
                deliveries.insert(claim.key, (claim.body_hash, events.clone(), until));
                new_deliveries.push((claim.key, claim.body_hash, events, until));
            }
            outcomes.push(AppendOutcome::Appended(items));
        }

        let new_head = head + rows.len() as i64;
        if !rows.is_empty() {
            let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
            let ids: Vec<Vec<u8>> = rows.iter().map(|r| id_bytes(r.id)).collect();
            let sources: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
            let times: Vec<i64> = rows.iter().map(|r| r.event_time).collect();
            let received: Vec<i64> = rows.iter().map(|r| r.received_at).collect();
            let payloads: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
            let originals: Vec<Option<Vec<u8>>> =
                rows.iter().map(|r| r.duplicate_of.map(id_bytes)).collect();
            tx.execute(
                INSERT_EVENTS,
                &[
                    &seqs, &ids, &sources, &times, &received, &payloads, &originals,
                ],
            )
            .await
            .map_err(store_error)?;
            tx.execute("UPDATE log_head SET seq = $1 WHERE id = 1", &[&new_head])
                .await
                .map_err(store_error)?;
        }
        if !claims.is_empty() {
            let mut keys = Vec::with_capacity(claims.len());
            let mut events = Vec::with_capacity(claims.len());
            let mut untils = Vec::with_capacity(claims.len());
            for (key, (event, until)) in &claims {
                keys.push(key.0.to_vec());
                events.push(id_bytes(*event));
                untils.push(*until);
            }
            // An expired claim of the same key is taken over.
            tx.execute(
                "INSERT INTO dedup_claims (key, event, expires_at)
                 SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[])
                 ON CONFLICT (key) DO UPDATE SET event = excluded.event, expires_at = excluded.expires_at",
                &[&keys, &events, &untils],
            )
            .await
            .map_err(store_error)?;
        }
        for (key, body_hash, events, until) in &new_deliveries {
            let events: Vec<Vec<u8>> = events.iter().map(|id| id_bytes(*id)).collect();
            tx.execute(
                "INSERT INTO delivery_claims (key, body_hash, events, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO UPDATE SET body_hash = excluded.body_hash,
                   events = excluded.events, expires_at = excluded.expires_at",
                &[&key.0.as_slice(), &body_hash.0.as_slice(), &events, until],
            )
            .await
            .map_err(store_error)?;
        }
        if new_head > head {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &format!("{}:{new_head}", self.schema)],
            )
            .await
            .map_err(store_error)?;
        }
        let committed = tx.commit().await;
        self.ready.store(committed.is_ok(), Ordering::Release);
        committed.map_err(store_error)?;
        self.announce(new_head);
        Ok(outcomes)
    }
}

#[async_trait]
impl EventLog for PgEventLog {
    async fn append(&self, batch: AppendBatch) -> Result<AppendOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.appends
            .try_send(Pending { batch, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded {
                    retry_after_ms: 1000,
                },
                mpsc::error::TrySendError::Closed(_) => {
                    StoreError::Unavailable("the log's writer has stopped".into())
                }
            })?;
        answer.await.map_err(|_| {
            StoreError::Unavailable("the log's writer stopped before answering".into())
        })?
    }

    async fn tail(&self, after: &LogPositions, limit: usize) -> Result<Vec<RawEvent>, StoreError> {
        let head = self.committed.borrow().get(0);
        let rows = self
            .pg
            .client()
            .await?
            .query(
                "SELECT seq, id, source, event_time, received_at, payload, duplicate_of IS NOT NULL
                 FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
                &[&after.get(0), &head, &(limit as i64)],
            )
            .await
            .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                Ok(RawEvent {
                    position: LogPosition {
                        partition: 0,
                        offset: r.get(0),
                    },
                    id: EventId::from_u128(id_of(r.get(1))?),
                    source: source_name(r.get(2))?,
                    event_time_ms: r.get(3),
                    received_at_ms: r.get(4),
                    payload: r.get(5),
                    duplicate: r.get(6),
                })
            })
            .collect()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn committed(&self) -> watch::Receiver<LogPositions> {
        self.committed.clone()
    }

    async fn erase(&self, rewrite: PayloadRewrite) -> Result<ErasedEvents, StoreError> {
        let mut erased = ErasedEvents::default();
        let mut after = 0i64;
        loop {
            let page = self.page(after).await?;
            let Some(last) = page.last().map(|r| r.0) else {
                break;
            };
            let changes: Vec<(i64, u128, String)> = page
                .into_iter()
                .filter_map(|(seq, id, source, payload)| {
                    rewrite(&source, &payload).map(|new| (seq, id, new))
                })
                .collect();
            if !changes.is_empty() {
                let mut client = self.pg.client().await?;
                let tx = client.transaction().await.map_err(store_error)?;
                for (seq, id, payload) in &changes {
                    tx.execute(
                        "UPDATE events SET payload = $2 WHERE seq = $1",
                        &[seq, payload],
                    )
                    .await
                    .map_err(store_error)?;
                    erased.claims += tx
                        .execute(
                            "DELETE FROM dedup_claims WHERE event = $1",
                            &[&id_bytes(*id)],
                        )
                        .await
                        .map_err(store_error)?;
                    erased.ids.push(EventId::from_u128(*id));
                }
                tx.commit().await.map_err(store_error)?;
            }
            after = last;
        }
        if !erased.ids.is_empty() {
            self.pg.vacuum(&["events", "dedup_claims"]).await;
        }
        Ok(erased)
    }

    async fn close(&self) {
        self.stop.notify_waiters();
        self.stop.notify_one();
        if let Some(follower) = self
            .follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            follower.abort();
        }
    }
}

impl PgEventLog {
    /// One page of the whole log after `after`: seq, id, source, payload.
    async fn page(&self, after: i64) -> Result<Vec<(i64, u128, String, String)>, StoreError> {
        let rows = self
            .pg
            .client()
            .await?
            .query(
                "SELECT seq, id, source, payload FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &SCAN_PAGE],
            )
            .await
            .map_err(store_error)?;
        rows.iter()
            .map(|r| Ok((r.get(0), id_of(r.get(1))?, r.get(2), r.get(3))))
            .collect()
    }
}

fn source_name(name: &str) -> Result<SourceName, StoreError> {
    SourceName::new(name.to_string()).map_err(|e| StoreError::Corrupt(format!("event source: {e}")))
}

fn stored(r: &tokio_postgres::Row) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        seq: r.get(0),
        id: EventId::from_u128(id_of(r.get(1))?),
        source: source_name(r.get(2))?,
        event_time_ms: r.get(3),
        received_at_ms: r.get(4),
        payload: serde_json::from_str(r.get(5))
            .map_err(|e| StoreError::Corrupt(format!("event payload: {e}")))?,
    })
}

#[async_trait]
impl EventQuery for PgEventLog {
    async fn read(&self, filter: EventFilter) -> Result<EventPage, StoreError> {
        let limit = filter.limit.clamp(1, 1000) as i64;
        let (names, values): (Vec<&str>, Vec<&str>) = filter
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .unzip();
        let head = self.committed.borrow().get(0);
        let rows = self
            .pg
            .client()
            .await?
            .query(
                "SELECT seq, id, source, event_time, received_at, payload FROM events e
                 WHERE seq > $1 AND seq <= $2 AND duplicate_of IS NULL
                   AND ($3::text IS NULL OR source = $3)
                   AND ($4::bigint IS NULL OR event_time >= $4)
                   AND ($5::bigint IS NULL OR event_time < $5)
                   AND NOT EXISTS (
                     SELECT 1 FROM unnest($6::text[], $7::text[]) AS f(name, value)
                     WHERE (e.payload::jsonb ->> f.name) IS DISTINCT FROM f.value)
                 ORDER BY seq LIMIT $8",
                &[
                    &filter.after_seq.unwrap_or(0),
                    &head,
                    &filter.source.as_ref().map(|s| s.as_str()),
                    &filter.event_time_from_ms,
                    &filter.event_time_to_ms,
                    &names,
                    &values,
                    &(limit + 1),
                ],
            )
            .await
            .map_err(store_error)?;
        let mut events = rows.iter().map(stored).collect::<Result<Vec<_>, _>>()?;
        let next_after_seq = if events.len() as i64 > limit {
            events.truncate(limit as usize);
            events.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(EventPage {
            events,
            next_after_seq,
        })
    }

    async fn find(&self, select: EventSelector) -> Result<Vec<StoredEvent>, StoreError> {
        let mut found = Vec::new();
        let mut after = 0i64;
        let client = self.pg.client().await?;
        loop {
            let rows = client
                .query(
                    "SELECT seq, id, source, event_time, received_at, payload FROM events
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &SCAN_PAGE],
                )
                .await
                .map_err(store_error)?;
            let Some(last) = rows.last().map(|r| r.get::<_, i64>(0)) else {
                break;
            };
            for r in &rows {
                if select(r.get(2), r.get(5)) {
                    found.push(stored(r)?);
                }
            }
            after = last;
        }
        Ok(found)
    }
}
