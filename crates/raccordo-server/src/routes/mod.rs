//! HTTP handlers, one module per area, each with its own router. Handlers are thin: they
//! read checked input (extractors), call the core, and map the outcome.

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;
use crate::state::AppState;

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
