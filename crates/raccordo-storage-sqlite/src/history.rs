//! Histories on SQLite: flow and sync runs with their steps (`RunStore`), and alerts with
//! their deliveries (`AlertHistory`). Structured parts that are only ever read whole (a
//! step record) are kept as JSON.

use async_trait::async_trait;
use raccordo_core::{
    AlertHistory, AlertRecord, DeliveryRecord, DeliveryStatus, NewRun, Run, RunStatus, RunStore,
    RunSummary, StepRecord, StoreError,
};
use rusqlite::{OptionalExtension, params};

use crate::db::SideDb;

fn to_text<T: serde::Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
}

fn from_text<T: serde::de::DeserializeOwned>(column: usize, text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e.into())
    })
}

/// Enums stored by their serde name (`"running"`), read back the same way.
fn enum_text<T: serde::Serialize>(value: &T) -> rusqlite::Result<String> {
    Ok(to_text(value)?.trim_matches('"').to_string())
}

fn text_enum<T: serde::de::DeserializeOwned>(column: usize, text: &str) -> rusqlite::Result<T> {
    from_text(column, &format!("\"{text}\""))
}

pub struct SqliteRuns {
    db: SideDb,
}

impl SqliteRuns {
    pub(crate) fn new(db: SideDb) -> Self {
        Self { db }
    }
}

fn summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunSummary> {
    Ok(RunSummary {
        id: r.get(0)?,
        kind: r.get(1)?,
        status: text_enum(2, &r.get::<_, String>(2)?)?,
        started_at_ms: r.get(3)?,
        finished_at_ms: r.get(4)?,
    })
}

#[async_trait]
impl RunStore for SqliteRuns {
    async fn create_run(&self, run: NewRun) -> Result<bool, StoreError> {
        self.db
            .tx(move |tx| {
                let trigger = to_text(&run.trigger)?;
                let created = tx.execute(
                    "INSERT INTO runs (id, kind, status, trigger_input, started_at, rank)
                     VALUES (?1, ?2, 'running', ?3, ?4, coalesce((SELECT max(rank) FROM runs), 0) + 1)
                     ON CONFLICT (id) DO NOTHING",
                    params![run.id, run.kind, trigger, run.started_at_ms],
                )?;
                Ok(created == 1)
            })
            .await
    }

    async fn record_step(&self, run_id: &str, step: StepRecord) -> Result<bool, StoreError> {
        let run_id = run_id.to_string();
        self.db
            .tx(move |tx| {
                let exists: bool = tx
                    .query_row("SELECT 1 FROM runs WHERE id = ?1", params![run_id], |_| {
                        Ok(())
                    })
                    .optional()?
                    .is_some();
                if !exists {
                    return Ok(false);
                }
                tx.execute(
                    "INSERT INTO run_steps (run_id, step, record) VALUES (?1, ?2, ?3)
                     ON CONFLICT (run_id, step) DO UPDATE SET record = excluded.record",
                    params![run_id, step.index, to_text(&step)?],
                )?;
                Ok(true)
            })
            .await
    }

    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        finished_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let run_id = run_id.to_string();
        self.db
            .tx(move |tx| {
                let changed = tx.execute(
                    "UPDATE runs SET status = ?2, finished_at = ?3 WHERE id = ?1 AND status = 'running'",
                    params![run_id, enum_text(&status)?, finished_at_ms],
                )?;
                Ok(changed == 1)
            })
            .await
    }

    async fn run(&self, run_id: &str) -> Result<Option<Run>, StoreError> {
        let run_id = run_id.to_string();
        self.db
            .call(move |conn| {
                let head = conn
                    .query_row(
                        "SELECT id, kind, status, started_at, finished_at, trigger_input FROM runs WHERE id = ?1",
                        params![run_id],
                        |r| Ok((summary(r)?, r.get::<_, String>(5)?)),
                    )
                    .optional()?;
                let Some((summary, trigger)) = head else {
                    return Ok(None);
                };
                let mut stmt =
                    conn.prepare("SELECT record FROM run_steps WHERE run_id = ?1 ORDER BY step")?;
                let steps = stmt
                    .query_map(params![run_id], |r| from_text::<StepRecord>(0, &r.get::<_, String>(0)?))?
                    .collect::<Result<_, _>>()?;
                Ok(Some(Run {
                    summary,
                    trigger: from_text(5, &trigger)?,
                    steps,
                }))
            })
            .await
    }

    async fn purge_runs(&self, ended_before_ms: i64) -> Result<u64, StoreError> {
        self.db
            .tx(move |tx| {
                tx.execute(
                    "DELETE FROM run_steps WHERE run_id IN
                       (SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?1)",
                    params![ended_before_ms],
                )?;
                let removed = tx.execute(
                    "DELETE FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?1",
                    params![ended_before_ms],
                )?;
                Ok(removed as u64)
            })
            .await
    }

    async fn runs_holding(&self, needle: &str) -> Result<Vec<String>, StoreError> {
        let needle = needle.to_string();
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT id FROM runs WHERE instr(trigger_input, ?1) > 0
                        OR id IN (SELECT run_id FROM run_steps WHERE instr(record, ?1) > 0)
                     ORDER BY rank DESC",
                )?;
                stmt.query_map(params![needle], |r| r.get(0))?.collect()
            })
            .await
    }

    async fn delete_runs(&self, ids: &[String]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.db
            .erase_tx(move |tx| {
                let mut removed = 0;
                for id in &ids {
                    tx.execute("DELETE FROM run_steps WHERE run_id = ?1", params![id])?;
                    removed += tx.execute("DELETE FROM runs WHERE id = ?1", params![id])?;
                }
                Ok(removed as u64)
            })
            .await
    }

    async fn list_runs(
        &self,
        kind: Option<&str>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunSummary>, StoreError> {
        let (kind, before) = (kind.map(str::to_string), before.map(str::to_string));
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, kind, status, started_at, finished_at FROM runs
                     WHERE (?1 IS NULL OR kind = ?1)
                       AND (?2 IS NULL OR rank < (SELECT rank FROM runs WHERE id = ?2))
                     ORDER BY rank DESC LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![kind, before, limit as i64], summary)?;
                rows.collect()
            })
            .await
    }
}

pub struct SqliteAlertHistory {
    db: SideDb,
}

impl SqliteAlertHistory {
    pub(crate) fn new(db: SideDb) -> Self {
        Self { db }
    }
}

/// Alerts kept; older ones are deleted as new ones arrive.
const ALERTS_KEPT: i64 = 1_000;

#[async_trait]
impl AlertHistory for SqliteAlertHistory {
    async fn record_alert(&self, alert: &AlertRecord) -> Result<(), StoreError> {
        let alert = alert.clone();
        self.db
            .tx(move |tx| {
                tx.execute(
                    "INSERT INTO alerts (id, kind, source, message, at, rank)
                     VALUES (?1, ?2, ?3, ?4, ?5, coalesce((SELECT max(rank) FROM alerts), 0) + 1)",
                    params![alert.id, alert.kind, alert.source, alert.message, alert.at_ms],
                )?;
                for d in &alert.deliveries {
                    tx.execute(
                        "INSERT INTO alert_deliveries (alert_id, channel, kind, status, attempts, last_error)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![alert.id, d.channel as i64, d.kind, enum_text(&d.status)?, d.attempts, d.last_error],
                    )?;
                }
                tx.execute(
                    "DELETE FROM alert_deliveries WHERE alert_id IN
                       (SELECT id FROM alerts WHERE rank <= (SELECT max(rank) FROM alerts) - ?1)",
                    params![ALERTS_KEPT],
                )?;
                tx.execute(
                    "DELETE FROM alerts WHERE rank <= (SELECT max(rank) FROM alerts) - ?1",
                    params![ALERTS_KEPT],
                )?;
                Ok(())
            })
            .await
    }

    async fn update_delivery(
        &self,
        alert_id: &str,
        channel: usize,
        status: DeliveryStatus,
        attempts: u32,
        last_error: Option<String>,
    ) -> Result<bool, StoreError> {
        let alert_id = alert_id.to_string();
        self.db
            .tx(move |tx| {
                let changed = tx.execute(
                    "UPDATE alert_deliveries SET status = ?3, attempts = ?4, last_error = ?5
                     WHERE alert_id = ?1 AND channel = ?2",
                    params![
                        alert_id,
                        channel as i64,
                        enum_text(&status)?,
                        attempts,
                        last_error
                    ],
                )?;
                Ok(changed == 1)
            })
            .await
    }

    async fn recent_alerts(&self, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, kind, source, message, at FROM alerts ORDER BY rank DESC LIMIT ?1",
                )?;
                let mut alerts: Vec<AlertRecord> = stmt
                    .query_map(params![limit as i64], |r| {
                        Ok(AlertRecord {
                            id: r.get(0)?,
                            kind: r.get(1)?,
                            source: r.get(2)?,
                            message: r.get(3)?,
                            at_ms: r.get(4)?,
                            deliveries: Vec::new(),
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                let mut deliveries = conn.prepare_cached(
                    "SELECT channel, kind, status, attempts, last_error FROM alert_deliveries
                     WHERE alert_id = ?1 ORDER BY channel",
                )?;
                for alert in &mut alerts {
                    alert.deliveries = deliveries
                        .query_map(params![alert.id], |r| {
                            Ok(DeliveryRecord {
                                channel: r.get::<_, i64>(0)? as usize,
                                kind: r.get(1)?,
                                status: text_enum(2, &r.get::<_, String>(2)?)?,
                                attempts: r.get(3)?,
                                last_error: r.get(4)?,
                            })
                        })?
                        .collect::<Result<_, _>>()?;
                }
                Ok(alerts)
            })
            .await
    }
}
