//! The conformance suite on the PostgreSQL backend, every store on one database. Each test
//! gets a schema of its own in the database at `RACCORDO_TEST_POSTGRES` (default: the local
//! server, user `postgres`).

mod common;

use async_trait::async_trait;
use common::PostgresSchema;
use raccordo_storage_tests::{Backend, Opened};

#[async_trait]
impl Backend for PostgresSchema {
    async fn open(&self) -> Opened {
        Opened::new(self.open().await.into_stores(), ())
    }
}

raccordo_storage_tests::conformance!(match PostgresSchema::fresh().await {
    Some(backend) => backend,
    None => return,
});
