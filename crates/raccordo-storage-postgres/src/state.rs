//! The small state stores on PostgreSQL: key-value with TTL and CAS, id mappings, secrets
//! and leases, rate-limit buckets, consumer offsets.

use async_trait::async_trait;
use raccordo_core::{
    Admission, BucketSpec, BucketState, ConsumerOffsets, IdMappings, KeyValueStore, LogPosition,
    LogPositions, RateLimitStore, RecordRef, SecretStore, StoreError, StoredSecret, Versioned,
};

use crate::{Pg, lock_key, store_error};

type Tx<'a> = deadpool_postgres::Transaction<'a>;

pub struct PgKeyValue {
    pg: Pg,
}

impl PgKeyValue {
    pub(crate) fn new(pg: Pg) -> Self {
        Self { pg }
    }
}

async fn live_entry(
    client: &impl deadpool_postgres::GenericClient,
    key: &str,
    now_ms: i64,
) -> Result<Option<Versioned>, StoreError> {
    let row = client
        .query_opt(
            "SELECT value, version, expires_at FROM kv
             WHERE key = $1 AND (expires_at IS NULL OR expires_at > $2)",
            &[&key, &now_ms],
        )
        .await
        .map_err(store_error)?;
    Ok(row.map(|r| Versioned {
        value: r.get(0),
        version: r.get::<_, i64>(1) as u64,
        expires_at_ms: r.get(2),
    }))
}

/// Writes the entry with a version one past any earlier one (expired included).
async fn write_entry(
    tx: &Tx<'_>,
    key: &str,
    value: &[u8],
    ttl_ms: Option<i64>,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let expires = ttl_ms.map(|t| now_ms.saturating_add(t));
    let row = tx
        .query_one(
            "INSERT INTO kv (key, value, version, expires_at) VALUES ($1, $2, 1, $3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value,
               version = kv.version + 1, expires_at = excluded.expires_at
             RETURNING version",
            &[&key, &value, &expires],
        )
        .await
        .map_err(store_error)?;
    Ok(row.get::<_, i64>(0) as u64)
}

#[async_trait]
impl KeyValueStore for PgKeyValue {
    async fn get(&self, key: &str, now_ms: i64) -> Result<Option<Versioned>, StoreError> {
        // One statement: no transaction needed (the read-modify-writes run the same query
        // inside theirs).
        let client = self.pg.client().await?;
        live_entry(&client, key, now_ms).await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let version = write_entry(&tx, key, &value, ttl_ms, now_ms).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(version)
    }

    async fn put_many(
        &self,
        entries: &[(String, Vec<u8>)],
        ttl_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        for (key, value) in entries {
            write_entry(&tx, key, value, ttl_ms, now_ms).await?;
        }
        tx.commit().await.map_err(store_error)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        lock_key(&tx, "kv", key).await?;
        let current = live_entry(&tx, key, now_ms).await?.map(|e| e.version);
        if current != expected {
            return Ok(None);
        }
        let version = write_entry(&tx, key, &value, ttl_ms, now_ms).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(Some(version))
    }

    async fn delete(&self, key: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        lock_key(&tx, "kv", key).await?;
        let live = live_entry(&tx, key, now_ms).await?.is_some();
        // Keep the row (expired, its value dropped) so that the version keeps counting up.
        tx.execute(
            "UPDATE kv SET expires_at = $2, value = ''::bytea WHERE key = $1",
            &[&key, &now_ms],
        )
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(live)
    }

    async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.pg
            .client()
            .await?
            .execute(
                "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= $1",
                &[&now_ms],
            )
            .await
            .map_err(store_error)
    }

    async fn keys_holding(
        &self,
        prefix: &str,
        needle: &[u8],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self
            .pg
            .client()
            .await?
            .query(
                "SELECT key FROM kv
                 WHERE left(key, length($1)) = $1 AND position($2::bytea IN value) > 0
                   AND (expires_at IS NULL OR expires_at > $3)
                 ORDER BY key",
                &[&prefix, &needle, &now_ms],
            )
            .await
            .map_err(store_error)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn erase_keys(&self, keys: &[String], now_ms: i64) -> Result<u64, StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let mut live = 0;
        for key in keys {
            live += u64::from(live_entry(&tx, key, now_ms).await?.is_some());
            tx.execute(
                "UPDATE kv SET expires_at = $2, value = ''::bytea WHERE key = $1",
                &[key, &now_ms],
            )
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        if !keys.is_empty() {
            self.pg.vacuum(&["kv"]).await;
        }
        Ok(live)
    }
}

pub struct PgIdMappings {
    pg: Pg,
}

impl PgIdMappings {
    pub(crate) fn new(pg: Pg) -> Self {
        Self { pg }
    }
}

#[async_trait]
impl IdMappings for PgIdMappings {
    async fn link(&self, a: &RecordRef, b: &RecordRef, now_ms: i64) -> Result<(), StoreError> {
        self.link_many(&[(a.clone(), b.clone())], now_ms).await
    }

    async fn link_many(
        &self,
        pairs: &[(RecordRef, RecordRef)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        for (a, b) in pairs {
            // Another record of `from`'s system that pointed at `to` no longer does.
            for (from, to) in [(a, b), (b, a)] {
                tx.execute(
                    "DELETE FROM id_mappings WHERE object = $1 AND from_system = $2
                       AND to_system = $3 AND to_id = $4 AND from_id <> $5",
                    &[&from.object, &from.system, &to.system, &to.id, &from.id],
                )
                .await
                .map_err(store_error)?;
            }
            for (from, to) in [(a, b), (b, a)] {
                tx.execute(
                    "INSERT INTO id_mappings (object, from_system, from_id, to_system, to_id, linked_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (object, from_system, from_id, to_system)
                     DO UPDATE SET to_id = excluded.to_id, linked_at = excluded.linked_at",
                    &[&from.object, &from.system, &from.id, &to.system, &to.id, &now_ms],
                )
                .await
                .map_err(store_error)?;
            }
        }
        tx.commit().await.map_err(store_error)
    }

    async fn find(&self, from: &RecordRef, to_system: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .pg
            .client()
            .await?
            .query_opt(
                "SELECT to_id FROM id_mappings WHERE object = $1 AND from_system = $2
                   AND from_id = $3 AND to_system = $4",
                &[&from.object, &from.system, &from.id, &to_system],
            )
            .await
            .map_err(store_error)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn unlink(&self, record: &RecordRef) -> Result<u64, StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let out = tx
            .execute(
                "DELETE FROM id_mappings WHERE object = $1 AND from_system = $2 AND from_id = $3",
                &[&record.object, &record.system, &record.id],
            )
            .await
            .map_err(store_error)?;
        tx.execute(
            "DELETE FROM id_mappings WHERE object = $1 AND to_system = $2 AND to_id = $3",
            &[&record.object, &record.system, &record.id],
        )
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(out)
    }

    async fn count(&self, system: &str, object: &str, to_system: &str) -> Result<u64, StoreError> {
        let row = self
            .pg
            .client()
            .await?
            .query_one(
                "SELECT count(*) FROM id_mappings WHERE object = $1 AND from_system = $2 AND to_system = $3",
                &[&object, &system, &to_system],
            )
            .await
            .map_err(store_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

pub struct PgSecrets {
    pg: Pg,
}

impl PgSecrets {
    pub(crate) fn new(pg: Pg) -> Self {
        Self { pg }
    }
}

#[async_trait]
impl SecretStore for PgSecrets {
    async fn get_secret(&self, name: &str) -> Result<Option<StoredSecret>, StoreError> {
        let row = self
            .pg
            .client()
            .await?
            .query_opt(
                "SELECT value, expires_at, version FROM secrets WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(store_error)?;
        Ok(row.map(|r| StoredSecret {
            value: r.get(0),
            expires_at_ms: r.get(1),
            version: r.get::<_, i64>(2) as u64,
        }))
    }

    async fn put_secret(
        &self,
        name: &str,
        value: Vec<u8>,
        expires_at_ms: Option<i64>,
    ) -> Result<u64, StoreError> {
        let row = self
            .pg
            .client()
            .await?
            .query_one(
                "INSERT INTO secrets (name, value, expires_at, version) VALUES ($1, $2, $3, 1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value,
                   expires_at = excluded.expires_at, version = secrets.version + 1
                 RETURNING version",
                &[&name, &value, &expires_at_ms],
            )
            .await
            .map_err(store_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn secret_names(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .pg
            .client()
            .await?
            .query("SELECT name FROM secrets ORDER BY name", &[])
            .await
            .map_err(store_error)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let until = now_ms.saturating_add(ttl_ms);
        let taken = self
            .pg
            .client()
            .await?
            .execute(
                "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                   WHERE leases.until <= $4 OR leases.holder = excluded.holder",
                &[&name, &holder, &until, &now_ms],
            )
            .await
            .map_err(store_error)?;
        Ok(taken == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.pg
            .client()
            .await?
            .execute(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

pub struct PgRateLimits {
    pg: Pg,
}

impl PgRateLimits {
    pub(crate) fn new(pg: Pg) -> Self {
        Self { pg }
    }
}

#[async_trait]
impl RateLimitStore for PgRateLimits {
    async fn take(
        &self,
        bucket: &str,
        spec: BucketSpec,
        cost: f64,
        now_ms: i64,
    ) -> Result<Admission, StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        lock_key(&tx, "bucket", bucket).await?;
        let state = tx
            .query_opt(
                "SELECT tokens, updated_at FROM rate_buckets WHERE bucket = $1",
                &[&bucket],
            )
            .await
            .map_err(store_error)?
            .map(|r| BucketState {
                tokens: r.get(0),
                updated_at_ms: r.get(1),
            });
        let (state, admission) = BucketState::take(state, spec, cost, now_ms);
        tx.execute(
            "INSERT INTO rate_buckets (bucket, tokens, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (bucket) DO UPDATE SET tokens = excluded.tokens,
               updated_at = excluded.updated_at",
            &[&bucket, &state.tokens, &state.updated_at_ms],
        )
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(admission)
    }
}

pub struct PgConsumerOffsets {
    pg: Pg,
}

impl PgConsumerOffsets {
    pub(crate) fn new(pg: Pg) -> Self {
        Self { pg }
    }
}

#[async_trait]
impl ConsumerOffsets for PgConsumerOffsets {
    async fn load(&self, consumer: &str) -> Result<LogPositions, StoreError> {
        let rows = self
            .pg
            .client()
            .await?
            .query(
                "SELECT partition, \"offset\" FROM consumer_offsets WHERE consumer = $1",
                &[&consumer],
            )
            .await
            .map_err(store_error)?;
        let mut positions = LogPositions::default();
        for r in rows {
            positions.advance(LogPosition {
                partition: r.get::<_, i64>(0) as u32,
                offset: r.get(1),
            });
        }
        Ok(positions)
    }

    async fn commit(&self, consumer: &str, positions: &LogPositions) -> Result<(), StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        for p in positions.iter() {
            tx.execute(
                "INSERT INTO consumer_offsets (consumer, partition, \"offset\") VALUES ($1, $2, $3)
                 ON CONFLICT (consumer, partition) DO UPDATE SET \"offset\" = excluded.\"offset\"
                   WHERE excluded.\"offset\" > consumer_offsets.\"offset\"",
                &[&consumer, &i64::from(p.partition), &p.offset],
            )
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }
}
