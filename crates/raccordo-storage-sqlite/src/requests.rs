//! The request inspector on SQLite: refused ingest requests, newest first by id (a ULID).

use async_trait::async_trait;
use raccordo_core::{RejectedFilter, RejectedRequest, RejectedRequests, ReplayRecord, StoreError};
use rusqlite::{OptionalExtension, params};

use crate::db::SideDb;

pub struct SqliteRejectedRequests {
    db: SideDb,
}

impl SqliteRejectedRequests {
    pub(crate) fn new(db: SideDb) -> Self {
        Self { db }
    }
}

fn json_err(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(e.into())
}

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RejectedRequest> {
    let parse = |column: usize, text: String| {
        serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e.into())
        })
    };
    let headers = parse(6, r.get(6)?)?;
    let replay = match r.get::<_, Option<String>>(10)? {
        Some(text) => Some(parse(10, text)?),
        None => None,
    };
    let undecodable = |column: usize| {
        move |e: serde_json::Error| {
            rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e.into())
        }
    };
    Ok(RejectedRequest {
        id: r.get(0)?,
        source: r.get(1)?,
        target: r.get(2)?,
        received_at_ms: r.get(3)?,
        status: r.get(4)?,
        problem: parse(5, r.get(5)?)?,
        headers: serde_json::from_value(headers).map_err(undecodable(6))?,
        body: r.get(7)?,
        body_bytes: r.get::<_, i64>(8)? as u64,
        authenticated: r.get(9)?,
        replay: replay
            .map(serde_json::from_value::<ReplayRecord>)
            .transpose()
            .map_err(undecodable(10))?,
    })
}

const COLUMNS: &str = "id, source, target, received_at, status, problem, headers, body, body_bytes, authenticated, replay";

#[async_trait]
impl RejectedRequests for SqliteRejectedRequests {
    async fn record_rejected(&self, request: &RejectedRequest) -> Result<(), StoreError> {
        let r = request.clone();
        self.db
            .tx(move |tx| {
                tx.execute(
                    &format!("INSERT OR REPLACE INTO rejected_requests ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                    params![
                        r.id,
                        r.source,
                        r.target,
                        r.received_at_ms,
                        r.status,
                        serde_json::to_string(&r.problem).map_err(json_err)?,
                        serde_json::to_string(&r.headers).map_err(json_err)?,
                        r.body,
                        r.body_bytes as i64,
                        r.authenticated,
                        r.replay.as_ref().map(serde_json::to_string).transpose().map_err(json_err)?,
                    ],
                )?;
                Ok(())
            })
            .await
    }

    async fn rejected_requests(
        &self,
        filter: &RejectedFilter,
    ) -> Result<Vec<RejectedRequest>, StoreError> {
        let filter = filter.clone();
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM rejected_requests
                     WHERE (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR status = ?2)
                       AND (?3 IS NULL OR id < ?3)
                     ORDER BY id DESC LIMIT ?4"
                ))?;
                stmt.query_map(
                    params![
                        filter.source,
                        filter.status,
                        filter.before_id,
                        filter.limit as i64
                    ],
                    read,
                )?
                .collect()
            })
            .await
    }

    async fn rejected_request(&self, id: &str) -> Result<Option<RejectedRequest>, StoreError> {
        let id = id.to_string();
        self.db
            .call(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM rejected_requests WHERE id = ?1"
                ))?
                .query_row(params![id], read)
                .optional()
            })
            .await
    }

    async fn record_replay(&self, id: &str, replay: &ReplayRecord) -> Result<bool, StoreError> {
        let (id, replay) = (id.to_string(), replay.clone());
        self.db
            .tx(move |tx| {
                let changed = tx.execute(
                    "UPDATE rejected_requests SET replay = ?2 WHERE id = ?1",
                    params![id, serde_json::to_string(&replay).map_err(json_err)?],
                )?;
                Ok(changed == 1)
            })
            .await
    }

    async fn purge_rejected(&self, before_ms: i64, keep: usize) -> Result<u64, StoreError> {
        self.db
            .tx(move |tx| {
                let old = tx.execute(
                    "DELETE FROM rejected_requests WHERE received_at < ?1",
                    params![before_ms],
                )?;
                let excess = tx.execute(
                    "DELETE FROM rejected_requests WHERE id IN
                       (SELECT id FROM rejected_requests ORDER BY id DESC LIMIT -1 OFFSET ?1)",
                    params![keep as i64],
                )?;
                Ok((old + excess) as u64)
            })
            .await
    }

    async fn rejected_holding(&self, needle: &str) -> Result<Vec<RejectedRequest>, StoreError> {
        let needle = needle.as_bytes().to_vec();
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare(&format!(
                    "SELECT {COLUMNS} FROM rejected_requests
                     WHERE instr(body, ?1) > 0 ORDER BY id DESC"
                ))?;
                stmt.query_map(params![needle], read)?.collect()
            })
            .await
    }

    async fn delete_rejected(&self, ids: &[String]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.db
            .erase_tx(move |tx| {
                let mut removed = 0;
                for id in &ids {
                    removed +=
                        tx.execute("DELETE FROM rejected_requests WHERE id = ?1", params![id])?;
                }
                Ok(removed as u64)
            })
            .await
    }
}
