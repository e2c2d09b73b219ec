//! Campaign spend per UTC day, for cost per acquisition.

use async_trait::async_trait;

use super::StoreError;

#[async_trait]
pub trait CampaignCosts: Send + Sync + 'static {
    /// Sets `campaign`'s spend for the given days (day number since 1970-01-01, cents),
    /// replacing earlier figures for those days, atomically.
    async fn put_costs(&self, campaign: &str, days: &[(i64, i64)]) -> Result<(), StoreError>;

    /// Every figure: (campaign, day, cents), by campaign and day.
    async fn all_costs(&self) -> Result<Vec<(String, i64, i64)>, StoreError>;
}
