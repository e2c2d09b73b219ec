//! Backfill: bring every existing record into the sync, for a first start or after a long
//! outage. It pages through all contacts and companies of both CRMs and queues a sync item
//! for each (the worker then does what it does for any change: create, update, or nothing).
//!
//! The state — which lists are done, and each list's page cursor — is stored after every
//! page, so a backfill interrupted by a restart resumes at the page it was on instead of
//! starting over. Queueing is idempotent (pending items of a record fold into one), so a
//! page queued twice costs nothing.

use std::sync::Arc;

use raccordo_core::crm::{ObjectKind, System};
use raccordo_core::{Clock, IdMappings, KeyValueStore, StoreError, WorkQueue};
use raccordo_crm::{CrmError, HubSpotClient, ZohoClient};
use serde::{Deserialize, Serialize};

use crate::config::SyncConfig;
use crate::jobs::enqueue_change;

const KEY: &str = "sync:backfill";

/// One list to page through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackfillList {
    #[schema(value_type = String)]
    pub system: System,
    #[schema(value_type = String)]
    pub kind: ObjectKind,
    /// The next page's cursor (none before the first page).
    pub cursor: Option<String>,
    pub done: bool,
    /// Records queued from this list so far.
    pub queued: u64,
}

/// A backfill's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackfillState {
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub lists: Vec<BackfillList>,
    /// The last error, if a page failed (it is retried).
    pub last_error: Option<String>,
}

impl BackfillState {
    pub fn new(now_ms: i64) -> Self {
        let lists = ObjectKind::ALL
            .into_iter()
            .flat_map(|kind| {
                [System::HubSpot, System::Zoho].map(|system| BackfillList {
                    system,
                    kind,
                    cursor: None,
                    done: false,
                    queued: 0,
                })
            })
            .collect();
        Self {
            started_at_ms: now_ms,
            finished_at_ms: None,
            lists,
            last_error: None,
        }
    }

    pub fn queued(&self) -> u64 {
        self.lists.iter().map(|l| l.queued).sum()
    }
}

pub async fn load(
    kv: &dyn KeyValueStore,
    now_ms: i64,
) -> Result<Option<BackfillState>, StoreError> {
    Ok(kv
        .get(KEY, now_ms)
        .await?
        .and_then(|v| serde_json::from_slice(&v.value).ok()))
}

async fn save(
    kv: &dyn KeyValueStore,
    state: &BackfillState,
    now_ms: i64,
) -> Result<(), StoreError> {
    kv.put(
        KEY,
        serde_json::to_vec(state).unwrap_or_default(),
        None,
        now_ms,
    )
    .await
    .map(|_| ())
}

/// Starts a backfill unless one is running; the state it runs with.
pub async fn start(
    kv: &dyn KeyValueStore,
    now_ms: i64,
) -> Result<(BackfillState, bool), StoreError> {
    if let Some(state) = load(kv, now_ms).await?
        && state.finished_at_ms.is_none()
    {
        return Ok((state, false));
    }
    let state = BackfillState::new(now_ms);
    save(kv, &state, now_ms).await?;
    Ok((state, true))
}

/// What a backfill needs.
pub struct Backfill {
    pub hubspot: Arc<HubSpotClient>,
    pub zoho: Arc<ZohoClient>,
    pub queue: Arc<dyn WorkQueue>,
    pub mappings: Arc<dyn IdMappings>,
    pub kv: Arc<dyn KeyValueStore>,
    pub config: Arc<SyncConfig>,
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Crm(#[from] CrmError),
    #[error("state store: {0}")]
    Store(#[from] StoreError),
}

impl Backfill {
    /// Runs the stored backfill, if one is unfinished, one page at a time until every list
    /// is done; `wake` is told after each page (the worker has new items). Returns whether
    /// there was one.
    pub async fn run_pending(&self, wake: &tokio::sync::Notify) -> Result<bool, BackfillError> {
        let Some(mut state) = load(self.kv.as_ref(), self.clock.now_ms()).await? else {
            return Ok(false);
        };
        if state.finished_at_ms.is_some() {
            return Ok(false);
        }
        for i in 0..state.lists.len() {
            while !state.lists[i].done {
                let list = &state.lists[i];
                let object = match list.kind {
                    ObjectKind::Contact => &self.config.contacts,
                    ObjectKind::Company => &self.config.companies,
                };
                let page = match list.system {
                    System::HubSpot => {
                        let properties: Vec<String> =
                            object.fields.iter().map(|f| f.hubspot.clone()).collect();
                        self.hubspot
                            .list_page(list.kind, &properties, list.cursor.as_deref())
                            .await
                    }
                    System::Zoho => {
                        let fields: Vec<String> =
                            object.fields.iter().map(|f| f.zoho.clone()).collect();
                        self.zoho
                            .list_page(list.kind, &fields, list.cursor.as_deref())
                            .await
                    }
                };
                let (records, next) = match page {
                    Ok(page) => page,
                    Err(e) => {
                        state.last_error = Some(e.to_string());
                        save(self.kv.as_ref(), &state, self.clock.now_ms()).await?;
                        return Err(e.into());
                    }
                };
                let now = self.clock.now_ms();
                for r in &records {
                    enqueue_change(
                        self.queue.as_ref(),
                        self.mappings.as_ref(),
                        list.kind,
                        list.system,
                        &r.id,
                        now,
                    )
                    .await?;
                }
                let list = &mut state.lists[i];
                list.queued += records.len() as u64;
                list.done = next.is_none();
                list.cursor = next;
                state.last_error = None;
                save(self.kv.as_ref(), &state, now).await?;
                wake.notify_one();
            }
        }
        state.finished_at_ms = Some(self.clock.now_ms());
        save(self.kv.as_ref(), &state, self.clock.now_ms()).await?;
        tracing::info!(queued = state.queued(), "backfill finished queueing");
        Ok(true)
    }
}
