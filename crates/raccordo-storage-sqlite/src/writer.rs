//! The writer thread: group commit, per-request savepoints, durable dedup claims.

use std::time::Instant;

use raccordo_core::{AppendBatch, AppendOutcome, EventId, ItemOutcome, StoreError};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

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

/// Expired dedup rows are purged at most this often, this many per table per pass, so a
/// purge never holds the writer for long.
const PURGE_EVERY_MS: i64 = 10_000;
const PURGE_CHUNK: i64 = 5_000;

pub fn run(mut conn: Connection, mut jobs: mpsc::Receiver<Job>, max_group_events: usize) {
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
        let results = commit_group(&mut conn, &group);
        metrics::histogram!("raccordo_storage_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("raccordo_storage_commit_group_requests").record(group.len() as f64);
        metrics::histogram!("raccordo_storage_commit_group_events").record(events as f64);
        for (job, result) in group.into_iter().zip(results) {
            let _ = job.reply.send(result); // the caller may have gone away; the data is committed
        }
        if last_purge_ms.is_none_or(|last| now_ms.saturating_sub(last) >= PURGE_EVERY_MS) {
            last_purge_ms = Some(now_ms);
            if let Err(e) = purge_expired(&conn, now_ms) {
                tracing::warn!(error = %e, "purging expired dedup keys failed");
            }
        }
    }
    // Queue closed: everything accepted has been answered. Fold the WAL into the main file.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "final WAL checkpoint failed");
    }
}

/// Applies each job in its own savepoint and commits once. If the commit fails, every job
/// in the group fails (nothing of it is stored).
fn commit_group(conn: &mut Connection, group: &[Job]) -> Vec<Result<AppendOutcome, StoreError>> {
    let backend = |e: rusqlite::Error| StoreError::Backend(e.to_string());
    let mut tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let reason = e.to_string();
            return group
                .iter()
                .map(|_| Err(StoreError::Backend(reason.clone())))
                .collect();
        }
    };
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        let outcome = (|| {
            let sp = tx.savepoint()?;
            let outcome = apply(&sp, &job.batch)?;
            sp.commit()?;
            Ok(outcome)
        })();
        results.push(outcome.map_err(backend));
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => {
            let reason = e.to_string();
            group
                .iter()
                .map(|_| Err(StoreError::Backend(reason.clone())))
                .collect()
        }
    }
}

fn apply(tx: &Connection, batch: &AppendBatch) -> rusqlite::Result<AppendOutcome> {
    let now = batch.received_at_ms;
    if let Some(claim) = &batch.delivery {
        let seen: Option<(Vec<u8>, String)> = tx
            .prepare_cached(
                "SELECT body_hash, event_ids FROM deliveries WHERE key = ?1 AND expires_at > ?2",
            )?
            .query_row(params![&claim.key.0[..], now], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if let Some((body_hash, ids)) = seen {
            if body_hash != claim.body_hash.0 {
                return Ok(AppendOutcome::DeliveryConflict);
            }
            let items = ids
                .split(',')
                .filter_map(|id| id.parse::<EventId>().ok())
                .map(ItemOutcome::Duplicate)
                .collect();
            return Ok(AppendOutcome::DeliveryReplayed(items));
        }
    }

    let mut claim_key = tx.prepare_cached(
        "INSERT INTO dedup_keys (key, event_id, expires_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET event_id = excluded.event_id, expires_at = excluded.expires_at
         WHERE dedup_keys.expires_at <= ?4",
    )?;
    let mut holder = tx.prepare_cached("SELECT event_id FROM dedup_keys WHERE key = ?1")?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO events (id, source, event_time, received_at, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let expires_at = now.saturating_add(batch.business_key_retention_ms);
    let mut outcomes = Vec::with_capacity(batch.events.len());
    for event in &batch.events {
        let id = event.id.to_string();
        if let Some(key) = &event.business_key {
            let claimed = claim_key.execute(params![&key.0[..], &id, expires_at, now])? == 1;
            if !claimed {
                let original: String = holder.query_row(params![&key.0[..]], |r| r.get(0))?;
                let original = original.parse::<EventId>().unwrap_or(event.id);
                outcomes.push(ItemOutcome::Duplicate(original));
                continue;
            }
        }
        insert.execute(params![
            &id,
            event.source.as_str(),
            event.event_time_ms,
            now,
            &event.payload
        ])?;
        outcomes.push(ItemOutcome::Accepted(event.id));
    }

    if let Some(claim) = &batch.delivery {
        let ids = outcomes
            .iter()
            .map(|o| o.id().to_string())
            .collect::<Vec<_>>()
            .join(",");
        tx.prepare_cached(
            "INSERT INTO deliveries (key, body_hash, event_ids, expires_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET body_hash = excluded.body_hash, event_ids = excluded.event_ids,
                                              expires_at = excluded.expires_at",
        )?
        .execute(params![&claim.key.0[..], &claim.body_hash.0[..], ids, now.saturating_add(claim.retention_ms)])?;
    }
    Ok(AppendOutcome::Appended(outcomes))
}

fn purge_expired(conn: &Connection, now_ms: i64) -> rusqlite::Result<()> {
    for table in ["dedup_keys", "deliveries"] {
        let sql = format!(
            "DELETE FROM {table} WHERE rid IN (SELECT rid FROM {table} ORDER BY rid LIMIT {PURGE_CHUNK}) AND expires_at <= ?1"
        );
        conn.execute(&sql, params![now_ms])?;
    }
    Ok(())
}
