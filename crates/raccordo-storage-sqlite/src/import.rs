//! Stores made before the segment log kept events and dedup claims in SQLite tables. At
//! open, those are copied once into segments (same sequence numbers, so consumer offsets and
//! window checkpoints stay valid); migration 7 then drops the tables.
//!
//! Crash-safe by order: the segments are built in a temporary directory and renamed into
//! place when durable; the tables are dropped only after that. A crash before the rename
//! imports again from scratch; after it, the import is skipped and the drop completes.

use raccordo_core::{DedupKey, EventId};
use raccordo_log_segments::Importer;
use raccordo_log_segments::format::{DeliveryRecord, EventRecord};
use rusqlite::Connection;

use crate::SqliteOptions;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("row {0} is not a valid event: {1}")]
    Row(i64, String),
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )
}

fn has_rows(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    Ok(has_table(conn, table)?
        && conn.query_row(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), [], |r| {
            r.get::<_, bool>(0)
        })?)
}

fn u128_be(bytes: &[u8]) -> Option<u128> {
    <[u8; 16]>::try_from(bytes).ok().map(u128::from_be_bytes)
}

pub fn events_into_segments(
    conn: &mut Connection,
    options: &SqliteOptions,
) -> Result<(), ImportError> {
    let dir = options.segments_dir();
    if dir.exists()
        || !(has_rows(conn, "events")?
            || has_rows(conn, "dedup_claims")?
            || has_rows(conn, "delivery_claims")?)
    {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut importer = Importer::new(&dir, options.segment_bytes)?;
    let has_duplicate_of: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'duplicate_of'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    let sql = if has_duplicate_of {
        "SELECT seq, id, source, event_time, received_at, payload, duplicate_of FROM events ORDER BY seq"
    } else {
        "SELECT seq, id, source, event_time, received_at, payload, NULL FROM events ORDER BY seq"
    };
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let id = |text: String| {
            text.parse::<EventId>()
                .map(|id| id.as_u128())
                .map_err(|e| ImportError::Row(seq, e.to_string()))
        };
        let source: String = row.get(2)?;
        let payload: String = row.get(5)?;
        importer.event(&EventRecord {
            seq,
            id: id(row.get(1)?)?,
            received_at_ms: row.get(4)?,
            event_time_ms: row.get(3)?,
            duplicate_of: row.get::<_, Option<String>>(6)?.map(id).transpose()?,
            claim: None,
            source: &source,
            payload: &payload,
        })?;
    }
    drop(rows);
    drop(stmt);
    if has_table(conn, "dedup_claims")? {
        let mut stmt =
            conn.prepare("SELECT key, event_id, expires_at FROM dedup_claims ORDER BY rid")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (key, event): (Vec<u8>, Vec<u8>) = (row.get(0)?, row.get(1)?);
            if let (Ok(key), Some(event)) = (<[u8; 16]>::try_from(key.as_slice()), u128_be(&event))
            {
                importer.claim(DedupKey(key), event, row.get(2)?)?;
            }
        }
    }
    if has_table(conn, "delivery_claims")? {
        let mut stmt = conn.prepare(
            "SELECT key, body_hash, event_ids, expires_at FROM delivery_claims ORDER BY rid",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (key, hash, ids): (Vec<u8>, Vec<u8>, Vec<u8>) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            if let (Ok(key), Ok(hash)) = (
                <[u8; 16]>::try_from(key.as_slice()),
                <[u8; 16]>::try_from(hash.as_slice()),
            ) {
                importer.delivery(&DeliveryRecord {
                    key: DedupKey(key),
                    body_hash: DedupKey(hash),
                    expires_at: row.get(3)?,
                    events: ids.chunks_exact(16).filter_map(u128_be).collect(),
                })?;
            }
        }
    }
    let events = importer.events;
    importer.finish()?;
    tracing::info!(
        events,
        seconds = started.elapsed().as_secs_f64(),
        dir = %dir.display(),
        "moved the events of an older store into the segment log"
    );
    Ok(())
}
