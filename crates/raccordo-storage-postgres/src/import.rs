//! The receiving end of `raccordo migrate`: an empty schema takes the log (same sequence
//! numbers), the live dedup claims and the state tables' rows of another store.
//!
//! Each page is one transaction; the log's head moves with the events, so an import cut
//! short leaves a consistent prefix (and the migration refuses a schema that is not empty,
//! so it is started again on a fresh one rather than continued blindly).

use std::collections::HashMap;

use raccordo_core::StoreError;
use raccordo_core::migrate::{Cell, ClaimRecord, DeliveryClaimRecord, LogRecord, TableRows};
use tokio_postgres::types::ToSql;

use crate::{Pg, PostgresOptions, store_error};

fn id_bytes(id: raccordo_core::EventId) -> Vec<u8> {
    id.as_u128().to_be_bytes().to_vec()
}

/// A schema being filled by a migration.
pub struct PgImport {
    pg: Pg,
}

fn bad(table: &str, column: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{table}.{column}: {why}"))
}

impl PgImport {
    /// Connects (creating the schema and applying the migrations if needed).
    pub async fn connect(options: &PostgresOptions) -> Result<Self, StoreError> {
        Ok(Self {
            pg: Pg::connect(options).await?,
        })
    }

    /// Rows in `table` (`events` included).
    pub async fn count(&self, table: &str) -> Result<i64, StoreError> {
        if !crate::is_identifier(table) {
            return Err(StoreError::Backend(format!(
                "`{table}` is not a table name"
            )));
        }
        let client = self.pg.client().await?;
        Ok(client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(store_error)?
            .get(0))
    }

    /// The log's head (its last sequence number).
    pub async fn head(&self) -> Result<i64, StoreError> {
        let client = self.pg.client().await?;
        Ok(client
            .query_one("SELECT seq FROM log_head WHERE id = 1", &[])
            .await
            .map_err(store_error)?
            .get(0))
    }

    /// Appends events with their own sequence numbers (after the head) and moves the head.
    pub async fn events(&self, events: &[LogRecord]) -> Result<(), StoreError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let head: i64 = tx
            .query_one(crate::log::LOCK_HEAD, &[])
            .await
            .map_err(store_error)?
            .get(0);
        if events.first().is_some_and(|e| e.seq <= head) {
            return Err(StoreError::Backend(format!(
                "events must come after the log's head ({head})"
            )));
        }
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        let ids: Vec<Vec<u8>> = events.iter().map(|e| id_bytes(e.id)).collect();
        let sources: Vec<&str> = events.iter().map(|e| e.source.as_str()).collect();
        let times: Vec<i64> = events.iter().map(|e| e.event_time_ms).collect();
        let received: Vec<i64> = events.iter().map(|e| e.received_at_ms).collect();
        let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
        let originals: Vec<Option<Vec<u8>>> = events
            .iter()
            .map(|e| e.duplicate_of.map(id_bytes))
            .collect();
        tx.execute(
            crate::log::INSERT_EVENTS,
            &[
                &seqs, &ids, &sources, &times, &received, &payloads, &originals,
            ],
        )
        .await
        .map_err(store_error)?;
        tx.execute("UPDATE log_head SET seq = $1 WHERE id = 1", &[&last.seq])
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)
    }

    pub async fn claims(&self, claims: &[ClaimRecord]) -> Result<(), StoreError> {
        let keys: Vec<Vec<u8>> = claims.iter().map(|c| c.key.0.to_vec()).collect();
        let events: Vec<Vec<u8>> = claims.iter().map(|c| id_bytes(c.event)).collect();
        let untils: Vec<i64> = claims.iter().map(|c| c.expires_at_ms).collect();
        let client = self.pg.client().await?;
        client
            .execute(
                "INSERT INTO dedup_claims (key, event, expires_at)
                 SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[])",
                &[&keys, &events, &untils],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    pub async fn deliveries(&self, deliveries: &[DeliveryClaimRecord]) -> Result<(), StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let insert = tx
            .prepare(
                "INSERT INTO delivery_claims (key, body_hash, events, expires_at)
                 VALUES ($1, $2, $3, $4)",
            )
            .await
            .map_err(store_error)?;
        for d in deliveries {
            let events: Vec<Vec<u8>> = d.events.iter().copied().map(id_bytes).collect();
            tx.execute(
                &insert,
                &[
                    &d.key.0.as_slice(),
                    &d.body_hash.0.as_slice(),
                    &events,
                    &d.expires_at_ms,
                ],
            )
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }

    /// Inserts rows into a state table, each value converted to its column's type; columns
    /// the rows lack take their defaults. Serial columns given values have their sequences
    /// moved past them.
    pub async fn rows(&self, rows: &TableRows) -> Result<u64, StoreError> {
        let table = rows.table.as_str();
        if !crate::is_identifier(table) {
            return Err(StoreError::Backend(format!(
                "`{table}` is not a table name"
            )));
        }
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let described = tx
            .query(
                "SELECT column_name::text, data_type::text,
                        column_default LIKE 'nextval(%' AS serial
                 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = $1",
                &[&table],
            )
            .await
            .map_err(store_error)?;
        let types: HashMap<String, (String, bool)> = described
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (
                        r.get::<_, String>(1),
                        r.get::<_, Option<bool>>(2) == Some(true),
                    ),
                )
            })
            .collect();
        if types.is_empty() {
            return Err(StoreError::Backend(format!("no table `{table}` here")));
        }
        for column in &rows.columns {
            if !types.contains_key(column) {
                return Err(bad(table, column, "the target has no such column"));
            }
        }
        let quoted: Vec<String> = rows.columns.iter().map(|c| format!("\"{c}\"")).collect();
        let placeholders: Vec<String> = (1..=rows.columns.len()).map(|i| format!("${i}")).collect();
        let statement = tx
            .prepare(&format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                quoted.join(", "),
                placeholders.join(", ")
            ))
            .await
            .map_err(store_error)?;
        let mut inserted = 0;
        for row in &rows.rows {
            let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(row.len());
            for (cell, column) in row.iter().zip(&rows.columns) {
                let (data_type, _) = &types[column];
                values.push(convert(cell, data_type).map_err(|why| bad(table, column, why))?);
            }
            let params: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                .collect();
            inserted += tx.execute(&statement, &params).await.map_err(store_error)?;
        }
        for (column, (_, serial)) in &types {
            if *serial && rows.columns.contains(column) {
                tx.execute(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', '{column}'),
                                       GREATEST((SELECT max(\"{column}\") FROM {table}), 1))"
                    ),
                    &[],
                )
                .await
                .map_err(store_error)?;
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok(inserted)
    }
}

/// A cell as a value of a PostgreSQL column type (`information_schema`'s `data_type`).
fn convert(cell: &Cell, data_type: &str) -> Result<Box<dyn ToSql + Sync + Send>, String> {
    let wrong = || format!("a {cell:?} does not fit a `{data_type}` column");
    Ok(match (data_type, cell) {
        ("bigint", Cell::Null) => Box::new(None::<i64>),
        ("bigint", Cell::Int(v)) => Box::new(*v),
        ("integer", Cell::Null) => Box::new(None::<i32>),
        ("integer", Cell::Int(v)) => Box::new(i32::try_from(*v).map_err(|_| wrong())?),
        ("boolean", Cell::Null) => Box::new(None::<bool>),
        ("boolean", Cell::Int(v)) => Box::new(*v != 0),
        ("double precision", Cell::Null) => Box::new(None::<f64>),
        ("double precision", Cell::Real(v)) => Box::new(*v),
        ("double precision", Cell::Int(v)) => Box::new(*v as f64),
        ("text", Cell::Null) => Box::new(None::<String>),
        ("text", Cell::Text(v)) => Box::new(v.clone()),
        ("text", Cell::Int(v)) => Box::new(v.to_string()),
        ("bytea", Cell::Null) => Box::new(None::<Vec<u8>>),
        ("bytea", Cell::Blob(v)) => Box::new(v.clone()),
        ("bytea", Cell::Text(v)) => Box::new(v.clone().into_bytes()),
        _ => return Err(wrong()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_convert_by_column_type_and_mismatches_say_so() {
        use tokio_postgres::types::Type;
        assert!(convert(&Cell::Int(1), "boolean").is_ok());
        assert!(convert(&Cell::Int(i64::MAX), "integer").is_err());
        assert!(convert(&Cell::Blob(vec![1]), "text").is_err());
        let refused = convert(&Cell::Real(1.5), "bigint").err().unwrap();
        assert!(refused.contains("`bigint`"), "{refused}");
        // The values themselves: serialised as PostgreSQL would receive them.
        let mut buf = bytes::BytesMut::new();
        convert(&Cell::Int(7), "bigint")
            .unwrap()
            .to_sql_checked(&Type::INT8, &mut buf)
            .unwrap();
        assert_eq!(&buf[..], &7i64.to_be_bytes());
    }
}
