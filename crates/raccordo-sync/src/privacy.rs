//! Sync state as a holder of personal data: the snapshot of each synced pair (the field
//! values last written to both CRMs) and the pair's id mapping. A data subject's erasure
//! deletes the snapshots holding their id (an e-mail address, a customer id in a property)
//! and unlinks those pairs.
//!
//! The CRM records themselves are not deleted by the hub: HubSpot and Zoho each have their
//! own GDPR deletion, and a record deleted there stops being synced. A pair unlinked here
//! and changed again later is matched again like a new record.

use std::sync::Arc;

use async_trait::async_trait;
use raccordo_core::privacy::{Erased, PersonalData, Pseudonymiser, Subject};
use raccordo_core::{Clock, IdMappings, KeyValueStore, RecordRef, StoreError};
use serde_json::{Value, json};

use crate::worker::SNAPSHOT_PREFIX;

pub struct SnapshotsHolder {
    pub kv: Arc<dyn KeyValueStore>,
    pub mappings: Arc<dyn IdMappings>,
    pub clock: Arc<dyn Clock>,
}

impl SnapshotsHolder {
    /// Snapshot keys holding the id (snapshots keep e-mail addresses lower-cased).
    async fn keys(&self, subject: &Subject) -> Result<Vec<String>, StoreError> {
        let now = self.clock.now_ms();
        let lower = serde_json::to_string(&subject.id().to_lowercase()).unwrap_or_default();
        let mut keys = self
            .kv
            .keys_holding(SNAPSHOT_PREFIX, subject.json_literal().as_bytes(), now)
            .await?;
        if lower != subject.json_literal() {
            keys.extend(
                self.kv
                    .keys_holding(SNAPSHOT_PREFIX, lower.as_bytes(), now)
                    .await?,
            );
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

/// `sync:snapshot:{kind}:{hubspot id}` → the HubSpot record it is about.
fn hubspot_record(key: &str) -> Option<RecordRef> {
    let (kind, id) = key.strip_prefix(SNAPSHOT_PREFIX)?.split_once(':')?;
    Some(RecordRef::new("hubspot", kind, id))
}

#[async_trait]
impl PersonalData for SnapshotsHolder {
    fn name(&self) -> &'static str {
        "sync_snapshots"
    }

    async fn export(&self, subject: &Subject) -> Result<Option<Value>, StoreError> {
        let mut pairs = Vec::new();
        for key in self.keys(subject).await? {
            let Some(record) = hubspot_record(&key) else {
                continue;
            };
            if let Some(entry) = self.kv.get(&key, self.clock.now_ms()).await?
                && let Ok(snapshot) = serde_json::from_slice::<Value>(&entry.value)
            {
                pairs.push(json!({
                    "object": record.object,
                    "hubspot_id": record.id,
                    "zoho_id": snapshot.get("zoho_id"),
                    "values": snapshot.get("values"),
                }));
            }
        }
        Ok((!pairs.is_empty()).then_some(Value::Array(pairs)))
    }

    async fn erase(&self, subject: &Subject, _: &Pseudonymiser) -> Result<Erased, StoreError> {
        let keys = self.keys(subject).await?;
        let mut unlinked = 0;
        for record in keys.iter().filter_map(|k| hubspot_record(k)) {
            unlinked += self.mappings.unlink(&record).await?;
        }
        let erased = self.kv.erase_keys(&keys, self.clock.now_ms()).await?;
        Ok(vec![("sync_snapshots", erased), ("id_mappings", unlinked)])
    }
}
