//! What handlers share: the ingest pipeline, the stores they read (as traits), the runtime's
//! live views and the server's own settings.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use raccordo_core::{CampaignCosts, Clock, EventQuery, WorkQueue};
use raccordo_ingest::Ingestor;
use raccordo_runtime::{AlertEngine, LiveMetrics, Supervisor};

use crate::admin::AdminTokens;

/// What handlers share. Stores appear as traits only.
pub struct AppState {
    /// The hub's one source of time (the ingest pipeline, alerts and routes share it).
    pub clock: Arc<dyn Clock>,
    pub ingestor: Ingestor,
    pub events: Arc<dyn EventQuery>,
    pub queue: Arc<dyn WorkQueue>,
    pub costs: Arc<dyn CampaignCosts>,
    pub live: Arc<LiveMetrics>,
    pub alerts: Arc<AlertEngine>,
    /// Background tasks' health, for `/readyz` and the health API.
    pub supervisor: Supervisor,
    pub admin: AdminTokens,
    pub prometheus: PrometheusHandle,
    pub max_body_bytes: usize,
    /// Cadence of provisional results on the SSE stream (`metrics.provisional_every`).
    pub provisional_every: Duration,
    /// How long after new events are counted the stream publishes them
    /// (`metrics.provisional_coalesce`).
    pub provisional_coalesce: Duration,
    pub shutting_down: AtomicBool,
}
