//! Leases on Redis (single-flight token refreshes, the leader election), and the
//! `SecretStore` that keeps secrets in the database and leases here.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use raccordo_core::{SecretStore, StoreError, StoredSecret};

use crate::{Redis, store_error};

/// Takes or extends the lease when it is free, expired (its end at or before `now`) or
/// already the caller's. Times are the caller's (`now_ms`), as everywhere in the stores, so
/// the lease's end is a field; the key's own expiry only clears leases nobody renews.
static TAKE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local holder, ttl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local lease = redis.call('HMGET', KEYS[1], 'holder', 'until')
if lease[1] and lease[1] ~= holder and tonumber(lease[2]) > now then
  return 0
end
redis.call('HSET', KEYS[1], 'holder', holder, 'until', string.format('%d', now + ttl))
redis.call('PEXPIRE', KEYS[1], ttl + 60000)
return 1
",
    )
});

/// Gives the lease up only if the caller still holds it.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

#[derive(Clone)]
pub struct RedisLeases {
    redis: Redis,
}

impl RedisLeases {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let taken: i64 = TAKE
            .key(self.redis.key(&["lease", name]))
            .arg(holder)
            .arg(ttl_ms.max(1))
            .arg(now_ms)
            .invoke_async(&mut self.redis.connection())
            .await
            .map_err(store_error)?;
        Ok(taken == 1)
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let _: i64 = RELEASE
            .key(self.redis.key(&["lease", name]))
            .arg(holder)
            .invoke_async(&mut self.redis.connection())
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

/// Secrets from the database (sealed, durable), leases from Redis (hot, disposable: after a
/// Redis restart the next caller takes a lease again, which costs at most one extra refresh).
pub(crate) struct LeasedSecrets {
    secrets: Arc<dyn SecretStore>,
    leases: RedisLeases,
}

impl LeasedSecrets {
    pub(crate) fn new(secrets: Arc<dyn SecretStore>, leases: RedisLeases) -> Self {
        Self { secrets, leases }
    }
}

#[async_trait]
impl SecretStore for LeasedSecrets {
    async fn get_secret(&self, name: &str) -> Result<Option<StoredSecret>, StoreError> {
        self.secrets.get_secret(name).await
    }

    async fn put_secret(
        &self,
        name: &str,
        value: Vec<u8>,
        expires_at_ms: Option<i64>,
    ) -> Result<u64, StoreError> {
        self.secrets.put_secret(name, value, expires_at_ms).await
    }

    async fn secret_names(&self) -> Result<Vec<String>, StoreError> {
        self.secrets.secret_names().await
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.leases.try_lease(name, holder, ttl_ms, now_ms).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.leases.release_lease(name, holder).await
    }
}
