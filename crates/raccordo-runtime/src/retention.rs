//! Retention of what the hub keeps besides events (`[retention]`): a supervised job removes
//! what is past its age, store by store, and counts it in
//! `raccordo_retention_purged_total{store}`: flow runs, and the late table's event list
//! (its counts per window stay). Events have their own retention (`[storage.retention]`)
//! in the event log, and refused requests theirs in the request inspector
//! (`[ingest.inspector] retention`). The call log keeps no personal data and lives in
//! memory only (the last 1 000 calls per service).

use std::sync::Arc;
use std::time::Duration;

use raccordo_core::{Clock, RunStore};
use serde::{Deserialize, Serialize};

use crate::supervisor::TaskContext;

/// `[retention]`: how long the hub keeps flow runs and the late table's events (events have
/// `[storage.retention]`, refused requests `[ingest.inspector]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Flow runs and jobs (their inputs, step inputs and outputs) are removed this long
    /// after they ended; runs still going are kept.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub runs: Duration,
    /// Late events (their ids, times and dimensions in the late table) are forgotten this
    /// long after they arrived; the late counts per window stay.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub late_events: Duration,
    /// How often the job looks.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            runs: Duration::from_secs(90 * 86_400),
            late_events: Duration::from_secs(30 * 86_400),
            every: Duration::from_secs(600),
        }
    }
}

impl RetentionConfig {
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.runs < Duration::from_secs(60) {
            out.push(("runs".into(), "must be at least 1m".into()));
        }
        if self.late_events < Duration::from_secs(60) {
            out.push(("late_events".into(), "must be at least 1m".into()));
        }
        if self.every < Duration::from_secs(1) {
            out.push(("every".into(), "must be at least 1s".into()));
        }
        out
    }
}

/// Purges on `config.every` until shutdown (and once at start).
pub async fn run_retention(
    config: RetentionConfig,
    runs: Arc<dyn RunStore>,
    late: Arc<dyn crate::live::LateEventKeeper>,
    clock: Arc<dyn Clock>,
    ctx: TaskContext,
) -> anyhow::Result<()> {
    loop {
        purge_once(&config, runs.as_ref(), Some(late.as_ref()), clock.now_ms()).await?;
        tokio::select! {
            _ = tokio::time::sleep(config.every) => {}
            _ = ctx.cancelled() => return Ok(()),
        }
    }
}

/// One pass at `now_ms`: what each store removed.
pub async fn purge_once(
    config: &RetentionConfig,
    runs: &dyn RunStore,
    late: Option<&dyn crate::live::LateEventKeeper>,
    now_ms: i64,
) -> Result<u64, raccordo_core::StoreError> {
    let before = |age: Duration| now_ms - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    let runs = runs.purge_runs(before(config.runs)).await?;
    let late = match late {
        Some(keeper) => keeper.purge_late_events(before(config.late_events)).await,
        None => 0,
    };
    for (store, purged) in [("runs", runs), ("late_events", late)] {
        if purged > 0 {
            metrics::counter!("raccordo_retention_purged_total", "store" => store)
                .increment(purged);
            tracing::info!(store, purged, "retention removed what was past its age");
        }
    }
    Ok(runs + late)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raccordo_core::{NewRun, RunStatus};

    const DAY: i64 = 86_400_000;

    #[tokio::test]
    async fn runs_go_once_they_ended_longer_ago_than_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = raccordo_storage_sqlite::SqliteStore::open(
            raccordo_storage_sqlite::SqliteOptions::new(dir.path().join("r.db")),
        )
        .unwrap();
        let runs = store.stores().runs.clone();
        for (id, ended) in [("a", DAY), ("b", 20 * DAY)] {
            runs.create_run(NewRun {
                id: id.into(),
                kind: "flow".into(),
                trigger: serde_json::json!({}),
                started_at_ms: ended - 1000,
            })
            .await
            .unwrap();
            runs.finish_run(id, RunStatus::Succeeded, ended)
                .await
                .unwrap();
        }
        let config = RetentionConfig {
            runs: Duration::from_secs(30 * 86_400),
            ..Default::default()
        };
        assert_eq!(
            purge_once(&config, runs.as_ref(), None, 30 * DAY)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            purge_once(&config, runs.as_ref(), None, 31 * DAY + 1)
                .await
                .unwrap(),
            1
        );
        assert!(runs.run("a").await.unwrap().is_none());
        assert!(runs.run("b").await.unwrap().is_some());
        store.stores().log.close().await;
    }
}
