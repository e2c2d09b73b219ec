//! Which record in one system is which record in another (a HubSpot contact id and its Zoho
//! contact id), kept both ways.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// A record of one system: `hubspot` / `contacts` / `123`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordRef {
    pub system: String,
    pub object: String,
    pub id: String,
}

impl RecordRef {
    pub fn new(
        system: impl Into<String>,
        object: impl Into<String>,
        id: impl Into<String>,
    ) -> Self {
        Self {
            system: system.into(),
            object: object.into(),
            id: id.into(),
        }
    }
}

#[async_trait]
pub trait IdMappings: Send + Sync + 'static {
    /// Records that `a` and `b` are the same record (same `object` kind, different systems).
    /// A record maps to at most one record per other system: an earlier mapping of either
    /// side to that system is replaced (after a merge, the survivor takes over).
    async fn link(&self, a: &RecordRef, b: &RecordRef, now_ms: i64) -> Result<(), StoreError>;

    /// Links several pairs at once (in one transaction, where the backend has them): what a
    /// sync round that created many records needs.
    async fn link_many(
        &self,
        pairs: &[(RecordRef, RecordRef)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        for (a, b) in pairs {
            self.link(a, b, now_ms).await?;
        }
        Ok(())
    }

    /// The id of `from`'s counterpart in `to_system`, if mapped.
    async fn find(&self, from: &RecordRef, to_system: &str) -> Result<Option<String>, StoreError>;

    /// Forgets every mapping of `record` (deleted, erased); how many were removed.
    async fn unlink(&self, record: &RecordRef) -> Result<u64, StoreError>;

    /// How many records of `system` of kind `object` are mapped to a record of `to_system`
    /// (the pairs in sync, for the health view).
    async fn count(&self, system: &str, object: &str, to_system: &str) -> Result<u64, StoreError>;
}
