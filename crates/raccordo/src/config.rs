//! The configuration file: TOML with `${ENV}` interpolation for secrets.
//!
//! Loading reports *every* problem at once, each with its location (`file:line: key:
//! message`), so `raccordo check` is a single round trip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use raccordo_core::SourceName;
use raccordo_crm::CrmConfig;
use raccordo_ingest::{EventSchema, IngestSettings, Source, SourceConfig};
use raccordo_runtime::{AlertsConfig, MetricsConfig};
use raccordo_server::settings::{AdminConfig, LogConfig, ServerConfig};
use raccordo_sync::SyncConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Default, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub ingest: IngestSettings,
    /// `[sources.<name>]`: who may send events.
    pub sources: BTreeMap<String, SourceConfig>,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub alerts: AlertsConfig,
    /// `[crm]`: the HubSpot and Zoho connections. The sync runs when both are set.
    pub crm: CrmConfig,
    /// `[sync]`: what is synced between HubSpot and Zoho, and how.
    pub sync: SyncConfig,
    /// `[ai]`: the model providers of AI steps (the first, then the fallbacks).
    pub ai: raccordo_ai::AiConfig,
    /// `[[flows]]`: a trigger and its steps each; the keys of flows, triggers and every step
    /// type are in [flows.md](flows.md).
    #[schema(value_type = Vec<Object>)]
    pub flows: Vec<raccordo_flows::FlowConfig>,
    /// `[jobs]`: async jobs' completion webhooks.
    pub jobs: raccordo_flows::JobsConfig,
    /// `[outbound]`: which internal addresses and plain-http hosts the hub may call (alert
    /// channels, CRMs, AI providers, flow steps, callbacks, JWKS). Default: public `https`
    /// hosts only.
    pub outbound: raccordo_outbound::OutboundConfig,
    /// `[retention]`: how long flow runs are kept after they end (events have
    /// `[storage.retention]`, refused requests `[ingest.inspector]`).
    pub retention: raccordo_runtime::retention::RetentionConfig,
    /// `[privacy]`: what a customer's erasure (`DELETE /api/v1/customers/{id}`)
    /// pseudonymises in their stored events besides the customer id.
    pub privacy: raccordo_ingest::privacy::PrivacyConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// One embedded store in the data directory (the segment event log and a SQLite file);
    /// one process.
    #[default]
    Sqlite,
    /// Every store on a PostgreSQL database (`[storage.postgres]`), shared by several hub
    /// nodes. Needs a build with the `postgres` feature.
    Postgres,
    /// PostgreSQL as with `postgres`, and Redis (`[storage.redis]`) in front of it for the
    /// hot shared state: rate-limit buckets, leases, the AI cache, a delivery-id front
    /// cache. Needs a build with the `cluster` feature.
    Cluster,
}

impl Backend {
    /// Whether several nodes share this backend (and elect a leader for singleton tasks).
    pub fn is_shared(self) -> bool {
        !matches!(self, Backend::Sqlite)
    }

    /// Whether this backend keeps its state in PostgreSQL.
    pub fn uses_postgres(self) -> bool {
        matches!(self, Backend::Postgres | Backend::Cluster)
    }
}

/// `[storage.redis]`: the Redis of `backend = "cluster"`. It holds nothing that is not
/// also kept (or safely rebuilt) elsewhere: a Redis restart costs cold caches, not data.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[:password@]host:6379[/db]`; `${VAR}` takes it from the environment.
    #[serde(serialize_with = "raccordo_core::redacted_option")]
    #[schema(value_type = Option<String>)]
    pub url: Option<String>,
    /// Put before every key of this hub, so that hubs sharing a server stay apart.
    pub key_prefix: String,
    /// How long a delivery id (`webhook-id`, `Idempotency-Key`) is remembered in Redis, to
    /// answer a sender's retry without a database transaction. The database remembers it
    /// for the source's whole dedup retention either way.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub delivery_cache: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "raccordo:".into(),
            delivery_cache: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[storage.stream]`: with `backend = "cluster"` and a `url`, the leader relays every
/// committed event, in order, into a NATS JetStream stream partitioned by customer (each
/// event once: its id is the message id), for consumers that read per partition.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// The engine and its servers: `nats://host:4222` (comma-separated for a NATS cluster)
    /// for NATS JetStream, `kafka://broker1:9092,broker2:9092` for Kafka; none: no stream.
    #[serde(serialize_with = "raccordo_core::redacted_option")]
    #[schema(value_type = Option<String>)]
    pub url: Option<String>,
    /// The JetStream stream's name, or the Kafka topic's.
    pub name: String,
    /// Subjects are `<subject_prefix>.<partition>`.
    pub subject_prefix: String,
    /// Partitions customers are spread over; fixed for the stream's life.
    pub partitions: u32,
    /// The JSON pointer of the customer id in an event.
    pub customer_pointer: String,
    /// How long the stream remembers an event id to drop it when published again (longer
    /// than a leader hand-over).
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub duplicate_window: Duration,
    /// How long the stream keeps an event.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub max_age: Duration,
    /// Copies of each message in a NATS cluster (the replication factor of a Kafka topic).
    pub replicas: usize,
    /// Keep live windows per partition of the stream, each partition owned by one node
    /// (`GET /api/v1/metrics?view=partitions`). Off: the stream is only relayed, for other
    /// consumers.
    pub windows: bool,
    /// With `windows`: each node also keeps the windows of the whole log in memory
    /// (`view=live`, then the default view), doubling its window work. Off (the default):
    /// the partitions' windows are the cluster's only windows — every metrics view, the live
    /// stream, the late table, the alerts, erasure and retention use them, and no node
    /// counts the whole log.
    pub node_windows: bool,
    /// More librdkafka settings for a Kafka stream (`"security.protocol" = "SASL_SSL"`,
    /// `"sasl.password" = "${KAFKA_PASSWORD}"`, …); values are never shown.
    #[serde(serialize_with = "redacted_values")]
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub kafka: std::collections::BTreeMap<String, String>,
}

fn redacted_values<S: serde::Serializer>(
    map: &std::collections::BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut out = s.serialize_map(Some(map.len()))?;
    for key in map.keys() {
        out.serialize_entry(key, "<redacted>")?;
    }
    out.end()
}

/// The engine a `[storage.stream] url` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEngine {
    Nats,
    Kafka,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            url: None,
            name: "RACCORDO_EVENTS".into(),
            subject_prefix: "raccordo.events".into(),
            partitions: 8,
            customer_pointer: "/id_cliente".into(),
            duplicate_window: Duration::from_secs(600),
            max_age: Duration::from_secs(7 * 24 * 3600),
            replicas: 1,
            windows: true,
            node_windows: false,
            kafka: Default::default(),
        }
    }
}

impl StreamConfig {
    /// The engine the `url` names, when one is set.
    pub fn engine(&self) -> Option<StreamEngine> {
        let url = self.url.as_deref().filter(|u| !u.is_empty())?;
        Some(if url.starts_with("kafka://") {
            StreamEngine::Kafka
        } else {
            StreamEngine::Nats
        })
    }
}

#[cfg(feature = "cluster")]
impl StreamConfig {
    /// Places events in partitions by customer (the relay's side of the stream).
    pub fn partitioner(&self) -> raccordo_core::Partitioner {
        raccordo_core::Partitioner::new(self.customer_pointer.clone(), self.partitions)
    }

    /// What `raccordo check` calls the stream.
    pub fn describe_target(&self) -> String {
        match self.engine() {
            Some(StreamEngine::Kafka) => format!("Kafka topic `{}`", self.name),
            _ => format!("NATS stream `{}`", self.name),
        }
    }

    /// Connects to the stream, when a `url` is set (creating the stream or topic if needed).
    pub async fn open(
        &self,
    ) -> Result<
        Option<std::sync::Arc<dyn raccordo_core::ConversionStream>>,
        raccordo_core::StoreError,
    > {
        let Some(url) = self.url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        match self.engine() {
            #[cfg(feature = "kafka")]
            Some(StreamEngine::Kafka) => {
                let brokers = url.trim_start_matches("kafka://");
                let mut options = raccordo_log_kafka::KafkaOptions::new(brokers);
                options.topic = self.name.clone();
                options.partitions = self.partitions;
                options.replicas = self.replicas.min(i32::MAX as usize) as i32;
                options.max_age = self.max_age;
                options.properties = self.kafka.clone();
                Ok(Some(std::sync::Arc::new(
                    raccordo_log_kafka::KafkaStream::open(&options).await?,
                )))
            }
            #[cfg(not(feature = "kafka"))]
            Some(StreamEngine::Kafka) => Err(raccordo_core::StoreError::Backend(
                "this build has no Kafka stream (build with --features kafka)".into(),
            )),
            _ => {
                let mut options = raccordo_log_nats::StreamOptions::new(url);
                options.stream = self.name.clone();
                options.subject_prefix = self.subject_prefix.clone();
                options.partitions = self.partitions;
                options.duplicate_window = self.duplicate_window;
                options.max_age = self.max_age;
                options.replicas = self.replicas;
                Ok(Some(std::sync::Arc::new(
                    raccordo_log_nats::NatsStream::open(&options).await?,
                )))
            }
        }
    }
}

#[cfg(feature = "postgres")]
impl PostgresConfig {
    pub fn options(&self) -> raccordo_storage_postgres::PostgresOptions {
        let mut options =
            raccordo_storage_postgres::PostgresOptions::new(self.url.clone().unwrap_or_default());
        options.schema = self.schema.clone();
        options.pool_size = self.pool_size;
        options
    }
}

#[cfg(feature = "cluster")]
impl RedisConfig {
    pub fn options(&self) -> raccordo_storage_redis::RedisOptions {
        let mut options =
            raccordo_storage_redis::RedisOptions::new(self.url.clone().unwrap_or_default());
        options.key_prefix = self.key_prefix.clone();
        options.delivery_cache_ms = self.delivery_cache.as_millis().min(i64::MAX as u128) as i64;
        options
    }
}

/// `[storage.postgres]`: the database of `backend = "postgres"`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:5432/database`, or libpq's `host=… user=… dbname=…`;
    /// `${VAR}` takes it from the environment.
    #[serde(serialize_with = "raccordo_core::redacted_option")]
    #[schema(value_type = Option<String>)]
    pub url: Option<String>,
    /// The schema of the hub's tables (created if missing): hubs sharing a database use one
    /// each; the nodes of one hub share theirs.
    pub schema: String,
    /// Connections each node keeps open.
    pub pool_size: usize,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: None,
            schema: "raccordo".into(),
            pool_size: 16,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityConfig {
    /// fsync every commit group (survives power loss).
    #[default]
    Fsync,
    /// Leave writes in OS buffers (survives a process crash, not a power cut).
    Buffered,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where state lives: `sqlite`, one embedded store (the default); `postgres`, one shared
    /// database; `cluster`, PostgreSQL with Redis in front (see `docs/deployment.md`).
    pub backend: Backend,
    /// SQLite file; default `<data_dir>/raccordo.db`.
    #[schema(value_type = Option<String>)]
    pub path: Option<PathBuf>,
    /// `fsync`: every commit group reaches the disk before `202` (survives power loss); `buffered`: survives a process crash, not a power cut.
    pub durability: DurabilityConfig,
    /// Append requests allowed to wait for the writer before answering 429.
    pub queue_capacity: usize,
    /// Most events in one commit group.
    pub max_group_events: usize,
    /// The embedded event log: the longest a commit waits for more appends when senders
    /// have been arriving together, so that one `fdatasync` serves them all; never longer
    /// than the last sync took, and never when recent commit groups were small. `"0s"`:
    /// commit at once.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub max_commit_wait: Duration,
    /// Largest size the event log may grow to, in bytes (default: no limit but the disk's).
    /// Past it, appends answer 503 with `Retry-After` and `/readyz` reports not ready until
    /// retention frees space.
    pub max_database_bytes: Option<u64>,
    /// Size at which the event log seals its segment file and starts the next one. Larger
    /// segments mean fewer files; the newest segment is read whole at start.
    pub segment_bytes: u64,
    /// How long and how much of the event log to keep.
    pub retention: EventRetentionConfig,
    /// The database, with `backend = "postgres"` or `"cluster"`.
    pub postgres: PostgresConfig,
    /// The Redis, with `backend = "cluster"`.
    pub redis: RedisConfig,
    /// The conversion stream on NATS JetStream, with `backend = "cluster"` (optional).
    pub stream: StreamConfig,
}

/// `[storage.retention]`: events older than `max_age`, or beyond `max_bytes` of log, are
/// removed in the background, a whole segment at a time, oldest first; the newest segment
/// always stays. Dedup claims keep their own retention (`[ingest.dedup]`) and outlive the
/// events they belong to. Default: keep everything.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EventRetentionConfig {
    /// Remove events received longer ago than this (e.g. `"30d"`).
    #[serde(with = "humantime_serde::option")]
    #[schema(value_type = Option<String>, format = Duration)]
    pub max_age: Option<Duration>,
    /// Remove the oldest events while the log holds more than this many bytes.
    pub max_bytes: Option<u64>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            path: None,
            durability: DurabilityConfig::Fsync,
            queue_capacity: 512,
            max_group_events: 20_000,
            max_commit_wait: Duration::from_millis(1),
            max_database_bytes: None,
            segment_bytes: 64 << 20,
            retention: EventRetentionConfig::default(),
            postgres: PostgresConfig::default(),
            redis: RedisConfig::default(),
            stream: StreamConfig::default(),
        }
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// `file:line` when known, else the file.
    pub location: String,
    /// Dotted key path, e.g. `sources.web.auth[0].secrets`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: {}: {}", self.location, self.key, self.message)
        }
    }
}

/// A config turned into the parts the hub runs with.
pub struct Built {
    pub config: Config,
    pub sources: Vec<Source>,
    pub flows: raccordo_flows::Flows,
}

impl Config {
    /// Reads, interpolates and parses a config file, then builds every component so that
    /// all problems (syntax, types, secrets, schemas) are reported together.
    pub fn load(path: &Path) -> Result<Built, Vec<ConfigProblem>> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigProblem {
                location: file.clone(),
                key: String::new(),
                message: format!("cannot read: {e}"),
            }]
        })?;
        // Relative paths inside the file (schemas, keys) are relative to the file.
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml(&text, &file, &base, |name| std::env::var(name).ok())
    }

    pub fn from_toml(
        text: &str,
        file: &str,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Built, Vec<ConfigProblem>> {
        let at = |offset: usize| format!("{file}:{}", line_of(text, offset));
        // A missing variable is reported, and a placeholder stands in for it, so that the
        // rest of the file is still checked in the same run.
        let (interpolated, unset) = interpolate_lenient(text, &env);
        let unset: Vec<ConfigProblem> = unset
            .into_iter()
            .map(|(offset, message)| ConfigProblem {
                location: at(offset),
                key: String::new(),
                message,
            })
            .collect();
        let with_unset = |mut problems: Vec<ConfigProblem>| {
            // What a placeholder caused on the same line is the same mistake.
            problems.retain(|p| !unset.iter().any(|u| u.location == p.location));
            problems.extend(unset.iter().cloned());
            problems.sort_by_key(|p| {
                p.location
                    .rsplit(':')
                    .next()
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(0)
            });
            problems
        };
        // serde stops at the first mistake: each section is then read on its own, leaving out
        // each key at fault in turn, and what remains is checked further (schemas, goals,
        // mappings) so that one run reports every mistake it can find.
        let (mut config, mut problems) = match toml::from_str::<Config>(&interpolated) {
            Ok(config) => (config, Vec::new()),
            Err(e) => {
                let (mut problems, cleaned) = section_problems(&interpolated, file);
                if problems.is_empty() {
                    problems.push(ConfigProblem {
                        location: e
                            .span()
                            .map(|s| format!("{file}:{}", line_of(&interpolated, s.start)))
                            .unwrap_or_else(|| file.to_string()),
                        key: String::new(),
                        message: e.message().trim().to_string(),
                    });
                }
                match toml::Value::Table(cleaned).try_into::<Config>() {
                    Ok(rest) => (rest, problems),
                    Err(_) => return Err(with_unset(problems)),
                }
            }
        };
        for source in config.sources.values_mut() {
            if let Some(schema) = &source.schema
                && schema.is_relative()
            {
                source.schema = Some(base.join(schema));
            }
            for auth in &mut source.auth {
                if let raccordo_ingest::auth::AuthConfig::Jwt(jwt) = auth {
                    for path in [&mut jwt.public_key_file, &mut jwt.jwks_file]
                        .into_iter()
                        .flatten()
                    {
                        if path.is_relative() {
                            *path = base.join(&*path);
                        }
                    }
                }
            }
        }
        config.alerts.resolve_paths(base);
        let mut report = |key: String, message: String| {
            // Interpolated values hold no newlines, so line numbers match the original file.
            let location = span_of(&interpolated, &key)
                .map(|offset| format!("{file}:{}", line_of(&interpolated, offset)))
                .unwrap_or_else(|| file.to_string());
            problems.push(ConfigProblem {
                location,
                key,
                message,
            });
        };
        let (sources, flows) = config.build(&mut report);
        let problems = with_unset(problems);
        if problems.is_empty() {
            Ok(Built {
                config,
                sources,
                flows,
            })
        } else {
            Err(problems)
        }
    }

    /// The outbound policy (`[outbound]`); a config with problems there gets none of its
    /// allowances (and does not pass `build`).
    pub fn outbound_policy(&self) -> raccordo_outbound::Outbound {
        std::sync::Arc::new(
            raccordo_outbound::OutboundPolicy::from_config(&self.outbound).unwrap_or_default(),
        )
    }

    /// Configured URLs the hub calls, by key (the channels' and flow steps' own URLs are
    /// checked when they are built).
    fn outbound_urls(&self) -> Vec<(String, &str)> {
        let mut urls = Vec::new();
        if let Some(h) = &self.crm.hubspot {
            urls.push(("crm.hubspot.base_url".to_string(), h.base_url.as_str()));
        }
        if let Some(z) = &self.crm.zoho {
            urls.push(("crm.zoho.base_url".to_string(), z.base_url.as_str()));
            urls.push(("crm.zoho.token_url".to_string(), z.token_url.as_str()));
        }
        for (i, p) in self.ai.providers.iter().enumerate() {
            if p.kind == raccordo_ai::ProviderKind::OpenaiCompatible {
                urls.push((format!("ai.providers[{i}].base_url"), p.base_url.as_str()));
            }
        }
        for (name, source) in &self.sources {
            for (i, auth) in source.auth.iter().enumerate() {
                if let raccordo_ingest::auth::AuthConfig::Jwt(jwt) = auth
                    && let Some(url) = &jwt.jwks_url
                {
                    urls.push((format!("sources.{name}.auth[{i}].jwks_url"), url.as_str()));
                }
            }
        }
        urls
    }

    /// Builds the sources and checks cross-field rules, reporting each problem by key path.
    pub fn build(
        &self,
        report: &mut dyn FnMut(String, String),
    ) -> (Vec<Source>, raccordo_flows::Flows) {
        let conversion = Arc::new(EventSchema::conversion());
        let mut sources = Vec::new();
        for (name, source_config) in &self.sources {
            let key = format!("sources.{name}");
            let name = match SourceName::new(name.clone()) {
                Ok(n) => n,
                Err(e) => {
                    report(key, e.to_string());
                    continue;
                }
            };
            match Source::build(
                name,
                source_config,
                &self.ingest,
                &conversion,
                self.server.max_body_bytes,
            ) {
                Ok(source) => sources.push(source),
                Err(errors) => errors
                    .into_iter()
                    .for_each(|(field, message)| report(format!("{key}.{field}"), message)),
            }
        }
        for (field, message) in self.retention.problems() {
            report(format!("retention.{field}"), message);
        }
        for (field, message) in self.privacy.problems() {
            report(format!("privacy.{field}"), message);
        }
        for (field, message) in self.admin.limits.problems() {
            report(format!("admin.limits.{field}"), message);
        }
        for (i, token) in self.admin.tokens.iter().enumerate() {
            if token.token.len() < 16 {
                report(
                    format!("admin.tokens[{i}].token"),
                    "admin tokens must be at least 16 characters".into(),
                );
            }
            if token.scopes.is_empty() {
                report(
                    format!("admin.tokens[{i}].scopes"),
                    "give at least one scope: `read` or `admin`".into(),
                );
            }
        }
        if !(1..=10_000).contains(&self.ingest.max_batch_items) {
            report(
                "ingest.max_batch_items".into(),
                "must be between 1 and 10000".into(),
            );
        }
        if self.ingest.dedup.bucket.is_zero() {
            report(
                "ingest.dedup.bucket".into(),
                "must be longer than zero".into(),
            );
        }
        if self.storage.segment_bytes < 4096 {
            report(
                "storage.segment_bytes".into(),
                "must be at least 4096".into(),
            );
        }
        if self
            .storage
            .retention
            .max_age
            .is_some_and(|age| age.is_zero())
        {
            report(
                "storage.retention.max_age".into(),
                "must be more than zero".into(),
            );
        }
        for (key, message) in self.crm.problems() {
            report(key, message);
        }
        for (object, sync) in [
            ("contacts", &self.sync.contacts),
            ("companies", &self.sync.companies),
        ] {
            for (key, message) in sync.problems() {
                report(format!("sync.{object}.{key}"), message);
            }
        }
        if self.storage.queue_capacity == 0 {
            report("storage.queue_capacity".into(), "must be at least 1".into());
        }
        if self.storage.backend == Backend::Postgres && !cfg!(feature = "postgres") {
            report(
                "storage.backend".into(),
                "`postgres` needs a build with the `postgres` feature (cargo build --release --features postgres)".into(),
            );
        }
        if self.storage.backend == Backend::Cluster {
            if !cfg!(feature = "cluster") {
                report(
                    "storage.backend".into(),
                    "`cluster` needs a build with the `cluster` feature (cargo build --release --features cluster)".into(),
                );
            }
            if self.storage.redis.url.as_deref().is_none_or(str::is_empty) {
                report(
                    "storage.redis.url".into(),
                    "is required with backend = \"cluster\"".into(),
                );
            }
            let stream = &self.storage.stream;
            if stream.engine() == Some(StreamEngine::Kafka) && !cfg!(feature = "kafka") {
                report(
                    "storage.stream.url".into(),
                    "a `kafka://` stream needs a build with the `kafka` feature (cargo build --release --features kafka)".into(),
                );
            }
            if !(1..=1024).contains(&stream.partitions) {
                report(
                    "storage.stream.partitions".into(),
                    "must be between 1 and 1024".into(),
                );
            }
            // Kafka topics also allow `.`; JetStream stream names do not.
            let dot_allowed = stream.engine() == Some(StreamEngine::Kafka);
            if stream.name.is_empty()
                || stream.name.len() > 200
                || !stream.name.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || b == b'_'
                        || b == b'-'
                        || (dot_allowed && b == b'.')
                })
            {
                report(
                    "storage.stream.name".into(),
                    if dot_allowed {
                        "must be letters, digits, `.`, `_` and `-`".into()
                    } else {
                        "must be letters, digits, `_` and `-`".into()
                    },
                );
            }
            if stream.subject_prefix.is_empty()
                || stream
                    .subject_prefix
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b == b'*' || b == b'>')
            {
                report(
                    "storage.stream.subject_prefix".into(),
                    "must be a NATS subject without wildcards or spaces".into(),
                );
            }
            if !stream.customer_pointer.is_empty() && !stream.customer_pointer.starts_with('/') {
                report(
                    "storage.stream.customer_pointer".into(),
                    "must be a JSON pointer (`/id_cliente`)".into(),
                );
            }
            if self.storage.redis.key_prefix.is_empty() {
                report(
                    "storage.redis.key_prefix".into(),
                    "must not be empty (hubs sharing a server would mix their keys)".into(),
                );
            }
        }
        if self.storage.backend.is_shared()
            && (self.crm.hubspot.is_some() || self.crm.zoho.is_some())
            && std::env::var_os("RACCORDO_SECRET_KEY").is_none()
        {
            // Each node would make a key file of its own and fail to open the tokens the
            // others sealed.
            report(
                "storage.backend".into(),
                "nodes sharing a store seal the CRM tokens with one key: set RACCORDO_SECRET_KEY (32 random bytes, base64, e.g. `openssl rand -base64 32`) to the same value on every node".into(),
            );
        }
        if self.storage.backend.uses_postgres() {
            if self
                .storage
                .postgres
                .url
                .as_deref()
                .is_none_or(str::is_empty)
            {
                report(
                    "storage.postgres.url".into(),
                    "is required with backend = \"postgres\" or \"cluster\"".into(),
                );
            }
            let schema = &self.storage.postgres.schema;
            if schema.is_empty()
                || schema.len() > 63
                || !schema
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                || schema.as_bytes()[0].is_ascii_digit()
            {
                report(
                    "storage.postgres.schema".into(),
                    "must be letters, digits and underscores (not starting with a digit), at most 63".into(),
                );
            }
            if self.storage.postgres.pool_size == 0 {
                report(
                    "storage.postgres.pool_size".into(),
                    "must be at least 1".into(),
                );
            }
        }
        if self.server.max_body_bytes < 1024 {
            report(
                "server.max_body_bytes".into(),
                "must be at least 1024".into(),
            );
        }
        match &self.server.tls {
            Some(tls) => {
                if let Err(e) =
                    raccordo_server::tls::load_certified_key(&tls.cert_file, &tls.key_file)
                {
                    report("server.tls".into(), e);
                }
                if tls.redirect_listen.is_some_and(|r| r == self.server.listen) {
                    report(
                        "server.tls.redirect_listen".into(),
                        "must differ from server.listen".into(),
                    );
                }
            }
            None => {
                for (name, source) in &self.sources {
                    if source.client_certificate.is_some() {
                        report(
                            format!("sources.{name}.client_certificate"),
                            "client certificates are asked for in the TLS handshake: configure [server.tls]".into(),
                        );
                    }
                }
            }
        }
        if let Err(bad) = raccordo_ingest::network::Networks::parse(&self.server.trusted_proxies) {
            for (i, message) in bad {
                report(format!("server.trusted_proxies[{i}]"), message);
            }
        }
        if let Err(e) = self.metrics.window_spec().validate() {
            report("metrics".into(), e);
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600))
            .contains(&self.metrics.checkpoint_every)
        {
            report(
                "metrics.checkpoint_every".into(),
                "must be between 100ms and 1h".into(),
            );
        }
        if self.metrics.provisional_coalesce > self.metrics.provisional_every {
            report(
                "metrics.provisional_coalesce".into(),
                "must not be longer than metrics.provisional_every".into(),
            );
        }
        // At least two provisional results a second.
        if !(Duration::from_millis(50)..=Duration::from_millis(500))
            .contains(&self.metrics.provisional_every)
        {
            report(
                "metrics.provisional_every".into(),
                "must be between 50ms and 500ms".into(),
            );
        }
        for (key, e) in self.alerts.validate() {
            report(format!("alerts.{key}"), e);
        }
        let outbound = match raccordo_outbound::OutboundPolicy::from_config(&self.outbound) {
            Ok(policy) => std::sync::Arc::new(policy),
            Err(problems) => {
                for (key, message) in problems {
                    report(format!("outbound.{key}"), message);
                }
                std::sync::Arc::new(raccordo_outbound::OutboundPolicy::default())
            }
        };
        for (key, url) in self.outbound_urls() {
            if let Err(e) = outbound.check_url_text(url) {
                report(key, e.to_string());
            }
        }
        for (i, channel) in self.alerts.channels.iter().enumerate() {
            if let Err(e) = channel.validate(&outbound) {
                report(format!("alerts.channels[{i}]"), e);
            }
        }
        if self.metrics.goals.is_empty() {
            report(
                "metrics.goals".into(),
                "name at least one `evento` that counts as a conversion".into(),
            );
        }
        if let Some(known) = self.known_event_types() {
            for (i, goal) in self.metrics.goals.iter().enumerate() {
                if !known.contains(goal) {
                    let mut names: Vec<&String> = known.iter().collect();
                    names.sort();
                    report(
                        format!("metrics.goals[{i}]"),
                        format!(
                            "`{goal}` is no event type any source can send, so it would never count; the sources send {}",
                            names
                                .iter()
                                .map(|n| format!("`{n}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            report("log.level".into(), format!("not a valid filter: {e}"));
        }
        for (key, message) in self.jobs.problems() {
            report(format!("jobs.{key}"), message);
        }
        for (key, message) in self.ai.problems() {
            report(format!("ai.{key}"), message);
        }
        let source_names: Vec<String> = self.sources.keys().cloned().collect();
        let flows = match raccordo_flows::Flows::load(&self.flows, &source_names, &outbound) {
            Ok(flows) => flows,
            Err(problems) => {
                for p in problems {
                    let mut key = format!("flows.{}", p.flow);
                    if let Some(step) = &p.step {
                        key.push_str(&format!(".steps.{step}"));
                    }
                    if !p.field.is_empty() {
                        key.push_str(&format!(".{}", p.field));
                    }
                    report(key, p.message);
                }
                raccordo_flows::Flows::default()
            }
        };
        if self
            .flows
            .iter()
            .any(|f| f.steps.iter().any(|s| s.kind == "ai"))
            && self.ai.providers.is_empty()
        {
            report(
                "ai.providers".into(),
                "a flow has an `ai` step: configure at least one provider (`kind = \"offline\"` needs no key)".into(),
            );
        }
        (sources, flows)
    }

    /// The event types the sources can send (their schemas' `evento` values, their mappings'
    /// fixed event types), or `None` when some source leaves them open (then any goal may be
    /// right).
    fn known_event_types(&self) -> Option<std::collections::BTreeSet<String>> {
        let mut known = std::collections::BTreeSet::new();
        for source in self.sources.values() {
            let schema: serde_json::Value = match &source.schema {
                None => serde_json::from_str(raccordo_ingest::CONVERSION_SCHEMA).ok()?,
                Some(path) => serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?,
            };
            if let Some(mapping) = &source.mapping {
                // A constant, or a lookup with a default, fixes the event types; anything
                // else passes the payload's own values through.
                let closed = mapping.event.constant.is_some()
                    || (!mapping.event.map.is_empty() && mapping.event.default.is_some());
                if !closed {
                    return None;
                }
                known.extend(mapping.event.map.values().cloned());
                known.extend(mapping.event.constant.clone());
                known.extend(mapping.event.default.clone());
                continue;
            }
            let evento = &schema["properties"]["evento"];
            if evento.is_null() {
                continue; // this source sends no `evento`
            }
            for value in evento["enum"].as_array()? {
                known.insert(value.as_str()?.to_string());
            }
        }
        (!known.is_empty()).then_some(known)
    }

    /// What works but is probably not meant: printed by `raccordo check`, which still passes.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, source) in &self.sources {
            if source.schema.is_some() && source.mapping.is_none() {
                out.push(format!("sources.{name}: its own schema and no `mapping`: its events are stored but counted in the metrics only if they carry the built-in fields (`id_cliente`, `evento`, …)"));
            }
        }
        if self.admin.tokens.is_empty() {
            out.push("no `[[admin.tokens]]`: the read APIs, the dashboard, flows and MCP cannot be used (ingestion and the sync still run)".to_string());
        }
        out
    }

    pub fn database_path(&self) -> PathBuf {
        self.storage
            .path
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("raccordo.db"))
    }
}

/// Replaces `${NAME}` and `${NAME:-default}`; `$${` stays a literal `${`. Values are pasted
/// as they are, so values that would change the TOML around them (quotes, backslashes,
/// newlines) are refused rather than silently mangled. Errors carry the byte offset.
#[cfg(test)]
pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<(usize, String)>> {
    let (out, problems) = interpolate_lenient(text, env);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// [`interpolate`] that goes on past a problem: a reference it cannot fill becomes a
/// placeholder (`unset-NAME-…`, long enough for key-length checks), and the problems are
/// returned beside the text.
fn interpolate_lenient(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (String, Vec<(usize, String)>) {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            offset += pos + 3;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            offset += pos + 1;
            continue;
        }
        let Some(end) = after.find('}') else {
            problems.push((offset + pos, "`${` without a closing `}`".to_string()));
            out.push_str(after);
            rest = "";
            break;
        };
        let inner = &after[2..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid_name =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let placeholder = |name: &str| {
            let safe: String = name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            format!("unset-{safe}-placeholder-0000000000")
        };
        if !valid_name {
            problems.push((
                offset + pos,
                format!("`${{{inner}}}` is not a valid variable reference"),
            ));
            out.push_str(&placeholder(name));
        } else {
            match env(name).or_else(|| default.map(str::to_string)) {
                Some(value) if value.contains(['"', '\\', '\'', '\n', '\r']) => {
                    problems.push((
                        offset + pos,
                        format!("environment variable {name} contains quotes, backslashes or newlines, which cannot be pasted into TOML"),
                    ));
                    out.push_str(&placeholder(name));
                }
                Some(value) => out.push_str(&value),
                None => {
                    problems.push((
                        offset + pos,
                        format!("environment variable {name} is not set"),
                    ));
                    out.push_str(&placeholder(name));
                }
            }
        }
        rest = &after[end + 1..];
        offset += pos + end + 1;
    }
    out.push_str(rest);
    (out, problems)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Byte offset of the value at a dotted key path such as `sources.web.auth[0].secrets`,
/// or of its nearest existing parent.
/// The mistakes of each top-level section, read alone (the others left at their defaults), so
/// that one bad section does not hide the next; within a section, after each mistake the key
/// at fault is left out and the section read again, so that one bad key does not hide the
/// next. Empty when the text is not TOML at all.
/// Also returns what remains readable: every section without its keys at fault (a section
/// that stays unreadable is left out).
fn section_problems(text: &str, file: &str) -> (Vec<ConfigProblem>, toml::Table) {
    let mut readable = toml::Table::new();
    let Ok(root) = toml::from_str::<toml::Table>(text) else {
        return (Vec::new(), readable);
    };
    let mut problems = Vec::new();
    for (section, value) in root {
        let mut alone = toml::Table::new();
        alone.insert(section.clone(), value);
        let mut reads = false;
        for round in 0..50 {
            let Ok(probe) = toml::to_string(&alone) else {
                break;
            };
            let Err(e) = toml::from_str::<Config>(&probe) else {
                reads = true;
                break;
            };
            let message = e.message().trim().to_string();
            let path = e.span().and_then(|span| key_path_at(&probe, span.start));
            let key = path.as_ref().map_or(section.clone(), |p| dotted(p));
            let location = span_of(text, &key)
                .map(|offset| format!("{file}:{}", line_of(text, offset)))
                .unwrap_or_else(|| file.to_string());
            // A missing field is reported when it is the section's first mistake; later it
            // may be the consequence of a key left out.
            if round > 0 && message.starts_with("missing field") {
                break;
            }
            problems.push(ConfigProblem {
                location,
                key,
                message,
            });
            match path {
                Some(p) if p.len() > 1 && remove_path(&mut alone, &p) => {}
                _ => break,
            }
        }
        if reads {
            readable.extend(alone);
        }
    }
    (problems, readable)
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

fn dotted(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The path of the innermost key whose key or value holds byte `offset`. Children are
/// searched first: a `[table]`'s own span is only its header.
fn key_path_at(text: &str, offset: usize) -> Option<Vec<Step>> {
    use toml::de::{DeTable, DeValue};
    fn in_table(table: &DeTable<'_>, offset: usize) -> Option<Vec<Step>> {
        for (k, v) in table.iter() {
            let step = Step::Key(k.get_ref().to_string());
            if let Some(mut inner) = in_value(v.get_ref(), offset) {
                inner.insert(0, step);
                return Some(inner);
            }
            if k.span().contains(&offset) || v.span().contains(&offset) {
                return Some(vec![step]);
            }
        }
        None
    }
    fn in_value(value: &DeValue<'_>, offset: usize) -> Option<Vec<Step>> {
        match value {
            DeValue::Table(table) => in_table(table, offset),
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| match in_value(item.get_ref(), offset) {
                    Some(mut inner) => {
                        inner.insert(0, Step::Index(i));
                        Some(inner)
                    }
                    None => item.span().contains(&offset).then(|| vec![Step::Index(i)]),
                }),
            _ => None,
        }
    }
    in_table(DeTable::parse(text).ok()?.get_ref(), offset)
}

/// Removes the value at `path`; whether there was one.
fn remove_path(table: &mut toml::Table, path: &[Step]) -> bool {
    fn in_value(value: &mut toml::Value, path: &[Step]) -> bool {
        match (value, path) {
            (toml::Value::Table(t), [Step::Key(k), rest @ ..]) => {
                if rest.is_empty() {
                    t.remove(k).is_some()
                } else {
                    t.get_mut(k).is_some_and(|v| in_value(v, rest))
                }
            }
            (toml::Value::Array(items), [Step::Index(i), rest @ ..]) => {
                if rest.is_empty() {
                    (*i < items.len()).then(|| items.remove(*i)).is_some()
                } else {
                    items.get_mut(*i).is_some_and(|v| in_value(v, rest))
                }
            }
            _ => false,
        }
    }
    let mut root = toml::Value::Table(std::mem::take(table));
    let removed = in_value(&mut root, path);
    if let toml::Value::Table(t) = root {
        *table = t;
    }
    removed
}

fn span_of(text: &str, key: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut best = None;
    let mut table = Some(root.get_ref());
    let mut segments = key.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (name, index) = match segment.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let value = table.and_then(|t| t.iter().find(|(k, _)| k.get_ref() == name).map(|(_, v)| v));
        let Some(mut value) = value else { break };
        best = Some(value.span().start);
        if let (Some(i), DeValue::Array(items)) = (index, value.get_ref()) {
            let Some(item) = items.get(i) else { break };
            value = item;
            best = Some(value.span().start);
        } else if let (None, DeValue::Array(items)) = (index, value.get_ref()) {
            // An array of named tables (`[[flows]]`, `[[flows.steps]]`) is addressed by name:
            // `flows.<flow>.steps.<step>`.
            let named = segments.peek().and_then(|wanted| {
                items.iter().find(|item| match item.get_ref() {
                    DeValue::Table(t) => t.iter().any(|(k, v)| {
                        k.get_ref() == "name"
                            && matches!(v.get_ref(), DeValue::String(s) if s == wanted)
                    }),
                    _ => false,
                })
            });
            if let Some(item) = named {
                segments.next();
                value = item;
                best = Some(value.span().start);
            }
        }
        table = match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("0123456789abcdef-key".into()),
            "BAD" => Some("a\"b".into()),
            _ => None,
        }
    }

    #[test]
    fn interpolation_substitutes_defaults_and_escapes() {
        assert_eq!(
            interpolate("a=\"${KEY}\"", &env).unwrap(),
            "a=\"0123456789abcdef-key\""
        );
        assert_eq!(interpolate("a=\"${NOPE:-x}\"", &env).unwrap(), "a=\"x\"");
        assert_eq!(
            interpolate("a=\"$${KEY} $5\"", &env).unwrap(),
            "a=\"${KEY} $5\""
        );
        let errors =
            interpolate("a=1\nb=\"${NOPE}\"\nc=\"${BAD}\"\nd=\"${x y}\"", &env).unwrap_err();
        let lines: Vec<usize> = errors
            .iter()
            .map(|(o, _)| line_of("a=1\nb=\"${NOPE}\"\nc=\"${BAD}\"\nd=\"${x y}\"", *o))
            .collect();
        assert_eq!(lines, vec![2, 3, 4]);
        assert!(errors[0].1.contains("NOPE is not set"));
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = r#"
[server]
listen = "127.0.0.1:9999"

[sources.web]
auth = [
  { type = "api_key", keys = ["short"] },
  { type = "standard_webhooks", secrets = ["nope"] },
]

[sources.jwt]
auth = [{ type = "jwt", secret = "${MISSING_SECRET:-0123456789012345678901234567890123}" }]
schema = "does-not-exist.json"

[[admin.tokens]]
name = "ops"
token = "tiny"
scopes = []
"#;
        let problems = Config::from_toml(text, "raccordo.toml", Path::new("/nonexistent"), env)
            .err()
            .unwrap();
        let rendered: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let expect = [
            "raccordo.toml:7: sources.web.auth[0]:",
            "raccordo.toml:8: sources.web.auth[1]:",
            "raccordo.toml:13: sources.jwt.schema:",
            "raccordo.toml:17: admin.tokens[0].token:",
            "raccordo.toml:18: admin.tokens[0].scopes:",
        ];
        for prefix in expect {
            assert!(
                rendered.iter().any(|r| r.starts_with(prefix)),
                "missing {prefix} in {rendered:#?}"
            );
        }
        assert_eq!(rendered.len(), expect.len(), "{rendered:#?}");
    }

    #[test]
    fn syntax_and_type_errors_point_at_the_line() {
        let problems = Config::from_toml("[server]\nlisten = 5\n", "f.toml", Path::new("."), env)
            .err()
            .unwrap();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].location == "f.toml:2", "{problems:?}");
        let problems =
            Config::from_toml("[server]\nlistne = \"x\"\n", "f.toml", Path::new("."), env)
                .err()
                .unwrap();
        assert!(
            problems[0].message.contains("unknown field"),
            "{problems:?}"
        );
    }

    #[test]
    fn metrics_windows_are_checked() {
        let text = "[metrics]\nwindow = \"5m\"\nslide = \"10m\"\ngoals = []\n";
        let problems = Config::from_toml(text, "f.toml", Path::new("."), env)
            .err()
            .unwrap();
        let rendered: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            rendered
                .iter()
                .any(|r| r.starts_with("f.toml:1: metrics: the slide cannot be longer")),
            "{rendered:?}"
        );
        assert!(
            rendered
                .iter()
                .any(|r| r.starts_with("f.toml:4: metrics.goals:")),
            "{rendered:?}"
        );
        let ok = Config::from_toml(
            "[metrics]\nwindow = \"10m\"\nslide = \"1m\"\n",
            "f.toml",
            Path::new("."),
            env,
        )
        .ok()
        .unwrap();
        assert_eq!(ok.config.metrics.window_spec().slide_ms, 60_000);
    }

    #[test]
    fn an_empty_file_is_the_default_config() {
        let built = Config::from_toml("", "f.toml", Path::new("."), env)
            .ok()
            .unwrap();
        assert_eq!(built.config.server.listen.port(), 8080);
        assert!(built.sources.is_empty());
    }
}
