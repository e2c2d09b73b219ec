//! The conformance suite on a cluster node's stores: PostgreSQL for state and the log, Redis
//! in front (rate-limit buckets, leases, the AI cache, the delivery-id front cache), exactly
//! as `[storage] backend = "cluster"` assembles them. A second run puts the Redis key-value
//! store in `kv`'s place, so that it meets the whole key-value contract too.
//!
//! Redis at `RACCORDO_TEST_REDIS` (default `redis://127.0.0.1:6379`), PostgreSQL as in
//! `postgres.rs`; each test has a schema and a key prefix of its own.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::{PostgresSchema, RedisPrefix};
use raccordo_storage_redis::{RedisKeyValue, RedisStores};
use raccordo_storage_tests::{Backend, Opened};

struct Cluster {
    postgres: PostgresSchema,
    redis: RedisPrefix,
    /// Whether `kv` is the Redis store too (it is PostgreSQL's in a real node).
    kv_on_redis: bool,
}

impl Cluster {
    async fn fresh(kv_on_redis: bool) -> Option<Self> {
        Some(Self {
            postgres: PostgresSchema::fresh().await?,
            redis: RedisPrefix::fresh().await?,
            kv_on_redis,
        })
    }
}

#[async_trait]
impl Backend for Cluster {
    async fn open(&self) -> Opened {
        let pg = self.postgres.open().await.into_stores();
        let redis = RedisStores::open(&self.redis.options())
            .await
            .expect("open the Redis stores");
        let mut stores = redis.in_front_of(pg);
        if self.kv_on_redis {
            let redis = raccordo_storage_redis::Redis::connect(&self.redis.options())
                .await
                .expect("connect to Redis");
            stores.kv = Arc::new(RedisKeyValue::new(redis, "kv"));
        }
        Opened::new(stores, ())
    }
}

mod as_deployed {
    use super::*;
    raccordo_storage_tests::conformance!(match Cluster::fresh(false).await {
        Some(backend) => backend,
        None => return,
    });
}

mod key_value_on_redis {
    use super::*;
    raccordo_storage_tests::conformance!(match Cluster::fresh(true).await {
        Some(backend) => backend,
        None => return,
    });
}
