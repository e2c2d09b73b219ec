//! Assembling and running the hub: storage, ingest pipeline, router, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use raccordo_core::{Clock, EventLog, SystemClock};
use raccordo_ingest::Ingestor;
use raccordo_storage_sqlite::{Durability, SqliteEventLog, SqliteOptions};
use tokio::net::TcpListener;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::admin::AdminTokens;
use crate::config::{Built, DurabilityConfig};
use crate::routes;

pub struct AppState {
    /// The hub's one source of time (the ingest pipeline, alerts and routes share it).
    pub clock: Arc<dyn Clock>,
    pub ingestor: Ingestor,
    pub alerts: Arc<crate::alerts::Alerts>,
    pub queue: Arc<raccordo_storage_sqlite::SqliteWorkQueue>,
    pub costs: raccordo_storage_sqlite::SqliteCampaignCosts,
    pub live: Arc<crate::live::LiveMetrics>,
    pub admin: AdminTokens,
    pub prometheus: PrometheusHandle,
    pub max_body_bytes: usize,
    /// Cadence of provisional results on the SSE stream (`metrics.provisional_every`).
    pub provisional_every: Duration,
    pub shutting_down: AtomicBool,
}

/// A hub ready to serve: its listener is bound, its store open.
pub struct Hub {
    state: Arc<AppState>,
    store: Arc<SqliteEventLog>,
    listener: TcpListener,
    router: Router,
    grace: Duration,
}

impl Hub {
    /// Opens the store and binds the listener (`listen` overrides the config's address).
    pub async fn bind(built: Built, listen: Option<SocketAddr>) -> anyhow::Result<Self> {
        let Built { config, sources } = built;
        // reqwest is built without a default TLS provider; pick ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let prometheus = crate::telemetry::init_metrics();
        let store = Arc::new(SqliteEventLog::open(SqliteOptions {
            path: config.database_path(),
            durability: match config.storage.durability {
                DurabilityConfig::Fsync => Durability::Fsync,
                DurabilityConfig::Buffered => Durability::Buffered,
            },
            queue_capacity: config.storage.queue_capacity,
            max_group_events: config.storage.max_group_events,
        })?);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let log: Arc<dyn EventLog> = store.clone();
        let ingestor = Ingestor::new(sources, log.clone(), clock.clone(), config.ingest.clone());
        let live = crate::live::LiveMetrics::new(
            config.metrics.window_spec(),
            config.metrics.goals.clone(),
            clock.clone(),
        );
        let costs = raccordo_storage_sqlite::SqliteCampaignCosts::open(&config.database_path())?;
        for (campaign, day, cents) in costs.load().await? {
            live.set_costs(&campaign, &[(day, cents)]);
        }
        let live_store = raccordo_storage_sqlite::SqliteLiveStore::open(&config.database_path())?;
        live.restore(&live_store).await?;
        live.spawn_persister(live_store, config.metrics.checkpoint_every);
        live.spawn(log);
        let queue = Arc::new(raccordo_storage_sqlite::SqliteWorkQueue::open(
            &config.database_path(),
        )?);
        let alerts =
            crate::alerts::Alerts::new(config.alerts.clone(), queue.clone(), clock.clone())?;
        alerts.spawn_worker();
        alerts.spawn_watchers(live.clone());
        load_jwks(&ingestor).await;
        let state = Arc::new(AppState {
            clock,
            ingestor,
            alerts,
            queue,
            costs,
            live,
            admin: AdminTokens::new(&config.admin.tokens),
            prometheus: prometheus.clone(),
            max_body_bytes: config.server.max_body_bytes,
            provisional_every: config.metrics.provisional_every,
            shutting_down: AtomicBool::new(false),
        });
        let router = router(
            state.clone(),
            config.server.bench_routes,
            config.server.request_timeout,
        );
        let addr = listen.unwrap_or(config.server.listen);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tokio::spawn(async move {
            // Histograms are aggregated lazily; upkeep keeps memory flat between scrapes.
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                prometheus.run_upkeep();
            }
        });
        Ok(Self {
            state,
            store,
            listener,
            router,
            grace: config.server.shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops taking new connections, drains
    /// in-flight requests (up to the grace period) and closes the store cleanly.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Hub {
            state,
            store,
            listener,
            router,
            grace,
        } = self;
        let draining = state.clone();
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            draining.shutting_down.store(true, Ordering::SeqCst);
            tracing::info!("shutdown requested; draining in-flight requests");
            let _ = drained_tx.send(());
        };
        let serve = axum::serve(listener, router).with_graceful_shutdown(signal);
        let serve = tokio::spawn(async move { serve.await });
        // Wait for the server; once shutdown starts, give it at most `grace` to drain.
        let mut serve = serve;
        let result = tokio::select! {
            r = &mut serve => r,
            _ = async { let _ = drained_rx.await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_s = grace.as_secs(), "in-flight requests did not finish within the grace period");
                serve.abort();
                Ok(Ok(()))
            }
        };
        store.close().await;
        tracing::info!("stopped");
        result??;
        Ok(())
    }
}

fn router(state: Arc<AppState>, bench_routes: bool, timeout: Duration) -> Router {
    let mut api = Router::new()
        .route(
            "/api/v1/eventi/conversione",
            post(routes::ingest_conversion),
        )
        .route("/webhooks/in/{source}", post(routes::ingest_source))
        .route("/api/v1/events", get(routes::list_events))
        .route("/api/v1/metrics", get(routes::metrics_api))
        .route("/api/v1/metrics/stream", get(routes::metrics_stream))
        .route("/api/v1/alerts", get(routes::list_alerts))
        .route("/api/v1/ingest/health", get(routes::ingest_health))
        .route("/api/v1/dlq", get(routes::list_dead_letters))
        .route("/api/v1/dlq/{id}/replay", post(routes::replay_dead_letter))
        .route(
            "/api/v1/campaigns/{id}/costs",
            axum::routing::put(routes::put_campaign_costs),
        )
        .route("/", get(routes::dashboard))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics));
    if bench_routes {
        api = api.route("/_bench/noop", post(routes::noop));
    }
    api.fallback(routes::not_found)
        .layer(axum::middleware::from_fn(observe))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(http::StatusCode::SERVICE_UNAVAILABLE, timeout))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path())
        }).on_request(()).on_response(()).on_failure(()))
        .layer(SetRequestIdLayer::x_request_id(UlidRequestId))
        .with_state(state)
}

/// Records the latency histogram and logs every rejected request (successes log at debug,
/// to keep the hot path quiet).
async fn observe(State(()): State<()>, request: Request, next: Next) -> Response {
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

/// Fetches each `jwks_url` before the hub starts listening (so the first token does not meet
/// an empty key set), then refreshes it every `JWKS_REFRESH` in the background. A failed
/// fetch is logged and keeps the previous keys; tokens fail until a fetch succeeds.
async fn load_jwks(ingestor: &Ingestor) {
    const JWKS_REFRESH: Duration = Duration::from_secs(300);
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    else {
        tracing::error!("cannot build the HTTP client for JWKS fetches");
        return;
    };
    for source in ingestor.sources() {
        for verifier in &source.verifiers {
            let Some((url, handle)) = verifier.jwks_url() else {
                continue;
            };
            let (url, name, client) = (url.to_string(), source.name.to_string(), client.clone());
            let refresh = async move |first: bool| match fetch_jwks(&client, &url).await {
                Ok(set) => {
                    tracing::info!(source = %name, %url, keys = set.keys.len(), first, "JWKS loaded");
                    *handle.write().unwrap_or_else(|p| p.into_inner()) = set;
                }
                Err(e) => {
                    tracing::warn!(source = %name, %url, error = %e, "JWKS fetch failed; keeping the previous keys")
                }
            };
            refresh(true).await;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(JWKS_REFRESH).await;
                    refresh(false).await;
                }
            });
        }
    }
}

async fn fetch_jwks(
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<jsonwebtoken_jwk::JwkSet> {
    Ok(client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

mod jsonwebtoken_jwk {
    pub use raccordo_ingest::auth::jwt::JwkSet;
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
