//! Run history: each run of a flow (or a sync pass) with its trigger input and a record of
//! every step, so that a run can be inspected and replayed from any step.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Succeeded,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// `run_<ULID>`, chosen by the caller so that it can be returned before the run exists.
    pub id: String,
    /// What ran: a flow's name, `sync`, …
    pub kind: String,
    pub trigger: serde_json::Value,
    pub started_at_ms: i64,
}

/// One step of a run as it stands (recorded again as it progresses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub index: u32,
    pub name: String,
    pub status: StepStatus,
    pub input: serde_json::Value,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    pub attempts: u32,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// Model tokens spent by the step, if it called one.
    pub tokens: Option<u64>,
    /// What those tokens cost, in the provider's currency.
    #[serde(default)]
    pub cost: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub kind: String,
    pub status: RunStatus,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub trigger: serde_json::Value,
    /// By step index.
    pub steps: Vec<StepRecord>,
}

#[async_trait]
pub trait RunStore: Send + Sync + 'static {
    /// Creates a run in `running`; creating an id that exists changes nothing and is `false`.
    async fn create_run(&self, run: NewRun) -> Result<bool, StoreError>;

    /// Records a step (replacing the earlier record of the same index). `false` when the
    /// run does not exist.
    async fn record_step(&self, run_id: &str, step: StepRecord) -> Result<bool, StoreError>;

    /// Ends a running run. `false` when it does not exist or already ended.
    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        finished_at_ms: i64,
    ) -> Result<bool, StoreError>;

    async fn run(&self, run_id: &str) -> Result<Option<Run>, StoreError>;

    /// Removes runs that ended before `ended_before_ms`, with their steps (retention);
    /// runs still going stay. How many were removed.
    async fn purge_runs(&self, ended_before_ms: i64) -> Result<u64, StoreError>;

    /// Runs newest first, optionally of one kind, older than the run `before` (paging).
    async fn list_runs(
        &self,
        kind: Option<&str>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunSummary>, StoreError>;

    /// Ids of the runs whose trigger input or any step record holds `needle` (a data
    /// subject's id as stored JSON writes it), newest first.
    async fn runs_holding(&self, needle: &str) -> Result<Vec<String>, StoreError>;

    /// Removes these runs with their steps; how many runs went.
    async fn delete_runs(&self, ids: &[String]) -> Result<u64, StoreError>;
}
