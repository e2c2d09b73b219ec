//! Run history and alert history on PostgreSQL.

use async_trait::async_trait;
use raccordo_core::{
    AlertHistory, AlertRecord, DeliveryRecord, DeliveryStatus, NewRun, Run, RunStatus, RunStore,
    RunSummary, StepRecord, StoreError,
};

use crate::{Pg, store_error};

fn to_text<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(e.to_string()))
}

fn from_text<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A unit enum as its bare serde name (`running`).
fn enum_text<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    Ok(to_text(value)?.trim_matches('"').to_string())
}

fn text_enum<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    from_text(what, &format!("\"{text}\""))
}

pub struct PgRuns {
    pg: Pg,
}

impl PgRuns {
    pub(crate) fn new(pg: Pg) -> Self {
        Self { pg }
    }
}

fn summary(r: &tokio_postgres::Row) -> Result<RunSummary, StoreError> {
    Ok(RunSummary {
        id: r.get(0),
        kind: r.get(1),
        status: text_enum("run status", r.get(2))?,
        started_at_ms: r.get(3),
        finished_at_ms: r.get(4),
    })
}

#[async_trait]
impl RunStore for PgRuns {
    async fn create_run(&self, run: NewRun) -> Result<bool, StoreError> {
        let trigger = to_text(&run.trigger)?;
        let created = self
            .pg
            .client()
            .await?
            .execute(
                "INSERT INTO runs (id, kind, status, trigger_input, started_at)
                 VALUES ($1, $2, 'running', $3, $4) ON CONFLICT (id) DO NOTHING",
                &[&run.id, &run.kind, &trigger, &run.started_at_ms],
            )
            .await
            .map_err(store_error)?;
        Ok(created == 1)
    }

    async fn record_step(&self, run_id: &str, step: StepRecord) -> Result<bool, StoreError> {
        let record = to_text(&step)?;
        let changed = self
            .pg
            .client()
            .await?
            .execute(
                "INSERT INTO run_steps (run_id, step, record)
                 SELECT id, $2, $3 FROM runs WHERE id = $1
                 ON CONFLICT (run_id, step) DO UPDATE SET record = excluded.record",
                &[&run_id, &i64::from(step.index), &record],
            )
            .await
            .map_err(store_error)?;
        Ok(changed == 1)
    }

    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        finished_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let changed = self
            .pg
            .client()
            .await?
            .execute(
                "UPDATE runs SET status = $2, finished_at = $3 WHERE id = $1 AND status = 'running'",
                &[&run_id, &enum_text(&status)?, &finished_at_ms],
            )
            .await
            .map_err(store_error)?;
        Ok(changed == 1)
    }

    async fn run(&self, run_id: &str) -> Result<Option<Run>, StoreError> {
        let client = self.pg.client().await?;
        let Some(head) = client
            .query_opt(
                "SELECT id, kind, status, started_at, finished_at, trigger_input FROM runs WHERE id = $1",
                &[&run_id],
            )
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let steps = client
            .query(
                "SELECT record FROM run_steps WHERE run_id = $1 ORDER BY step",
                &[&run_id],
            )
            .await
            .map_err(store_error)?
            .iter()
            .map(|r| from_text::<StepRecord>("run step", r.get(0)))
            .collect::<Result<_, _>>()?;
        Ok(Some(Run {
            summary: summary(&head)?,
            trigger: from_text("run trigger", head.get(5))?,
            steps,
        }))
    }

    async fn purge_runs(&self, ended_before_ms: i64) -> Result<u64, StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        tx.execute(
            "DELETE FROM run_steps WHERE run_id IN
               (SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < $1)",
            &[&ended_before_ms],
        )
        .await
        .map_err(store_error)?;
        let removed = tx
            .execute(
                "DELETE FROM runs WHERE finished_at IS NOT NULL AND finished_at < $1",
                &[&ended_before_ms],
            )
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(removed)
    }

    async fn list_runs(
        &self,
        kind: Option<&str>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunSummary>, StoreError> {
        self.pg
            .client()
            .await?
            .query(
                "SELECT id, kind, status, started_at, finished_at FROM runs
                 WHERE ($1::text IS NULL OR kind = $1)
                   AND ($2::text IS NULL OR rank < (SELECT rank FROM runs WHERE id = $2))
                 ORDER BY rank DESC LIMIT $3",
                &[&kind, &before, &(limit as i64)],
            )
            .await
            .map_err(store_error)?
            .iter()
            .map(summary)
            .collect()
    }

    async fn runs_holding(&self, needle: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .pg
            .client()
            .await?
            .query(
                "SELECT id FROM runs WHERE strpos(trigger_input, $1) > 0
                    OR id IN (SELECT run_id FROM run_steps WHERE strpos(record, $1) > 0)
                 ORDER BY rank DESC",
                &[&needle],
            )
            .await
            .map_err(store_error)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn delete_runs(&self, ids: &[String]) -> Result<u64, StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        tx.execute("DELETE FROM run_steps WHERE run_id = ANY($1)", &[&ids])
            .await
            .map_err(store_error)?;
        let removed = tx
            .execute("DELETE FROM runs WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        if removed > 0 {
            self.pg.vacuum(&["runs", "run_steps"]).await;
        }
        Ok(removed)
    }
}

pub struct PgAlertHistory {
    pg: Pg,
}

impl PgAlertHistory {
    pub(crate) fn new(pg: Pg) -> Self {
        Self { pg }
    }
}

/// Alerts kept; older ones are deleted as new ones arrive.
const ALERTS_KEPT: i64 = 1_000;

#[async_trait]
impl AlertHistory for PgAlertHistory {
    async fn record_alert(&self, alert: &AlertRecord) -> Result<(), StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        tx.execute(
            "INSERT INTO alerts (id, kind, source, message, at) VALUES ($1, $2, $3, $4, $5)",
            &[
                &alert.id,
                &alert.kind,
                &alert.source,
                &alert.message,
                &alert.at_ms,
            ],
        )
        .await
        .map_err(store_error)?;
        for d in &alert.deliveries {
            tx.execute(
                "INSERT INTO alert_deliveries (alert_id, channel, kind, status, attempts, last_error)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &alert.id,
                    &(d.channel as i64),
                    &d.kind,
                    &enum_text(&d.status)?,
                    &i64::from(d.attempts),
                    &d.last_error,
                ],
            )
            .await
            .map_err(store_error)?;
        }
        tx.execute(
            "DELETE FROM alert_deliveries WHERE alert_id IN
               (SELECT id FROM alerts WHERE rank <= (SELECT max(rank) FROM alerts) - $1)",
            &[&ALERTS_KEPT],
        )
        .await
        .map_err(store_error)?;
        tx.execute(
            "DELETE FROM alerts WHERE rank <= (SELECT max(rank) FROM alerts) - $1",
            &[&ALERTS_KEPT],
        )
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)
    }

    async fn update_delivery(
        &self,
        alert_id: &str,
        channel: usize,
        status: DeliveryStatus,
        attempts: u32,
        last_error: Option<String>,
    ) -> Result<bool, StoreError> {
        let changed = self
            .pg
            .client()
            .await?
            .execute(
                "UPDATE alert_deliveries SET status = $3, attempts = $4, last_error = $5
                 WHERE alert_id = $1 AND channel = $2",
                &[
                    &alert_id,
                    &(channel as i64),
                    &enum_text(&status)?,
                    &i64::from(attempts),
                    &last_error,
                ],
            )
            .await
            .map_err(store_error)?;
        Ok(changed == 1)
    }

    async fn recent_alerts(&self, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        let client = self.pg.client().await?;
        let mut alerts: Vec<AlertRecord> = client
            .query(
                "SELECT id, kind, source, message, at FROM alerts ORDER BY rank DESC LIMIT $1",
                &[&(limit as i64)],
            )
            .await
            .map_err(store_error)?
            .iter()
            .map(|r| AlertRecord {
                id: r.get(0),
                kind: r.get(1),
                source: r.get(2),
                message: r.get(3),
                at_ms: r.get(4),
                deliveries: Vec::new(),
            })
            .collect();
        for alert in &mut alerts {
            alert.deliveries = client
                .query(
                    "SELECT channel, kind, status, attempts, last_error FROM alert_deliveries
                     WHERE alert_id = $1 ORDER BY channel",
                    &[&alert.id],
                )
                .await
                .map_err(store_error)?
                .iter()
                .map(|r| {
                    Ok(DeliveryRecord {
                        channel: r.get::<_, i64>(0) as usize,
                        kind: r.get(1),
                        status: text_enum("delivery status", r.get(2))?,
                        attempts: r.get::<_, i64>(3) as u32,
                        last_error: r.get(4),
                    })
                })
                .collect::<Result<_, StoreError>>()?;
        }
        Ok(alerts)
    }
}
