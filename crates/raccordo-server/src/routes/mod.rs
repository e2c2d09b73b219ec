//! HTTP handlers, one module per area, each with its own router. Handlers are thin: they
//! read checked input (extractors), call the core, and map the outcome.

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;
use crate::state::AppState;

mod alerts;
mod calls;
mod campaigns;
mod crm;
mod customers;
mod events;
mod flows;
mod ingest;
mod metrics;
mod ops;
mod requests;
mod security;

/// A router whose routes are registered with their OpenAPI operations (`utoipa_axum::routes!`),
/// so that a route cannot exist without its entry in `/openapi.json`.
pub type ApiRouter = utoipa_axum::router::OpenApiRouter<Arc<AppState>>;

/// Every route of the hub, and the OpenAPI document that describes them.
pub fn router(bench_routes: bool) -> (Router<Arc<AppState>>, Arc<serde_json::Value>) {
    let (router, api) = ApiRouter::with_openapi(crate::openapi::base())
        .merge(ingest::router())
        .merge(events::router())
        .merge(metrics::router())
        .merge(campaigns::router())
        .merge(alerts::router())
        .merge(crm::router())
        .merge(flows::router())
        .merge(calls::router())
        .merge(requests::router())
        .merge(security::router())
        .merge(customers::router())
        .merge(ops::router(bench_routes))
        .routes(utoipa_axum::routes!(openapi_json))
        .split_for_parts();
    let document = Arc::new(crate::openapi::finish(api));
    let router = router
        .fallback(not_found)
        .layer(axum::Extension(document.clone()));
    (router, document)
}

/// `Idempotency-Key`: a delivery id for senders that do not use Standard Webhooks.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documents a header the ingest pipeline reads
pub struct IdempotencyKey {
    /// A repeated key within its retention answers the first answer again.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// This document: OpenAPI 3.1, generated from the routes.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object))
)]
pub async fn openapi_json(
    axum::Extension(document): axum::Extension<Arc<serde_json::Value>>,
) -> Response {
    axum::Json(document.as_ref()).into_response()
}

pub async fn not_found() -> Response {
    Problem::not_found("no such route").into_response()
}
