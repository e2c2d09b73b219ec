//! The conformance suite on the embedded SQLite backend.

use async_trait::async_trait;
use raccordo_storage_sqlite::{SqliteOptions, SqliteStore};
use raccordo_storage_tests::{Backend, Opened};

struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn fresh() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

#[async_trait]
impl Backend for Sqlite {
    async fn open(&self) -> Opened {
        let store = SqliteStore::open(SqliteOptions::new(self.dir.path().join("raccordo.db")))
            .expect("open the store");
        Opened::new(store.stores(), store)
    }
}

raccordo_storage_tests::conformance!(Sqlite::fresh());
