//! Ingestion: conversion events and generic sources. Thin: read the body, run the pipeline,
//! answer.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};

use crate::extract::ClientOf;
use crate::state::AppState;
use raccordo_ingest::Target;
use std::sync::atomic::Ordering;

use crate::body::{InFlight, read_body};
use crate::problem::Problem;

pub fn router() -> super::ApiRouter {
    super::ApiRouter::new()
        .routes(utoipa_axum::routes!(ingest_conversion))
        .routes(utoipa_axum::routes!(ingest_source, source_preflight))
}

/// What an ingest route answers, besides the problems every route may give.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documents the answers; handlers build them as `Response`s
pub enum IngestResponses {
    /// Stored, or recognised as a duplicate
    #[response(status = 202)]
    Accepted(IngestAnswer),
    /// The delivery id was used before with another body
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
    /// Not JSON
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// Schema violations, each named by pointer
    #[response(status = 422, content_type = "application/problem+json")]
    Invalid(Problem),
    /// The writer is saturated; retry after `Retry-After`
    #[response(status = 429, content_type = "application/problem+json")]
    Overloaded(Problem),
}

/// The answer to an accepted request: one outcome for a single event, a list (in input
/// order) for a batch.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum IngestAnswer {
    One(ItemAnswer),
    Batch(Vec<ItemAnswer>),
}

/// What became of one event.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ItemAnswer {
    /// `accepted` (stored now) or `duplicate` (stored before, under `id`).
    pub status: &'static str,
    #[schema(value_type = String, example = "evt_01M82EZVFYW6MQM129E35YSRM0")]
    pub id: raccordo_core::EventId,
    /// Present and true when the event is stored but too late for every window holding it
    /// (past the watermark and the allowed lateness): it counts as late, not in a window.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

/// Send one conversion event, or an array of up to 1000.
///
/// Answered `202` once the events are durable. A repeated delivery id (`webhook-id` or
/// `Idempotency-Key`) or business key is answered `duplicate` with the original event's id.
/// A batch is validated whole: one invalid event refuses the batch, naming every failing
/// field by JSON pointer.
#[utoipa::path(
    post,
    path = "/api/v1/eventi/conversione",
    tag = "ingest",
    request_body(content_type = "application/json", description = "A conversion event (`ConversionEvent`) or an array of them"),
    params(super::IdempotencyKey),
    responses(IngestResponses),
    security(("api_key" = []), ("standard_webhooks" = []), ("jwt" = []))
)]
pub async fn ingest_conversion(
    State(state): State<Arc<AppState>>,
    ClientOf(caller): ClientOf,
    uri: http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(&state, Target::Conversion, &uri, &caller, headers, body).await
}

/// Send an event (or an array) to a configured source.
///
/// The source's own auth methods, schema and dedup fields apply.
#[utoipa::path(
    post,
    path = "/webhooks/in/{source}",
    tag = "ingest",
    request_body(content_type = "application/json", description = "Whatever the source's schema accepts"),
    params(("source" = String, Path, description = "A source from `[sources.<name>]`"), super::IdempotencyKey),
    responses(IngestResponses),
    security(("api_key" = []), ("standard_webhooks" = []), ("jwt" = []))
)]
pub async fn ingest_source(
    State(state): State<Arc<AppState>>,
    ClientOf(caller): ClientOf,
    Path(source): Path<String>,
    uri: http::Uri,
    mut headers: HeaderMap,
    body: Body,
) -> Response {
    let configured = state
        .ingestor
        .sources()
        .find(|s| s.name.as_str() == source)
        .cloned();
    let forms = configured.as_ref().and_then(|s| s.forms.as_ref());
    // A form the browser navigates with (not a `fetch` from a script, which reads the JSON).
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let navigation = match header("sec-fetch-mode") {
        "" => header("accept").contains("text/html"),
        mode => mode == "navigate",
    };
    let form_post =
        forms.is_some() && navigation && raccordo_ingest::browser::is_form(header("content-type"));
    // A plain HTML form cannot set headers: a form source takes its API key from the query
    // (`?api_key=`), which the page shows anyway.
    if forms.is_some()
        && !headers.contains_key("x-api-key")
        && let Some(key) = uri.query().and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("api_key="))
                .map(str::to_string)
        })
        && let Ok(value) = http::HeaderValue::from_str(&key)
    {
        headers.insert("x-api-key", value);
    }
    let origin = allowed_origin(configured.as_deref(), &headers);
    let mut response = ingest(
        &state,
        Target::Source(&source),
        &uri,
        &caller,
        headers,
        body,
    )
    .await;
    if form_post
        && response.status() == StatusCode::ACCEPTED
        && let Some(url) = forms.and_then(|f| f.redirect.as_deref())
        && let Ok(location) = http::HeaderValue::from_str(url)
    {
        response = (StatusCode::SEE_OTHER, [(http::header::LOCATION, location)]).into_response();
    }
    if let Some(origin) = origin {
        let h = response.headers_mut();
        h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.append(http::header::VARY, http::HeaderValue::from_static("origin"));
    }
    response
}

/// The request's `Origin`, when the source's `cors` lets it call.
fn allowed_origin(
    source: Option<&raccordo_ingest::Source>,
    headers: &HeaderMap,
) -> Option<http::HeaderValue> {
    let cors = source?.cors.as_ref()?;
    let origin = headers.get(http::header::ORIGIN)?;
    cors.allows(origin.to_str().ok()?).then(|| origin.clone())
}

/// The browser's preflight for a source with `cors`: which origin, methods and headers may
/// post to it, and for how long the answer holds. A refused origin gets `403`.
#[utoipa::path(
    options,
    path = "/webhooks/in/{source}",
    tag = "ingest",
    params(("source" = String, Path, description = "A source from `[sources.<name>]`")),
    responses(
        (status = 204, description = "The origin may post to the source"),
        (status = 403, description = "The source takes no calls from this origin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn source_preflight(
    State(state): State<Arc<AppState>>,
    Path(source): Path<String>,
    headers: HeaderMap,
) -> Response {
    let configured = state.ingestor.sources().find(|s| s.name.as_str() == source);
    let Some(origin) = allowed_origin(configured.map(|s| s.as_ref()), &headers) else {
        return Problem::new(
            403,
            "origin-not-allowed",
            "Origin not allowed",
            "this source takes no browser calls from this origin (`cors.allowed_origins`)",
        )
        .into_response();
    };
    let max_age = configured
        .and_then(|s| s.cors.as_ref())
        .map_or(3600, |c| c.max_age.as_secs());
    (
        StatusCode::NO_CONTENT,
        [
            (http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (
                http::header::ACCESS_CONTROL_ALLOW_METHODS,
                http::HeaderValue::from_static("POST"),
            ),
            (
                http::header::ACCESS_CONTROL_ALLOW_HEADERS,
                http::HeaderValue::from_static(
                    "content-type, x-api-key, authorization, idempotency-key, webhook-id, webhook-timestamp, webhook-signature",
                ),
            ),
            (
                http::header::ACCESS_CONTROL_MAX_AGE,
                http::HeaderValue::from(max_age),
            ),
            (http::header::VARY, http::HeaderValue::from_static("origin")),
        ],
    )
        .into_response()
}

async fn ingest(
    state: &AppState,
    target: Target<'_>,
    uri: &http::Uri,
    caller: &raccordo_ingest::Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let _in_flight = InFlight::enter();
    if state.shutting_down.load(Ordering::Relaxed) {
        return Problem::unavailable("the server is shutting down").into_response();
    }
    let refused = |problem: Problem, source: Option<String>, authenticated: bool, body: &[u8]| {
        // What the sender can fix; not the hub's own state (overload, shutdown) nor a path
        // that names no source (scanners).
        let inspect = (400..500).contains(&problem.status) && ![404, 429].contains(&problem.status);
        if inspect {
            state.inspector.record(crate::inspector::Refused {
                source,
                target: uri.path(),
                query: uri.query(),
                headers: &headers,
                body,
                authenticated,
                problem: &problem,
            });
        }
        problem.into_response()
    };
    let named = match target {
        Target::Source(name) => Some(name.to_string()),
        Target::Conversion => None,
    };
    let body = match read_body(&headers, body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return refused(Problem::from(e), named, false, &[]),
    };
    match state
        .ingestor
        .ingest(target, &headers, body.clone(), caller)
        .await
    {
        // Duplicates and clock skew reach the alert engine through the source's counters,
        // which it reads on its own schedule: nothing here waits for it.
        Ok(response) => (StatusCode::ACCEPTED, Json(answer_of(state, &response))).into_response(),
        Err(rejection) => refused(
            Problem::from(rejection.error),
            rejection.source,
            rejection.authenticated,
            &body,
        ),
    }
}

/// The `202` answer: each item's outcome, and whether it is already late.
pub(super) fn answer_of(
    state: &AppState,
    response: &raccordo_ingest::IngestResponse,
) -> IngestAnswer {
    let mut items = response
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| ItemAnswer {
            status: if item.is_duplicate() {
                "duplicate"
            } else {
                "accepted"
            },
            id: item.id(),
            late: !item.is_duplicate()
                && response
                    .event_times_ms
                    .get(i)
                    .is_some_and(|t| state.feed().is_too_late(*t)),
        });
    if response.single {
        match items.next() {
            Some(one) => IngestAnswer::One(one),
            None => IngestAnswer::Batch(Vec::new()),
        }
    } else {
        IngestAnswer::Batch(items.collect())
    }
}
