//! Campaign spend per UTC day (`CampaignCosts`).

use async_trait::async_trait;
use raccordo_core::{CampaignCosts, StoreError};
use rusqlite::params;

use crate::db::SideDb;

pub struct SqliteCampaignCosts {
    db: SideDb,
}

impl SqliteCampaignCosts {
    pub(crate) fn new(db: SideDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl CampaignCosts for SqliteCampaignCosts {
    async fn put_costs(&self, campaign: &str, days: &[(i64, i64)]) -> Result<(), StoreError> {
        let (campaign, days) = (campaign.to_string(), days.to_vec());
        self.db
            .tx(move |tx| {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO campaign_costs (campaign, day, cents) VALUES (?1, ?2, ?3)
                     ON CONFLICT (campaign, day) DO UPDATE SET cents = excluded.cents",
                )?;
                for (day, cents) in days {
                    upsert.execute(params![campaign, day, cents])?;
                }
                Ok(())
            })
            .await
    }

    async fn all_costs(&self) -> Result<Vec<(String, i64, i64)>, StoreError> {
        self.db
            .call(|conn| {
                let mut stmt = conn.prepare(
                    "SELECT campaign, day, cents FROM campaign_costs ORDER BY campaign, day",
                )?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .await
    }
}
