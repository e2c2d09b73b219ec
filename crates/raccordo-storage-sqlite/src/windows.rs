//! Saved window state (`WindowStore`): results as windows fire, checkpoints with positions.

use async_trait::async_trait;
use raccordo_core::{LogPositions, StoreError, WindowCheckpoint, WindowResult, WindowStore};
use rusqlite::{OptionalExtension, params};

use crate::db::SideDb;

pub struct SqliteWindowStore {
    db: SideDb,
}

impl SqliteWindowStore {
    pub(crate) fn new(db: SideDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl WindowStore for SqliteWindowStore {
    async fn put_results(&self, scope: &str, rows: Vec<WindowResult>) -> Result<(), StoreError> {
        let scope = scope.to_string();
        self.db
            .tx(move |tx| {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO window_results (scope, window_start, window_end, dimension, value, stats)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (scope, window_start, window_end, dimension, value)
                     DO UPDATE SET stats = excluded.stats",
                )?;
                for r in rows {
                    upsert.execute(params![
                        scope,
                        r.window_start_ms,
                        r.window_end_ms,
                        r.dimension,
                        r.value,
                        r.stats
                    ])?;
                }
                Ok(())
            })
            .await
    }

    async fn put_checkpoint(
        &self,
        scope: &str,
        checkpoint: WindowCheckpoint,
        forget_before_ms: i64,
    ) -> Result<(), StoreError> {
        let scope = scope.to_string();
        let positions = serde_json::to_string(&checkpoint.positions)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        self.db
            .tx(move |tx| {
                tx.execute(
                    "INSERT INTO window_checkpoints (scope, positions, state) VALUES (?1, ?2, ?3)
                     ON CONFLICT (scope) DO UPDATE SET positions = excluded.positions, state = excluded.state",
                    params![scope, positions, checkpoint.state],
                )?;
                tx.execute(
                    "DELETE FROM window_results WHERE scope = ?1 AND window_end < ?2",
                    params![scope, forget_before_ms],
                )?;
                Ok(())
            })
            .await
    }

    async fn checkpoint(&self, scope: &str) -> Result<Option<WindowCheckpoint>, StoreError> {
        let scope = scope.to_string();
        let row: Option<(String, String)> = self
            .db
            .call(move |conn| {
                conn.query_row(
                    "SELECT positions, state FROM window_checkpoints WHERE scope = ?1",
                    params![scope],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
            })
            .await?;
        row.map(|(positions, state)| {
            let positions: LogPositions = serde_json::from_str(&positions)
                .map_err(|e| StoreError::Corrupt(format!("checkpoint positions: {e}")))?;
            Ok(WindowCheckpoint { positions, state })
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
        let scope = scope.to_string();
        self.db
            .call(move |conn| {
                // Every window has the same size, so the range on `window_start` (the key)
                // bounds the scan; `window_end` then trims its first rows.
                let mut stmt = conn.prepare_cached(
                    "SELECT window_start, window_end, dimension, value, stats FROM window_results
                     WHERE scope = ?1 AND window_start < ?3 AND window_end > ?2
                     ORDER BY window_start, dimension, value",
                )?;
                let rows = stmt.query_map(params![scope, from_ms, to_ms], |r| {
                    Ok(WindowResult {
                        window_start_ms: r.get(0)?,
                        window_end_ms: r.get(1)?,
                        dimension: r.get(2)?,
                        value: r.get(3)?,
                        stats: r.get(4)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn clear(&self, scope: &str) -> Result<(), StoreError> {
        let scope = scope.to_string();
        self.db
            .tx(move |tx| {
                tx.execute(
                    "DELETE FROM window_results WHERE scope = ?1",
                    params![scope],
                )?;
                tx.execute(
                    "DELETE FROM window_checkpoints WHERE scope = ?1",
                    params![scope],
                )?;
                Ok(())
            })
            .await
    }
}
