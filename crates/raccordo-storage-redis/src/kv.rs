//! `KeyValueStore` on Redis, for entries that may be lost (the AI result cache).
//!
//! Each entry is a hash (`v` value, `ver` version, `exp` expiry in the caller's epoch ms);
//! versions come from one counter per store, so they grow across deletes and expiry as the
//! contract asks. Expiry is decided by `exp` against the caller's `now_ms`; the key's own
//! Redis expiry (a minute later) only frees memory. A sorted set indexes entries by `exp`,
//! so that purging reads only what expired.

use std::sync::LazyLock;

use async_trait::async_trait;
use raccordo_core::{KeyValueStore, StoreError, Versioned};

use crate::{Redis, store_error};

/// The write shared by `put` and `compare_and_swap`. KEYS: entry, version counter, expiry
/// index. ARGV: value, ttl ms ('' for none), now ms, the entry's own key (the index member).
const WRITE: &str = r"
local function write()
  local version = redis.call('INCR', KEYS[2])
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then
    local expires = tonumber(ARGV[3]) + tonumber(ARGV[2])
    redis.call('HSET', KEYS[1], 'v', ARGV[1], 'ver', version, 'exp', string.format('%d', expires))
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 60000)
    redis.call('ZADD', KEYS[3], expires, ARGV[4])
  else
    redis.call('HSET', KEYS[1], 'v', ARGV[1], 'ver', version)
    redis.call('ZREM', KEYS[3], ARGV[4])
  end
  return version
end
local function live_version(now)
  local entry = redis.call('HMGET', KEYS[1], 'ver', 'exp')
  if not entry[1] then return nil end
  if entry[2] and tonumber(entry[2]) <= now then return nil end
  return tonumber(entry[1])
end
";

static PUT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&format!("{WRITE}\nreturn write()")));

/// ARGV[5]: the expected version ('' for "absent or expired"). -1: someone else wrote.
static COMPARE_AND_SWAP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{WRITE}
local current = live_version(tonumber(ARGV[3]))
if ARGV[5] == '' then
  if current then return -1 end
elseif current ~= tonumber(ARGV[5]) then
  return -1
end
return write()"
    ))
});

/// KEYS: entry, expiry index. ARGV: now ms, member. Whether a live entry was removed.
static DELETE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local entry = redis.call('HMGET', KEYS[1], 'ver', 'exp')
local live = entry[1] and not (entry[2] and tonumber(entry[2]) <= tonumber(ARGV[1]))
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
if live then return 1 end
return 0
",
    )
});

/// KEYS: expiry index. ARGV: now ms, entry key prefix. Removes up to 1000 expired entries;
/// returns how many were there to remove and whether more may be left.
static PURGE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local now = tonumber(ARGV[1])
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
local removed = 0
for _, member in ipairs(members) do
  local entry = ARGV[2] .. member
  local expires = redis.call('HGET', entry, 'exp')
  if expires and tonumber(expires) <= now then
    redis.call('DEL', entry)
    removed = removed + 1
  end
  redis.call('ZREM', KEYS[1], member)
end
return {removed, #members}
",
    )
});

pub struct RedisKeyValue {
    redis: Redis,
    /// Prefix of every entry's key (`<hub prefix><namespace>:e:`).
    entries: String,
    version: String,
    expiry: String,
}

impl RedisKeyValue {
    /// A store under its own `namespace`: stores with different namespaces never meet.
    pub fn new(redis: Redis, namespace: &str) -> Self {
        Self {
            entries: redis.key(&[namespace, "e", ""]),
            version: redis.key(&[namespace, "version"]),
            expiry: redis.key(&[namespace, "expiry"]),
            redis,
        }
    }

    fn entry(&self, key: &str) -> String {
        format!("{}{key}", self.entries)
    }

    async fn write(
        &self,
        script: &redis::Script,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<i64>,
        now_ms: i64,
        expected: Option<Option<u64>>,
    ) -> Result<i64, StoreError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.entry(key))
            .key(&self.version)
            .key(&self.expiry)
            .arg(value)
            .arg(ttl_ms.map(|t| t.to_string()).unwrap_or_default())
            .arg(now_ms)
            .arg(key);
        if let Some(expected) = expected {
            invocation.arg(expected.map(|v| v.to_string()).unwrap_or_default());
        }
        invocation
            .invoke_async(&mut self.redis.connection())
            .await
            .map_err(store_error)
    }

    async fn delete_entry(&self, key: &str, now_ms: i64) -> Result<bool, StoreError> {
        let removed: i64 = DELETE
            .key(self.entry(key))
            .key(&self.expiry)
            .arg(now_ms)
            .arg(key)
            .invoke_async(&mut self.redis.connection())
            .await
            .map_err(store_error)?;
        Ok(removed == 1)
    }
}

#[async_trait]
impl KeyValueStore for RedisKeyValue {
    async fn get(&self, key: &str, now_ms: i64) -> Result<Option<Versioned>, StoreError> {
        let (value, version, expires): (Option<Vec<u8>>, Option<u64>, Option<i64>) =
            redis::cmd("HMGET")
                .arg(self.entry(key))
                .arg("v")
                .arg("ver")
                .arg("exp")
                .query_async(&mut self.redis.connection())
                .await
                .map_err(store_error)?;
        let (Some(value), Some(version)) = (value, version) else {
            return Ok(None);
        };
        if expires.is_some_and(|at| at <= now_ms) {
            return Ok(None);
        }
        Ok(Some(Versioned {
            value,
            version,
            expires_at_ms: expires,
        }))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let version = self.write(&PUT, key, value, ttl_ms, now_ms, None).await?;
        Ok(version as u64)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let version = self
            .write(
                &COMPARE_AND_SWAP,
                key,
                value,
                ttl_ms,
                now_ms,
                Some(expected),
            )
            .await?;
        Ok((version >= 0).then_some(version as u64))
    }

    async fn delete(&self, key: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.delete_entry(key, now_ms).await
    }

    async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError> {
        let mut total = 0u64;
        loop {
            let (removed, looked_at): (u64, u64) = PURGE
                .key(&self.expiry)
                .arg(now_ms)
                .arg(&self.entries)
                .invoke_async(&mut self.redis.connection())
                .await
                .map_err(store_error)?;
            total += removed;
            if looked_at < 1000 {
                return Ok(total);
            }
        }
    }

    async fn keys_holding(
        &self,
        prefix: &str,
        needle: &[u8],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{}{}*", glob_escape(&self.entries), glob_escape(prefix));
        let mut found = Vec::new();
        for entry in scan(&self.redis, &pattern).await? {
            let key = &entry[self.entries.len()..];
            if let Some(live) = self.get(key, now_ms).await?
                && live.value.windows(needle.len().max(1)).any(|w| w == needle)
            {
                found.push(key.to_string());
            }
        }
        found.sort();
        Ok(found)
    }

    async fn erase_keys(&self, keys: &[String], now_ms: i64) -> Result<u64, StoreError> {
        // A deleted key's value is gone from memory at once; a server that persists (AOF or
        // snapshots) drops it from disk at its next rewrite.
        let mut erased = 0;
        for key in keys {
            erased += u64::from(self.delete_entry(key, now_ms).await?);
        }
        Ok(erased)
    }
}

/// Every key matching the glob `pattern` (a full scan, for the rare reads that need one).
pub(crate) async fn scan(redis: &Redis, pattern: &str) -> Result<Vec<String>, StoreError> {
    let mut connection = redis.connection();
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .map_err(store_error)?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// `text` as a literal inside a Redis glob pattern.
pub(crate) fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn glob_characters_are_taken_literally() {
        assert_eq!(glob_escape("ai:cache:"), "ai:cache:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
