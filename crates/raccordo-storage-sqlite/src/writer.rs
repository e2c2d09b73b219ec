//! The writer thread: group commit, per-request savepoints, durable dedup claims.

use std::time::Instant;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use raccordo_core::{AppendBatch, AppendOutcome, EventId, ItemOutcome, LogPositions, StoreError};
use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use crate::db::store_error;
use crate::dedup_index::{DedupIndex, Delivery, ulid_bytes};

/// How much of a commit reaches the disk before the request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync at every commit group: acknowledged data survives power loss.
    Fsync,
    /// OS-buffered: acknowledged data survives a process crash, not a power cut.
    Buffered,
}

pub struct Job {
    pub batch: AppendBatch,
    pub reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// Expired claims are purged at most this often, in chunks of this many rows, at most
/// `PURGE_MAX_CHUNKS` chunks per pass, so a purge never holds the writer for long.
const PURGE_EVERY_MS: i64 = 10_000;
const PURGE_CHUNK: usize = 5_000;
const PURGE_MAX_CHUNKS: usize = 8;

pub fn run(
    mut conn: Connection,
    mut index: DedupIndex,
    mut jobs: mpsc::Receiver<Job>,
    max_group_events: usize,
    committed: tokio::sync::watch::Sender<LogPositions>,
    full: Arc<AtomicBool>,
) {
    let mut last_purge_ms: Option<i64> = None;
    while let Some(first) = jobs.blocking_recv() {
        let mut events = first.batch.events.len();
        let mut group = vec![first];
        // Take what is already queued; never wait for more.
        while events < max_group_events {
            match jobs.try_recv() {
                Ok(job) => {
                    events += job.batch.events.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let now_ms = group
            .iter()
            .map(|j| j.batch.received_at_ms)
            .max()
            .unwrap_or(0);
        let started = Instant::now();
        let mut last_seq = committed.borrow().get(0);
        let results = commit_group(&mut conn, &mut index, &group, &mut last_seq);
        // Readiness follows the disk: not ready while writes fail for lack of space, ready
        // again with the first write that succeeds.
        if results
            .iter()
            .any(|r| matches!(r, Err(StoreError::Full(_))))
        {
            if !full.swap(true, Ordering::SeqCst) {
                tracing::error!("the database is full: appends are refused until space is freed");
            }
        } else if results.iter().any(Result::is_ok) && full.swap(false, Ordering::SeqCst) {
            tracing::info!("the database takes writes again");
        }
        metrics::histogram!("raccordo_storage_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("raccordo_storage_commit_group_requests").record(group.len() as f64);
        metrics::histogram!("raccordo_storage_commit_group_events").record(events as f64);
        // Announce before answering, so a client that reads right after its 202 finds the
        // live views already woken.
        committed.send_if_modified(|head| {
            let newer = last_seq > head.get(0);
            if newer {
                *head = LogPositions::single(last_seq);
            }
            newer
        });
        for (job, result) in group.into_iter().zip(results) {
            let _ = job.reply.send(result); // the caller may have gone away; the data is committed
        }
        if last_purge_ms.is_none_or(|last| now_ms.saturating_sub(last) >= PURGE_EVERY_MS) {
            last_purge_ms = Some(now_ms);
            if let Err(e) = purge_expired(&conn, &mut index, now_ms) {
                tracing::warn!(error = %e, "purging expired dedup claims failed");
            }
            metrics::gauge!("raccordo_storage_dedup_keys").set(index.len() as f64);
        }
    }
    // Queue closed: everything accepted has been answered. Fold the WAL into the main file.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "final WAL checkpoint failed");
    }
}

/// Applies each job in its own savepoint and commits once. A failed job is rolled back
/// alone (database and dedup index); if the commit fails, every job in the group fails and
/// the index forgets the whole group.
fn commit_group(
    conn: &mut Connection,
    index: &mut DedupIndex,
    group: &[Job],
    last_seq: &mut i64,
) -> Vec<Result<AppendOutcome, StoreError>> {
    let fail_all = |error: StoreError| group.iter().map(|_| Err(error.clone())).collect();
    let before = *last_seq;
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(store_error(e)),
    };
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        if let Some(Err(StoreError::Full(_))) = results.last() {
            // The disk is full: the transaction may be gone; later jobs fail the same way.
            results.push(Err(StoreError::Full("the database is full".into())));
            continue;
        }
        let mark = index.mark();
        let outcome = (|| {
            tx.prepare_cached("SAVEPOINT job")?.execute([])?;
            match apply(&tx, index, &job.batch, last_seq) {
                Ok(outcome) => {
                    tx.prepare_cached("RELEASE job")?.execute([])?;
                    Ok(outcome)
                }
                Err(e) => {
                    // Report the cause, not a failed rollback (SQLite may already have
                    // rolled the whole transaction back, e.g. on SQLITE_FULL).
                    let _ = tx.execute_batch("ROLLBACK TO job; RELEASE job");
                    Err(e)
                }
            }
        })();
        if outcome.is_err() {
            index.rollback_to(mark);
        }
        results.push(outcome.map_err(store_error));
    }
    match tx.commit() {
        Ok(()) => {
            index.commit();
            results
        }
        Err(e) => {
            index.rollback_to(0);
            *last_seq = before;
            // A full disk can roll the whole transaction back on its own (SQLite does so on
            // SQLITE_FULL); the commit then fails with "no transaction", but the cause to
            // report is the full disk.
            match results
                .into_iter()
                .find_map(|r| r.err().filter(|e| matches!(e, StoreError::Full(_))))
            {
                Some(full) => fail_all(full),
                None => fail_all(store_error(e)),
            }
        }
    }
}

fn apply(
    tx: &Connection,
    index: &mut DedupIndex,
    batch: &AppendBatch,
    last_seq: &mut i64,
) -> rusqlite::Result<AppendOutcome> {
    let now = batch.received_at_ms;
    if let Some(claim) = &batch.delivery
        && let Some(seen) = index.delivery(&claim.key, now)
    {
        if seen.body_hash != claim.body_hash {
            return Ok(AppendOutcome::DeliveryConflict);
        }
        let items = seen
            .events
            .iter()
            .map(|id| ItemOutcome::Duplicate(EventId::from_u128(*id)))
            .collect();
        return Ok(AppendOutcome::DeliveryReplayed(items));
    }

    let mut insert_claim = tx.prepare_cached(
        "INSERT INTO dedup_claims (key, event_id, expires_at) VALUES (?1, ?2, ?3)",
    )?;
    let mut insert_event = tx.prepare_cached(
        "INSERT INTO events (id, source, event_time, received_at, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let expires_at = now.saturating_add(batch.business_key_retention_ms);
    let mut outcomes = Vec::with_capacity(batch.events.len());
    for event in &batch.events {
        if let Some(key) = event.business_key {
            if let Some(original) = index.holder(&key, now) {
                tx.prepare_cached(
                    "INSERT INTO events (id, source, event_time, received_at, payload, duplicate_of) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    event.id.to_string(),
                    event.source.as_str(),
                    event.event_time_ms,
                    now,
                    &event.payload,
                    original.to_string()
                ])?;
                *last_seq = (*last_seq).max(tx.last_insert_rowid());
                outcomes.push(ItemOutcome::Duplicate(original));
                continue;
            }
            index.claim(key, event.id, expires_at);
            insert_claim.execute(params![&key.0[..], &ulid_bytes(event.id)[..], expires_at])?;
        }
        insert_event.execute(params![
            event.id.to_string(),
            event.source.as_str(),
            event.event_time_ms,
            now,
            &event.payload
        ])?;
        *last_seq = (*last_seq).max(tx.last_insert_rowid());
        outcomes.push(ItemOutcome::Accepted(event.id));
    }

    if let Some(claim) = &batch.delivery {
        let events: Vec<u128> = outcomes.iter().map(|o| o.id().as_u128()).collect();
        let blob: Vec<u8> = events.iter().flat_map(|id| id.to_be_bytes()).collect();
        let expires_at = now.saturating_add(claim.retention_ms);
        tx.prepare_cached("INSERT INTO delivery_claims (key, body_hash, event_ids, expires_at) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![&claim.key.0[..], &claim.body_hash.0[..], blob, expires_at])?;
        index.record_delivery(
            claim.key,
            Delivery {
                body_hash: claim.body_hash,
                events,
                expires_at,
            },
        );
    }
    Ok(AppendOutcome::Appended(outcomes))
}

/// Deletes expired claim rows from the front of each table (insertion order is expiry
/// order for a fixed retention) and forgets the same keys in memory.
fn purge_expired(conn: &Connection, index: &mut DedupIndex, now_ms: i64) -> rusqlite::Result<()> {
    for table in ["dedup_claims", "delivery_claims"] {
        for _ in 0..PURGE_MAX_CHUNKS {
            let expired: Vec<(i64, Vec<u8>)> = conn
                .prepare_cached(&format!(
                    "SELECT rid, key FROM {table} WHERE expires_at <= ?1 ORDER BY rid LIMIT {PURGE_CHUNK}"
                ))?
                .query_map(params![now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let Some(&(last, _)) = expired.last() else {
                break;
            };
            conn.prepare_cached(&format!(
                "DELETE FROM {table} WHERE rid <= ?1 AND expires_at <= ?2"
            ))?
            .execute(params![last, now_ms])?;
            index.forget(
                table == "dedup_claims",
                expired.iter().map(|(_, k)| k.as_slice()),
                now_ms,
            );
            if expired.len() < PURGE_CHUNK {
                break;
            }
        }
    }
    Ok(())
}
