//! Alert history: every alert that fired and what became of each of its deliveries. Durable,
//! so that the history survives a restart.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Retrying,
    /// Given up: the delivery is in the dead-letter queue.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryRecord {
    /// Index of the channel in `[alerts] channels`.
    pub channel: usize,
    /// The channel's kind (`slack`, `webhook`, `email`).
    pub kind: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertRecord {
    /// `alt_<ULID>`.
    pub id: String,
    /// The rule that fired (`duplicate_burst`, `failure_rate`, …).
    pub kind: String,
    pub source: String,
    pub message: String,
    pub at_ms: i64,
    pub deliveries: Vec<DeliveryRecord>,
}

#[async_trait]
pub trait AlertHistory: Send + Sync + 'static {
    async fn record_alert(&self, alert: &AlertRecord) -> Result<(), StoreError>;

    /// Updates one delivery of an alert; `false` when there is no such alert or channel.
    async fn update_delivery(
        &self,
        alert_id: &str,
        channel: usize,
        status: DeliveryStatus,
        attempts: u32,
        last_error: Option<String>,
    ) -> Result<bool, StoreError>;

    /// The newest `limit` alerts, newest first.
    async fn recent_alerts(&self, limit: usize) -> Result<Vec<AlertRecord>, StoreError>;
}
