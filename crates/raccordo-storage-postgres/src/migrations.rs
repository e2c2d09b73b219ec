//! The schema, as numbered migrations applied at connect time, each once, recorded in
//! `schema_migrations`. A released migration never changes. Nodes starting together take
//! turns on an advisory lock.

use raccordo_core::StoreError;

use crate::{Pg, store_error};

const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "state stores",
        "CREATE TABLE work_items (
        id BIGSERIAL PRIMARY KEY, queue TEXT NOT NULL, group_key TEXT NOT NULL,
        operation TEXT NOT NULL, payload TEXT NOT NULL, coalesce BOOLEAN NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0, enqueued_at BIGINT NOT NULL,
        not_before BIGINT NOT NULL, lease BIGINT, lease_until BIGINT, last_error TEXT);
     CREATE INDEX work_items_group ON work_items (queue, group_key, id);
     CREATE INDEX work_items_due ON work_items (queue, not_before);
     CREATE TABLE dead_letters (
        id BIGSERIAL PRIMARY KEY, queue TEXT NOT NULL, group_key TEXT NOT NULL,
        operation TEXT NOT NULL, payload TEXT NOT NULL, attempts BIGINT NOT NULL,
        last_error TEXT NOT NULL, enqueued_at BIGINT NOT NULL, failed_at BIGINT NOT NULL);
     CREATE TABLE kv (
        key TEXT PRIMARY KEY, value BYTEA NOT NULL, version BIGINT NOT NULL,
        expires_at BIGINT);
     CREATE INDEX kv_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL;
     CREATE TABLE id_mappings (
        object TEXT NOT NULL, from_system TEXT NOT NULL, from_id TEXT NOT NULL,
        to_system TEXT NOT NULL, to_id TEXT NOT NULL, linked_at BIGINT NOT NULL,
        PRIMARY KEY (object, from_system, from_id, to_system));
     CREATE INDEX id_mappings_to ON id_mappings (object, to_system, to_id);
     CREATE TABLE secrets (
        name TEXT PRIMARY KEY, value BYTEA NOT NULL, expires_at BIGINT,
        version BIGINT NOT NULL);
     CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until BIGINT NOT NULL);
     CREATE TABLE rate_buckets (
        bucket TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, updated_at BIGINT NOT NULL);
     CREATE TABLE runs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL,
        trigger_input TEXT NOT NULL, started_at BIGINT NOT NULL, finished_at BIGINT,
        rank BIGSERIAL NOT NULL);
     CREATE INDEX runs_by_rank ON runs (rank);
     CREATE INDEX runs_by_kind ON runs (kind, rank);
     CREATE TABLE run_steps (
        run_id TEXT NOT NULL, step BIGINT NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (run_id, step));
     CREATE TABLE consumer_offsets (
        consumer TEXT NOT NULL, partition BIGINT NOT NULL, \"offset\" BIGINT NOT NULL,
        PRIMARY KEY (consumer, partition));
     CREATE TABLE alerts (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, source TEXT NOT NULL,
        message TEXT NOT NULL, at BIGINT NOT NULL, rank BIGSERIAL NOT NULL);
     CREATE INDEX alerts_by_rank ON alerts (rank);
     CREATE TABLE alert_deliveries (
        alert_id TEXT NOT NULL, channel BIGINT NOT NULL, kind TEXT NOT NULL,
        status TEXT NOT NULL, attempts BIGINT NOT NULL, last_error TEXT,
        PRIMARY KEY (alert_id, channel));
     CREATE TABLE campaign_costs (
        campaign TEXT NOT NULL, day BIGINT NOT NULL, cents BIGINT NOT NULL,
        PRIMARY KEY (campaign, day));
     CREATE TABLE window_results (
        scope TEXT NOT NULL, window_start BIGINT NOT NULL, window_end BIGINT NOT NULL,
        dimension TEXT NOT NULL, value TEXT NOT NULL, stats TEXT NOT NULL,
        PRIMARY KEY (scope, window_start, window_end, dimension, value));
     CREATE TABLE window_checkpoints (
        scope TEXT PRIMARY KEY, positions TEXT NOT NULL, state TEXT NOT NULL);
     CREATE TABLE rejected_requests (
        id TEXT PRIMARY KEY, source TEXT, target TEXT NOT NULL,
        received_at BIGINT NOT NULL, status INTEGER NOT NULL, problem TEXT NOT NULL,
        headers TEXT NOT NULL, body BYTEA NOT NULL, body_bytes BIGINT NOT NULL,
        authenticated BOOLEAN NOT NULL, replay TEXT);
     CREATE INDEX rejected_requests_by_time ON rejected_requests (received_at);
     CREATE TABLE audit_log (
        id TEXT PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, status INTEGER NOT NULL, detail TEXT NOT NULL);
     CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS
       'BEGIN RAISE EXCEPTION ''the audit log is append-only''; END';
     CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
       FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();",
    ),
    (
        2,
        "event log",
        "CREATE TABLE events (
            seq BIGINT PRIMARY KEY, id BYTEA NOT NULL, source TEXT NOT NULL,
            event_time BIGINT NOT NULL, received_at BIGINT NOT NULL, payload TEXT NOT NULL,
            duplicate_of BYTEA);
         CREATE TABLE dedup_claims (
            key BYTEA PRIMARY KEY, event BYTEA NOT NULL, expires_at BIGINT NOT NULL);
         CREATE INDEX dedup_claims_event ON dedup_claims (event);
         CREATE INDEX dedup_claims_expiry ON dedup_claims (expires_at);
         CREATE TABLE delivery_claims (
            key BYTEA PRIMARY KEY, body_hash BYTEA NOT NULL, events BYTEA[] NOT NULL,
            expires_at BIGINT NOT NULL);
         CREATE INDEX delivery_claims_expiry ON delivery_claims (expires_at);
         CREATE TABLE log_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL);
         INSERT INTO log_head VALUES (1, 0);",
    ),
];

/// Lock id of the migrations (any constant, the same on every node).
const MIGRATION_LOCK: i64 = 0x7261_6363_6f72_646f;

/// How many migrations this build knows.
pub fn count() -> usize {
    MIGRATIONS.len()
}

pub async fn run(pg: &Pg, schema: &str) -> Result<Vec<i32>, StoreError> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await.map_err(store_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(store_error)?;
    // The schema name was checked to be an identifier.
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());"
    ))
    .await
    .map_err(store_error)?;
    let done: Vec<i32> = tx
        .query(
            &format!("SELECT version FROM {schema}.schema_migrations"),
            &[],
        )
        .await
        .map_err(store_error)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(&format!("SET LOCAL search_path = {schema}; {sql}"))
            .await
            .map_err(store_error)?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[version, name],
        )
        .await
        .map_err(store_error)?;
        applied.push(*version);
    }
    tx.commit().await.map_err(store_error)?;
    if !applied.is_empty() {
        tracing::info!(?applied, schema, "PostgreSQL schema migrated");
    }
    Ok(applied)
}
