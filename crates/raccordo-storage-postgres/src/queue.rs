//! The work queue on PostgreSQL, shared by every node: per-key FIFO ("only the oldest item
//! of a group, and only when it is not leased"), claims with `FOR UPDATE SKIP LOCKED` so
//! that nodes claiming at once never take the same item nor wait on each other, leases so
//! that a dead node's items come back, and retries and dead letters in the transaction that
//! records the attempt's outcome.

use async_trait::async_trait;
use raccordo_core::{
    Completion, CompletionOutcome, DeadLetter, Enqueued, NewWorkItem, QueueDepth, RetryPolicy,
    StoreError, WorkItem, WorkQueue,
};

use crate::{Pg, lock_key, store_error};

pub struct PgWorkQueue {
    pg: Pg,
}

impl PgWorkQueue {
    pub(crate) fn new(pg: Pg) -> Self {
        Self { pg }
    }
}

async fn move_to_dead_letters(
    tx: &deadpool_postgres::Transaction<'_>,
    id: i64,
    error: &str,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let row = tx
        .query_one(
            "WITH gone AS (DELETE FROM work_items WHERE id = $1 RETURNING *)
             INSERT INTO dead_letters (queue, group_key, operation, payload, attempts, last_error, enqueued_at, failed_at)
             SELECT queue, group_key, operation, payload, attempts, $2, enqueued_at, $3 FROM gone
             RETURNING id",
            &[&id, &error, &now_ms],
        )
        .await
        .map_err(store_error)?;
    Ok(row.get(0))
}

fn item(r: &tokio_postgres::Row) -> WorkItem {
    WorkItem {
        id: r.get(0),
        queue: r.get(1),
        group_key: r.get(2),
        operation: r.get(3),
        payload: serde_json::from_str(r.get::<_, &str>(4)).unwrap_or(serde_json::Value::Null),
        attempts: r.get::<_, i64>(5) as u32,
        enqueued_at_ms: r.get(6),
        lease: r.get(7),
        lease_until_ms: r.get(8),
    }
}

#[async_trait]
impl WorkQueue for PgWorkQueue {
    async fn enqueue(&self, item: NewWorkItem, now_ms: i64) -> Result<Enqueued, StoreError> {
        let payload = item.payload.to_string();
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        if item.coalesce {
            // Two nodes coalescing into the same group must not both insert.
            lock_key(&tx, "queue", &format!("{}/{}", item.queue, item.group_key)).await?;
            let pending = tx
                .query_opt(
                    "SELECT id FROM work_items WHERE queue = $1 AND group_key = $2 AND operation = $3
                       AND coalesce AND (lease_until IS NULL OR lease_until <= $4)
                     ORDER BY id DESC LIMIT 1",
                    &[&item.queue, &item.group_key, &item.operation, &now_ms],
                )
                .await
                .map_err(store_error)?;
            if let Some(row) = pending {
                tx.commit().await.map_err(store_error)?;
                return Ok(Enqueued::Coalesced(row.get(0)));
            }
        }
        let row = tx
            .query_one(
                "INSERT INTO work_items (queue, group_key, operation, payload, coalesce, enqueued_at, not_before)
                 VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
                &[&item.queue, &item.group_key, &item.operation, &payload, &item.coalesce, &now_ms],
            )
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(Enqueued::New(row.get(0)))
    }

    async fn claim(
        &self,
        queue: &str,
        limit: usize,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<WorkItem>, StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let heads: Vec<i64> = tx
            .query(
                "SELECT w.id FROM work_items w
                 WHERE w.queue = $1 AND w.not_before <= $2
                   AND (w.lease_until IS NULL OR w.lease_until <= $2)
                   AND w.id = (SELECT min(h.id) FROM work_items h
                               WHERE h.queue = w.queue AND h.group_key = w.group_key)
                 ORDER BY w.not_before, w.id LIMIT $3
                 FOR UPDATE OF w SKIP LOCKED",
                &[&queue, &now_ms, &(limit as i64)],
            )
            .await
            .map_err(store_error)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut items = Vec::with_capacity(heads.len());
        for id in heads {
            let lease: i64 = rand::random::<i64>() & i64::MAX;
            let row = tx
                .query_one(
                    "UPDATE work_items SET lease = $2, lease_until = $3, attempts = attempts + 1
                     WHERE id = $1
                     RETURNING id, queue, group_key, operation, payload, attempts, enqueued_at, lease, lease_until",
                    &[&id, &lease, &(now_ms + lease_ms)],
                )
                .await
                .map_err(store_error)?;
            items.push(item(&row));
        }
        tx.commit().await.map_err(store_error)?;
        Ok(items)
    }

    async fn complete(
        &self,
        item: &WorkItem,
        completion: Completion,
        policy: &RetryPolicy,
        random: f64,
        now_ms: i64,
    ) -> Result<CompletionOutcome, StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let held = tx
            .query_opt(
                "SELECT id FROM work_items WHERE id = $1 AND lease = $2 AND lease_until > $3
                 FOR UPDATE",
                &[&item.id, &item.lease, &now_ms],
            )
            .await
            .map_err(store_error)?;
        if held.is_none() {
            return Ok(CompletionOutcome::LeaseLost);
        }
        let outcome = match completion {
            Completion::Done => {
                tx.execute("DELETE FROM work_items WHERE id = $1", &[&item.id])
                    .await
                    .map_err(store_error)?;
                CompletionOutcome::Completed
            }
            Completion::Retryable {
                error,
                retry_after_ms,
            } => match policy.next_delay_ms(item.attempts, retry_after_ms, random) {
                Some(delay) => {
                    let at = now_ms + delay;
                    tx.execute(
                        "UPDATE work_items SET lease = NULL, lease_until = NULL, not_before = $2,
                           last_error = $3 WHERE id = $1",
                        &[&item.id, &at, &error],
                    )
                    .await
                    .map_err(store_error)?;
                    CompletionOutcome::RetryAt(at)
                }
                None => CompletionOutcome::DeadLettered(
                    move_to_dead_letters(&tx, item.id, &error, now_ms).await?,
                ),
            },
            Completion::Permanent { error } => CompletionOutcome::DeadLettered(
                move_to_dead_letters(&tx, item.id, &error, now_ms).await?,
            ),
        };
        tx.commit().await.map_err(store_error)?;
        Ok(outcome)
    }

    async fn dead_letters(
        &self,
        queue: Option<&str>,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = self
            .pg
            .client()
            .await?
            .query(
                "SELECT id, queue, group_key, operation, payload, attempts, last_error, enqueued_at, failed_at
                 FROM dead_letters WHERE id > $1 AND ($2::text IS NULL OR queue = $2)
                 ORDER BY id LIMIT $3",
                &[&after_id.unwrap_or(0), &queue, &(limit as i64)],
            )
            .await
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                id: r.get(0),
                queue: r.get(1),
                group_key: r.get(2),
                operation: r.get(3),
                payload: serde_json::from_str(r.get::<_, &str>(4))
                    .unwrap_or(serde_json::Value::Null),
                attempts: r.get::<_, i64>(5) as u32,
                last_error: r.get(6),
                first_enqueued_at_ms: r.get(7),
                failed_at_ms: r.get(8),
            })
            .collect())
    }

    async fn erase_holding(&self, needle: &str) -> Result<(u64, u64), StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let items = tx
            .execute(
                "DELETE FROM work_items WHERE strpos(payload, $1) > 0",
                &[&needle],
            )
            .await
            .map_err(store_error)?;
        let dead = tx
            .execute(
                "DELETE FROM dead_letters WHERE strpos(payload, $1) > 0 OR strpos(last_error, $1) > 0",
                &[&needle],
            )
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        if items + dead > 0 {
            self.pg.vacuum(&["work_items", "dead_letters"]).await;
        }
        Ok((items, dead))
    }

    async fn replay(&self, dead_letter_id: i64, now_ms: i64) -> Result<Option<i64>, StoreError> {
        let row = self
            .pg
            .client()
            .await?
            .query_opt(
                "WITH gone AS (DELETE FROM dead_letters WHERE id = $1 RETURNING *)
                 INSERT INTO work_items (queue, group_key, operation, payload, coalesce, enqueued_at, not_before)
                 SELECT queue, group_key, operation, payload, false, $2, $2 FROM gone
                 RETURNING id",
                &[&dead_letter_id, &now_ms],
            )
            .await
            .map_err(store_error)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn depth(&self, queue: &str, now_ms: i64) -> Result<QueueDepth, StoreError> {
        let client = self.pg.client().await?;
        let row = client
            .query_one(
                "SELECT
                   count(*) FILTER (WHERE lease_until IS NULL OR lease_until <= $2),
                   count(*) FILTER (WHERE lease_until > $2),
                   count(*) FILTER (WHERE (lease_until IS NULL OR lease_until <= $2) AND attempts > 0),
                   (SELECT count(*) FROM dead_letters WHERE queue = $1)
                 FROM work_items WHERE queue = $1",
                &[&queue, &now_ms],
            )
            .await
            .map_err(store_error)?;
        Ok(QueueDepth {
            waiting: row.get::<_, i64>(0) as u64,
            in_flight: row.get::<_, i64>(1) as u64,
            retrying: row.get::<_, i64>(2) as u64,
            dead_letters: row.get::<_, i64>(3) as u64,
        })
    }

    async fn release_all_leases(&self) -> Result<u64, StoreError> {
        // On a shared queue this hands other nodes' items back too: a cluster node never
        // calls it at start-up (the trait's contract); leases of a dead node run out.
        self.pg
            .client()
            .await?
            .execute(
                "UPDATE work_items SET lease = NULL, lease_until = NULL WHERE lease IS NOT NULL",
                &[],
            )
            .await
            .map_err(store_error)
    }
}
