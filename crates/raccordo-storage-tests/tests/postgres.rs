//! The conformance suite on the PostgreSQL backend, every store on one database. Each test
//! gets a schema of its own in the database at `RACCORDO_TEST_POSTGRES` (default: the local
//! server, user `postgres`).
//!
//! Without a server: under `CI` the tests fail; elsewhere they say so and pass.

use async_trait::async_trait;
use raccordo_storage_postgres::{PgStores, PostgresOptions};
use raccordo_storage_tests::{Backend, Opened};

fn url() -> String {
    std::env::var("RACCORDO_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into())
}

struct Postgres {
    schema: String,
}

impl Postgres {
    /// A fresh schema, or `None` (after saying why) when no server answers outside CI.
    async fn fresh() -> Option<Self> {
        let (client, connection) =
            match tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
                Ok(pair) => pair,
                Err(e) if std::env::var_os("CI").is_none() => {
                    eprintln!("SKIPPED: no PostgreSQL at `{}` ({e}); CI runs this", url());
                    return None;
                }
                Err(e) => panic!("PostgreSQL at `{}` cannot be reached: {e}", url()),
            };
        tokio::spawn(connection);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // Schemas left by earlier runs (older than an hour) are dropped.
        for row in client
            .query(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'raccordo_test_%'",
                &[],
            )
            .await
            .unwrap()
        {
            let name: String = row.get(0);
            let born = name
                .split('_')
                .nth(2)
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
            if born + 3600 < now {
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await;
            }
        }
        Some(Self {
            schema: format!("raccordo_test_{now}_{:016x}", rand_u64()),
        })
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

#[async_trait]
impl Backend for Postgres {
    async fn open(&self) -> Opened {
        let mut options = PostgresOptions::new(url());
        options.schema = self.schema.clone();
        let pg = PgStores::open(&options)
            .await
            .expect("open the PostgreSQL stores");
        Opened::new(pg.into_stores(), ())
    }
}

raccordo_storage_tests::conformance!(match Postgres::fresh().await {
    Some(backend) => backend,
    None => return,
});
