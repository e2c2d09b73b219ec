//! Campaign spend per UTC day, for CPA.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use raccordo_core::StoreError;

pub struct SqliteCampaignCosts {
    conn: Arc<Mutex<Connection>>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteCampaignCosts {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = crate::open_side_connection(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS campaign_costs (
                campaign TEXT NOT NULL, day INTEGER NOT NULL, cents INTEGER NOT NULL,
                PRIMARY KEY (campaign, day)) WITHOUT ROWID;",
        )
        .map_err(backend)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Sets the spend of `campaign` for the given days (day number since 1970-01-01, cents),
    /// replacing earlier figures for those days, atomically.
    pub async fn put(&self, campaign: String, days: Vec<(i64, i64)>) -> Result<(), StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction()?;
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO campaign_costs (campaign, day, cents) VALUES (?1, ?2, ?3)
                     ON CONFLICT (campaign, day) DO UPDATE SET cents = excluded.cents",
                )?;
                for (day, cents) in days {
                    upsert.execute(params![campaign, day, cents])?;
                }
            }
            tx.commit()
        })
        .await
        .map_err(backend)?
        .map_err(backend)
    }

    /// Every figure: (campaign, day, cents).
    pub async fn load(&self) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt = conn.prepare(
                "SELECT campaign, day, cents FROM campaign_costs ORDER BY campaign, day",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(backend)?
        .map_err(backend)
    }
}
