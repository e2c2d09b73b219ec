//! A connection for the side stores (work queue, windows, key-value, …) on the event log's
//! file, and the one mapping from SQLite errors to `StoreError`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use raccordo_core::StoreError;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};

/// Says what a SQLite failure means to a caller: retryable or not, full disk, damage.
pub fn store_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full(e.to_string()),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            StoreError::Corrupt(e.to_string())
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(e.to_string())
        }
        Some(ErrorCode::SystemIoFailure) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

/// One connection behind a mutex, used from blocking threads.
#[derive(Clone)]
pub struct SideDb {
    conn: Arc<Mutex<Connection>>,
}

impl SideDb {
    /// WAL, fsync at commit, and a busy timeout so that it waits its turn behind the writer.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connect = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            // Deleted rows are overwritten with zeros, not left in free pages: an erased
            // customer's data must not stay readable in the file.
            conn.pragma_update(None, "secure_delete", "ON")?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            Ok(conn)
        };
        Ok(Self {
            conn: Arc::new(Mutex::new(connect().map_err(store_error)?)),
        })
    }

    /// Runs `f` on the connection in a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
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
        .map_err(|e| StoreError::Backend(e.to_string()))?
        .map_err(store_error)
    }

    /// [`SideDb::tx`] for an erasure: afterwards the WAL is checkpointed and truncated, so
    /// that the pages that held the erased rows do not linger in it (best effort: a reader
    /// holding an old snapshot keeps the WAL until the next checkpoint).
    pub async fn erase_tx<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(value)
        })
        .await
    }

    /// Runs `f` inside an IMMEDIATE transaction (the write lock is taken up front, so a
    /// read-then-write cannot be overtaken by another writer).
    pub async fn tx<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }
}
