//! What holds personal data, behind one trait: each store or component that keeps a data
//! subject's data implements [`PersonalData`], and the hub registers every one of them in
//! one place, so that an erasure or an export reaches all of them.
//!
//! The holders of the generic stores live here; the event log's (which knows where each
//! source puts the customer), the sync snapshots', the AI cache's and the live windows'
//! late table's live with their components.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Pseudonymiser, Subject};
use crate::store::queue::WorkQueue;
use crate::store::{RejectedRequests, RunStore, StoreError};

/// What an erasure changed in one holder, by kind (`events`, `dedup_claims`, …).
pub type Erased = Vec<(&'static str, u64)>;

#[async_trait]
pub trait PersonalData: Send + Sync + 'static {
    /// The name of what it holds, as the answers show it (`events`, `runs`, …).
    fn name(&self) -> &'static str;

    /// The subject's data as held here; `None` when it holds nothing to export (counts, or
    /// references to what another holder exports).
    async fn export(&self, subject: &Subject) -> Result<Option<serde_json::Value>, StoreError>;

    /// Removes, or replaces by pseudonyms, the subject's data; what changed. Doing it again
    /// changes nothing.
    async fn erase(
        &self,
        subject: &Subject,
        pseudonymiser: &Pseudonymiser,
    ) -> Result<Erased, StoreError>;
}

fn json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::Backend(e.to_string()))
}

/// The request inspector: refused requests whose body holds the id (as text: a body may
/// be a form or broken JSON) are deleted whole.
pub struct RejectedRequestsHolder(pub Arc<dyn RejectedRequests>);

#[async_trait]
impl PersonalData for RejectedRequestsHolder {
    fn name(&self) -> &'static str {
        "rejected_requests"
    }

    async fn export(&self, subject: &Subject) -> Result<Option<serde_json::Value>, StoreError> {
        let found = self.0.rejected_holding(subject.id()).await?;
        Ok((!found.is_empty()).then(|| json(&found)).transpose()?)
    }

    async fn erase(&self, subject: &Subject, _: &Pseudonymiser) -> Result<Erased, StoreError> {
        let ids: Vec<String> = self
            .0
            .rejected_holding(subject.id())
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        Ok(vec![(
            "rejected_requests",
            self.0.delete_rejected(&ids).await?,
        )])
    }
}

/// Run history: runs whose trigger or any step holds the id are deleted with their steps.
pub struct RunsHolder(pub Arc<dyn RunStore>);

#[async_trait]
impl PersonalData for RunsHolder {
    fn name(&self) -> &'static str {
        "runs"
    }

    async fn export(&self, subject: &Subject) -> Result<Option<serde_json::Value>, StoreError> {
        let mut runs = Vec::new();
        for id in self.0.runs_holding(subject.json_literal()).await? {
            runs.extend(self.0.run(&id).await?);
        }
        Ok((!runs.is_empty()).then(|| json(&runs)).transpose()?)
    }

    async fn erase(&self, subject: &Subject, _: &Pseudonymiser) -> Result<Erased, StoreError> {
        let ids = self.0.runs_holding(subject.json_literal()).await?;
        Ok(vec![("runs", self.0.delete_runs(&ids).await?)])
    }
}

/// The work queue: pending work and dead letters about the subject are dropped (a sync or
/// flow item must not carry erased data to a CRM later).
pub struct WorkQueueHolder(pub Arc<dyn WorkQueue>);

#[async_trait]
impl PersonalData for WorkQueueHolder {
    fn name(&self) -> &'static str {
        "work_queue"
    }

    async fn export(&self, _: &Subject) -> Result<Option<serde_json::Value>, StoreError> {
        // Pending work is transient and what it carries is exported by the stores it comes
        // from (events, runs, sync snapshots).
        Ok(None)
    }

    async fn erase(&self, subject: &Subject, _: &Pseudonymiser) -> Result<Erased, StoreError> {
        let (items, dead) = self.0.erase_holding(subject.json_literal()).await?;
        Ok(vec![("work_items", items), ("dead_letters", dead)])
    }
}
