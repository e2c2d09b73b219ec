//! A key-value store with expiry and compare-and-swap: the shared state of small things
//! (dedup front caches, AI result cache entries, cursors) that need no table of their own.

use async_trait::async_trait;

use super::StoreError;

/// A stored value and its version. The version changes on every write, so a
/// compare-and-swap can tell whether anyone wrote since it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: u64,
    /// When the entry stops existing (epoch ms); `None`: never.
    pub expires_at_ms: Option<i64>,
}

#[async_trait]
pub trait KeyValueStore: Send + Sync + 'static {
    /// The live entry under `key` (an expired one reads as absent).
    async fn get(&self, key: &str, now_ms: i64) -> Result<Option<Versioned>, StoreError>;

    /// Writes `value` whatever was there; returns the new version.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Writes several entries at once (in one transaction, where the backend has them).
    async fn put_many(
        &self,
        entries: &[(String, Vec<u8>)],
        ttl_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        for (key, value) in entries {
            self.put(key, value.clone(), ttl_ms, now_ms).await?;
        }
        Ok(())
    }

    /// Writes `value` only if the entry is still at `expected` (`None`: absent or expired).
    /// Returns the new version, or `None` when another writer got there first.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError>;

    /// Removes the entry; whether there was a live one.
    async fn delete(&self, key: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// Drops expired entries; how many.
    async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Keys of the live entries under `prefix` whose value holds the bytes `needle` (what
    /// a data subject's export reads and erasure deletes), in key order.
    async fn keys_holding(
        &self,
        prefix: &str,
        needle: &[u8],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError>;

    /// Deletes these entries for an erasure: like `delete`, and their values are gone from
    /// the store's files too, not merely unreachable. How many were live.
    async fn erase_keys(&self, keys: &[String], now_ms: i64) -> Result<u64, StoreError>;
}
