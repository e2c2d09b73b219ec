//! HTTP handlers, one module per area, each with its own router. Handlers are thin: they
//! read checked input (extractors), call the core, and map the outcome.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, header};
use raccordo_ingest::IngestError;

use crate::app::AppState;
use crate::problem::Problem;

mod alerts;
mod campaigns;
mod events;
mod ingest;
mod metrics;
mod ops;

/// Every route of the hub.
pub fn router(bench_routes: bool) -> Router<Arc<AppState>> {
    Router::new()
        .merge(ingest::router())
        .merge(events::router())
        .merge(metrics::router())
        .merge(campaigns::router())
        .merge(alerts::router())
        .merge(ops::router(bench_routes))
        .fallback(not_found)
}

pub async fn not_found() -> Response {
    Problem::not_found("no such route").into_response()
}

/// Counts ingest requests being processed (`raccordo_ingest_in_flight_requests`).
pub(crate) struct InFlight;

impl InFlight {
    pub(crate) fn enter() -> Self {
        ::metrics::gauge!("raccordo_ingest_in_flight_requests").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        ::metrics::gauge!("raccordo_ingest_in_flight_requests").decrement(1.0);
    }
}

/// Reads the body up to `limit` bytes; a declared or actual larger body is a 413.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngestError::BodyTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util_limited::LengthLimitError>());
        if too_large || e.to_string().contains("length limit") {
            IngestError::BodyTooLarge { limit }
        } else {
            IngestError::InvalidJson {
                detail: "the body could not be read completely".into(),
            }
        }
    })
}

mod http_body_util_limited {
    /// axum wraps http-body-util's error; matching by type keeps us off its private paths.
    pub type LengthLimitError = axum::extract::rejection::LengthLimitError;
}
