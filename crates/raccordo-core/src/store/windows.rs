//! Saved window state: results of windows that fired, and checkpoints of a window operator
//! with the log positions they cover. Both are opaque JSON to the store; the runtime's live
//! pipeline owns their meaning. `scope` names the operator (and, in a cluster, its
//! partition), so several can share a store.

use async_trait::async_trait;

use super::{LogPositions, StoreError};

/// The last emitted value of one fired window for one dimension value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowResult {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub dimension: String,
    pub value: String,
    /// The statistics as JSON.
    pub stats: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCheckpoint {
    /// Everything up to here is in `state` (and in the results saved before it).
    pub positions: LogPositions,
    pub state: String,
}

#[async_trait]
pub trait WindowStore: Send + Sync + 'static {
    /// Inserts or replaces results (a late update replaces the earlier value).
    async fn put_results(&self, scope: &str, rows: Vec<WindowResult>) -> Result<(), StoreError>;

    /// Saves the checkpoint, replacing the last, and forgets results of windows that ended
    /// before `forget_before_ms`, in one step.
    async fn put_checkpoint(
        &self,
        scope: &str,
        checkpoint: WindowCheckpoint,
        forget_before_ms: i64,
    ) -> Result<(), StoreError>;

    async fn checkpoint(&self, scope: &str) -> Result<Option<WindowCheckpoint>, StoreError>;

    async fn results(&self, scope: &str) -> Result<Vec<WindowResult>, StoreError>;

    /// Results of windows overlapping `[from_ms, to_ms)` (ending after `from_ms`, starting
    /// before `to_ms`), by window start: the history behind a time-range picker.
    async fn results_between(
        &self,
        scope: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<WindowResult>, StoreError>;

    /// Drops the scope's results and checkpoint (its window settings changed).
    async fn clear(&self, scope: &str) -> Result<(), StoreError>;
}
