//! Flows: the configured flows as graphs with their steps' recent status and latency, runs
//! started by the API, run history, replay from any step, and async jobs.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use raccordo_core::{Run, RunStatus, RunSummary, StepStatus};
use raccordo_flows::{FlowRunner, Job, StartError};
use raccordo_ingest::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::extract::{Admin, Reader, ValidQuery};
use crate::problem::Problem;
use crate::state::AppState;

pub fn router() -> super::ApiRouter {
    super::ApiRouter::new()
        .routes(utoipa_axum::routes!(list_flows))
        .routes(utoipa_axum::routes!(start_run))
        .routes(utoipa_axum::routes!(list_runs))
        .routes(utoipa_axum::routes!(get_run))
        .routes(utoipa_axum::routes!(replay_run))
        .routes(utoipa_axum::routes!(create_job))
        .routes(utoipa_axum::routes!(get_job))
}

/// The flow runner, or `404 not-configured` on a hub without flows.
pub struct Flows(Arc<FlowRunner>);

impl axum::extract::FromRequestParts<Arc<AppState>> for Flows {
    type Rejection = Problem;
    async fn from_request_parts(
        _parts: &mut http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Problem> {
        state.flows.clone().map(Flows).ok_or_else(|| {
            Problem::new(
                404,
                "not-configured",
                "Not configured",
                "no flow is configured on this hub (`[[flows]]`)",
            )
        })
    }
}

fn store_failed(e: impl std::fmt::Display, what: &str) -> Response {
    tracing::error!(error = %e, "{what} failed");
    Problem::unavailable(format!("{what} failed")).into_response()
}

fn invalid(errors: Vec<FieldError>, detail: impl Into<String>) -> Response {
    let mut p = Problem::new(422, "validation-failed", "Validation failed", detail);
    p.errors = errors;
    p.into_response()
}

fn start_failed(e: StartError) -> Response {
    match e {
        StartError::UnknownFlow(name) => {
            Problem::not_found(format!("no flow is named `{name}`")).into_response()
        }
        StartError::UnknownRun(id) => {
            Problem::not_found(format!("no run is named `{id}`")).into_response()
        }
        StartError::UnknownStep { flow, step } => invalid(
            vec![FieldError::new(
                "/from",
                format!("flow `{flow}` has no step `{step}`"),
            )],
            "nothing was started",
        ),
        StartError::InvalidInput { pointer, message } => invalid(
            vec![FieldError::new(format!("/input{pointer}"), message)],
            "the input does not match the flow's input schema; nothing was started",
        ),
        StartError::Store(e) => store_failed(e, "starting the run"),
    }
}

/// `202` with the new run's id and where to follow it.
fn started(run_id: String) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(RunStarted {
            status_url: format!("/api/v1/flows/runs/{run_id}"),
            run_id,
        }),
    )
        .into_response()
}

/// A JSON body read into `T` (unknown fields refused); `what` names it in the problem.
async fn json_request<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    what: &str,
) -> Result<T, Response> {
    let value = json_body(state, headers, body).await?;
    serde_json::from_value(value).map_err(|e| {
        invalid(
            vec![FieldError::new("", masked_serde(&e))],
            format!("the {what} is malformed; nothing was started"),
        )
    })
}

/// The body as JSON, under the server's limit.
async fn json_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Value, Response> {
    let bytes = crate::body::read_body(headers, body, state.max_body_bytes)
        .await
        .map_err(|e| Problem::from(e).into_response())?;
    if bytes.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        Problem::new(
            400,
            "invalid-json",
            "Malformed JSON",
            format!(
                "the body is not valid JSON: line {} column {}",
                e.line(),
                e.column()
            ),
        )
        .into_response()
    })
}

/// A step of a flow's graph with how its last runs went there.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FlowStepView {
    pub name: String,
    /// `map`, `filter`, `branch`, `ai`, `crm_update`, `crm_search`, `http` or `notify`.
    pub kind: String,
    /// Of the flow's last runs (up to 50): how often the step succeeded, failed, was
    /// skipped, or is running.
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
    pub running: u32,
    /// Latency of its finished attempts in those runs, from the step's first attempt.
    pub p50_ms: Option<i64>,
    pub max_ms: Option<i64>,
    /// The status of the step in the newest run that reached it.
    pub last_status: Option<String>,
    /// The later steps a `branch` may jump to (the next step is always a way on).
    pub jumps: Vec<String>,
    /// Tokens and cost the step spent in those runs (an `ai` step).
    pub tokens: u64,
    pub cost: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FlowView {
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub trigger: Value,
    /// In order; a `branch` names the later step it jumps to in `/trigger`-like config.
    pub steps: Vec<FlowStepView>,
    pub runs: u32,
    pub runs_failed: u32,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FlowsPage {
    pub flows: Vec<FlowView>,
}

/// The configured flows, each as its list of steps with the last runs' status and latency.
#[utoipa::path(
    get,
    path = "/api/v1/flows",
    tag = "flows",
    responses((status = 200, description = "The flows", body = FlowsPage)),
    security(("admin_token" = []))
)]
pub async fn list_flows(_reader: Reader, Flows(runner): Flows) -> Response {
    let mut flows = Vec::new();
    for flow in runner.flows().iter() {
        let summaries = match runner.runs().list_runs(Some(&flow.name), None, 50).await {
            Ok(s) => s,
            Err(e) => return store_failed(e, "reading the runs"),
        };
        let mut runs = Vec::with_capacity(summaries.len());
        for s in &summaries {
            match runner.runs().run(&s.id).await {
                Ok(Some(run)) => runs.push(run),
                Ok(None) => {}
                Err(e) => return store_failed(e, "reading a run"),
            }
        }
        let steps = flow
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let mut view = step_view(i, &step.name, step.kind, &runs);
                view.jumps = step
                    .step
                    .jumps()
                    .into_iter()
                    .filter_map(|j| flow.steps.get(j).map(|s| s.name.clone()))
                    .collect();
                view
            })
            .collect();
        flows.push(FlowView {
            name: flow.name.clone(),
            description: flow.description.clone(),
            trigger: serde_json::to_value(&flow.trigger).unwrap_or_default(),
            steps,
            runs: runs.len() as u32,
            runs_failed: runs
                .iter()
                .filter(|r| r.summary.status == RunStatus::Failed)
                .count() as u32,
        });
    }
    Json(FlowsPage { flows }).into_response()
}

fn step_view(index: usize, name: &str, kind: &str, runs: &[Run]) -> FlowStepView {
    let mut view = FlowStepView {
        name: name.to_string(),
        kind: kind.to_string(),
        succeeded: 0,
        failed: 0,
        skipped: 0,
        running: 0,
        p50_ms: None,
        max_ms: None,
        last_status: None,
        jumps: Vec::new(),
        tokens: 0,
        cost: 0.0,
    };
    let mut latencies = Vec::new();
    // Runs come newest first.
    for record in runs
        .iter()
        .filter_map(|r| r.steps.iter().find(|s| s.index as usize == index))
    {
        let status = match record.status {
            StepStatus::Succeeded => {
                view.succeeded += 1;
                "succeeded"
            }
            StepStatus::Failed => {
                view.failed += 1;
                "failed"
            }
            StepStatus::Skipped => {
                view.skipped += 1;
                "skipped"
            }
            StepStatus::Running => {
                view.running += 1;
                "running"
            }
        };
        if view.last_status.is_none() {
            view.last_status = Some(status.to_string());
        }
        view.tokens += record.tokens.unwrap_or(0);
        view.cost += record.cost.unwrap_or(0.0);
        if record.status != StepStatus::Skipped
            && let Some(end) = record.finished_at_ms
        {
            latencies.push(end - record.started_at_ms);
        }
    }
    latencies.sort_unstable();
    view.p50_ms = latencies.get(latencies.len() / 2).copied();
    view.max_ms = latencies.last().copied();
    view
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RunStarted {
    pub run_id: String,
    /// Where to follow it.
    pub status_url: String,
}

/// Start a run of a flow on the body (the trigger input), checked against the flow's
/// `input_schema`. Answers once the run and its first step are stored.
#[utoipa::path(
    post,
    path = "/api/v1/flows/{name}/runs",
    tag = "flows",
    params(("name" = String, Path, description = "The flow")),
    request_body(content = Object, description = "The trigger input"),
    responses(
        (status = 202, description = "Started", body = RunStarted),
        (status = 404, description = "No such flow", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The input fails the flow's schema; nothing was started", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn start_run(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Flows(runner): Flows,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let input = match json_body(&state, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match runner.start(&name, input, None).await {
        Ok((run_id, _)) => started(run_id),
        Err(e) => start_failed(e),
    }
}

/// Query of `GET /api/v1/flows/runs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only this flow's runs.
    flow: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Per page, 1-500 (default 50).
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RunsPage {
    /// Newest first.
    #[schema(value_type = Vec<Object>)]
    pub runs: Vec<RunSummary>,
    pub next_cursor: Option<String>,
}

/// Runs, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/flows/runs",
    tag = "flows",
    params(RunsQuery),
    responses((status = 200, description = "A page of runs", body = RunsPage)),
    security(("admin_token" = []))
)]
pub async fn list_runs(
    _reader: Reader,
    Flows(runner): Flows,
    ValidQuery(q): ValidQuery<RunsQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    match runner
        .runs()
        .list_runs(q.flow.as_deref(), q.cursor.as_deref(), limit)
        .await
    {
        Ok(runs) => Json(RunsPage {
            next_cursor: (runs.len() == limit)
                .then(|| runs.last().map(|r| r.id.clone()))
                .flatten(),
            runs,
        })
        .into_response(),
        Err(e) => store_failed(e, "reading the runs"),
    }
}

/// One run: its trigger input and each step's input, output, timing, attempts, error,
/// tokens and cost.
#[utoipa::path(
    get,
    path = "/api/v1/flows/runs/{id}",
    tag = "flows",
    params(("id" = String, Path, description = "The run")),
    responses(
        (status = 200, description = "The run", body = Object),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn get_run(_reader: Reader, Flows(runner): Flows, Path(id): Path<String>) -> Response {
    match runner.runs().run(&id).await {
        Ok(Some(run)) => Json(run).into_response(),
        Ok(None) => Problem::not_found("no run has this id").into_response(),
        Err(e) => store_failed(e, "reading the run"),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The step to start from; the steps before it keep their recorded outputs.
    pub from: String,
    /// The step's input instead of the recorded one (an edited input).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
}

/// Replay a run from one of its steps, as a new run: the recorded input of that step, or
/// an edited one.
#[utoipa::path(
    post,
    path = "/api/v1/flows/runs/{id}/replay",
    tag = "flows",
    params(("id" = String, Path, description = "The run to replay")),
    request_body = ReplayRequest,
    responses(
        (status = 202, description = "The new run", body = RunStarted),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No such step", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn replay_run(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Flows(runner): Flows,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request: ReplayRequest = match json_request(&state, &headers, body, "replay request").await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    match runner.replay(&id, &request.from, request.input).await {
        Ok(run_id) => started(run_id),
        Err(e) => start_failed(e),
    }
}

/// serde's message names fields and types, not values.
fn masked_serde(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.contains("unknown field")
        || text.contains("missing field")
        || text.contains("invalid type")
    {
        text.split(" at line")
            .next()
            .unwrap_or_default()
            .to_string()
    } else {
        "is malformed".into()
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The flow to run.
    pub flow: String,
    /// Its trigger input.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Value,
    /// Where to announce the end: a `POST` of the job, signed like Standard Webhooks with
    /// `[jobs] callback_secret`, retried until it is answered 2xx.
    #[serde(default)]
    pub callback_url: Option<String>,
}

/// Run a flow as an async job: answers `202` with the job's id at once; poll
/// `GET /api/v1/jobs/{id}`. The same `Idempotency-Key` returns the same job.
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "flows",
    params(super::IdempotencyKey),
    request_body = JobRequest,
    responses(
        (status = 202, description = "The job (new, or the one this key made)", body = Job),
        (status = 404, description = "No such flow", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The input fails the flow's schema; nothing was started", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn create_job(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Flows(runner): Flows,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 255 => Some(k.to_string()),
        Some(_) => {
            return Problem::new(
                400,
                "invalid-request",
                "Invalid request",
                "`Idempotency-Key` must be 1-255 visible characters",
            )
            .into_response();
        }
    };
    let request: JobRequest = match json_request(&state, &headers, body, "job request").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(url) = &request.callback_url {
        let ok = url
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !ok {
            return invalid(
                vec![FieldError::new("/callback_url", "must be an http(s) URL")],
                "nothing was started",
            );
        }
        if !state.job_callbacks {
            return invalid(
                vec![FieldError::new(
                    "/callback_url",
                    "this hub has no `[jobs] callback_secret` to sign callbacks with",
                )],
                "nothing was started",
            );
        }
    }
    // The key decides the job's id: a repeated key finds the job it made.
    let run_id = key.map(|k| raccordo_flows::derived_run_id("jobs", &k));
    let run_id = match (run_id, &request.callback_url) {
        (Some(id), _) => Some(id),
        // The callback is stored before the run exists, so a fast run cannot end first.
        (None, Some(_)) => Some(raccordo_flows::new_run_id()),
        (None, None) => None,
    };
    if let (Some(id), Some(url)) = (&run_id, &request.callback_url)
        && let Err(e) =
            raccordo_flows::jobs::set_callback(runner.kv().as_ref(), id, url, state.clock.now_ms())
                .await
    {
        return store_failed(e, "storing the callback");
    }
    let id = match runner.start(&request.flow, request.input, run_id).await {
        Ok((id, _)) => id,
        Err(e) => return start_failed(e),
    };
    match runner.runs().run(&id).await {
        Ok(Some(run)) => (StatusCode::ACCEPTED, Json(Job::of(&run))).into_response(),
        Ok(None) => store_failed("the run just stored is missing", "reading the job"),
        Err(e) => store_failed(e, "reading the job"),
    }
}

/// A job's state and, once it has ended, its result or error.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "flows",
    params(("id" = String, Path, description = "The job")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn get_job(_reader: Reader, Flows(runner): Flows, Path(id): Path<String>) -> Response {
    match runner.runs().run(&id).await {
        Ok(Some(run)) => Json(Job::of(&run)).into_response(),
        Ok(None) => Problem::not_found("no job has this id").into_response(),
        Err(e) => store_failed(e, "reading the job"),
    }
}
