//! Ingestion: conversion events and generic sources. Thin: read the body, run the pipeline,
//! answer.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, StatusCode};

use crate::state::AppState;
use raccordo_ingest::Target;
use std::sync::atomic::Ordering;

use crate::body::{InFlight, read_body};
use crate::problem::Problem;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/eventi/conversione", post(ingest_conversion))
        .route("/webhooks/in/{source}", post(ingest_source))
}

/// `POST /api/v1/eventi/conversione`
pub async fn ingest_conversion(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(&state, Target::Conversion, headers, body).await
}

/// `POST /webhooks/in/{source}`
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
            if response.single {
                (StatusCode::ACCEPTED, Json(response.items[0])).into_response()
            } else {
                (StatusCode::ACCEPTED, Json(response.items)).into_response()
            }
        }
        Err(e) => Problem::from(e).into_response(),
    }
}
