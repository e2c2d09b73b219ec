//! Alert history, ingest health and the dead-letter queue.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;

use crate::extract::{Admin, Reader, ValidQuery};
use crate::problem::Problem;
use crate::state::AppState;

pub fn router() -> super::ApiRouter {
    super::ApiRouter::new()
        .routes(utoipa_axum::routes!(list_alerts))
        .routes(utoipa_axum::routes!(ingest_health))
        .routes(utoipa_axum::routes!(list_dead_letters))
        .routes(utoipa_axum::routes!(replay_dead_letter))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AlertsPage {
    /// Newest first (the last 200).
    pub alerts: Vec<raccordo_core::AlertRecord>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct IngestHealth {
    /// Whether the event store takes writes.
    pub ready: bool,
    pub live: raccordo_runtime::live::LiveHealth,
    pub sources: Vec<raccordo_ingest::source::SourceHealthSnapshot>,
    /// Every background task and its state.
    pub tasks: Vec<raccordo_runtime::TaskHealth>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<raccordo_core::DeadLetter>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Replayed {
    pub dead_letter: i64,
    /// The new work item that carries it.
    pub work_item: i64,
}

/// The latest alerts and what became of each delivery.
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    responses((status = 200, description = "Newest first", body = AlertsPage)),
    security(("admin_token" = []))
)]
pub async fn list_alerts(State(state): State<Arc<AppState>>, _reader: Reader) -> Response {
    match state.alerts.history().await {
        Ok(alerts) => Json(AlertsPage { alerts }).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading the alert history failed");
            Problem::unavailable("reading the alert history failed").into_response()
        }
    }
}

/// Per-source counters, the live windows' lag, the store's state and the background tasks.
#[utoipa::path(
    get,
    path = "/api/v1/ingest/health",
    tag = "operations",
    responses((status = 200, description = "Health", body = IngestHealth)),
    security(("admin_token" = []))
)]
pub async fn ingest_health(State(state): State<Arc<AppState>>, _reader: Reader) -> Response {
    let mut sources: Vec<_> = state
        .ingestor
        .sources()
        .map(|s| s.health_snapshot())
        .collect();
    sources.sort_by(|a, b| a.source.cmp(&b.source));
    Json(IngestHealth {
        ready: state.ingestor.log().is_ready(),
        live: state.feed().health(),
        sources,
        tasks: state.supervisor.health(),
    })
    .into_response()
}

/// Query of `GET /api/v1/dlq`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Only this queue (`alerts`, `sync`, …).
    queue: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<i64>,
    /// Per page, 1-1000 (default 100; larger values are capped).
    limit: Option<usize>,
}

/// Operations that failed for good (permanent errors, or retries exhausted), oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/dlq",
    tag = "alerts",
    params(DeadLetterQuery),
    responses((status = 200, description = "A page of dead letters", body = DeadLetterPage)),
    security(("admin_token" = []))
)]
pub async fn list_dead_letters(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    ValidQuery(q): ValidQuery<DeadLetterQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match state
        .queue
        .dead_letters(q.queue.as_deref(), q.cursor, limit)
        .await
    {
        Ok(letters) => {
            let next = (letters.len() == limit)
                .then(|| letters.last().map(|l| l.id))
                .flatten();
            Json(DeadLetterPage {
                dead_letters: letters,
                next_cursor: next,
            })
            .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "reading dead letters failed");
            Problem::unavailable("reading the dead-letter queue failed").into_response()
        }
    }
}

/// Put a dead letter back on its queue as a new work item.
#[utoipa::path(
    post,
    path = "/api/v1/dlq/{id}/replay",
    tag = "alerts",
    params(("id" = i64, Path, description = "The dead letter's id")),
    responses((status = 202, description = "Queued again", body = Replayed)),
    security(("admin_token" = []))
)]
pub async fn replay_dead_letter(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<i64>,
) -> Response {
    match state.queue.replay(id, state.clock.now_ms()).await {
        Ok(Some(item)) => (
            StatusCode::ACCEPTED,
            Json(Replayed {
                dead_letter: id,
                work_item: item,
            }),
        )
            .into_response(),
        Ok(None) => Problem::not_found(format!("no dead letter {id}")).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "replaying a dead letter failed");
            Problem::unavailable("the replay failed; nothing was changed").into_response()
        }
    }
}
