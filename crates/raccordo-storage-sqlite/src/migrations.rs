//! Schema changes, numbered and applied in order at open, each in its own transaction with
//! its number recorded in `schema_migrations`. A migration, once released, never changes:
//! a new change is a new entry at the end.
//!
//! Databases created before migrations existed already hold the tables of 1–4; those steps
//! use `IF NOT EXISTS` (and 1 adds the `duplicate_of` column only when missing), so such a
//! database is adopted as it is.

use rusqlite::{Connection, Transaction, params};

type Step = fn(&Transaction<'_>) -> rusqlite::Result<()>;

/// (version, what it does, how).
const MIGRATIONS: &[(i64, &str, Step)] = &[
    (1, "event log and dedup claims", event_log),
    (2, "work queue and dead letters", work_queue),
    (3, "live window results and checkpoint", windows_v1),
    (4, "campaign costs", costs),
    (5, "windows per scope with log positions", windows_v2),
    (
        6,
        "key-value, id mappings, secrets and leases, rate limits, runs, offsets, alerts",
        state_stores,
    ),
    (
        7,
        "events and dedup claims move to the segment log",
        events_to_segments,
    ),
    (
        8,
        "refused ingest requests (request inspector)",
        rejected_requests,
    ),
    (9, "audit log (append-only)", audit_log),
];

/// Applies every migration the database has not seen; returns the versions applied.
pub fn run(conn: &mut Connection) -> rusqlite::Result<Vec<i64>> {
    run_until(conn, i64::MAX)
}

/// Applies the migrations up to and including `last` (tests build older stores with it).
pub fn run_until(conn: &mut Connection, last: i64) -> rusqlite::Result<Vec<i64>> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )?;
    let mut applied = Vec::new();
    for (version, description, step) in MIGRATIONS.iter().filter(|m| m.0 <= last) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let done: bool = tx.query_row(
            "SELECT count(*) FROM schema_migrations WHERE version = ?1",
            params![version],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !done {
            step(&tx)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, description, applied_at)
                 VALUES (?1, ?2, CAST(strftime('%s','now') AS INTEGER) * 1000)",
                params![version, description],
            )?;
            applied.push(*version);
        }
        tx.commit()?;
    }
    Ok(applied)
}

/// The newest version this build knows.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Dedup claims are append-only rowid tables *without* a secondary index. The lookup
/// structure is an in-memory hash map rebuilt from these tables at start-up (see
/// `dedup_index`): a UNIQUE index on random 128-bit keys dirtied one random B-tree page per
/// event, so every commit wrote ~4 KiB of WAL per event. Rows sit in insertion order, which
/// with a fixed retention is expiry order, so purging deletes from the front in chunks.
fn event_log(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (
            seq         INTEGER PRIMARY KEY,
            id          TEXT    NOT NULL,
            source      TEXT    NOT NULL,
            event_time  INTEGER NOT NULL,
            received_at INTEGER NOT NULL,
            payload     TEXT    NOT NULL,
            -- Set on a business-key duplicate: the id of the event it repeats. Duplicates are
            -- kept so that window metrics count them durably; reads of events leave them out.
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
        );",
    )?;
    // Stores made before duplicates were recorded lack the column.
    let has_duplicate_of: bool = tx.query_row(
        "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'duplicate_of'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_duplicate_of {
        tx.execute_batch("ALTER TABLE events ADD COLUMN duplicate_of TEXT")?;
    }
    Ok(())
}

/// The event log lives in segment files now (`raccordo-log-segments`); `import` has
/// copied an older store's rows there before this runs.
fn events_to_segments(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "DROP TABLE IF EXISTS events;
         DROP TABLE IF EXISTS dedup_claims;
         DROP TABLE IF EXISTS delivery_claims;",
    )
}

fn work_queue(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS work_items (
            id          INTEGER PRIMARY KEY,
            queue       TEXT    NOT NULL,
            group_key   TEXT    NOT NULL,
            operation   TEXT    NOT NULL,
            payload     TEXT    NOT NULL,
            coalesce    INTEGER NOT NULL,
            attempts    INTEGER NOT NULL DEFAULT 0,
            enqueued_at INTEGER NOT NULL,
            not_before  INTEGER NOT NULL,
            lease       INTEGER,
            lease_until INTEGER,
            last_error  TEXT
        );
        CREATE INDEX IF NOT EXISTS work_items_group ON work_items (queue, group_key, id);
        CREATE INDEX IF NOT EXISTS work_items_due ON work_items (queue, not_before);
        CREATE TABLE IF NOT EXISTS dead_letters (
            id          INTEGER PRIMARY KEY,
            queue       TEXT    NOT NULL,
            group_key   TEXT    NOT NULL,
            operation   TEXT    NOT NULL,
            payload     TEXT    NOT NULL,
            attempts    INTEGER NOT NULL,
            last_error  TEXT    NOT NULL,
            enqueued_at INTEGER NOT NULL,
            failed_at   INTEGER NOT NULL
        );",
    )
}

fn windows_v1(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS live_results (
            window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
            dimension TEXT NOT NULL, value TEXT NOT NULL, stats TEXT NOT NULL,
            PRIMARY KEY (window_start, window_end, dimension, value)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS live_checkpoint (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL, state TEXT NOT NULL);",
    )
}

fn costs(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS campaign_costs (
            campaign TEXT NOT NULL, day INTEGER NOT NULL, cents INTEGER NOT NULL,
            PRIMARY KEY (campaign, day)) WITHOUT ROWID;",
    )
}

/// Window state gains a scope (operator and partition) and per-partition log positions;
/// the single checkpoint of v1 becomes the `live` scope at partition 0.
fn windows_v2(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE window_results (
            scope TEXT NOT NULL,
            window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
            dimension TEXT NOT NULL, value TEXT NOT NULL, stats TEXT NOT NULL,
            PRIMARY KEY (scope, window_start, window_end, dimension, value)) WITHOUT ROWID;
        CREATE TABLE window_checkpoints (
            scope TEXT PRIMARY KEY, positions TEXT NOT NULL, state TEXT NOT NULL);
        INSERT INTO window_results SELECT 'live', window_start, window_end, dimension, value, stats
            FROM live_results;
        INSERT INTO window_checkpoints SELECT 'live', json_object('0', seq), state
            FROM live_checkpoint;
        DROP TABLE live_results;
        DROP TABLE live_checkpoint;",
    )
}

fn state_stores(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE kv (
            key TEXT PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL,
            expires_at INTEGER);
        CREATE INDEX kv_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL;
        CREATE TABLE id_mappings (
            object TEXT NOT NULL,
            from_system TEXT NOT NULL, from_id TEXT NOT NULL,
            to_system TEXT NOT NULL, to_id TEXT NOT NULL,
            linked_at INTEGER NOT NULL,
            PRIMARY KEY (object, from_system, from_id, to_system)) WITHOUT ROWID;
        CREATE TABLE secrets (
            name TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at INTEGER,
            version INTEGER NOT NULL);
        CREATE TABLE leases (
            name TEXT PRIMARY KEY, holder TEXT NOT NULL, until INTEGER NOT NULL);
        CREATE TABLE rate_buckets (
            bucket TEXT PRIMARY KEY, tokens REAL NOT NULL, updated_at INTEGER NOT NULL);
        CREATE TABLE runs (
            id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL,
            trigger_input TEXT NOT NULL, started_at INTEGER NOT NULL, finished_at INTEGER,
            rank INTEGER NOT NULL);
        CREATE INDEX runs_by_rank ON runs (rank);
        CREATE INDEX runs_by_kind ON runs (kind, rank);
        CREATE TABLE run_steps (
            run_id TEXT NOT NULL, step INTEGER NOT NULL, record TEXT NOT NULL,
            PRIMARY KEY (run_id, step)) WITHOUT ROWID;
        CREATE TABLE consumer_offsets (
            consumer TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
            PRIMARY KEY (consumer, partition)) WITHOUT ROWID;
        CREATE TABLE alerts (
            id TEXT PRIMARY KEY, kind TEXT NOT NULL, source TEXT NOT NULL,
            message TEXT NOT NULL, at INTEGER NOT NULL, rank INTEGER NOT NULL);
        CREATE INDEX alerts_by_rank ON alerts (rank);
        CREATE TABLE alert_deliveries (
            alert_id TEXT NOT NULL, channel INTEGER NOT NULL, kind TEXT NOT NULL,
            status TEXT NOT NULL, attempts INTEGER NOT NULL, last_error TEXT,
            PRIMARY KEY (alert_id, channel)) WITHOUT ROWID;",
    )
}

fn rejected_requests(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE rejected_requests (
            id TEXT PRIMARY KEY, source TEXT, target TEXT NOT NULL,
            received_at INTEGER NOT NULL, status INTEGER NOT NULL, problem TEXT NOT NULL,
            headers TEXT NOT NULL, body BLOB NOT NULL, body_bytes INTEGER NOT NULL,
            authenticated INTEGER NOT NULL, replay TEXT);
        CREATE INDEX rejected_requests_by_time ON rejected_requests (received_at);",
    )
}

fn audit_log(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE audit_log (
            id TEXT PRIMARY KEY,
            at INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            status INTEGER NOT NULL,
            detail TEXT NOT NULL
         ) WITHOUT ROWID;
         CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
         BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
         CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
         BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_adopt_an_old_database() {
        let mut conn = Connection::open_in_memory().unwrap();
        // A database from before migrations: v1 tables with a checkpoint, no duplicate_of.
        conn.execute_batch(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, source TEXT NOT NULL,
                event_time INTEGER NOT NULL, received_at INTEGER NOT NULL, payload TEXT NOT NULL);
             CREATE TABLE live_checkpoint (id INTEGER PRIMARY KEY CHECK (id = 1),
                seq INTEGER NOT NULL, state TEXT NOT NULL);
             INSERT INTO live_checkpoint VALUES (1, 42, '{}');",
        )
        .unwrap();
        assert_eq!(run(&mut conn).unwrap(), vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert!(run(&mut conn).unwrap().is_empty(), "nothing twice");
        let positions: String = conn
            .query_row(
                "SELECT positions FROM window_checkpoints WHERE scope = 'live'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(positions, r#"{"0":42}"#);
        assert_eq!(latest(), 9);
    }
}
