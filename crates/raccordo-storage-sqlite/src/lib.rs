//! The embedded backend: the event log in append-only segment files
//! (`raccordo-log-segments`), every other store in one SQLite file in WAL mode.
//!
//! The two live side by side in the data directory (`raccordo.db` and
//! `raccordo.segments/`), under one lock. Stores made before the segment log kept events in
//! the SQLite file; opening one moves them into segments once (`import`).

mod audit;
mod costs;
mod db;
mod history;
mod import;
mod lock;
pub mod migrations;
mod queue;
mod requests;
mod state;
mod windows;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use raccordo_core::Stores;
use raccordo_log_segments::{SegmentLog, SegmentLogOptions};
use rusqlite::Connection;

pub use audit::SqliteAuditLog;
pub use costs::SqliteCampaignCosts;
pub use db::store_error;
pub use history::{SqliteAlertHistory, SqliteRuns};
pub use lock::{DataLock, LockError};
pub use queue::SqliteWorkQueue;
pub use raccordo_log_segments::{Durability, RetentionPolicy};
pub use requests::SqliteRejectedRequests;
pub use state::{
    SqliteConsumerOffsets, SqliteIdMappings, SqliteKeyValue, SqliteRateLimits, SqliteSecrets,
};
pub use windows::SqliteWindowStore;

/// Settings of the embedded store (`[storage]` in the config file).
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The SQLite file; the event log's segments go in a directory beside it.
    pub path: PathBuf,
    pub durability: Durability,
    /// Append requests that may wait for the writer before `append` answers `Overloaded`.
    pub queue_capacity: usize,
    /// Upper bound on events per commit group (bounds commit latency under load).
    pub max_group_events: usize,
    /// The longest a commit waits for more appends when they have been arriving together.
    pub max_commit_wait: std::time::Duration,
    /// Refuse to grow the event log past this size (appends answer 503 "full" until
    /// retention frees space), so that the hub fills its quota before it fills the disk.
    pub max_database_bytes: Option<u64>,
    /// Size at which a segment is sealed and the next one started.
    pub segment_bytes: u64,
    pub retention: RetentionPolicy,
    pub retention_every: std::time::Duration,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let log = SegmentLogOptions::new("");
        Self {
            path: path.into(),
            durability: log.durability,
            queue_capacity: log.queue_capacity,
            max_group_events: log.max_group_events,
            max_commit_wait: log.max_commit_wait,
            max_database_bytes: log.max_bytes,
            segment_bytes: log.segment_bytes,
            retention: log.retention,
            retention_every: log.retention_every,
        }
    }

    /// Where the event log's segment files live: `raccordo.db` → `raccordo.segments/`.
    pub fn segments_dir(&self) -> PathBuf {
        self.path.with_extension("segments")
    }
}

/// The whole embedded backend, behind the lock that keeps a second process off it.
pub struct SqliteStore {
    log: Arc<SegmentLog>,
    stores: Stores,
    path: PathBuf,
    _lock: DataLock,
}

impl SqliteStore {
    /// Locks the data directory, applies pending migrations (moving events of an older
    /// store into segments), opens the event log and the side stores.
    pub fn open(options: SqliteOptions) -> Result<Self, OpenError> {
        create_parent(&options.path)?;
        let lock = DataLock::acquire(&options.path)?;
        let sqlite_err = |source| OpenError::Sqlite {
            path: options.path.display().to_string(),
            source,
        };
        {
            let mut conn = Connection::open(&options.path).map_err(sqlite_err)?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(sqlite_err)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(sqlite_err)?;
            import::events_into_segments(&mut conn, &options).map_err(|source| {
                OpenError::Import {
                    path: options.path.display().to_string(),
                    source,
                }
            })?;
            let applied = migrations::run(&mut conn).map_err(sqlite_err)?;
            if !applied.is_empty() {
                tracing::info!(?applied, path = %options.path.display(), "database migrated");
            }
        }
        let (log, _recovery) = SegmentLog::open(SegmentLogOptions {
            dir: options.segments_dir(),
            durability: options.durability,
            queue_capacity: options.queue_capacity,
            max_group_events: options.max_group_events,
            max_commit_wait: options.max_commit_wait,
            segment_bytes: options.segment_bytes,
            max_bytes: options.max_database_bytes,
            retention: options.retention,
            retention_every: options.retention_every,
        })
        .map_err(|e| OpenError::Log(e.to_string()))?;
        let log = Arc::new(log);
        let side = |what: &str| {
            db::SideDb::open(&options.path).map_err(|e| OpenError::Store {
                what: what.to_string(),
                source: e,
            })
        };
        let kv: Arc<SqliteKeyValue> = Arc::new(SqliteKeyValue::new(side("key-value store")?));
        let stores = Stores {
            log: log.clone(),
            query: log.clone(),
            queue: Arc::new(SqliteWorkQueue::new(side("work queue")?)),
            kv: kv.clone(),
            cache: kv,
            mappings: Arc::new(SqliteIdMappings::new(side("id mappings")?)),
            secrets: Arc::new(SqliteSecrets::new(side("secrets")?)),
            rate_limits: Arc::new(SqliteRateLimits::new(side("rate limits")?)),
            runs: Arc::new(SqliteRuns::new(side("run history")?)),
            windows: Arc::new(SqliteWindowStore::new(side("window store")?)),
            offsets: Arc::new(SqliteConsumerOffsets::new(side("consumer offsets")?)),
            alerts: Arc::new(SqliteAlertHistory::new(side("alert history")?)),
            costs: Arc::new(SqliteCampaignCosts::new(side("campaign costs")?)),
            requests: Arc::new(SqliteRejectedRequests::new(side("request inspector")?)),
            audit: Arc::new(SqliteAuditLog::new(side("audit log")?)),
        };
        Ok(Self {
            log,
            stores,
            path: options.path.clone(),
            _lock: lock,
        })
    }

    /// Every store, as the traits the rest of the hub uses.
    pub fn stores(&self) -> Stores {
        self.stores.clone()
    }

    pub fn event_log(&self) -> &Arc<SegmentLog> {
        &self.log
    }

    /// Every row of a state table (`raccordo migrate`), read on a connection of its own.
    pub fn export_table(
        &self,
        table: &str,
    ) -> Result<raccordo_core::migrate::TableRows, rusqlite::Error> {
        use raccordo_core::migrate::Cell;
        use rusqlite::types::ValueRef;
        if !table.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(rusqlite::Error::InvalidParameterName(table.to_string()));
        }
        let conn = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mut statement = conn.prepare(&format!("SELECT * FROM {table}"))?;
        let columns: Vec<String> = statement.column_names().map(str::to_string).collect();
        let width = columns.len();
        let rows = statement
            .query_map([], |row| {
                (0..width)
                    .map(|i| {
                        Ok(match row.get_ref(i)? {
                            ValueRef::Null => Cell::Null,
                            ValueRef::Integer(v) => Cell::Int(v),
                            ValueRef::Real(v) => Cell::Real(v),
                            ValueRef::Text(v) => {
                                Cell::Text(String::from_utf8_lossy(v).into_owned())
                            }
                            ValueRef::Blob(v) => Cell::Blob(v.to_vec()),
                        })
                    })
                    .collect::<Result<Vec<Cell>, rusqlite::Error>>()
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(raccordo_core::migrate::TableRows {
            table: table.to_string(),
            columns,
            rows,
        })
    }
}

fn create_parent(path: &Path) -> Result<(), OpenError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| OpenError::Io {
            path: parent.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot create {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("cannot open the {what}: {source}")]
    Store {
        what: String,
        source: raccordo_core::StoreError,
    },
    #[error("cannot move the events of {path} into the segment log: {source}")]
    Import {
        path: String,
        source: import::ImportError,
    },
    #[error("{0}")]
    Log(String),
}
