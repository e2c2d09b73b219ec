//! Every store on PostgreSQL, for several hub nodes sharing one database: the event log with
//! its dedup claims (one transaction per append, so the claim is the authority on every
//! node), the work queue (`FOR UPDATE SKIP LOCKED`), key-value entries, id mappings, secrets
//! and leases, rate-limit buckets, runs, window results and checkpoints, consumer offsets,
//! alerts, campaign costs, refused requests and the audit log.
//!
//! Read-modify-write operations that must be atomic across nodes (compare-and-swap, bucket
//! takes) serialise on a transaction-scoped advisory lock per key, which — unlike a row
//! lock — also covers a key that has no row yet.

mod error;
mod history;
mod import;
mod log;
mod migrations;
mod queue;
mod state;
mod tables;

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use raccordo_core::StoreError;

pub use error::store_error;
pub use history::{PgAlertHistory, PgRuns};
pub use import::PgImport;
pub use log::PgEventLog;
pub use queue::PgWorkQueue;
pub use state::{PgConsumerOffsets, PgIdMappings, PgKeyValue, PgRateLimits, PgSecrets};
pub use tables::{PgAuditLog, PgCampaignCosts, PgRejectedRequests, PgWindowStore};

/// `[storage.postgres]`.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database` (libpq-style key=value also works).
    pub url: String,
    /// The schema the hub's tables live in (created if missing); several hubs can share a
    /// database with a schema each.
    pub schema: String,
    /// Connections kept per node.
    pub pool_size: usize,
}

impl PostgresOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "raccordo".into(),
            pool_size: 16,
        }
    }
}

/// The pool every store of one node shares.
#[derive(Clone)]
pub struct Pg {
    pool: Pool,
    /// For connections outside the pool (the log's `LISTEN`).
    config: tokio_postgres::Config,
}

impl Pg {
    /// Connects, creates the schema if needed and applies the migrations (one node at a
    /// time: they hold an advisory lock).
    pub async fn connect(options: &PostgresOptions) -> Result<Self, StoreError> {
        if !is_identifier(&options.schema) {
            return Err(StoreError::Backend(format!(
                "the schema name `{}` must be letters, digits and underscores",
                options.schema
            )));
        }
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| StoreError::Backend(format!("the PostgreSQL URL is not valid: {e}")))?;
        // Every connection works in the hub's schema.
        config.options(format!("-c search_path={}", options.schema));
        config.connect_timeout(std::time::Duration::from_secs(5));
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .build()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let pg = Self { pool, config };
        migrations::run(&pg, &options.schema).await?;
        Ok(pg)
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => store_error(e),
            other => StoreError::Unavailable(format!("no PostgreSQL connection: {other}")),
        })
    }
}

/// What `raccordo check` reports of a database, without changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub server_version: String,
    /// Migrations not applied yet (the first node to start applies them).
    pub pending_migrations: usize,
}

/// Connects and reads the server's version and the schema's migrations; changes nothing.
pub async fn probe(options: &PostgresOptions) -> Result<Probe, StoreError> {
    let mut config: tokio_postgres::Config = options
        .url
        .parse()
        .map_err(|e| StoreError::Backend(format!("the PostgreSQL URL is not valid: {e}")))?;
    config.connect_timeout(std::time::Duration::from_secs(5));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(store_error)?;
    let connection = tokio::spawn(connection);
    let server_version: String = client
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .map_err(store_error)?
        .get(0);
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{}.schema_migrations", options.schema)],
        )
        .await
        .map_err(store_error)?
        .get(0);
    let applied: i64 = if exists && is_identifier(&options.schema) {
        client
            .query_one(
                &format!("SELECT count(*) FROM {}.schema_migrations", options.schema),
                &[],
            )
            .await
            .map_err(store_error)?
            .get(0)
    } else {
        0
    };
    drop(client);
    let _ = connection.await;
    Ok(Probe {
        server_version,
        pending_migrations: migrations::count().saturating_sub(applied as usize),
    })
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// Every store on one pool: the event log too.
pub struct PgStores {
    pub log: Arc<PgEventLog>,
    pub queue: Arc<PgWorkQueue>,
    pub kv: Arc<PgKeyValue>,
    pub mappings: Arc<PgIdMappings>,
    pub secrets: Arc<PgSecrets>,
    pub rate_limits: Arc<PgRateLimits>,
    pub runs: Arc<PgRuns>,
    pub windows: Arc<PgWindowStore>,
    pub offsets: Arc<PgConsumerOffsets>,
    pub alerts: Arc<PgAlertHistory>,
    pub costs: Arc<PgCampaignCosts>,
    pub requests: Arc<PgRejectedRequests>,
    pub audit: Arc<PgAuditLog>,
}

impl PgStores {
    pub async fn open(options: &PostgresOptions) -> Result<Self, StoreError> {
        let pg = Pg::connect(options).await?;
        Ok(Self {
            log: PgEventLog::open(pg.clone(), &options.schema).await?,
            queue: Arc::new(PgWorkQueue::new(pg.clone())),
            kv: Arc::new(PgKeyValue::new(pg.clone())),
            mappings: Arc::new(PgIdMappings::new(pg.clone())),
            secrets: Arc::new(PgSecrets::new(pg.clone())),
            rate_limits: Arc::new(PgRateLimits::new(pg.clone())),
            runs: Arc::new(PgRuns::new(pg.clone())),
            windows: Arc::new(PgWindowStore::new(pg.clone())),
            offsets: Arc::new(PgConsumerOffsets::new(pg.clone())),
            alerts: Arc::new(PgAlertHistory::new(pg.clone())),
            costs: Arc::new(PgCampaignCosts::new(pg.clone())),
            requests: Arc::new(PgRejectedRequests::new(pg.clone())),
            audit: Arc::new(PgAuditLog::new(pg)),
        })
    }

    /// As the hub takes them: the log is also the query side.
    pub fn into_stores(self) -> raccordo_core::Stores {
        raccordo_core::Stores {
            log: self.log.clone(),
            query: self.log,
            queue: self.queue,
            kv: self.kv.clone(),
            cache: self.kv,
            mappings: self.mappings,
            secrets: self.secrets,
            rate_limits: self.rate_limits,
            runs: self.runs,
            windows: self.windows,
            offsets: self.offsets,
            alerts: self.alerts,
            costs: self.costs,
            requests: self.requests,
            audit: self.audit,
        }
    }
}

impl Pg {
    /// After an erasure: `VACUUM` the tables it changed, so that the old row versions (which
    /// still hold the erased values until vacuumed) are cleaned out now rather than whenever
    /// autovacuum comes by. Best effort: a failure is logged, the erasure stands.
    pub(crate) async fn vacuum(&self, tables: &[&str]) {
        let client = match self.client().await {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "no connection to vacuum after an erasure");
                return;
            }
        };
        for table in tables {
            if let Err(e) = client.batch_execute(&format!("VACUUM {table}")).await {
                tracing::warn!(table, error = %e, "VACUUM after an erasure failed");
            }
        }
    }
}

/// Takes the transaction-scoped advisory lock of `key` (in `space`): read-modify-writes of
/// the same key then run one at a time across every node.
pub(crate) async fn lock_key(
    tx: &deadpool_postgres::Transaction<'_>,
    space: &str,
    key: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("{space}:{key}")],
    )
    .await
    .map_err(store_error)?;
    Ok(())
}
