//! Secrets and tokens the hub keeps (OAuth refresh and access tokens), and leases that make
//! a token refresh single-flight: of all callers (all nodes, in a cluster), one refreshes.
//!
//! Values are opaque bytes here; sealing them with an AEAD before they reach the store is
//! the caller's job, so that no backend ever sees a token in the clear.

use async_trait::async_trait;

use super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub value: Vec<u8>,
    /// When the secret stops being valid (an access token's expiry), if it does.
    pub expires_at_ms: Option<i64>,
    pub version: u64,
}

#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    async fn get_secret(&self, name: &str) -> Result<Option<StoredSecret>, StoreError>;

    /// Stores a secret, replacing the previous value; returns the new version.
    async fn put_secret(
        &self,
        name: &str,
        value: Vec<u8>,
        expires_at_ms: Option<i64>,
    ) -> Result<u64, StoreError>;

    /// The names of every stored secret (for re-sealing them under a new key).
    async fn secret_names(&self) -> Result<Vec<String>, StoreError>;

    /// Takes the lease called `name` for `holder` until `now_ms + ttl_ms` when it is free,
    /// expired, or already `holder`'s (then it is extended). Whether `holder` now holds it.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Gives the lease up if `holder` holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}
