//! The work items of the sync, and how a change notification becomes one.
//!
//! Every change (a webhook, a notification, a record the poller found) becomes a
//! [`SyncRecord`] item: "bring this record and its counterpart in line". Items coalesce
//! while pending, because the worker reads both records' current state when it runs, so
//! ten webhooks about one record cost one sync.
//!
//! Items of one *pair* share a group key, so the two sides of a pair are never synced at
//! the same time (and a change and the echo of raccordo's own write are handled in order):
//! the key is the HubSpot id when one is known (`contact:hubspot:123`), else the Zoho id.

use raccordo_core::crm::{ObjectKind, System};
use raccordo_core::{Enqueued, IdMappings, Job, NewWorkItem, RecordRef, StoreError, WorkQueue};
use serde::{Deserialize, Serialize};

pub const QUEUE: &str = "sync";

/// Sync one record with its counterpart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    pub kind: ObjectKind,
    /// Where the change happened.
    pub origin: System,
    pub id: String,
    /// The pair's group key, fixed when the item is enqueued.
    pub group: String,
}

impl Job for SyncRecord {
    const QUEUE: &'static str = QUEUE;
    const OPERATION: &'static str = "sync_record";
    fn group_key(&self) -> String {
        self.group.clone()
    }
}

/// A record's reference in the id mappings.
pub fn record_ref(system: System, kind: ObjectKind, id: &str) -> RecordRef {
    RecordRef::new(system.as_str(), kind.as_str(), id)
}

/// The group key of a pair: by its HubSpot id when there is one.
pub fn pair_group(kind: ObjectKind, system: System, id: &str) -> String {
    format!("{}:{}:{id}", kind.as_str(), system.as_str())
}

/// Enqueues the sync of one changed record (coalescing with a pending one).
pub async fn enqueue_change(
    queue: &dyn WorkQueue,
    mappings: &dyn IdMappings,
    kind: ObjectKind,
    origin: System,
    id: &str,
    now_ms: i64,
) -> Result<Enqueued, StoreError> {
    let group = match origin {
        System::HubSpot => pair_group(kind, System::HubSpot, id),
        System::Zoho => match mappings
            .find(
                &record_ref(System::Zoho, kind, id),
                System::HubSpot.as_str(),
            )
            .await?
        {
            Some(hubspot_id) => pair_group(kind, System::HubSpot, &hubspot_id),
            None => pair_group(kind, System::Zoho, id),
        },
    };
    let job = SyncRecord {
        kind,
        origin,
        id: id.to_string(),
        group,
    };
    let item = NewWorkItem::job(&job, true).map_err(|e| StoreError::Backend(e.to_string()))?;
    queue.enqueue(item, now_ms).await
}

/// A HubSpot merge: the merged records are gone and `primary` survives. Their id mappings
/// move to the survivor (when it has none of its own), so the Zoho record they were synced
/// with is updated instead of a duplicate being created; then the survivor is synced.
pub async fn apply_hubspot_merge(
    queue: &dyn WorkQueue,
    mappings: &dyn IdMappings,
    kind: ObjectKind,
    primary: &str,
    merged: &[String],
    now_ms: i64,
) -> Result<(), StoreError> {
    let survivor = record_ref(System::HubSpot, kind, primary);
    let mut has_counterpart = mappings
        .find(&survivor, System::Zoho.as_str())
        .await?
        .is_some();
    for gone in merged {
        let gone_ref = record_ref(System::HubSpot, kind, gone);
        if let Some(zoho_id) = mappings.find(&gone_ref, System::Zoho.as_str()).await? {
            mappings.unlink(&gone_ref).await?;
            if !has_counterpart {
                mappings
                    .link(&survivor, &record_ref(System::Zoho, kind, &zoho_id), now_ms)
                    .await?;
                has_counterpart = true;
            }
        }
    }
    enqueue_change(queue, mappings, kind, System::HubSpot, primary, now_ms).await?;
    Ok(())
}
