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

/// Two nodes — each with its own PostgreSQL pool and Redis connection, on one schema and key
/// prefix — draw from one rate-limit bucket: concurrent takes spread over both admit exactly
/// the bucket's capacity between them (a CRM's limit holds for the cluster, not per node).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_holds_across_nodes() {
    use raccordo_core::{Admission, BucketSpec};
    let Some(cluster) = Cluster::fresh(false).await else {
        return;
    };
    let (one, two) = (cluster.open().await, cluster.open().await);
    let spec = BucketSpec::per_interval(10, 10_000);
    let takers = (0..40).map(|n| {
        let limits = if n % 2 == 0 {
            one.stores.rate_limits.clone()
        } else {
            two.stores.rate_limits.clone()
        };
        tokio::spawn(async move {
            (
                n % 2,
                limits.take("hubspot:app", spec, 1.0, 0).await.unwrap(),
            )
        })
    });
    let mut allowed = [0usize; 2];
    for taken in futures_util::future::join_all(takers).await {
        let (node, admission) = taken.unwrap();
        if matches!(admission, Admission::Allowed { .. }) {
            allowed[node] += 1;
        }
    }
    assert_eq!(
        allowed[0] + allowed[1],
        10,
        "the bucket's capacity, for both nodes: {allowed:?}"
    );
    one.close().await;
    two.close().await;
}
