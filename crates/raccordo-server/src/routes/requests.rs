//! The request inspector: refused ingest requests, listed, shown and replayed.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use raccordo_core::{RejectedFilter, RejectedRequest, ReplayRecord};
use serde::Deserialize;

use crate::extract::{Admin, Reader, ValidQuery};
use crate::problem::Problem;
use crate::state::AppState;

pub fn router() -> super::ApiRouter {
    super::ApiRouter::new()
        .routes(utoipa_axum::routes!(list_requests))
        .routes(utoipa_axum::routes!(show_request))
        .routes(utoipa_axum::routes!(replay_request))
}

/// Query of `GET /api/v1/requests`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RequestsQuery {
    /// Only requests for this source.
    source: Option<String>,
    /// Only requests answered with this status (`422`, `401`, …).
    status: Option<u16>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Per page, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
}

/// A refused request in a list: what was answered, without headers and body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RequestSummary {
    pub id: String,
    pub source: Option<String>,
    pub target: String,
    pub received_at_ms: i64,
    pub status: u16,
    /// The problem's `title`.
    pub title: String,
    /// The problem's `detail`.
    pub detail: String,
    /// How many field errors the problem named.
    pub errors: usize,
    pub body_bytes: u64,
    /// Whether an admin can replay it (it passed authentication and its body was kept whole).
    pub replayable: bool,
    /// The status of its replay, if it was replayed.
    pub replayed: Option<u16>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RequestsPage {
    /// Newest first.
    pub requests: Vec<RequestSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn replayable(r: &RejectedRequest) -> bool {
    r.authenticated && r.source.is_some() && r.body.len() as u64 == r.body_bytes
}

fn summary(r: RejectedRequest) -> RequestSummary {
    let text = |key: &str| r.problem[key].as_str().unwrap_or_default().to_string();
    RequestSummary {
        replayable: replayable(&r),
        replayed: r.replay.as_ref().map(|p| p.status),
        title: text("title"),
        detail: text("detail"),
        errors: r.problem["errors"].as_array().map_or(0, Vec::len),
        id: r.id,
        source: r.source,
        target: r.target,
        received_at_ms: r.received_at_ms,
        status: r.status,
        body_bytes: r.body_bytes,
    }
}

fn store_failed(e: raccordo_core::StoreError) -> Response {
    tracing::error!(error = %e, "the request inspector's store failed");
    Problem::unavailable("reading the request inspector failed").into_response()
}

/// Refused ingest requests (newest first): source, path, status and problem, kept for
/// `ingest.inspector.retention`.
#[utoipa::path(
    get,
    path = "/api/v1/requests",
    tag = "ingest",
    params(RequestsQuery),
    responses((status = 200, description = "A page of refused requests", body = RequestsPage)),
    security(("admin_token" = []))
)]
pub async fn list_requests(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ValidQuery(q): ValidQuery<RequestsQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Problem::bad_parameter("limit", "between 1 and 200").into_response();
    }
    let filter = RejectedFilter {
        source: q.source,
        status: q.status,
        before_id: q.cursor,
        limit,
    };
    match state.inspector.store().rejected_requests(&filter).await {
        Ok(requests) => {
            let next_cursor = (requests.len() == limit)
                .then(|| requests.last().map(|r| r.id.clone()))
                .flatten();
            Json(RequestsPage {
                requests: requests.into_iter().map(summary).collect(),
                next_cursor,
            })
            .into_response()
        }
        Err(e) => store_failed(e),
    }
}

/// One refused request: its headers (credentials redacted), its body (up to the kept size),
/// the problem answered and, if replayed, the replay's answer.
#[utoipa::path(
    get,
    path = "/api/v1/requests/{id}",
    tag = "ingest",
    params(("id" = String, Path, description = "The request (`req_…`)")),
    responses(
        (status = 200, description = "The request", body = RejectedRequest),
        (status = 404, description = "No such request (or past its retention)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn show_request(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    Path(id): Path<String>,
) -> Response {
    match state.inspector.store().rejected_request(&id).await {
        Ok(Some(request)) => Json(request).into_response(),
        Ok(None) => Problem::not_found("no refused request has this id").into_response(),
        Err(e) => store_failed(e),
    }
}

/// Replay a refused request through its source's pipeline as it is configured now (after
/// fixing the schema or the mapping): `202` with the ingest answer, or the new problem.
/// Only a request that passed its source's authentication and whose body was kept whole can
/// be replayed: the admin token stands in for the sender's credentials, which were never
/// stored. A replay that was accepted is not repeated.
#[utoipa::path(
    post,
    path = "/api/v1/requests/{id}/replay",
    tag = "ingest",
    params(("id" = String, Path, description = "The request (`req_…`)")),
    responses(
        (status = 202, description = "Accepted now", body = super::ingest::IngestAnswer),
        (status = 404, description = "No such request", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not replayable (failed authentication, body cut, or already accepted), or the delivery id was used with another body", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Still refused: the body's type is not one the source takes", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Still refused: the new problem", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The writer is saturated; retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn replay_request(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Response {
    let store = state.inspector.store();
    let request = match store.rejected_request(&id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Problem::not_found("no refused request has this id").into_response(),
        Err(e) => return store_failed(e),
    };
    let conflict = |detail: &str| {
        Problem::new(409, "not-replayable", "Cannot replay this request", detail).into_response()
    };
    if !request.authenticated || request.source.is_none() {
        return conflict(
            "it failed authentication: only its sender can send it again, with valid credentials",
        );
    }
    if request.body.len() as u64 != request.body_bytes {
        return conflict(
            "its body was larger than the inspector keeps (`ingest.inspector.max_body_bytes`)",
        );
    }
    if request.replay.as_ref().is_some_and(|r| r.status == 202) {
        return conflict("it was replayed and accepted already");
    }
    // The body's own type, and the delivery id: a second replay of the same request is a
    // duplicate delivery, not a second event.
    let mut headers = http::HeaderMap::new();
    for (name, value) in &request.headers {
        if matches!(name.as_str(), "content-type" | "idempotency-key")
            && let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            )
        {
            headers.insert(name, value);
        }
    }
    let source = request.source.as_deref().unwrap_or_default();
    let outcome = state
        .ingestor
        .replay(source, &headers, bytes::Bytes::from(request.body.clone()))
        .await;
    let (status, answer) = match &outcome {
        Ok(response) => (
            StatusCode::ACCEPTED,
            serde_json::to_value(super::ingest::answer_of(&state, response)).unwrap_or_default(),
        ),
        Err(e) => {
            let problem = Problem::from(e.clone());
            (
                StatusCode::from_u16(problem.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
                serde_json::to_value(&problem).unwrap_or_default(),
            )
        }
    };
    let record = ReplayRecord {
        at_ms: state.clock.now_ms(),
        status: status.as_u16(),
        answer: answer.clone(),
    };
    if let Err(e) = store.record_replay(&id, &record).await {
        tracing::warn!(error = %e, "the replay's answer could not be recorded");
    }
    tracing::info!(request = %id, status = status.as_u16(), "refused request replayed");
    let content_type = if status == StatusCode::ACCEPTED {
        "application/json"
    } else {
        "application/problem+json"
    };
    (
        status,
        [(http::header::CONTENT_TYPE, content_type)],
        answer.to_string(),
    )
        .into_response()
}
