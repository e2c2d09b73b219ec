//! Ingestion: conversion events and generic sources. Thin: read the body, run the pipeline,
//! answer.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};

use crate::state::AppState;
use raccordo_ingest::Target;
use std::sync::atomic::Ordering;

use crate::body::{InFlight, read_body};
use crate::problem::Problem;

pub fn router() -> super::ApiRouter {
    super::ApiRouter::new()
        .routes(utoipa_axum::routes!(ingest_conversion))
        .routes(utoipa_axum::routes!(ingest_source))
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
    One(raccordo_core::ItemOutcome),
    Batch(Vec<raccordo_core::ItemOutcome>),
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
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(&state, Target::Conversion, headers, body).await
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
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(&state, Target::Source(&source), headers, body).await
}

async fn ingest(state: &AppState, target: Target<'_>, headers: HeaderMap, body: Body) -> Response {
    let _in_flight = InFlight::enter();
    if state.shutting_down.load(Ordering::Relaxed) {
        return Problem::unavailable("the server is shutting down").into_response();
    }
    let body = match read_body(&headers, body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return Problem::from(e).into_response(),
    };
    match state.ingestor.ingest(target, &headers, body).await {
        // Duplicates and clock skew reach the alert engine through the source's counters,
        // which it reads on its own schedule: nothing here waits for it.
        Ok(response) => {
            let answer = if response.single {
                IngestAnswer::One(response.items[0])
            } else {
                IngestAnswer::Batch(response.items)
            };
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
        Err(e) => Problem::from(e).into_response(),
    }
}
