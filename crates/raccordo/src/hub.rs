//! Assembling the hub: the one place that picks a storage backend (from `[storage]`),
//! builds the runtime on the stores it gets, starts the background work under the
//! supervisor and hands everything to the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use raccordo_core::{Clock, Stores, SystemClock};
use raccordo_ingest::Ingestor;
use raccordo_runtime::{AlertEngine, LiveMetrics, Supervisor, run_worker};
use raccordo_server::admin::AdminTokens;
use raccordo_server::{AppState, ServeOptions};
use tokio::net::TcpListener;

use crate::config::{Backend, Built, DurabilityConfig};

/// A hub ready to serve: its store is open, its background work running, its listener bound.
pub struct Hub {
    state: Arc<AppState>,
    stores: Stores,
    listener: TcpListener,
    /// The plain-HTTP listener that only redirects to HTTPS, if configured.
    redirect: Option<TcpListener>,
    options: ServeOptions,
    /// Ends the MCP endpoint's open streams at shutdown.
    mcp_cancel: tokio_util::sync::CancellationToken,
    /// Keeps the backend (and its lock on the data) alive until the hub stops.
    _backend: Box<dyn std::any::Any + Send + Sync>,
}

/// Opens the configured backend.
pub(crate) async fn open_backend(
    built: &Built,
) -> anyhow::Result<(Stores, Box<dyn std::any::Any + Send + Sync>)> {
    let storage = &built.config.storage;
    match storage.backend {
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            let pg = raccordo_storage_postgres::PgStores::open(&storage.postgres.options())
                .await
                .map_err(|e| anyhow::anyhow!("storage.postgres: {e}"))?;
            Ok((pg.into_stores(), Box::new(())))
        }
        #[cfg(feature = "cluster")]
        Backend::Cluster => {
            let pg = raccordo_storage_postgres::PgStores::open(&storage.postgres.options())
                .await
                .map_err(|e| anyhow::anyhow!("storage.postgres: {e}"))?;
            let redis = raccordo_storage_redis::RedisStores::open(&storage.redis.options())
                .await
                .map_err(|e| anyhow::anyhow!("storage.redis: {e}"))?;
            Ok((redis.in_front_of(pg.into_stores()), Box::new(())))
        }
        #[cfg(not(feature = "postgres"))]
        Backend::Postgres => anyhow::bail!(
            "storage.backend = \"postgres\" needs a build with the `postgres` feature"
        ),
        #[cfg(not(feature = "cluster"))]
        Backend::Cluster => {
            anyhow::bail!("storage.backend = \"cluster\" needs a build with the `cluster` feature")
        }
        Backend::Sqlite => {
            use raccordo_storage_sqlite::{
                Durability, RetentionPolicy, SqliteOptions, SqliteStore,
            };
            let store = SqliteStore::open(SqliteOptions {
                path: built.config.database_path(),
                durability: match storage.durability {
                    DurabilityConfig::Fsync => Durability::Fsync,
                    DurabilityConfig::Buffered => Durability::Buffered,
                },
                queue_capacity: storage.queue_capacity,
                max_group_events: storage.max_group_events,
                max_commit_wait: storage.max_commit_wait,
                max_database_bytes: storage.max_database_bytes,
                segment_bytes: storage.segment_bytes,
                retention: RetentionPolicy {
                    max_age: storage.retention.max_age,
                    max_bytes: storage.retention.max_bytes,
                },
                retention_every: std::time::Duration::from_secs(10),
            })?;
            Ok((store.stores(), Box::new(store)))
        }
    }
}

/// The leader relays the committed log into the conversion stream (`[storage.stream]`);
/// the stream, when there is one.
#[cfg(feature = "cluster")]
async fn start_stream_relay(
    config: &crate::config::StreamConfig,
    stores: &Stores,
    supervisor: &Supervisor,
    live: &Arc<LiveMetrics>,
) -> anyhow::Result<Option<Arc<dyn raccordo_core::ConversionStream>>> {
    let Some(stream) = config
        .open()
        .await
        .map_err(|e| anyhow::anyhow!("storage.stream: {e}"))?
    else {
        return Ok(None);
    };
    let relay = Arc::new(raccordo_core::Relay::new(
        stores.log.clone(),
        stores.offsets.clone(),
        stream.clone(),
        // Placed by the customer as the windows count it (through the sources' mappings,
        // e-mails lower-cased): each partition's windows hold all of their customers' events.
        config.partitioner().with_customer_of({
            let live = live.clone();
            Arc::new(move |event| live.customer_hash(event))
        }),
    ));
    supervisor.spawn_singleton("stream-relay", move |ctx| {
        let relay = relay.clone();
        async move { Ok(relay.run(ctx.cancel.clone().cancelled_owned()).await?) }
    });
    Ok(Some(stream))
}

/// Every node owns its share of the stream's partitions and keeps their windows (results
/// and checkpoints per partition), taking over those of nodes that die.
#[cfg(feature = "cluster")]
fn start_partition_windows(
    stream: Arc<dyn raccordo_core::ConversionStream>,
    config: &crate::config::Config,
    mappings: std::collections::HashMap<String, Arc<raccordo_ingest::ConversionMapping>>,
    stores: &Stores,
    clock: Arc<dyn Clock>,
    node: String,
    supervisor: &Supervisor,
) {
    let spec = config.metrics.window_spec();
    let goals = config.metrics.goals.clone();
    let history = config.metrics.history;
    let node_windows = config.storage.stream.node_windows;
    let make_clock = clock.clone();
    let windows = Arc::new(raccordo_runtime::partitions::PartitionedWindows {
        stream,
        store: stores.windows.clone(),
        leases: stores.secrets.clone(),
        kv: stores.kv.clone(),
        clock,
        node,
        make: Arc::new(move |partition| {
            let metrics = LiveMetrics::in_scope(
                spec,
                goals.clone(),
                make_clock.clone(),
                raccordo_runtime::live::partition_scope(partition),
            );
            metrics.set_history(history);
            metrics.set_mappings(mappings.clone());
            metrics.set_reports_process_metrics(!node_windows);
            metrics
        }),
        checkpoint_every: config.metrics.checkpoint_every,
    });
    supervisor.spawn("partition-windows", move |ctx| windows.clone().run(ctx));
}

impl Hub {
    /// Opens the store, starts the runtime and binds the listener (`listen` overrides the
    /// config's address).
    pub async fn bind(built: Built, listen: Option<SocketAddr>) -> anyhow::Result<Self> {
        // reqwest is built without a default TLS provider; pick ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let prometheus = raccordo_server::telemetry::init_metrics();
        let (stores, backend) = open_backend(&built).await?;
        // Embedded: the data lock makes this process the only worker, so whatever is still
        // leased was being worked on by a run that died. Take it up again now. (Nodes of a
        // shared database leave other nodes' leases alone: a dead node's run out.)
        let freed = if !built.config.storage.backend.is_shared() {
            stores.queue.release_all_leases().await?
        } else {
            0
        };
        if freed > 0 {
            tracing::info!(freed, "work items of the previous run queued again");
        }
        let Built {
            config,
            sources,
            flows,
        } = built;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let outbound = config.outbound_policy();
        let ingestor = Ingestor::new(
            sources,
            stores.log.clone(),
            clock.clone(),
            config.ingest.clone(),
        );
        let sources: Vec<_> = ingestor.sources().cloned().collect();
        // Nodes sharing a database elect one to run the singleton tasks; an embedded hub
        // is alone and always leads.
        let node = raccordo_runtime::leader::node_name();
        let supervisor = if !config.storage.backend.is_shared() {
            Supervisor::new()
        } else {
            let (leadership, election) = raccordo_runtime::leader::Leadership::elect(node.clone());
            tracing::info!(node = %leadership.node, "taking part in the leader election");
            let supervisor = Supervisor::with_leadership(leadership);
            let (election, secrets, clock) =
                (Arc::new(election), stores.secrets.clone(), clock.clone());
            supervisor.spawn("leader-election", move |ctx| {
                let (election, secrets, clock) = (election.clone(), secrets.clone(), clock.clone());
                async move { election.run(secrets, clock, ctx.cancel.clone()).await }
            });
            supervisor
        };

        // Sources read through a mapping, for the windows.
        let mappings: std::collections::HashMap<_, _> = sources
            .iter()
            .filter_map(|s| Some((s.name.to_string(), s.mapping.clone()?)))
            .collect();
        let live = LiveMetrics::new(
            config.metrics.window_spec(),
            config.metrics.goals.clone(),
            clock.clone(),
        );
        live.set_history(config.metrics.history);
        live.set_mappings(mappings.clone());
        // A cluster with a stream keeps windows per partition too (`?view=partitions`).
        #[allow(unused_mut)]
        let mut window_partitions: Option<u32> = None;
        #[cfg(feature = "cluster")]
        if config.storage.backend == Backend::Cluster
            && let Some(stream) =
                start_stream_relay(&config.storage.stream, &stores, &supervisor, &live).await?
            && config.storage.stream.windows
        {
            window_partitions = Some(stream.partitions());
            start_partition_windows(
                stream,
                &config,
                mappings.clone(),
                &stores,
                clock.clone(),
                node.clone(),
                &supervisor,
            );
        }

        live.load_costs(stores.costs.as_ref()).await?;
        if config.storage.backend.is_shared() {
            // Spend given to another node (`PUT /api/v1/campaigns/{id}/costs`) reaches this
            // one's CPA within seconds.
            let (live, costs) = (live.clone(), stores.costs.clone());
            supervisor.spawn("campaign-costs", move |ctx| {
                let (live, costs) = (live.clone(), costs.clone());
                async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                            _ = ctx.cancelled() => return Ok(()),
                        }
                        live.load_costs(costs.as_ref()).await?;
                    }
                }
            });
        }
        // A cluster whose partitions' windows are its only ones: no node counts the whole log.
        let node_windows = window_partitions.is_none() || config.storage.stream.node_windows;
        if node_windows {
            live.restore(stores.windows.as_ref()).await?;
        }
        // Every node serves the cluster's windows per partition, merged.
        let partition_windows = window_partitions.map(|partitions| {
            let cluster = raccordo_runtime::live::ClusterWindows::new(
                live.clone(),
                stores.kv.clone(),
                stores.windows.clone(),
                clock.clone(),
                partitions,
            );
            let reader = cluster.clone();
            supervisor.spawn("partition-views", move |ctx| reader.clone().run(ctx));
            cluster
        });
        let alerts = AlertEngine::new(
            config.alerts.clone(),
            stores.queue.clone(),
            stores.alerts.clone(),
            clock.clone(),
            &outbound,
        )?;
        if raccordo_runtime::jwks::load_all(&sources, &outbound).await? {
            let (sources, outbound) = (sources.clone(), outbound.clone());
            supervisor.spawn("jwks-refresh", move |ctx| {
                raccordo_runtime::jwks::keep_fresh(sources.clone(), outbound.clone(), ctx)
            });
        }
        // What the alerts, retention and erasure read: the windows this node keeps, or the
        // partitions' where it keeps none.
        let (feed, late_events): (
            Arc<dyn raccordo_runtime::live::WindowFeed>,
            Arc<dyn raccordo_runtime::live::LateEventKeeper>,
        ) = match &partition_windows {
            Some(cluster) if !node_windows => (cluster.clone(), cluster.clone()),
            _ => (live.clone(), live.clone()),
        };
        if node_windows {
            {
                let (live, log) = (live.clone(), stores.log.clone());
                supervisor.spawn("live-tailer", move |ctx| {
                    live.clone().run_tailer(log.clone(), ctx)
                });
            }
            let (live, windows, every) = (
                live.clone(),
                stores.windows.clone(),
                config.metrics.checkpoint_every,
            );
            supervisor.spawn("live-persister", move |ctx| {
                live.clone().run_persister(windows.clone(), every, ctx)
            });
        }
        {
            let (alerts, queue, clock) = (alerts.clone(), stores.queue.clone(), clock.clone());
            supervisor.spawn("alert-deliveries", move |ctx| {
                let worker: Arc<dyn raccordo_runtime::Worker> = alerts.clone();
                run_worker(
                    worker,
                    queue.clone(),
                    clock.clone(),
                    alerts.wake.clone(),
                    ctx,
                )
            });
        }
        {
            let (alerts, sources, guard) =
                (alerts.clone(), sources.clone(), ingestor.guard().clone());
            supervisor.spawn_singleton("alerts-sources", move |ctx| {
                alerts
                    .clone()
                    .watch_sources(sources.clone(), guard.clone(), ctx)
            });
        }
        {
            let (alerts, feed) = (alerts.clone(), feed.clone());
            supervisor.spawn_singleton("alerts-windows", move |ctx| {
                alerts.clone().watch_windows(feed.clone(), ctx)
            });
        }
        {
            let (alerts, feed) = (alerts.clone(), feed.clone());
            supervisor.spawn_singleton("alerts-lag", move |ctx| {
                alerts.clone().watch_lag(feed.clone(), ctx)
            });
        }
        {
            let (runs, late_events, clock, retention) = (
                stores.runs.clone(),
                late_events.clone(),
                clock.clone(),
                config.retention,
            );
            supervisor.spawn_singleton("retention", move |ctx| {
                raccordo_runtime::retention::run_retention(
                    retention,
                    runs.clone(),
                    late_events.clone(),
                    clock.clone(),
                    ctx,
                )
            });
        }
        {
            // Histograms are aggregated lazily; upkeep keeps memory flat between scrapes.
            let prometheus = prometheus.clone();
            supervisor.spawn("metrics-upkeep", move |ctx| {
                let prometheus = prometheus.clone();
                async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => prometheus.run_upkeep(),
                            _ = ctx.cancelled() => return Ok(()),
                        }
                    }
                }
            });
        }

        let (crm, crm_clients) =
            crate::sync::start(&config, &stores, clock.clone(), &supervisor, alerts.clone())
                .await?;
        let flows = crate::flows::start(
            &config,
            flows,
            &stores,
            clock.clone(),
            &supervisor,
            crm_clients,
        )
        .await?;
        let inspector = raccordo_server::inspector::Inspector::new(
            config.ingest.inspector.clone(),
            stores.requests.clone(),
            clock.clone(),
        );
        {
            let inspector = inspector.clone();
            supervisor.spawn("request-inspector", move |ctx| inspector.clone().run(ctx));
        }
        // Every holder of personal data, in the order an erasure visits them.
        let personal_data: Vec<Arc<dyn raccordo_core::privacy::PersonalData>> = vec![
            Arc::new(raccordo_ingest::privacy::EventsHolder::new(
                &ingestor,
                stores.query.clone(),
                &config.privacy,
            )),
            Arc::new(raccordo_runtime::privacy::LateEventsHolder(
                late_events.clone(),
            )),
            Arc::new(raccordo_core::privacy::RejectedRequestsHolder(
                stores.requests.clone(),
            )),
            Arc::new(raccordo_core::privacy::RunsHolder(stores.runs.clone())),
            Arc::new(raccordo_core::privacy::WorkQueueHolder(
                stores.queue.clone(),
            )),
            Arc::new(raccordo_sync::privacy::SnapshotsHolder {
                kv: stores.kv.clone(),
                mappings: stores.mappings.clone(),
                clock: clock.clone(),
            }),
            Arc::new(raccordo_ai::CacheHolder {
                cache: stores.cache.clone(),
                clock: clock.clone(),
            }),
        ];
        let state = Arc::new(AppState {
            partition_windows,
            node_windows,
            personal_data,
            clock,
            ingestor,
            events: stores.query.clone(),
            queue: stores.queue.clone(),
            costs: stores.costs.clone(),
            windows: stores.windows.clone(),
            live,
            alerts,
            supervisor,
            admin: AdminTokens::new(&config.admin.tokens),
            admin_limiter: config.admin.limits.build(0),
            audit: stores.audit.clone(),
            prometheus,
            max_body_bytes: config.server.max_body_bytes,
            provisional_every: config.metrics.provisional_every,
            provisional_coalesce: config.metrics.provisional_coalesce,
            shutting_down: AtomicBool::new(false),
            crm,
            flows,
            job_callbacks: config.jobs.callback_secret.is_some(),
            inspector,
            trusted_proxies: raccordo_ingest::network::Networks::parse(
                &config.server.trusted_proxies,
            )
            .unwrap_or_default(),
        });
        let addr = listen.unwrap_or(config.server.listen);
        let listener = raccordo_server::connections::bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let tls = match &config.server.tls {
            Some(settings) => {
                // The handshake accepts client certificates from any source's CA; each source
                // then checks the certificate is its own.
                let client_cas: Vec<_> = state
                    .ingestor
                    .sources()
                    .filter_map(|s| s.client_cert.as_ref())
                    .flat_map(|rule| rule.ca_certificates.iter().cloned())
                    .collect();
                Some(
                    raccordo_server::tls::Tls::load(settings, &client_cas)
                        .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?,
                )
            }
            None => None,
        };
        let redirect = match config.server.tls.as_ref().and_then(|t| t.redirect_listen) {
            Some(addr) => Some(raccordo_server::connections::bind(addr).map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr} (server.tls.redirect_listen): {e}")
            })?),
            None => None,
        };
        // MCP tools call the admin API of this very hub, with the caller's token.
        let mut own = listener.local_addr()?;
        if own.ip().is_unspecified() {
            own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let mcp_cancel = tokio_util::sync::CancellationToken::new();
        let api = match &tls {
            Some(tls) => raccordo_mcp::HubApi::with_client(
                &format!("https://{own}"),
                None,
                reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(30))
                    .tls_backend_preconfigured(tls.own_client_config())
                    .build()?,
            )?,
            None => raccordo_mcp::HubApi::new(&format!("http://{own}"), None)?,
        };
        let mcp = raccordo_mcp::http_service(api, mcp_cancel.clone())?;
        Ok(Self {
            state,
            stores,
            listener,
            redirect,
            options: ServeOptions {
                bench_routes: config.server.bench_routes,
                request_timeout: config.server.request_timeout,
                shutdown_grace: config.server.shutdown_grace,
                extra_routes: Some(axum::Router::new().nest_service("/mcp", mcp)),
                limits: config.server.connection_limits(),
                tls,
            },
            mcp_cancel,
            _backend: backend,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether the listener speaks HTTPS (`[server.tls]`).
    pub fn serves_tls(&self) -> bool {
        self.options.tls.is_some()
    }

    /// Serves until `shutdown` resolves; then drains requests, stops the background work
    /// and closes the store cleanly.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Hub {
            state,
            stores,
            listener,
            redirect,
            options,
            mcp_cancel,
            _backend,
        } = self;
        let grace = options.shutdown_grace;
        // Open MCP streams end with the shutdown instead of holding the drain.
        let stopping = mcp_cancel.clone();
        let shutdown = async move {
            shutdown.await;
            mcp_cancel.cancel();
        };
        if let Some(redirect) = redirect {
            let https_port = listener.local_addr()?.port();
            let limits = options.limits;
            tokio::spawn(raccordo_server::connections::serve(
                redirect,
                raccordo_server::tls::redirect_router(https_port),
                limits,
                None,
                stopping.cancelled_owned(),
            ));
        }
        let served = raccordo_server::serve(listener, state.clone(), options, shutdown).await;
        state.supervisor.shutdown(grace).await;
        stores.log.close().await;
        tracing::info!("stopped");
        served
    }
}
