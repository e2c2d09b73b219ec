//! Tables and connection settings.

use rusqlite::Connection;

use crate::writer::Durability;

/// Dedup claims are append-only rowid tables *without* a secondary index. The lookup
/// structure is an in-memory hash map rebuilt from these tables at start-up (see
/// `dedup_index`): a UNIQUE index on random 128-bit keys dirtied one random B-tree page per
/// event, so every commit wrote ~4 KiB of WAL per event. Rows sit in insertion order, which
/// with a fixed retention is expiry order, so purging deletes from the front in chunks.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    event_time  INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    payload     TEXT    NOT NULL,
    -- Set on a business-key duplicate: the id of the event it repeats. Duplicates are kept
    -- so that window metrics count them durably; reads of events leave them out.
    duplicate_of TEXT
);
CREATE TABLE IF NOT EXISTS dedup_claims (
    rid        INTEGER PRIMARY KEY,
    key        BLOB    NOT NULL,
    event_id   BLOB    NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS delivery_claims (
    rid        INTEGER PRIMARY KEY,
    key        BLOB    NOT NULL,
    body_hash  BLOB    NOT NULL,
    event_ids  BLOB    NOT NULL,
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
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    // Stores made before duplicates were recorded lack the column.
    let has_duplicate_of: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'duplicate_of'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_duplicate_of {
        conn.execute_batch("ALTER TABLE events ADD COLUMN duplicate_of TEXT")?;
    }
    Ok(())
}
