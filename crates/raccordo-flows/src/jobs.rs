//! Async jobs: a flow run started by `POST /api/v1/jobs`, read as a job (state, result,
//! error), with an optional completion webhook. The webhook is signed like Standard Webhooks
//! (`webhook-id` is the job id, the same on every retry) and retried on the work queue.

use std::sync::Arc;

use raccordo_core::{
    Clock, Completion, KeyValueStore, NewWorkItem, RetryPolicy, Run, RunStatus, RunStore,
    StepStatus, StoreError, WorkItem, WorkQueue,
};
use raccordo_notify::signer::WebhookSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The work-queue name of completion webhooks.
pub const CALLBACK_QUEUE: &str = "job-callbacks";

/// `[jobs]`: async jobs' completion webhooks.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Signs completion webhooks (`whsec_…`, Standard Webhooks); a job may name a
    /// `callback_url` only when it is set.
    #[serde(serialize_with = "raccordo_core::redacted_option")]
    pub callback_secret: Option<String>,
}

impl JobsConfig {
    pub fn problems(&self) -> Vec<(String, String)> {
        match &self.callback_secret {
            Some(s) => WebhookSecret::parse(s)
                .err()
                .map(|e| vec![("callback_secret".to_string(), e)])
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    pub job_id: String,
    pub flow: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// The output of the last step that succeeded, once the job has ended.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why it failed: the failing step and its error.
    pub error: Option<String>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// The run behind the job, with every step.
    pub run_url: String,
}

impl Job {
    pub fn of(run: &Run) -> Self {
        let ended = run.summary.status != RunStatus::Running;
        let result = ended
            .then(|| {
                run.steps
                    .iter()
                    .filter(|s| s.status == StepStatus::Succeeded)
                    .max_by_key(|s| s.index)
                    .and_then(|s| s.output.clone())
            })
            .flatten();
        let error = run
            .steps
            .iter()
            .find(|s| s.status == StepStatus::Failed)
            .map(|s| format!("step `{}`: {}", s.name, s.error.clone().unwrap_or_default()));
        Job {
            job_id: run.summary.id.clone(),
            flow: run.summary.kind.clone(),
            state: match run.summary.status {
                RunStatus::Running => "running",
                RunStatus::Succeeded => "succeeded",
                RunStatus::Failed => "failed",
            }
            .into(),
            result,
            error,
            started_at_ms: run.summary.started_at_ms,
            finished_at_ms: run.summary.finished_at_ms,
            run_url: format!("/api/v1/flows/runs/{}", run.summary.id),
        }
    }
}

fn callback_key(run_id: &str) -> String {
    format!("jobs:callback:{run_id}")
}

/// Remembers where to announce the end of `run_id` (kept 30 days).
pub async fn set_callback(
    kv: &dyn KeyValueStore,
    run_id: &str,
    url: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    kv.put(
        &callback_key(run_id),
        url.as_bytes().to_vec(),
        Some(30 * 86_400_000),
        now_ms,
    )
    .await
    .map(|_| ())
}

/// When a run ends: queues its completion webhook, if its job asked for one.
pub async fn on_finished(
    kv: &dyn KeyValueStore,
    queue: &dyn WorkQueue,
    run_id: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let Some(url) = kv.get(&callback_key(run_id), now_ms).await? else {
        return Ok(());
    };
    queue
        .enqueue(
            NewWorkItem {
                queue: CALLBACK_QUEUE.into(),
                group_key: run_id.to_string(),
                operation: "job.completed".into(),
                payload: serde_json::json!({
                    "run": run_id,
                    "url": String::from_utf8_lossy(&url.value),
                }),
                coalesce: true,
            },
            now_ms,
        )
        .await
        .map(|_| ())
}

/// Delivers completion webhooks.
pub struct CallbackSender {
    pub runs: Arc<dyn RunStore>,
    pub secret: WebhookSecret,
    /// Built on the outbound policy, following no redirects (the body is signed).
    pub http: reqwest::Client,
    pub outbound: raccordo_outbound::Outbound,
    pub clock: Arc<dyn Clock>,
}

impl CallbackSender {
    /// A first retry after 5 s, doubling, 8 attempts (about 10 minutes).
    pub fn retry_policy() -> RetryPolicy {
        RetryPolicy {
            first_delay_ms: 5_000,
            factor: 2.0,
            max_delay_ms: 300_000,
            max_attempts: 8,
            jitter: 0.2,
        }
    }

    pub async fn deliver(&self, item: &WorkItem) -> Completion {
        let (Some(run_id), Some(url)) =
            (item.payload["run"].as_str(), item.payload["url"].as_str())
        else {
            return Completion::Permanent {
                error: "not a job callback".into(),
            };
        };
        // The URL came with the job request: judged now, before anything is sent.
        if let Err(refusal) = self.outbound.check_url_text(url) {
            metrics::counter!("raccordo_outbound_refused_total", "reason" => refusal.label())
                .increment(1);
            return Completion::Permanent {
                error: format!("callback_url refused: {refusal}"),
            };
        }
        let run = match self.runs.run(run_id).await {
            Ok(Some(run)) => run,
            Ok(None) => {
                return Completion::Permanent {
                    error: "the job's run is gone".into(),
                };
            }
            Err(e) => {
                return Completion::Retryable {
                    error: format!("run store: {e}"),
                    retry_after_ms: None,
                };
            }
        };
        let body = serde_json::to_vec(&serde_json::json!({
            "type": format!("job.{}", Job::of(&run).state),
            "data": Job::of(&run),
        }))
        .unwrap_or_default();
        let ts = self.clock.now_ms() / 1000;
        let id = format!("job_{run_id}");
        let started = std::time::Instant::now();
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", self.secret.sign(&id, ts, &body))
            .body(body)
            .send()
            .await;
        let (status, timed_out) = match &sent {
            Ok(r) => (Some(r.status().as_u16()), false),
            Err(e) => (None, e.is_timeout()),
        };
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        raccordo_core::calls::record(
            "notify:job-callback",
            format!("POST {host}"),
            status,
            started.elapsed(),
            raccordo_core::calls::reason(status, timed_out),
        );
        match sent {
            Ok(r) if r.status().is_success() => Completion::Done,
            Ok(r)
                if r.status().as_u16() == 429
                    || r.status().is_server_error()
                    || r.status().as_u16() == 408 =>
            {
                Completion::Retryable {
                    error: format!("HTTP {}", r.status().as_u16()),
                    retry_after_ms: crate::services::retry_after_ms(r.headers()),
                }
            }
            Ok(r) => Completion::Permanent {
                error: format!("HTTP {}", r.status().as_u16()),
            },
            Err(_) => Completion::Retryable {
                error: raccordo_core::calls::reason(None, timed_out).unwrap_or_default(),
                retry_after_ms: None,
            },
        }
    }
}
