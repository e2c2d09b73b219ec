//! The small state stores on SQLite: key-value with TTL and CAS, id mappings, secrets and
//! leases, rate-limit buckets, consumer offsets. Each read-modify-write runs in an IMMEDIATE
//! transaction, which is what makes CAS, leases and buckets atomic across connections.

use async_trait::async_trait;
use raccordo_core::{
    Admission, BucketSpec, BucketState, ConsumerOffsets, IdMappings, KeyValueStore, LogPosition,
    LogPositions, RateLimitStore, RecordRef, SecretStore, StoreError, StoredSecret, Versioned,
};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::db::SideDb;

pub struct SqliteKeyValue {
    db: SideDb,
}

impl SqliteKeyValue {
    pub(crate) fn new(db: SideDb) -> Self {
        Self { db }
    }
}

fn live_entry(
    conn: &rusqlite::Connection,
    key: &str,
    now_ms: i64,
) -> rusqlite::Result<Option<Versioned>> {
    conn.query_row(
        "SELECT value, version, expires_at FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
        params![key, now_ms],
        |r| {
            Ok(Versioned {
                value: r.get(0)?,
                version: r.get::<_, i64>(1)? as u64,
                expires_at_ms: r.get(2)?,
            })
        },
    )
    .optional()
}

/// Writes the entry with a version one past any earlier one (expired included), so a version
/// is never reused for the same key.
fn write_entry(
    tx: &Transaction<'_>,
    key: &str,
    value: &[u8],
    ttl_ms: Option<i64>,
    now_ms: i64,
) -> rusqlite::Result<u64> {
    let previous: Option<i64> = tx
        .query_row("SELECT version FROM kv WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()?;
    let version = previous.unwrap_or(0) + 1;
    tx.execute(
        "INSERT INTO kv (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version,
           expires_at = excluded.expires_at",
        params![
            key,
            value,
            version,
            ttl_ms.map(|t| now_ms.saturating_add(t))
        ],
    )?;
    Ok(version as u64)
}

#[async_trait]
impl KeyValueStore for SqliteKeyValue {
    async fn get(&self, key: &str, now_ms: i64) -> Result<Option<Versioned>, StoreError> {
        let key = key.to_string();
        // A plain read: no write lock (an IMMEDIATE transaction) needed.
        self.db
            .call(move |conn| live_entry(conn, &key, now_ms))
            .await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.db
            .tx(move |tx| write_entry(tx, &key, &value, ttl_ms, now_ms))
            .await
    }

    async fn put_many(
        &self,
        entries: &[(String, Vec<u8>)],
        ttl_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.db
            .tx(move |tx| {
                for (key, value) in &entries {
                    write_entry(tx, key, value, ttl_ms, now_ms)?;
                }
                Ok(())
            })
            .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let key = key.to_string();
        self.db
            .tx(move |tx| {
                let current = live_entry(tx, &key, now_ms)?.map(|e| e.version);
                if current != expected {
                    return Ok(None);
                }
                write_entry(tx, &key, &value, ttl_ms, now_ms).map(Some)
            })
            .await
    }

    async fn delete(&self, key: &str, now_ms: i64) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.db
            .tx(move |tx| {
                let live = live_entry(tx, &key, now_ms)?.is_some();
                // Keep the row (as expired, its value dropped) so that the version keeps
                // counting up.
                tx.execute(
                    "UPDATE kv SET expires_at = ?2, value = x'' WHERE key = ?1",
                    params![key, now_ms],
                )?;
                Ok(live)
            })
            .await
    }

    async fn erase_keys(&self, keys: &[String], now_ms: i64) -> Result<u64, StoreError> {
        let keys = keys.to_vec();
        self.db
            .erase_tx(move |tx| {
                let mut live = 0;
                for key in &keys {
                    live += u64::from(live_entry(tx, key, now_ms)?.is_some());
                    tx.execute(
                        "UPDATE kv SET expires_at = ?2, value = x'' WHERE key = ?1",
                        params![key, now_ms],
                    )?;
                }
                Ok(live)
            })
            .await
    }

    async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.db
            .tx(move |tx| {
                tx.execute(
                    "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                    params![now_ms],
                )
                .map(|n| n as u64)
            })
            .await
    }

    async fn keys_holding(
        &self,
        prefix: &str,
        needle: &[u8],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_string();
        let needle = needle.to_vec();
        self.db
            .call(move |conn| {
                // `substr` rather than LIKE: no escaping of `%` and `_` in the prefix.
                let mut stmt = conn.prepare(
                    "SELECT key FROM kv
                     WHERE substr(key, 1, length(?1)) = ?1 AND instr(value, ?2) > 0
                       AND (expires_at IS NULL OR expires_at > ?3)
                     ORDER BY key",
                )?;
                stmt.query_map(params![prefix, needle, now_ms], |r| r.get(0))?
                    .collect()
            })
            .await
    }
}

pub struct SqliteIdMappings {
    db: SideDb,
}

impl SqliteIdMappings {
    pub(crate) fn new(db: SideDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl IdMappings for SqliteIdMappings {
    async fn link(&self, a: &RecordRef, b: &RecordRef, now_ms: i64) -> Result<(), StoreError> {
        self.link_many(&[(a.clone(), b.clone())], now_ms).await
    }

    async fn link_many(
        &self,
        pairs: &[(RecordRef, RecordRef)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let pairs = pairs.to_vec();
        self.db
            .tx(move |tx| {
                for (a, b) in &pairs {
                    // Another record of `from`'s system that pointed at `to` no longer does
                    // (after a merge, the survivor takes the mapping over).
                    for (from, to) in [(a, b), (b, a)] {
                        tx.execute(
                            "DELETE FROM id_mappings WHERE object = ?1 AND from_system = ?2
                               AND to_system = ?3 AND to_id = ?4 AND from_id <> ?5",
                            params![from.object, from.system, to.system, to.id, from.id],
                        )?;
                    }
                    for (from, to) in [(a, b), (b, a)] {
                        tx.execute(
                            "INSERT INTO id_mappings (object, from_system, from_id, to_system, to_id, linked_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                             ON CONFLICT (object, from_system, from_id, to_system)
                             DO UPDATE SET to_id = excluded.to_id, linked_at = excluded.linked_at",
                            params![from.object, from.system, from.id, to.system, to.id, now_ms],
                        )?;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn find(&self, from: &RecordRef, to_system: &str) -> Result<Option<String>, StoreError> {
        let (from, to_system) = (from.clone(), to_system.to_string());
        self.db
            .call(move |conn| {
                conn.query_row(
                    "SELECT to_id FROM id_mappings WHERE object = ?1 AND from_system = ?2
                       AND from_id = ?3 AND to_system = ?4",
                    params![from.object, from.system, from.id, to_system],
                    |r| r.get(0),
                )
                .optional()
            })
            .await
    }

    async fn unlink(&self, record: &RecordRef) -> Result<u64, StoreError> {
        let record = record.clone();
        self.db
            .tx(move |tx| {
                let out = tx.execute(
                    "DELETE FROM id_mappings WHERE object = ?1 AND from_system = ?2 AND from_id = ?3",
                    params![record.object, record.system, record.id],
                )?;
                tx.execute(
                    "DELETE FROM id_mappings WHERE object = ?1 AND to_system = ?2 AND to_id = ?3",
                    params![record.object, record.system, record.id],
                )?;
                Ok(out as u64)
            })
            .await
    }

    async fn count(&self, system: &str, object: &str, to_system: &str) -> Result<u64, StoreError> {
        let (system, object, to_system) = (
            system.to_string(),
            object.to_string(),
            to_system.to_string(),
        );
        self.db
            .call(move |conn| {
                conn.query_row(
                    "SELECT count(*) FROM id_mappings WHERE object = ?1 AND from_system = ?2 AND to_system = ?3",
                    params![object, system, to_system],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u64)
            })
            .await
    }
}

pub struct SqliteSecrets {
    db: SideDb,
}

impl SqliteSecrets {
    pub(crate) fn new(db: SideDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl SecretStore for SqliteSecrets {
    async fn get_secret(&self, name: &str) -> Result<Option<StoredSecret>, StoreError> {
        let name = name.to_string();
        self.db
            .call(move |conn| {
                conn.query_row(
                    "SELECT value, expires_at, version FROM secrets WHERE name = ?1",
                    params![name],
                    |r| {
                        Ok(StoredSecret {
                            value: r.get(0)?,
                            expires_at_ms: r.get(1)?,
                            version: r.get::<_, i64>(2)? as u64,
                        })
                    },
                )
                .optional()
            })
            .await
    }

    async fn put_secret(
        &self,
        name: &str,
        value: Vec<u8>,
        expires_at_ms: Option<i64>,
    ) -> Result<u64, StoreError> {
        let name = name.to_string();
        self.db
            .tx(move |tx| {
                tx.execute(
                    "INSERT INTO secrets (name, value, expires_at, version) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value,
                       expires_at = excluded.expires_at, version = secrets.version + 1",
                    params![name, value, expires_at_ms],
                )?;
                tx.query_row(
                    "SELECT version FROM secrets WHERE name = ?1",
                    params![name],
                    |r| r.get::<_, i64>(0).map(|v| v as u64),
                )
            })
            .await
    }

    async fn secret_names(&self) -> Result<Vec<String>, StoreError> {
        self.db
            .call(|conn| {
                let mut stmt = conn.prepare_cached("SELECT name FROM secrets ORDER BY name")?;
                stmt.query_map([], |r| r.get(0))?.collect()
            })
            .await
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.db
            .tx(move |tx| {
                let taken = tx.execute(
                    "INSERT INTO leases (name, holder, until) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                       WHERE leases.until <= ?4 OR leases.holder = excluded.holder",
                    params![name, holder, now_ms.saturating_add(ttl_ms), now_ms],
                )?;
                Ok(taken == 1)
            })
            .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.db
            .tx(move |tx| {
                tx.execute(
                    "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                    params![name, holder],
                )
                .map(|_| ())
            })
            .await
    }
}

pub struct SqliteRateLimits {
    db: SideDb,
}

impl SqliteRateLimits {
    pub(crate) fn new(db: SideDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl RateLimitStore for SqliteRateLimits {
    async fn take(
        &self,
        bucket: &str,
        spec: BucketSpec,
        cost: f64,
        now_ms: i64,
    ) -> Result<Admission, StoreError> {
        let bucket = bucket.to_string();
        self.db
            .tx(move |tx| {
                let state = tx
                    .query_row(
                        "SELECT tokens, updated_at FROM rate_buckets WHERE bucket = ?1",
                        params![bucket],
                        |r| {
                            Ok(BucketState {
                                tokens: r.get(0)?,
                                updated_at_ms: r.get(1)?,
                            })
                        },
                    )
                    .optional()?;
                let (state, admission) = BucketState::take(state, spec, cost, now_ms);
                tx.execute(
                    "INSERT INTO rate_buckets (bucket, tokens, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (bucket) DO UPDATE SET tokens = excluded.tokens,
                       updated_at = excluded.updated_at",
                    params![bucket, state.tokens, state.updated_at_ms],
                )?;
                Ok(admission)
            })
            .await
    }
}

pub struct SqliteConsumerOffsets {
    db: SideDb,
}

impl SqliteConsumerOffsets {
    pub(crate) fn new(db: SideDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl ConsumerOffsets for SqliteConsumerOffsets {
    async fn load(&self, consumer: &str) -> Result<LogPositions, StoreError> {
        let consumer = consumer.to_string();
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT partition, offset FROM consumer_offsets WHERE consumer = ?1",
                )?;
                let mut positions = LogPositions::default();
                let rows = stmt.query_map(params![consumer], |r| {
                    Ok(LogPosition {
                        partition: r.get(0)?,
                        offset: r.get(1)?,
                    })
                })?;
                for position in rows {
                    positions.advance(position?);
                }
                Ok(positions)
            })
            .await
    }

    async fn commit(&self, consumer: &str, positions: &LogPositions) -> Result<(), StoreError> {
        let (consumer, positions) = (consumer.to_string(), positions.clone());
        self.db
            .tx(move |tx| {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO consumer_offsets (consumer, partition, offset) VALUES (?1, ?2, ?3)
                     ON CONFLICT (consumer, partition) DO UPDATE SET offset = excluded.offset
                       WHERE excluded.offset > consumer_offsets.offset",
                )?;
                for p in positions.iter() {
                    upsert.execute(params![consumer, p.partition, p.offset])?;
                }
                Ok(())
            })
            .await
    }
}
