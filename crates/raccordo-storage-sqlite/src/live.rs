//! Saved live-metrics state: the results of windows that fired, written as they fire, and a
//! checkpoint of the window operator with the log position it covers. Together they let the
//! hub start from the checkpoint instead of replaying the whole log.
//!
//! Both are opaque JSON to this module; `raccordo-server::live` owns their meaning.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use raccordo_core::StoreError;

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// One fired window result: (window start, window end, dimension, value, stats as JSON).
pub type ResultRow = (i64, i64, String, String, String);

#[derive(Clone)]
pub struct SqliteLiveStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteLiveStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = crate::open_side_connection(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS live_results (
                window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
                dimension TEXT NOT NULL, value TEXT NOT NULL, stats TEXT NOT NULL,
                PRIMARY KEY (window_start, window_end, dimension, value)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS live_checkpoint (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                seq INTEGER NOT NULL, state TEXT NOT NULL);",
        )
        .map_err(backend)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(backend)?
        .map_err(backend)
    }

    /// Inserts or replaces fired results (a late update replaces the earlier value).
    pub async fn put_results(&self, rows: Vec<ResultRow>) -> Result<(), StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO live_results (window_start, window_end, dimension, value, stats)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (window_start, window_end, dimension, value)
                     DO UPDATE SET stats = excluded.stats",
                )?;
                for (start, end, dimension, value, stats) in rows {
                    upsert.execute(params![start, end, dimension, value, stats])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Saves the checkpoint (replacing the last) and forgets results that ended before
    /// `forget_before_ms`, in one transaction.
    pub async fn put_checkpoint(
        &self,
        seq: i64,
        state: String,
        forget_before_ms: i64,
    ) -> Result<(), StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO live_checkpoint (id, seq, state) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, state = excluded.state",
                params![seq, state],
            )?;
            tx.execute(
                "DELETE FROM live_results WHERE window_end < ?1",
                params![forget_before_ms],
            )?;
            tx.commit()
        })
        .await
    }

    /// The saved checkpoint, if any: (seq, state).
    pub async fn checkpoint(&self) -> Result<Option<(i64, String)>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT seq, state FROM live_checkpoint WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
        .await
    }

    /// Every saved result.
    pub async fn results(&self) -> Result<Vec<ResultRow>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT window_start, window_end, dimension, value, stats FROM live_results",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            rows.collect()
        })
        .await
    }

    /// Drops everything (the window settings changed: saved windows mean nothing now).
    pub async fn clear(&self) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute_batch("DELETE FROM live_results; DELETE FROM live_checkpoint;")
        })
        .await
    }
}
