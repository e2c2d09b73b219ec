//! Operations: liveness, readiness, Prometheus, the dashboard, the benchmark baseline.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, StatusCode, header};
use serde_json::json;

use crate::body::read_body;
use crate::problem::Problem;
use crate::state::AppState;
use std::sync::atomic::Ordering;

pub fn router(bench_routes: bool) -> super::ApiRouter {
    let router = super::ApiRouter::new()
        .routes(utoipa_axum::routes!(dashboard))
        .routes(utoipa_axum::routes!(healthz))
        .routes(utoipa_axum::routes!(readyz))
        .routes(utoipa_axum::routes!(metrics));
    if bench_routes {
        // A benchmark baseline, off by default and left out of the API document.
        router.route("/_bench/noop", post(noop))
    } else {
        router
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Status {
    /// `ok` (healthz) or `ready` (readyz).
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Up", body = Status))
)]
pub async fn healthz() -> Response {
    Json(Status { status: "ok" }).into_response()
}

/// The process can take traffic: the store takes writes, no background task keeps failing,
/// and shutdown has not begun. Point load-balancer health checks here.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "Not ready; the detail says why", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Problem::unavailable("shutting down").into_response();
    }
    if !state.ingestor.log().is_ready() {
        let mut p = Problem::unavailable("the event store is not accepting writes");
        p.retry_after_s = Some(5);
        return p.into_response();
    }
    let failing = state.supervisor.failing();
    if !failing.is_empty() {
        let names: Vec<String> = failing
            .iter()
            .map(|t| {
                format!(
                    "{} ({})",
                    t.name,
                    t.last_error.as_deref().unwrap_or("failed")
                )
            })
            .collect();
        let mut p =
            Problem::unavailable(format!("background work is failing: {}", names.join("; ")));
        p.retry_after_s = Some(5);
        return p.into_response();
    }
    Json(Status { status: "ready" }).into_response()
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
        .into_response()
}

/// `POST /_bench/noop`: reads the body and answers like an accepted event, doing nothing
/// else. Only mounted with `server.bench_routes`; it is the baseline of the ingest benchmark.
pub async fn noop(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    match read_body(&headers, body, state.max_body_bytes).await {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(json!({"id": "evt_noop", "status": "accepted"})),
        )
            .into_response(),
        Err(e) => Problem::from(e).into_response(),
    }
}

/// The live dashboard: one self-contained page (no build step, no CDN); give it a `read`
/// token as `#token=…`.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses((status = 200, description = "The page", content_type = "text/html", body = String))
)]
pub async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        include_str!("../../assets/dashboard.html"),
    )
        .into_response()
}
