//! The embedded storage backend: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread that practises *group commit*: it takes every
//! append request queued at that moment (it never waits for more to arrive), applies each
//! inside its own savepoint of one shared transaction, commits once — one fsync for the
//! whole group at `Durability::Fsync` — and only then answers every request. Under load,
//! groups grow by themselves; when idle, a lone request commits alone with no added delay.
//! The queue is bounded: when it is full, `append` fails fast with `Overloaded` (HTTP 429)
//! instead of queueing without bound.

mod costs;
mod db;
mod dedup_index;
mod history;
mod lock;
pub mod migrations;
mod queue;
mod schema;
mod state;
mod windows;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use raccordo_core::{
    AppendBatch, AppendOutcome, EventFilter, EventId, EventLog, EventPage, EventQuery, LogPosition,
    LogPositions, SourceName, StoreError, StoredEvent, Stores,
};
use rusqlite::{Connection, OpenFlags, params_from_iter};
use tokio::sync::{mpsc, oneshot};

pub use costs::SqliteCampaignCosts;
pub use db::store_error;
pub use history::{SqliteAlertHistory, SqliteRuns};
pub use lock::{DataLock, LockError};
pub use queue::SqliteWorkQueue;
pub use state::{
    SqliteConsumerOffsets, SqliteIdMappings, SqliteKeyValue, SqliteRateLimits, SqliteSecrets,
};
pub use windows::SqliteWindowStore;
pub use writer::Durability;

/// Settings of the embedded store (`[storage]` in the config file).
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub durability: Durability,
    /// Append requests that may wait for the writer before `append` answers `Overloaded`.
    pub queue_capacity: usize,
    /// Upper bound on events per commit group (bounds commit latency under load).
    pub max_group_events: usize,
    /// Refuse to grow the database file past this size (appends answer 503 "full" until
    /// space is freed), so that the hub fills its quota before it fills the disk.
    pub max_database_bytes: Option<u64>,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::Fsync,
            queue_capacity: 512,
            max_group_events: 20_000,
            max_database_bytes: None,
        }
    }
}

/// The whole embedded backend on one file: the event log and every side store, behind the
/// lock that keeps a second process off the file.
pub struct SqliteStore {
    log: Arc<SqliteEventLog>,
    stores: Stores,
    _lock: DataLock,
}

impl SqliteStore {
    /// Locks the database, applies pending migrations, starts the writer and opens the side
    /// stores.
    pub fn open(options: SqliteOptions) -> Result<Self, OpenError> {
        create_parent(&options.path)?;
        let lock = DataLock::acquire(&options.path)?;
        let log = Arc::new(SqliteEventLog::open(options.clone())?);
        let side = |what: &str| {
            db::SideDb::open(&options.path).map_err(|e| OpenError::Store {
                what: what.to_string(),
                source: e,
            })
        };
        let stores = Stores {
            log: log.clone(),
            query: log.clone(),
            queue: Arc::new(SqliteWorkQueue::new(side("work queue")?)),
            kv: Arc::new(SqliteKeyValue::new(side("key-value store")?)),
            mappings: Arc::new(SqliteIdMappings::new(side("id mappings")?)),
            secrets: Arc::new(SqliteSecrets::new(side("secrets")?)),
            rate_limits: Arc::new(SqliteRateLimits::new(side("rate limits")?)),
            runs: Arc::new(SqliteRuns::new(side("run history")?)),
            windows: Arc::new(SqliteWindowStore::new(side("window store")?)),
            offsets: Arc::new(SqliteConsumerOffsets::new(side("consumer offsets")?)),
            alerts: Arc::new(SqliteAlertHistory::new(side("alert history")?)),
            costs: Arc::new(SqliteCampaignCosts::new(side("campaign costs")?)),
        };
        Ok(Self {
            log,
            stores,
            _lock: lock,
        })
    }

    /// Every store, as the traits the rest of the hub uses.
    pub fn stores(&self) -> Stores {
        self.stores.clone()
    }

    pub fn event_log(&self) -> &Arc<SqliteEventLog> {
        &self.log
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

/// How often the background checkpointer copies WAL frames into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// The writer's own checkpoint threshold (pages of 4 KiB, so the WAL stays under ~100 MiB). Under continuous load a PASSIVE
/// checkpoint beside a busy writer never finds the WAL fully copied, so the WAL could not
/// restart and would grow without bound; at this size the writer checkpoints between two
/// commits, copying only the few frames the background thread has not, and the WAL resets.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 25_000;

pub struct SqliteEventLog {
    jobs: std::sync::Mutex<Option<mpsc::Sender<writer::Job>>>,
    stop_checkpointer: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    reader: Arc<std::sync::Mutex<Connection>>,
    ready: Arc<AtomicBool>,
    /// Set while the last commit failed because the disk (or the size limit) is full.
    full: Arc<AtomicBool>,
    writer_done: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
    committed: tokio::sync::watch::Receiver<LogPositions>,
    path: PathBuf,
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
    Store { what: String, source: StoreError },
}

impl SqliteEventLog {
    /// Opens (creating if needed) the database, applies pending migrations and starts the
    /// writer thread. Use [`SqliteStore::open`], which also takes the lock, unless the
    /// caller holds it.
    pub fn open(options: SqliteOptions) -> Result<Self, OpenError> {
        create_parent(&options.path)?;
        let sqlite_err = |source| OpenError::Sqlite {
            path: options.path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(&options.path).map_err(sqlite_err)?;
        schema::prepare_writer(&conn, options.durability).map_err(sqlite_err)?;
        let applied = migrations::run(&mut conn).map_err(sqlite_err)?;
        if !applied.is_empty() {
            tracing::info!(?applied, path = %options.path.display(), "database migrated");
        }
        if let Some(bytes) = options.max_database_bytes {
            let page_size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(sqlite_err)?;
            let pages = (bytes as i64 / page_size.max(512)).max(1);
            conn.pragma_update(None, "max_page_count", pages)
                .map_err(sqlite_err)?;
        }
        let index = dedup_index::DedupIndex::load(&conn, 0).map_err(sqlite_err)?;
        let reader = Connection::open_with_flags(
            &options.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(sqlite_err)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite_err)?;

        // Checkpoints copy WAL frames into the main file and fsync it; done inside the writer
        // (SQLite's default), each one stalls every pending append. A PASSIVE checkpoint on
        // its own connection runs beside the writer instead.
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
            .map_err(sqlite_err)?;
        let checkpointer = Connection::open(&options.path).map_err(sqlite_err)?;
        checkpointer
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite_err)?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("raccordo-sqlite-checkpoint".into())
            .spawn(move || {
                lower_priority_of_this_thread();
                // Wakes every CHECKPOINT_EVERY until the store closes (sender dropped).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(e) = checkpointer.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                        tracing::warn!(error = %e, "background WAL checkpoint failed");
                    }
                }
            })
            .map_err(|source| OpenError::Io {
                path: "checkpoint thread".into(),
                source,
            })?;

        let last_seq: i64 = conn
            .query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(sqlite_err)?;
        let (committed_tx, committed) = tokio::sync::watch::channel(LogPositions::single(last_seq));
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let ready = Arc::new(AtomicBool::new(true));
        let full = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = oneshot::channel();
        let writer_ready = ready.clone();
        let writer_full = full.clone();
        let max_group_events = options.max_group_events.max(1);
        std::thread::Builder::new()
            .name("raccordo-sqlite-writer".into())
            .spawn(move || {
                writer::run(conn, index, rx, max_group_events, committed_tx, writer_full);
                writer_ready.store(false, Ordering::SeqCst);
                let _ = done_tx.send(());
            })
            .map_err(|source| OpenError::Io {
                path: "writer thread".into(),
                source,
            })?;
        Ok(Self {
            jobs: std::sync::Mutex::new(Some(tx)),
            stop_checkpointer: std::sync::Mutex::new(Some(stop_tx)),
            reader: Arc::new(std::sync::Mutex::new(reader)),
            ready,
            full,
            writer_done: std::sync::Mutex::new(Some(done_rx)),
            committed,
            path: options.path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting appends, lets the writer finish what is queued, checkpoints the WAL
    /// and waits for the writer thread to end.
    pub async fn close(&self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.stop_checkpointer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let done = self
            .writer_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(done) = done {
            let _ = done.await;
        }
    }
}

#[async_trait]
impl EventLog for SqliteEventLog {
    async fn append(&self, batch: AppendBatch) -> Result<AppendOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let sender = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let sender =
            sender.ok_or_else(|| StoreError::Unavailable("the store is shutting down".into()))?;
        sender
            .try_send(writer::Job { batch, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded {
                    retry_after_ms: 1000,
                },
                mpsc::error::TrySendError::Closed(_) => {
                    StoreError::Unavailable("the writer has stopped".into())
                }
            })?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped before answering".into()))?
    }

    async fn tail(
        &self,
        after: &LogPositions,
        limit: usize,
    ) -> Result<Vec<raccordo_core::RawEvent>, StoreError> {
        let reader = self.reader.clone();
        let after_seq = after.get(0);
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            tail_page(&conn, after_seq, limit).map_err(store_error)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.full.load(Ordering::SeqCst)
    }

    fn committed(&self) -> tokio::sync::watch::Receiver<LogPositions> {
        self.committed.clone()
    }

    async fn close(&self) {
        SqliteEventLog::close(self).await
    }
}

#[async_trait]
impl EventQuery for SqliteEventLog {
    async fn read(&self, filter: EventFilter) -> Result<EventPage, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            read_page(&conn, &filter).map_err(store_error)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

fn tail_page(
    conn: &Connection,
    after_seq: i64,
    limit: usize,
) -> rusqlite::Result<Vec<raccordo_core::RawEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, source, event_time, received_at, payload, duplicate_of IS NOT NULL
         FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(rusqlite::params![after_seq, limit as i64], |r| {
        let corrupt = |what: String| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, what.into())
        };
        Ok(raccordo_core::RawEvent {
            position: LogPosition {
                partition: 0,
                offset: r.get(0)?,
            },
            id: r
                .get::<_, String>(1)?
                .parse::<EventId>()
                .map_err(|e| corrupt(e.to_string()))?,
            source: SourceName::new(r.get::<_, String>(2)?).map_err(|e| corrupt(e.to_string()))?,
            event_time_ms: r.get(3)?,
            received_at_ms: r.get(4)?,
            payload: r.get(5)?,
            duplicate: r.get(6)?,
        })
    })?;
    rows.collect()
}

/// Copying WAL frames is background work: on a busy machine it should yield the CPU to
/// request handling and the writer rather than compete with them (Linux: per-thread nice).
fn lower_priority_of_this_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority only reads its arguments.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 10) != 0 {
            tracing::debug!("could not lower the checkpoint thread's priority");
        }
    }
}

fn read_page(conn: &Connection, filter: &EventFilter) -> rusqlite::Result<EventPage> {
    use rusqlite::types::Value as Sql;
    let mut sql = String::from(
        "SELECT seq, id, source, event_time, received_at, payload FROM events WHERE seq > ? AND duplicate_of IS NULL",
    );
    let mut args: Vec<Sql> = vec![Sql::Integer(filter.after_seq.unwrap_or(0))];
    if let Some(source) = &filter.source {
        sql.push_str(" AND source = ?");
        args.push(Sql::Text(source.to_string()));
    }
    for (field, value) in &filter.fields {
        sql.push_str(" AND json_extract(payload, ?) = ?");
        args.push(Sql::Text(format!("$.\"{}\"", field.replace('"', ""))));
        args.push(Sql::Text(value.clone()));
    }
    if let Some(from) = filter.event_time_from_ms {
        sql.push_str(" AND event_time >= ?");
        args.push(Sql::Integer(from));
    }
    if let Some(to) = filter.event_time_to_ms {
        sql.push_str(" AND event_time < ?");
        args.push(Sql::Integer(to));
    }
    let limit = filter.limit.clamp(1, 1000);
    sql.push_str(" ORDER BY seq LIMIT ?");
    args.push(Sql::Integer(limit as i64 + 1));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut events = Vec::with_capacity(limit.min(128));
    while let Some(row) = rows.next()? {
        let id: String = row.get(1)?;
        let source: String = row.get(2)?;
        let payload: String = row.get(5)?;
        let corrupt =
            |what: String| rusqlite::Error::InvalidColumnType(0, what, rusqlite::types::Type::Text);
        events.push(StoredEvent {
            seq: row.get(0)?,
            id: id.parse::<EventId>().map_err(corrupt)?,
            source: SourceName::new(source).map_err(|e| corrupt(e.to_string()))?,
            event_time_ms: row.get(3)?,
            received_at_ms: row.get(4)?,
            payload: serde_json::from_str(&payload).map_err(|e| corrupt(e.to_string()))?,
        });
    }
    let next_after_seq = if events.len() > limit {
        events.truncate(limit);
        events.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(EventPage {
        events,
        next_after_seq,
    })
}
