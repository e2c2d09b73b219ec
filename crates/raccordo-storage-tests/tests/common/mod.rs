//! The services the cluster backends' conformance runs need: a fresh PostgreSQL schema and a
//! fresh Redis key prefix per test, left-overs of earlier runs (older than an hour) dropped.
//!
//! Without a server: under `CI` the tests fail; elsewhere they say so and pass.

#![allow(dead_code)] // each test file uses its part

use raccordo_storage_postgres::{PgStores, PostgresOptions};

pub fn postgres_url() -> String {
    std::env::var("RACCORDO_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("RACCORDO_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `raccordo_test_<unix seconds>_<random>`: a name whose age can be read back from it.
fn fresh_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now().as_nanos());
    format!("raccordo_test_{}_{:016x}", now().as_secs(), h.finish())
}

fn now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
}

/// Whether a name made by `fresh_name` is more than an hour old.
fn is_stale(name: &str) -> bool {
    let born = name
        .split('_')
        .nth(2)
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(0);
    born + 3600 < now().as_secs()
}

/// A server could not be reached: fail under CI, skip (saying so) elsewhere.
fn unreachable(
    what: &str,
    url: &str,
    e: impl std::fmt::Display,
) -> Option<std::convert::Infallible> {
    if std::env::var_os("CI").is_none() {
        eprintln!("SKIPPED: no {what} at `{url}` ({e}); CI runs this");
        None
    } else {
        panic!("{what} at `{url}` cannot be reached: {e}")
    }
}

/// A schema of its own on the test PostgreSQL server.
pub struct PostgresSchema {
    pub schema: String,
}

impl PostgresSchema {
    pub async fn fresh() -> Option<Self> {
        let url = postgres_url();
        let (client, connection) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await
        {
            Ok(pair) => pair,
            Err(e) => match unreachable("PostgreSQL", &url, e)? {},
        };
        tokio::spawn(connection);
        for row in client
            .query(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'raccordo_test_%'",
                &[],
            )
            .await
            .unwrap()
        {
            let name: String = row.get(0);
            if is_stale(&name) {
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await;
            }
        }
        Some(Self {
            schema: fresh_name(),
        })
    }

    pub async fn open(&self) -> PgStores {
        let mut options = PostgresOptions::new(postgres_url());
        options.schema = self.schema.clone();
        PgStores::open(&options)
            .await
            .expect("open the PostgreSQL stores")
    }
}

/// A key prefix of its own on the test Redis server.
pub struct RedisPrefix {
    pub prefix: String,
}

impl RedisPrefix {
    pub async fn fresh() -> Option<Self> {
        let url = redis_url();
        let mut connection = match redis::Client::open(url.as_str()) {
            Ok(client) => match client.get_multiplexed_async_connection().await {
                Ok(c) => c,
                Err(e) => match unreachable("Redis", &url, e)? {},
            },
            Err(e) => match unreachable("Redis", &url, e)? {},
        };
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("raccordo_test_*")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .unwrap();
            let stale: Vec<&String> = keys.iter().filter(|k| is_stale(k)).collect();
            if !stale.is_empty() {
                let _: () = redis::cmd("DEL")
                    .arg(&stale)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Some(Self {
            prefix: format!("{}:", fresh_name()),
        })
    }

    pub fn options(&self) -> raccordo_storage_redis::RedisOptions {
        let mut options = raccordo_storage_redis::RedisOptions::new(redis_url());
        options.key_prefix = self.prefix.clone();
        options
    }
}
