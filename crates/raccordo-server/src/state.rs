//! What handlers share: the ingest pipeline, the stores they read (as traits), the runtime's
//! live views and the server's own settings.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use raccordo_core::{CampaignCosts, Clock, EventQuery, IdMappings, WorkQueue};
use raccordo_ingest::Ingestor;
use raccordo_ingest::auth::{HubSpotSignature, ZohoChannelToken};
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
    /// Fired windows' results beyond what the live view keeps in memory.
    pub windows: Arc<dyn raccordo_core::WindowStore>,
    pub live: Arc<LiveMetrics>,
    /// In a cluster whose windows are kept per stream partition: those windows, merged
    /// (`view=partitions` of the metrics routes).
    pub partition_windows: Option<Arc<raccordo_runtime::live::ClusterWindows>>,
    /// Whether this node keeps the windows of the whole log (`view=live`); off only in a
    /// cluster whose partitions' windows are its only ones (`node_windows = false`).
    pub node_windows: bool,
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
    /// CRM change intake (`/webhooks/hubspot`, `/webhooks/zoho`); `None` without `[sync]`.
    pub crm: Option<CrmIntake>,
    /// The flow runner; `None` without `[[flows]]`.
    pub flows: Option<Arc<raccordo_flows::FlowRunner>>,
    /// Whether jobs may ask for a completion webhook (`[jobs] callback_secret` is set).
    pub job_callbacks: bool,
    /// Proxies whose forwarding headers name the client (`server.trusted_proxies`).
    pub trusted_proxies: raccordo_ingest::network::Networks,
    /// Keeps refused ingest requests for inspection and replay.
    pub inspector: Arc<crate::inspector::Inspector>,
    /// Admin actions, append-only.
    pub audit: Arc<dyn raccordo_core::AuditLog>,
    /// The admin and read APIs' own rate limits (`[admin] limits`).
    pub admin_limiter: raccordo_ingest::limits::SourceLimiter,
    /// Every store that holds personal data, for erasures and exports; the event log's
    /// holder first (the others' pseudonyms follow what it wrote).
    pub personal_data: Vec<Arc<dyn raccordo_core::privacy::PersonalData>>,
}

/// What the CRM webhook routes need.
pub struct CrmIntake {
    /// Verifies HubSpot's signatures; `None` when only Zoho is connected.
    pub hubspot: Option<HubSpotSignature>,
    /// Checks Zoho's channel token; `None` when only HubSpot is connected.
    pub zoho: Option<ZohoChannelToken>,
    /// The hub's public base URL (what HubSpot calls, `https://hub.example.it`): HubSpot
    /// signs the full URL. Without it, the URL is rebuilt from the `Host` header over http.
    pub public_url: Option<String>,
    pub mappings: Arc<dyn IdMappings>,
    /// Wakes the sync worker when work arrives.
    pub wake: Arc<tokio::sync::Notify>,
    /// The sync's activity; `None` unless both CRMs are connected.
    pub stats: Option<Arc<raccordo_sync::health::SyncStats>>,
    /// The OAuth clients `raccordo connect` can get a grant for (Zoho; HubSpot when it is
    /// configured as an OAuth app).
    pub connectors: Vec<Arc<raccordo_crm::Connector>>,
    /// Where the backfill keeps its progress.
    pub kv: Arc<dyn raccordo_core::KeyValueStore>,
    /// Wakes the backfill task when one is started.
    pub backfill_wake: Arc<tokio::sync::Notify>,
    /// Compares both CRMs; `None` unless both are connected.
    pub reconciler: Option<Arc<raccordo_sync::reconcile::Reconciler>>,
    /// Where integrity reports are written.
    pub reports_dir: std::path::PathBuf,
}

impl AppState {
    /// The windows the default view reads: this node's over the whole log, or the cluster's
    /// per partition where the node keeps none of its own.
    pub fn feed(&self) -> Arc<dyn raccordo_runtime::live::WindowFeed> {
        match &self.partition_windows {
            Some(cluster) if !self.node_windows => cluster.clone(),
            _ => self.live.clone(),
        }
    }
}
