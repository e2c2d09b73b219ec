//! The HTTP server: shared state, the router with its middleware, and graceful shutdown.
//! What runs behind it (stores, supervisor, runtime) is assembled by the binary.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::problem::{self, Problem};
pub use crate::state::AppState;

/// How the server behaves, from `[server]`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub bench_routes: bool,
    pub request_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Routes served beside the API that keep their own protocol (the MCP endpoint): no
    /// request timeout or problem rewriting, but a token with the `read` scope is required.
    pub extra_routes: Option<Router>,
    /// Header-read timeout and connection caps.
    pub limits: crate::connections::ConnectionLimits,
    /// HTTPS: the listener speaks TLS only (`[server.tls]`).
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// Serves until `shutdown` resolves, then stops taking new connections and drains in-flight
/// requests (up to the grace period).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut router = router(state.clone(), &options);
    if let Some(extra) = options.extra_routes.clone() {
        router = router.merge(extra.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_reader,
        )));
    }
    let draining = state.clone();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        draining.shutting_down.store(true, Ordering::SeqCst);
        tracing::info!("shutdown requested; draining in-flight requests");
        let _ = drained_tx.send(());
    };
    let limits = options.limits;
    let tls = options.tls.clone();
    // The certificate is kept fresh while the server runs; reloads are audited.
    let refresher = tls.clone().map(|tls| {
        let audit = state.audit.clone();
        let clock = state.clock.clone();
        tokio::spawn(tls.keep_fresh(move |outcome: Result<(), String>, trigger: &str| {
            let record = raccordo_core::AuditRecord {
                id: format!("aud_{}", ulid::Ulid::new()),
                at_ms: clock.now_ms(),
                actor: "system".into(),
                action: "tls.reload".into(),
                target: trigger.to_string(),
                status: 0,
                detail: serde_json::json!({ "loaded": outcome.is_ok(), "error": outcome.err() }),
            };
            let audit = audit.clone();
            tokio::spawn(async move {
                if let Err(e) = audit.append_audit(&record).await {
                    tracing::error!(error = %e, "audit record not written");
                }
            });
        }))
    });
    let lag_watch = tokio::spawn(crate::telemetry::watch_runtime_lag());
    let mut serve = tokio::spawn(async move {
        crate::connections::serve(listener, router, limits, tls, signal).await
    });
    let grace = options.shutdown_grace;
    // Wait for the server; once shutdown starts, give it at most `grace` to drain.
    let result = tokio::select! {
        r = &mut serve => r,
        _ = async { let _ = drained_rx.await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_s = grace.as_secs(), "in-flight requests did not finish within the grace period");
            serve.abort();
            Ok(Ok(()))
        }
    };
    if let Some(refresher) = refresher {
        refresher.abort();
    }
    lag_watch.abort();
    result??;
    Ok(())
}

pub fn router(state: Arc<AppState>, options: &ServeOptions) -> Router {
    // One stack, outermost first, added with one `layer` call: each `Router::layer` boxes
    // every route once more, and a request clones its route's service through every box
    // (and again in each `from_fn` below it) — with seven separate calls that was about
    // fifty allocations per request before any handler ran.
    let middleware = tower::ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(UlidRequestId))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            // The route, not the path: a path can carry a secret (a key pasted where a source
            // name goes), a route template cannot.
            let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
            tracing::info_span!("request", request_id = %id, method = %request.method(), route = %route)
        }).on_request(()).on_response(()).on_failure(()))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::from_fn(problems_only))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(http::StatusCode::SERVICE_UNAVAILABLE, options.request_timeout))
        .layer(axum::middleware::from_fn(observe))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::audit::record));
    crate::routes::router(options.bench_routes)
        .0
        .layer(middleware)
        .with_state(state)
}

/// Refuses a request without a token holding the `read` scope (or `admin`).
async fn require_reader(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    match crate::extract::admit(&parts, &state, crate::settings::Scope::Read) {
        Ok(_) => next.run(Request::from_parts(parts, body)).await,
        Err(problem) => problem.into_response(),
    }
}

/// Every error leaves as `application/problem+json`: answers that axum or a layer produced
/// on their own (a 413 from a body limit, a 405, a path that does not parse, a timeout's
/// 503) are rewritten into a problem of the same status. Their original text is dropped, as
/// it may echo what the client sent.
async fn problems_only(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(problem::CONTENT_TYPE.as_bytes()));
    if is_problem {
        return response;
    }
    let retry_after = response.headers().get(http::header::RETRY_AFTER).cloned();
    let mut problem = match status.as_u16() {
        405 => Problem::new(
            405,
            "method-not-allowed",
            "Method not allowed",
            "this route does not take that method",
        ),
        413 => Problem::new(
            413,
            "body-too-large",
            "Payload too large",
            "the body is larger than this route accepts",
        ),
        415 => Problem::new(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            "send `content-type: application/json`",
        ),
        503 => Problem::new(
            503,
            "unavailable",
            "Service unavailable",
            "the request could not be completed in time; try again",
        ),
        code @ 400..=499 => Problem::new(
            code,
            "invalid-request",
            "Bad request",
            "the request is malformed (path or headers)",
        ),
        code => Problem::new(
            code,
            "internal",
            "Internal error",
            "the request failed; see the server log",
        ),
    };
    if status.as_u16() == 503 && retry_after.is_none() {
        problem.retry_after_s = Some(1);
    }
    let mut rewritten = problem.into_response();
    if let Some(value) = retry_after {
        rewritten
            .headers_mut()
            .insert(http::header::RETRY_AFTER, value);
    }
    rewritten
}

/// Records the latency histogram and logs every rejected request (successes log at debug,
/// to keep the hot path quiet).
async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    metrics::histogram!("raccordo_http_request_duration_seconds", "route" => route.clone(), "status" => status.to_string())
        .record(elapsed.as_secs_f64());
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    match status {
        500.. => tracing::error!(%method, %route, status, latency_ms, "request failed"),
        400..=499 => tracing::info!(%method, %route, status, latency_ms, "request rejected"),
        _ => tracing::debug!(%method, %route, status, latency_ms, "request served"),
    }
    response
}

#[derive(Clone, Copy)]
struct UlidRequestId;

impl MakeRequestId for UlidRequestId {
    fn make_request_id<B>(&mut self, _request: &http::Request<B>) -> Option<RequestId> {
        http::HeaderValue::from_str(&ulid::Ulid::new().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
