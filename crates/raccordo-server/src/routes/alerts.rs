//! Alert history, ingest health and the dead-letter queue.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::extract::{Admin, Reader, ValidQuery};
use crate::problem::Problem;
use crate::state::AppState;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/ingest/health", get(ingest_health))
        .route("/api/v1/dlq", get(list_dead_letters))
        .route("/api/v1/dlq/{id}/replay", post(replay_dead_letter))
}

/// `GET /api/v1/alerts`: the latest alerts and their deliveries.
pub async fn list_alerts(State(state): State<Arc<AppState>>, _reader: Reader) -> Response {
    match state.alerts.history().await {
        Ok(alerts) => Json(json!({ "alerts": alerts })).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading the alert history failed");
            Problem::unavailable("reading the alert history failed").into_response()
        }
    }
}

/// `GET /api/v1/ingest/health`: per-source counters, the live windows' lag, store state.
pub async fn ingest_health(State(state): State<Arc<AppState>>, _reader: Reader) -> Response {
    let mut sources: Vec<_> = state
        .ingestor
        .sources()
        .map(|s| s.health_snapshot())
        .collect();
    sources.sort_by(|a, b| a.source.cmp(&b.source));
    Json(json!({
        "ready": state.ingestor.log().is_ready(),
        "live": state.live.health(),
        "sources": sources,
        "tasks": state.supervisor.health(),
    }))
    .into_response()
}

/// Query of `GET /api/v1/dlq`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    queue: Option<String>,
    cursor: Option<i64>,
    limit: Option<usize>,
}

/// `GET /api/v1/dlq`: operations that failed for good, oldest first.
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
            Json(json!({ "dead_letters": letters, "next_cursor": next })).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "reading dead letters failed");
            Problem::unavailable("reading the dead-letter queue failed").into_response()
        }
    }
}

/// `POST /api/v1/dlq/{id}/replay`: puts a dead letter back on its queue.
pub async fn replay_dead_letter(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<i64>,
) -> Response {
    match state.queue.replay(id, state.clock.now_ms()).await {
        Ok(Some(item)) => (
            StatusCode::ACCEPTED,
            Json(json!({ "dead_letter": id, "work_item": item })),
        )
            .into_response(),
        Ok(None) => Problem::not_found(format!("no dead letter {id}")).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "replaying a dead letter failed");
            Problem::unavailable("the replay failed; nothing was changed").into_response()
        }
    }
}
