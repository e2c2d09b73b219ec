//! Where each log consumer got to, so that it resumes there after a restart.

use async_trait::async_trait;

use super::{LogPositions, StoreError};

#[async_trait]
pub trait ConsumerOffsets: Send + Sync + 'static {
    /// The positions `consumer` last committed (empty: start of the log).
    async fn load(&self, consumer: &str) -> Result<LogPositions, StoreError>;

    /// Saves `positions`; a partition never moves backwards (a late, older commit from a
    /// slow task does not undo a newer one).
    async fn commit(&self, consumer: &str, positions: &LogPositions) -> Result<(), StoreError>;
}
