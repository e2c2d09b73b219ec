//! The audit log on SQLite: one append-only table (triggers refuse `UPDATE` and `DELETE`),
//! newest first by id (a ULID).

use async_trait::async_trait;
use raccordo_core::{AuditLog, AuditRecord, StoreError};
use rusqlite::params;

use crate::db::SideDb;

pub struct SqliteAuditLog {
    db: SideDb,
}

impl SqliteAuditLog {
    pub(crate) fn new(db: SideDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl AuditLog for SqliteAuditLog {
    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let r = record.clone();
        let detail = serde_json::to_string(&r.detail)
            .map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))?;
        self.db
            .tx(move |tx| {
                tx.execute(
                    "INSERT INTO audit_log (id, at, actor, action, target, status, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![r.id, r.at_ms, r.actor, r.action, r.target, r.status, detail],
                )?;
                Ok(())
            })
            .await
    }

    async fn audit_records(
        &self,
        before_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let before = before_id.map(str::to_string);
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, at, actor, action, target, status, detail FROM audit_log
                     WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
                )?;
                stmt.query_map(params![before, limit as i64], |r| {
                    let detail: String = r.get(6)?;
                    Ok(AuditRecord {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        target: r.get(4)?,
                        status: r.get(5)?,
                        detail: serde_json::from_str(&detail)
                            .unwrap_or_else(|_| serde_json::json!({})),
                    })
                })?
                .collect()
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_refuses_updates_and_deletes() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::migrations::run(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO audit_log (id, at, actor, action, target, status, detail)
             VALUES ('aud_1', 1, 'ops', 'POST /x', '/x', 202, 'null')",
            [],
        )
        .unwrap();
        let update = conn.execute("UPDATE audit_log SET actor = 'someone else'", []);
        assert!(update.unwrap_err().to_string().contains("append-only"));
        let delete = conn.execute("DELETE FROM audit_log", []);
        assert!(delete.unwrap_err().to_string().contains("append-only"));
        let actor: String = conn
            .query_row("SELECT actor FROM audit_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(actor, "ops");
    }
}
