//! Operations: liveness, readiness, Prometheus, the dashboard, the benchmark baseline.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, header};
use serde_json::json;

use crate::body::read_body;
use crate::problem::Problem;
use crate::state::AppState;
use std::sync::atomic::Ordering;

pub fn router(bench_routes: bool) -> Router<Arc<AppState>> {
    let router = Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if bench_routes {
        router.route("/_bench/noop", post(noop))
    } else {
        router
    }
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the process can take traffic (store writable, not draining).
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
    Json(json!({"status": "ready"})).into_response()
}

/// `GET /metrics`: Prometheus text format.
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

/// `GET /`: the live dashboard, a single self-contained page (no build step, no CDN).
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
