//! The hot shared state of a cluster on Redis: what every node touches on every call and
//! what may be lost without losing data.
//!
//! - **Rate-limit buckets** (`RateLimitStore`): one Lua script reads, refills and spends a
//!   bucket atomically, so that all nodes together stay under a CRM's or a provider's limit.
//! - **Leases** (the lease half of `SecretStore`): token refreshes and the leader election
//!   are single-flight across nodes. The secrets themselves stay in PostgreSQL, sealed.
//! - **The AI result cache** (`Stores::cache`, a `KeyValueStore`).
//! - **A front cache of delivery ids** in front of the event log: a webhook retried by its
//!   sender is answered from Redis without a database transaction. The database's unique
//!   claim stays the authority — an entry is written only after the claim committed, and a
//!   miss (evicted, expired, Redis restarted) simply asks the database.
//!
//! Nothing here is the only copy of anything acknowledged: a Redis restart costs a refilled
//! bucket, a re-taken lease and cold caches, never an event. All keys of one hub start with
//! `key_prefix`, so several hubs (or test runs) share a server. The scripts touch several
//! keys of one hub at once, so a Redis Cluster is not supported; a primary with replicas (or
//! Sentinel) is.

mod delivery;
mod error;
mod kv;
mod leases;
mod ratelimit;

use std::sync::Arc;

use raccordo_core::{StoreError, Stores};
use redis::aio::ConnectionManager;

pub use delivery::DeliveryFrontCache;
pub use error::store_error;
pub use kv::RedisKeyValue;
pub use leases::RedisLeases;
pub use ratelimit::RedisRateLimits;

/// `[storage.redis]`.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[:password@]host:6379[/db]` (`rediss://` for TLS is not built in).
    pub url: String,
    /// Put before every key, so that hubs sharing a server stay apart.
    pub key_prefix: String,
    /// The longest a delivery id is remembered in Redis (the database remembers it for the
    /// source's whole dedup retention).
    pub delivery_cache_ms: i64,
}

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "raccordo:".into(),
            delivery_cache_ms: 24 * 3_600_000,
        }
    }
}

/// One node's connection to Redis (multiplexed and reconnecting), shared by every store here.
#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    prefix: Arc<str>,
}

impl Redis {
    pub async fn connect(options: &RedisOptions) -> Result<Self, StoreError> {
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| StoreError::Backend(format!("storage.redis.url: {e}")))?;
        let connection = ConnectionManager::new(client).await.map_err(store_error)?;
        Ok(Self {
            connection,
            prefix: options.key_prefix.as_str().into(),
        })
    }

    /// The full name of one of this hub's keys.
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 32);
        key.push_str(&self.prefix);
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                key.push(':');
            }
            key.push_str(part);
        }
        key
    }

    pub(crate) fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }
}

/// What `raccordo check` reports about the server.
#[derive(Debug, Clone)]
pub struct Probe {
    pub version: String,
    /// Keys of this hub (under its prefix) right now.
    pub keys: u64,
}

/// Connects, asks the server's version and counts this hub's keys.
pub async fn probe(options: &RedisOptions) -> Result<Probe, StoreError> {
    let redis = Redis::connect(options).await?;
    let mut connection = redis.connection();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut connection)
        .await
        .map_err(store_error)?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let keys = kv::scan(
        &redis,
        &format!("{}*", kv::glob_escape(&options.key_prefix)),
    )
    .await?
    .len() as u64;
    Ok(Probe { version, keys })
}

/// The Redis side of a cluster node.
#[derive(Clone)]
pub struct RedisStores {
    pub rate_limits: Arc<RedisRateLimits>,
    pub leases: RedisLeases,
    pub cache: Arc<RedisKeyValue>,
    redis: Redis,
    delivery_cache_ms: i64,
}

impl RedisStores {
    pub async fn open(options: &RedisOptions) -> Result<Self, StoreError> {
        let redis = Redis::connect(options).await?;
        Ok(Self {
            rate_limits: Arc::new(RedisRateLimits::new(redis.clone())),
            leases: RedisLeases::new(redis.clone()),
            cache: Arc::new(RedisKeyValue::new(redis.clone(), "cache")),
            redis,
            delivery_cache_ms: options.delivery_cache_ms,
        })
    }

    /// `stores` (a database's) with what Redis does better put in front: buckets, leases,
    /// the cache, and the delivery-id front cache around the log.
    pub fn in_front_of(self, stores: Stores) -> Stores {
        Stores {
            rate_limits: self.rate_limits,
            secrets: Arc::new(leases::LeasedSecrets::new(stores.secrets, self.leases)),
            cache: self.cache,
            log: Arc::new(DeliveryFrontCache::new(
                stores.log,
                self.redis,
                self.delivery_cache_ms,
            )),
            ..stores
        }
    }
}
