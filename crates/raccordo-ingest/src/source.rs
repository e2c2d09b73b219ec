//! Event sources: who may send, how they prove it, and what their events look like.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use raccordo_core::SourceName;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthConfig, Verifier};
use crate::dedup::BusinessKeySpec;
use crate::schema::EventSchema;

/// `[sources.<name>]` in the config file.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A disabled source answers `403 source-disabled`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Accepted authentication methods; a request passes with any one of them.
    pub auth: Vec<AuthConfig>,
    /// JSON Schema file for this source's events. Default: the built-in conversion schema.
    #[schema(value_type = Option<String>)]
    pub schema: Option<PathBuf>,
    /// Whether this source may post to `POST /api/v1/eventi/conversione` (default: when it
    /// uses the built-in conversion schema). It can always post to `/webhooks/in/<name>`.
    pub conversions: Option<bool>,
    /// JSON pointers of the fields that identify an event for business-key dedup (default:
    /// the mapping's customer and event pointers, or `/id_cliente` and `/evento`).
    pub key_fields: Option<Vec<String>>,
    /// JSON pointer of the event-time field: an RFC 3339 string, or epoch seconds or
    /// milliseconds. Events without it use arrival time. A mapping's `time` replaces it.
    #[serde(default = "default_time_field")]
    pub time_field: String,
    /// How this source's payloads become conversions (customer, event type, time, value,
    /// channel, status, campaign and extra dimensions). Sources on the built-in schema need
    /// none; a source with its own schema and no mapping is stored but not counted.
    pub mapping: Option<crate::mapping::MappingConfig>,
    /// Web origins that may post to the source from a browser (`fetch`, with preflight).
    #[serde(default)]
    pub cors: Option<crate::browser::CorsConfig>,
    /// Accept HTML form bodies (`application/x-www-form-urlencoded`), read as JSON objects.
    #[serde(default)]
    pub forms: Option<crate::browser::FormsConfig>,
    /// Client addresses allowed to post (`203.0.113.0/24`, `2001:db8::/32`, a bare address);
    /// empty: any. Behind a proxy, see `server.trusted_proxies`.
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// Rate limits: requests for the whole source, per client address, and body bytes
    /// (each allows a burst of twice its rate). Default: none.
    pub limits: Option<crate::limits::LimitsConfig>,
    /// Mutual TLS: senders must present a certificate from this CA carrying one of these
    /// names (needs `[server.tls]`). Default: no certificate asked for.
    #[serde(default)]
    pub client_certificate: Option<crate::client_cert::ClientCertConfig>,
}

fn yes() -> bool {
    true
}
fn default_key_fields() -> Vec<String> {
    BusinessKeySpec::default().key_fields
}
fn default_time_field() -> String {
    BusinessKeySpec::default().time_field
}

/// Ingest-wide settings (`[ingest]` and `[dedup]`).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Most items in one batch request.
    pub max_batch_items: usize,
    /// Events whose time is further ahead of our clock than this are rejected.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub max_future_skew: Duration,
    /// The two dedup layers (`[ingest.dedup]`).
    pub dedup: DedupSettings,
    /// Refused requests kept for inspection and replay (`[ingest.inspector]`).
    pub inspector: InspectorSettings,
    /// Blocking addresses that fail authentication too often, here and on the admin API
    /// (`[ingest.auth_failures]`).
    pub auth_failures: crate::guard::AuthFailureSettings,
}

/// `[ingest.inspector]`: what the request inspector keeps of refused ingest requests.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InspectorSettings {
    /// Keep refused requests (headers with credentials redacted, the body up to
    /// `max_body_bytes`, the problem answered).
    pub enabled: bool,
    /// How long a refused request is kept.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub retention: Duration,
    /// Most requests kept; the oldest go first.
    pub max_requests: usize,
    /// Most body bytes kept per request (the rest is cut; the full size is recorded).
    pub max_body_bytes: usize,
}

impl Default for InspectorSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            retention: Duration::from_secs(7 * 24 * 3600),
            max_requests: 10_000,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_batch_items: 1000,
            max_future_skew: Duration::from_secs(300),
            dedup: DedupSettings::default(),
            inspector: InspectorSettings::default(),
            auth_failures: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DedupSettings {
    /// Layer 1: repeated `webhook-id` / `Idempotency-Key` answers `duplicate`.
    pub delivery_id: bool,
    /// How long a delivery id is remembered (senders such as HubSpot retry for 24 h).
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub delivery_id_retention: Duration,
    /// Layer 2: business key (key fields + time bucket + payload hash).
    pub business_key: bool,
    /// How long a business key is remembered.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub business_key_retention: Duration,
    /// Width of the time bucket the event time is rounded down to.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub bucket: Duration,
}

impl Default for DedupSettings {
    fn default() -> Self {
        Self {
            delivery_id: true,
            delivery_id_retention: Duration::from_secs(24 * 3600),
            business_key: true,
            business_key_retention: Duration::from_secs(3600),
            bucket: Duration::from_secs(300),
        }
    }
}

/// A source ready to verify and validate requests.
#[derive(Debug)]
pub struct Source {
    pub name: SourceName,
    pub enabled: bool,
    pub verifiers: Vec<Verifier>,
    pub schema: Arc<EventSchema>,
    pub accepts_conversions: bool,
    pub key_spec: BusinessKeySpec,
    /// Built-in schema with the default key and time fields: the typed fast path applies.
    pub fast_conversion: bool,
    /// What this source has sent since the process started (for the dashboard).
    pub health: SourceHealth,
    /// Its Prometheus series that every accepted request updates ([`Source::series`]).
    pub series: SourceSeries,
    pub cors: Option<crate::browser::CorsConfig>,
    pub forms: Option<crate::browser::FormsConfig>,
    /// Where the event time is and how it is written.
    pub time: TimeSpec,
    /// How payloads become conversions (`None`: the built-in schema's own fields).
    pub mapping: Option<Arc<crate::mapping::ConversionMapping>>,
    /// Who may post (empty: anyone).
    pub allow_from: crate::network::Networks,
    /// How fast (unlimited without `limits`).
    pub limiter: crate::limits::SourceLimiter,
    /// The client certificate required (mutual TLS), if any.
    pub client_cert: Option<crate::client_cert::ClientCertRule>,
}

/// The event-time field of a source.
#[derive(Debug, Clone)]
pub struct TimeSpec {
    pub pointer: String,
    pub format: crate::mapping::Format,
}

/// Live counters of one source; Prometheus has the same figures with history, this is the
/// snapshot `GET /api/v1/ingest/health` and the dashboard show.
#[derive(Debug, Default)]
pub struct SourceHealth {
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    last_seen_ms: AtomicI64,
    clock_skew_ms: AtomicI64,
    /// The largest skew (by magnitude) since the alert engine last looked: it reads this
    /// instead of being called on the request path.
    clock_skew_peak_ms: AtomicI64,
}

/// The Prometheus series of a source that every accepted request updates, looked up once
/// instead of by name and labels on each request (a registry lookup, and the label strings
/// built for it, per request and series). Taken at first use, not when the source is built:
/// the sources are built before the process installs its recorder, and a handle taken before
/// that records nowhere. Rarer outcomes (duplicates, refusals) keep the plain macros.
#[derive(Debug, Default)]
pub struct SourceSeries(std::sync::OnceLock<Series>);

#[derive(Debug)]
pub struct Series {
    /// `raccordo_ingest_events_total{outcome="accepted"}`
    pub accepted: metrics::Counter,
    /// `raccordo_source_clock_skew_seconds`
    pub clock_skew_seconds: metrics::Gauge,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SourceHealthSnapshot {
    pub source: String,
    pub enabled: bool,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// When the source last sent a request that passed authentication.
    pub last_seen_ms: Option<i64>,
    /// The source's clock minus ours, as last observed.
    pub clock_skew_ms: i64,
}

impl SourceHealth {
    pub fn record(&self, accepted: u64, duplicates: u64, rejected: u64, now_ms: i64) {
        self.accepted.fetch_add(accepted, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        self.rejected.fetch_add(rejected, Ordering::Relaxed);
        self.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub fn set_clock_skew(&self, skew_ms: i64) {
        self.clock_skew_ms.store(skew_ms, Ordering::Relaxed);
        if skew_ms != 0 {
            let _ = self.clock_skew_peak_ms.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |peak| (skew_ms.unsigned_abs() > peak.unsigned_abs()).then_some(skew_ms),
            );
        }
    }

    /// The largest skew seen since the last call (0: none), and forgets it.
    pub fn take_clock_skew_peak(&self) -> i64 {
        self.clock_skew_peak_ms.swap(0, Ordering::Relaxed)
    }

    /// Duplicates answered so far (both dedup layers).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}

impl Source {
    /// The source's Prometheus series for accepted requests (taken at the first call).
    pub fn series(&self) -> &Series {
        self.series.0.get_or_init(|| Series {
            accepted: metrics::counter!("raccordo_ingest_events_total", "source" => self.name.to_string(), "outcome" => "accepted"),
            clock_skew_seconds: metrics::gauge!("raccordo_source_clock_skew_seconds", "source" => self.name.to_string()),
        })
    }

    pub fn health_snapshot(&self) -> SourceHealthSnapshot {
        let h = &self.health;
        let last_seen = h.last_seen_ms.load(Ordering::Relaxed);
        SourceHealthSnapshot {
            source: self.name.to_string(),
            enabled: self.enabled,
            accepted: h.accepted.load(Ordering::Relaxed),
            duplicates: h.duplicates.load(Ordering::Relaxed),
            rejected: h.rejected.load(Ordering::Relaxed),
            last_seen_ms: (last_seen > 0).then_some(last_seen),
            clock_skew_ms: h.clock_skew_ms.load(Ordering::Relaxed),
        }
    }
}

impl Source {
    /// Builds a source; errors are `(field, message)` pairs relative to the source's table.
    /// `max_body_bytes` is the server's body limit (a bytes rate limit lets one such body
    /// through).
    pub fn build(
        name: SourceName,
        config: &SourceConfig,
        settings: &IngestSettings,
        conversion_schema: &Arc<EventSchema>,
        max_body_bytes: usize,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        if config.auth.is_empty() {
            errors.push((
                "auth".to_string(),
                "a source needs at least one auth method".to_string(),
            ));
        }
        let mut verifiers = Vec::new();
        for (i, auth) in config.auth.iter().enumerate() {
            match auth.build() {
                Ok(v) => verifiers.push(v),
                Err(e) => errors.push((format!("auth[{i}]"), e)),
            }
        }
        let schema = match &config.schema {
            None => Some(conversion_schema.clone()),
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => match EventSchema::from_json_text(&text) {
                    Ok(s) => Some(Arc::new(s)),
                    Err(e) => {
                        errors.push(("schema".into(), format!("{}: {e}", path.display())));
                        None
                    }
                },
                Err(e) => {
                    errors.push((
                        "schema".into(),
                        format!("cannot read {}: {e}", path.display()),
                    ));
                    None
                }
            },
        };
        let mapping = match config.mapping.as_ref().map(|m| m.build()) {
            None => None,
            Some(Ok(m)) => Some(Arc::new(m)),
            Some(Err(problems)) => {
                errors.extend(
                    problems
                        .into_iter()
                        .map(|(k, m)| (format!("mapping.{k}"), m)),
                );
                None
            }
        };
        let key_fields = match (&config.key_fields, &mapping) {
            (Some(fields), _) => fields.clone(),
            (None, Some(m)) => m.key_pointers(),
            (None, None) => default_key_fields(),
        };
        let time = match mapping.as_ref().and_then(|m| m.time()) {
            Some((pointer, format)) => {
                if config.time_field != default_time_field() && config.time_field != pointer {
                    errors.push((
                        "time_field".into(),
                        "the mapping's `time` already names the event time; remove one".into(),
                    ));
                }
                TimeSpec {
                    pointer: pointer.to_string(),
                    format,
                }
            }
            None => TimeSpec {
                pointer: config.time_field.clone(),
                format: crate::mapping::Format::Auto,
            },
        };
        let allow_from =
            crate::network::Networks::parse(&config.allow_from).unwrap_or_else(|bad| {
                errors.extend(
                    bad.into_iter()
                        .map(|(i, m)| (format!("allow_from[{i}]"), m)),
                );
                crate::network::Networks::default()
            });
        for (field, message) in config.limits.iter().flat_map(|l| l.problems()) {
            errors.push((format!("limits.{field}"), message));
        }
        let client_cert = match config.client_certificate.as_ref().map(|c| c.build()) {
            None => None,
            Some(Ok(rule)) => Some(rule),
            Some(Err(problems)) => {
                errors.extend(
                    problems
                        .into_iter()
                        .map(|(k, m)| (format!("client_certificate.{k}"), m)),
                );
                None
            }
        };
        for (i, pointer) in key_fields.iter().enumerate() {
            if !pointer.starts_with('/') {
                errors.push((
                    format!("key_fields[{i}]"),
                    "must be a JSON pointer such as `/id_cliente`".into(),
                ));
            }
        }
        for (key, problems) in [
            ("cors", config.cors.as_ref().map(|c| c.problems())),
            ("forms", config.forms.as_ref().map(|f| f.problems())),
        ] {
            for (field, message) in problems.into_iter().flatten() {
                errors.push((format!("{key}.{field}"), message));
            }
        }
        if !config.time_field.starts_with('/') {
            errors.push((
                "time_field".into(),
                "must be a JSON pointer such as `/timestamp`".into(),
            ));
        }
        // Pointers no valid event can have: the field would never be there.
        if let Some(schema) = &schema {
            let mapped = mapping.iter().flat_map(|m| {
                m.pointers()
                    .into_iter()
                    .map(|(key, p)| (format!("mapping.{key}"), p.to_string()))
            });
            let keys = key_fields
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("key_fields[{i}]"), p.clone()));
            for (key, pointer) in mapped.chain(keys) {
                if let Some(why) = schema.cannot_produce(&pointer) {
                    errors.push((key, format!("`{pointer}` never holds a value: {why}")));
                }
            }
        }
        match schema {
            Some(schema) if errors.is_empty() => Ok(Self {
                fast_conversion: config.schema.is_none()
                    && key_fields == default_key_fields()
                    && time.pointer == default_time_field()
                    && mapping.is_none(),
                name,
                enabled: config.enabled,
                verifiers,
                schema,
                accepts_conversions: config.conversions.unwrap_or(config.schema.is_none()),
                key_spec: BusinessKeySpec {
                    key_fields,
                    time_field: time.pointer.clone(),
                    bucket_ms: settings.dedup.bucket.as_millis().max(1) as i64,
                },
                health: SourceHealth::default(),
                series: SourceSeries::default(),
                cors: config.cors.clone(),
                forms: config.forms.clone(),
                time,
                mapping,
                allow_from,
                client_cert,
                // A bytes limit lets one body of the largest size the server takes through.
                limiter: config
                    .limits
                    .clone()
                    .unwrap_or_default()
                    .build(max_body_bytes),
            }),
            _ => Err(errors),
        }
    }
}
