//! Window results and checkpoints, refused requests, the audit log and campaign costs on
//! PostgreSQL.

use async_trait::async_trait;
use raccordo_core::{
    AuditLog, AuditRecord, CampaignCosts, LogPositions, RejectedFilter, RejectedRequest,
    RejectedRequests, ReplayRecord, StoreError, WindowCheckpoint, WindowResult, WindowStore,
};

use crate::{Pg, store_error};

fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(e.to_string()))
}

pub struct PgWindowStore {
    pg: Pg,
}

impl PgWindowStore {
    pub(crate) fn new(pg: Pg) -> Self {
        Self { pg }
    }
}

#[async_trait]
impl WindowStore for PgWindowStore {
    async fn put_results(&self, scope: &str, rows: Vec<WindowResult>) -> Result<(), StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let upsert = tx
            .prepare(
                "INSERT INTO window_results (scope, window_start, window_end, dimension, value, stats)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (scope, window_start, window_end, dimension, value)
                 DO UPDATE SET stats = excluded.stats",
            )
            .await
            .map_err(store_error)?;
        for r in rows {
            tx.execute(
                &upsert,
                &[
                    &scope,
                    &r.window_start_ms,
                    &r.window_end_ms,
                    &r.dimension,
                    &r.value,
                    &r.stats,
                ],
            )
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }

    async fn put_checkpoint(
        &self,
        scope: &str,
        checkpoint: WindowCheckpoint,
        forget_before_ms: i64,
    ) -> Result<(), StoreError> {
        let positions = json(&checkpoint.positions)?;
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        tx.execute(
            "INSERT INTO window_checkpoints (scope, positions, state) VALUES ($1, $2, $3)
             ON CONFLICT (scope) DO UPDATE SET positions = excluded.positions, state = excluded.state",
            &[&scope, &positions, &checkpoint.state],
        )
        .await
        .map_err(store_error)?;
        tx.execute(
            "DELETE FROM window_results WHERE scope = $1 AND window_end < $2",
            &[&scope, &forget_before_ms],
        )
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)
    }

    async fn checkpoint(&self, scope: &str) -> Result<Option<WindowCheckpoint>, StoreError> {
        let row = self
            .pg
            .client()
            .await?
            .query_opt(
                "SELECT positions, state FROM window_checkpoints WHERE scope = $1",
                &[&scope],
            )
            .await
            .map_err(store_error)?;
        row.map(|r| {
            let positions: LogPositions = serde_json::from_str(r.get(0))
                .map_err(|e| StoreError::Corrupt(format!("checkpoint positions: {e}")))?;
            Ok(WindowCheckpoint {
                positions,
                state: r.get(1),
            })
        })
        .transpose()
    }

    async fn results(&self, scope: &str) -> Result<Vec<WindowResult>, StoreError> {
        self.results_between(scope, i64::MIN, i64::MAX).await
    }

    async fn results_between(
        &self,
        scope: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<WindowResult>, StoreError> {
        let rows = self
            .pg
            .client()
            .await?
            .query(
                "SELECT window_start, window_end, dimension, value, stats FROM window_results
                 WHERE scope = $1 AND window_start < $3 AND window_end > $2
                 ORDER BY window_start, dimension, value",
                &[&scope, &from_ms, &to_ms],
            )
            .await
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| WindowResult {
                window_start_ms: r.get(0),
                window_end_ms: r.get(1),
                dimension: r.get(2),
                value: r.get(3),
                stats: r.get(4),
            })
            .collect())
    }

    async fn clear(&self, scope: &str) -> Result<(), StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        for table in ["window_results", "window_checkpoints"] {
            tx.execute(&format!("DELETE FROM {table} WHERE scope = $1"), &[&scope])
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }
}

pub struct PgRejectedRequests {
    pg: Pg,
}

impl PgRejectedRequests {
    pub(crate) fn new(pg: Pg) -> Self {
        Self { pg }
    }
}

const COLUMNS: &str = "id, source, target, received_at, status, problem, headers, body, body_bytes, authenticated, replay";

fn rejected(r: &tokio_postgres::Row) -> Result<RejectedRequest, StoreError> {
    let parse = |what: &str, text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| StoreError::Corrupt(format!("refused request {what}: {e}")))
    };
    let headers = serde_json::from_value(parse("headers", r.get(6))?)
        .map_err(|e| StoreError::Corrupt(format!("refused request headers: {e}")))?;
    let replay = match r.get::<_, Option<&str>>(10) {
        Some(text) => Some(
            serde_json::from_value::<ReplayRecord>(parse("replay", text)?)
                .map_err(|e| StoreError::Corrupt(format!("refused request replay: {e}")))?,
        ),
        None => None,
    };
    Ok(RejectedRequest {
        id: r.get(0),
        source: r.get(1),
        target: r.get(2),
        received_at_ms: r.get(3),
        status: r.get::<_, i32>(4) as u16,
        problem: parse("problem", r.get(5))?,
        headers,
        body: r.get(7),
        body_bytes: r.get::<_, i64>(8) as u64,
        authenticated: r.get(9),
        replay,
    })
}

#[async_trait]
impl RejectedRequests for PgRejectedRequests {
    async fn record_rejected(&self, r: &RejectedRequest) -> Result<(), StoreError> {
        let replay = r.replay.as_ref().map(json).transpose()?;
        self.pg
            .client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO rejected_requests ({COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (id) DO UPDATE SET source = excluded.source,
                       target = excluded.target, received_at = excluded.received_at,
                       status = excluded.status, problem = excluded.problem,
                       headers = excluded.headers, body = excluded.body,
                       body_bytes = excluded.body_bytes,
                       authenticated = excluded.authenticated, replay = excluded.replay"
                ),
                &[
                    &r.id,
                    &r.source,
                    &r.target,
                    &r.received_at_ms,
                    &i32::from(r.status),
                    &json(&r.problem)?,
                    &json(&r.headers)?,
                    &r.body,
                    &(r.body_bytes as i64),
                    &r.authenticated,
                    &replay,
                ],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn rejected_requests(
        &self,
        filter: &RejectedFilter,
    ) -> Result<Vec<RejectedRequest>, StoreError> {
        self.pg
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM rejected_requests
                     WHERE ($1::text IS NULL OR source = $1) AND ($2::int IS NULL OR status = $2)
                       AND ($3::text IS NULL OR id < $3)
                     ORDER BY id DESC LIMIT $4"
                ),
                &[
                    &filter.source,
                    &filter.status.map(i32::from),
                    &filter.before_id,
                    &(filter.limit as i64),
                ],
            )
            .await
            .map_err(store_error)?
            .iter()
            .map(rejected)
            .collect()
    }

    async fn rejected_request(&self, id: &str) -> Result<Option<RejectedRequest>, StoreError> {
        self.pg
            .client()
            .await?
            .query_opt(
                &format!("SELECT {COLUMNS} FROM rejected_requests WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(store_error)?
            .as_ref()
            .map(rejected)
            .transpose()
    }

    async fn record_replay(&self, id: &str, replay: &ReplayRecord) -> Result<bool, StoreError> {
        let changed = self
            .pg
            .client()
            .await?
            .execute(
                "UPDATE rejected_requests SET replay = $2 WHERE id = $1",
                &[&id, &json(replay)?],
            )
            .await
            .map_err(store_error)?;
        Ok(changed == 1)
    }

    async fn purge_rejected(&self, before_ms: i64, keep: usize) -> Result<u64, StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let old = tx
            .execute(
                "DELETE FROM rejected_requests WHERE received_at < $1",
                &[&before_ms],
            )
            .await
            .map_err(store_error)?;
        let excess = tx
            .execute(
                "DELETE FROM rejected_requests WHERE id IN
                   (SELECT id FROM rejected_requests ORDER BY id DESC OFFSET $1)",
                &[&(keep as i64)],
            )
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(old + excess)
    }

    async fn rejected_holding(&self, needle: &str) -> Result<Vec<RejectedRequest>, StoreError> {
        self.pg
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM rejected_requests
                     WHERE position($1::bytea IN body) > 0 ORDER BY id DESC"
                ),
                &[&needle.as_bytes()],
            )
            .await
            .map_err(store_error)?
            .iter()
            .map(rejected)
            .collect()
    }

    async fn delete_rejected(&self, ids: &[String]) -> Result<u64, StoreError> {
        let removed = self
            .pg
            .client()
            .await?
            .execute("DELETE FROM rejected_requests WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(store_error)?;
        if removed > 0 {
            self.pg.vacuum(&["rejected_requests"]).await;
        }
        Ok(removed)
    }
}

pub struct PgAuditLog {
    pg: Pg,
}

impl PgAuditLog {
    pub(crate) fn new(pg: Pg) -> Self {
        Self { pg }
    }
}

#[async_trait]
impl AuditLog for PgAuditLog {
    async fn append_audit(&self, r: &AuditRecord) -> Result<(), StoreError> {
        self.pg
            .client()
            .await?
            .execute(
                "INSERT INTO audit_log (id, at, actor, action, target, status, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &r.id,
                    &r.at_ms,
                    &r.actor,
                    &r.action,
                    &r.target,
                    &i32::from(r.status),
                    &json(&r.detail)?,
                ],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn audit_records(
        &self,
        before_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = self
            .pg
            .client()
            .await?
            .query(
                "SELECT id, at, actor, action, target, status, detail FROM audit_log
                 WHERE ($1::text IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
                &[&before_id, &(limit as i64)],
            )
            .await
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                id: r.get(0),
                at_ms: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                target: r.get(4),
                status: r.get::<_, i32>(5) as u16,
                detail: serde_json::from_str(r.get(6)).unwrap_or_else(|_| serde_json::json!({})),
            })
            .collect())
    }
}

pub struct PgCampaignCosts {
    pg: Pg,
}

impl PgCampaignCosts {
    pub(crate) fn new(pg: Pg) -> Self {
        Self { pg }
    }
}

#[async_trait]
impl CampaignCosts for PgCampaignCosts {
    async fn put_costs(&self, campaign: &str, days: &[(i64, i64)]) -> Result<(), StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        for (day, cents) in days {
            tx.execute(
                "INSERT INTO campaign_costs (campaign, day, cents) VALUES ($1, $2, $3)
                 ON CONFLICT (campaign, day) DO UPDATE SET cents = excluded.cents",
                &[&campaign, day, cents],
            )
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }

    async fn all_costs(&self) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let rows = self
            .pg
            .client()
            .await?
            .query(
                "SELECT campaign, day, cents FROM campaign_costs ORDER BY campaign, day",
                &[],
            )
            .await
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }
}
