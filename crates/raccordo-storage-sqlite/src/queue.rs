//! The work queue on SQLite: per-key FIFO through "only the oldest item of a group, and
//! only when no item of the group is leased"; leases so that a crashed worker's item comes
//! back; retries and dead letters in the same transaction as the attempt's outcome.

use async_trait::async_trait;
use raccordo_core::{
    Completion, CompletionOutcome, DeadLetter, Enqueued, NewWorkItem, QueueDepth, RetryPolicy,
    StoreError, WorkItem, WorkQueue,
};
use rusqlite::{OptionalExtension, params};

use crate::db::SideDb;

pub struct SqliteWorkQueue {
    db: SideDb,
}

impl SqliteWorkQueue {
    pub(crate) fn new(db: SideDb) -> Self {
        Self { db }
    }

    async fn with_tx<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.db.tx(f).await
    }
}

fn move_to_dead_letters(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    error: &str,
    now_ms: i64,
) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO dead_letters (queue, group_key, operation, payload, attempts, last_error, enqueued_at, failed_at)
         SELECT queue, group_key, operation, payload, attempts, ?2, enqueued_at, ?3 FROM work_items WHERE id = ?1",
        params![id, error, now_ms],
    )?;
    let dead = tx.last_insert_rowid();
    tx.execute("DELETE FROM work_items WHERE id = ?1", params![id])?;
    Ok(dead)
}

#[async_trait]
impl WorkQueue for SqliteWorkQueue {
    async fn enqueue(&self, item: NewWorkItem, now_ms: i64) -> Result<Enqueued, StoreError> {
        let payload = item.payload.to_string();
        self.with_tx(move |tx| {
            if item.coalesce {
                // A pending item that no worker holds right now covers this change too.
                let pending: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM work_items WHERE queue = ?1 AND group_key = ?2 AND operation = ?3
                           AND coalesce = 1 AND (lease_until IS NULL OR lease_until <= ?4)
                         ORDER BY id DESC LIMIT 1",
                        params![item.queue, item.group_key, item.operation, now_ms],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(id) = pending {
                    return Ok(Enqueued::Coalesced(id));
                }
            }
            tx.execute(
                "INSERT INTO work_items (queue, group_key, operation, payload, coalesce, enqueued_at, not_before)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                params![item.queue, item.group_key, item.operation, payload, item.coalesce, now_ms],
            )?;
            Ok(Enqueued::New(tx.last_insert_rowid()))
        })
        .await
    }

    async fn claim(
        &self,
        queue: &str,
        limit: usize,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<WorkItem>, StoreError> {
        let queue = queue.to_string();
        self.with_tx(move |tx| {
            let heads: Vec<i64> = tx
                .prepare_cached(
                    "SELECT w.id FROM work_items w
                     WHERE w.queue = ?1 AND w.not_before <= ?2
                       AND (w.lease_until IS NULL OR w.lease_until <= ?2)
                       AND w.id = (SELECT min(h.id) FROM work_items h WHERE h.queue = w.queue AND h.group_key = w.group_key)
                     ORDER BY w.not_before, w.id LIMIT ?3",
                )?
                .query_map(params![queue, now_ms, limit as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut items = Vec::with_capacity(heads.len());
            for id in heads {
                let lease: i64 = rand_lease();
                tx.execute(
                    "UPDATE work_items SET lease = ?2, lease_until = ?3, attempts = attempts + 1 WHERE id = ?1",
                    params![id, lease, now_ms + lease_ms],
                )?;
                let item = tx.query_row(
                    "SELECT id, queue, group_key, operation, payload, attempts, enqueued_at, lease, lease_until
                     FROM work_items WHERE id = ?1",
                    params![id],
                    |r| {
                        let payload: String = r.get(4)?;
                        Ok(WorkItem {
                            id: r.get(0)?,
                            queue: r.get(1)?,
                            group_key: r.get(2)?,
                            operation: r.get(3)?,
                            payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                            attempts: r.get(5)?,
                            enqueued_at_ms: r.get(6)?,
                            lease: r.get(7)?,
                            lease_until_ms: r.get(8)?,
                        })
                    },
                )?;
                items.push(item);
            }
            Ok(items)
        })
        .await
    }

    async fn complete(
        &self,
        item: &WorkItem,
        completion: Completion,
        policy: &RetryPolicy,
        random: f64,
        now_ms: i64,
    ) -> Result<CompletionOutcome, StoreError> {
        let (id, lease, attempts, policy) = (item.id, item.lease, item.attempts, *policy);
        self.with_tx(move |tx| {
            let held: Option<i64> = tx
                .query_row(
                    "SELECT id FROM work_items WHERE id = ?1 AND lease = ?2 AND lease_until > ?3",
                    params![id, lease, now_ms],
                    |r| r.get(0),
                )
                .optional()?;
            if held.is_none() {
                return Ok(CompletionOutcome::LeaseLost);
            }
            match completion {
                Completion::Done => {
                    tx.execute("DELETE FROM work_items WHERE id = ?1", params![id])?;
                    Ok(CompletionOutcome::Completed)
                }
                Completion::Retryable { error, retry_after_ms } => match policy.next_delay_ms(attempts, retry_after_ms, random) {
                    Some(delay) => {
                        let at = now_ms + delay;
                        tx.execute(
                            "UPDATE work_items SET lease = NULL, lease_until = NULL, not_before = ?2, last_error = ?3 WHERE id = ?1",
                            params![id, at, error],
                        )?;
                        Ok(CompletionOutcome::RetryAt(at))
                    }
                    None => Ok(CompletionOutcome::DeadLettered(move_to_dead_letters(tx, id, &error, now_ms)?)),
                },
                Completion::Permanent { error } => {
                    Ok(CompletionOutcome::DeadLettered(move_to_dead_letters(tx, id, &error, now_ms)?))
                }
            }
        })
        .await
    }

    async fn release_all_leases(&self) -> Result<u64, StoreError> {
        self.with_tx(|tx| {
            tx.execute(
                "UPDATE work_items SET lease = NULL, lease_until = NULL WHERE lease IS NOT NULL",
                [],
            )
            .map(|n| n as u64)
        })
        .await
    }

    async fn depth(&self, queue: &str, now_ms: i64) -> Result<QueueDepth, StoreError> {
        let queue = queue.to_string();
        self.with_tx(move |tx| {
            let (waiting, in_flight, retrying): (i64, i64, i64) = tx.query_row(
                "SELECT
                   coalesce(sum(lease_until IS NULL OR lease_until <= ?2), 0),
                   coalesce(sum(lease_until > ?2), 0),
                   coalesce(sum((lease_until IS NULL OR lease_until <= ?2) AND attempts > 0), 0)
                 FROM work_items WHERE queue = ?1",
                params![queue, now_ms],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let dead: i64 = tx.query_row(
                "SELECT count(*) FROM dead_letters WHERE queue = ?1",
                params![queue],
                |r| r.get(0),
            )?;
            Ok(QueueDepth {
                waiting: waiting as u64,
                in_flight: in_flight as u64,
                retrying: retrying as u64,
                dead_letters: dead as u64,
            })
        })
        .await
    }

    async fn dead_letters(
        &self,
        queue: Option<&str>,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let queue = queue.map(str::to_string);
        self.with_tx(move |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT id, queue, group_key, operation, payload, attempts, last_error, enqueued_at, failed_at
                 FROM dead_letters WHERE id > ?1 AND (?2 IS NULL OR queue = ?2) ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![after_id.unwrap_or(0), queue, limit as i64], |r| {
                let payload: String = r.get(4)?;
                Ok(DeadLetter {
                    id: r.get(0)?,
                    queue: r.get(1)?,
                    group_key: r.get(2)?,
                    operation: r.get(3)?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                    attempts: r.get(5)?,
                    last_error: r.get(6)?,
                    first_enqueued_at_ms: r.get(7)?,
                    failed_at_ms: r.get(8)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn erase_holding(&self, needle: &str) -> Result<(u64, u64), StoreError> {
        let needle = needle.to_string();
        self.db
            .erase_tx(move |tx| {
                let items = tx.execute(
                    "DELETE FROM work_items WHERE instr(payload, ?1) > 0",
                    params![needle],
                )?;
                let dead = tx.execute(
                    "DELETE FROM dead_letters WHERE instr(payload, ?1) > 0 OR instr(last_error, ?1) > 0",
                    params![needle],
                )?;
                Ok((items as u64, dead as u64))
            })
            .await
    }

    async fn replay(&self, dead_letter_id: i64, now_ms: i64) -> Result<Option<i64>, StoreError> {
        self.with_tx(move |tx| {
            let moved = tx.execute(
                "INSERT INTO work_items (queue, group_key, operation, payload, coalesce, enqueued_at, not_before)
                 SELECT queue, group_key, operation, payload, 0, ?2, ?2 FROM dead_letters WHERE id = ?1",
                params![dead_letter_id, now_ms],
            )?;
            if moved == 0 {
                return Ok(None);
            }
            let id = tx.last_insert_rowid();
            tx.execute("DELETE FROM dead_letters WHERE id = ?1", params![dead_letter_id])?;
            Ok(Some(id))
        })
        .await
    }
}

/// A lease token: unpredictable enough that a stale worker cannot guess the new one.
fn rand_lease() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 1) as i64
}
