//! Tables and connection settings.

use rusqlite::Connection;

use crate::writer::Durability;

/// Dedup tables are rowid tables with a UNIQUE key: rows sit in insertion order, which
/// with a fixed retention is expiry order, so purging deletes from the front in small
/// chunks instead of scanning the table.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    event_time  INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    payload     TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS dedup_keys (
    rid        INTEGER PRIMARY KEY,
    key        BLOB    NOT NULL UNIQUE,
    event_id   TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    rid        INTEGER PRIMARY KEY,
    key        BLOB    NOT NULL UNIQUE,
    body_hash  BLOB    NOT NULL,
    event_ids  TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
";

pub fn prepare_writer(conn: &Connection, durability: Durability) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is fsynced at every commit, so an acknowledged commit survives power
    // loss. NORMAL: fsync only at checkpoints; survives a process crash (kill -9), not an
    // OS crash or power cut.
    conn.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Fsync => "FULL",
            Durability::Buffered => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -65536)?; // 64 MiB
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    Ok(())
}
