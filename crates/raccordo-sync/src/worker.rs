//! The sync worker: takes up to 100 [`SyncRecord`] items at a time, reads every record
//! involved with batch calls, decides each with [`plan`], performs the writes with batch
//! calls, and records each item's outcome.
//!
//! Exactly-once effect rests on three things: creates are upserts keyed by the match field
//! (a retry after a crash updates the record it created instead of making another), the id
//! mapping and snapshot are written only after the CRM acknowledged the write (a crash in
//! between leads to a re-sync that finds both sides equal), and items of one pair never run
//! at the same time (their group key).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use raccordo_core::crm::{CrmRecord, ObjectKind, System};
use raccordo_core::{Clock, Completion, IdMappings, KeyValueStore, WorkItem};
use raccordo_crm::{CrmError, HubSpotClient, ZohoClient};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{ObjectSync, SyncConfig};
use crate::fields::FieldType;
use crate::jobs::{SyncRecord, record_ref};
use crate::merge::Snapshot;
use crate::plan::{Decision, FieldIssue, Plan, Quiet, Situation, Write, canonical, plan};

/// Items taken per round: one batch call's worth.
pub const BATCH: usize = 100;

/// What the worker needs.
pub struct SyncWorker {
    pub hubspot: Arc<HubSpotClient>,
    pub zoho: Arc<ZohoClient>,
    pub mappings: Arc<dyn IdMappings>,
    pub kv: Arc<dyn KeyValueStore>,
    pub config: Arc<SyncConfig>,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<crate::health::SyncStats>,
}

/// The pair's state as last synced, with the ids it was synced between.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    zoho_id: String,
    values: BTreeMap<String, crate::fields::Canonical>,
}

/// Where pair snapshots live in the key-value store.
pub const SNAPSHOT_PREFIX: &str = "sync:snapshot:";

fn snapshot_key(kind: ObjectKind, hubspot_id: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{}:{hubspot_id}", kind.as_str())
}

/// One item on its way through a round.
struct Task {
    index: usize,
    /// When the (oldest folded) change arrived.
    enqueued_at_ms: i64,
    job: SyncRecord,
    record: Option<CrmRecord>,
    counterpart: Option<CrmRecord>,
    snapshot: Option<Snapshot>,
    decision: Option<Decision>,
    outcome: Option<Completion>,
    /// Ids once known (after a create, the new one).
    hubspot_id: Option<String>,
    zoho_id: Option<String>,
    /// The company to associate the HubSpot contact with, after its write.
    company_for_hubspot: Option<String>,
    /// The company could not be written (its counterpart is not synced yet): the snapshot
    /// keeps the old value, so a later sync tries again.
    company_unsynced: bool,
}

impl Task {
    /// The records read for this task, each with its CRM.
    fn records(&self) -> Vec<(System, &CrmRecord)> {
        let origin = self.job.origin;
        [
            self.record.as_ref().map(|r| (origin, r)),
            self.counterpart.as_ref().map(|r| (origin.other(), r)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

fn retryable(e: &CrmError) -> Completion {
    match e {
        CrmError::Retryable { retry_after_ms, .. } => Completion::Retryable {
            error: e.to_string(),
            retry_after_ms: *retry_after_ms,
        },
        // Refused credentials wait for a person: retried on the slow schedule, never
        // dead-lettered for that alone.
        CrmError::Unauthorized { .. } => Completion::Retryable {
            error: e.to_string(),
            retry_after_ms: Some(300_000),
        },
        CrmError::Permanent { .. } => Completion::Permanent { error: describe(e) },
    }
}

fn describe(e: &CrmError) -> String {
    match e.field() {
        Some(field) => format!("field `{field}`: {e}"),
        None => e.to_string(),
    }
}

fn describe_issues(issues: &[FieldIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("field `{}` ({}): {}", i.field, i.system.as_str(), i.problem))
        .collect::<Vec<_>>()
        .join("; ")
}

fn store_failure(e: &raccordo_core::StoreError) -> Completion {
    Completion::Retryable {
        error: format!("state store: {e}"),
        retry_after_ms: e.retry_after_ms().map(|ms| ms as i64),
    }
}

/// A contact's company, merged like a field: HubSpot's associated company id on one side,
/// the HubSpot id of the company Zoho's `Account_Name` points at on the other.
const COMPANY: &str = "__company";

fn with_companies(kind: ObjectKind, config: &SyncConfig) -> bool {
    kind == ObjectKind::Contact && config.contact_companies
}

impl SyncWorker {
    /// The object's settings, with the company association as a field for contacts.
    fn object(&self, kind: ObjectKind) -> ObjectSync {
        let mut object = match kind {
            ObjectKind::Contact => self.config.contacts.clone(),
            ObjectKind::Company => self.config.companies.clone(),
        };
        if with_companies(kind, &self.config) {
            object.fields.push(crate::fields::FieldMapping::new(
                COMPANY,
                COMPANY,
                FieldType::Text,
            ));
        }
        object
    }

    fn hubspot_properties(&self, kind: ObjectKind) -> Vec<String> {
        self.object(kind)
            .fields
            .iter()
            .filter(|f| f.hubspot != COMPANY)
            .map(|f| f.hubspot.clone())
            .collect()
    }

    fn zoho_fields(&self, kind: ObjectKind) -> Vec<String> {
        let mut fields: Vec<String> = self
            .object(kind)
            .fields
            .iter()
            .filter(|f| f.zoho != COMPANY)
            .map(|f| f.zoho.clone())
            .collect();
        if with_companies(kind, &self.config) && !fields.iter().any(|f| f == "Account_Name") {
            fields.push("Account_Name".into());
        }
        fields
    }

    /// Puts each contact's company, as a HubSpot company id, in the records' values.
    async fn attach_companies(&self, tasks: &mut [&mut Task]) {
        let mut hubspot_ids = Vec::new();
        let mut zoho_accounts = Vec::new();
        for t in tasks.iter().filter(|t| t.outcome.is_none()) {
            for (system, r) in t.records() {
                if r.values.contains_key(COMPANY) {
                    continue;
                }
                match system {
                    System::HubSpot => hubspot_ids.push(r.id.clone()),
                    System::Zoho => {
                        if let Some(a) = r.values.get("Account_Name").and_then(|v| v["id"].as_str())
                        {
                            zoho_accounts.push(a.to_string());
                        }
                    }
                }
            }
        }
        let companies = if hubspot_ids.is_empty() {
            Ok(HashMap::new())
        } else {
            self.hubspot.companies_of(&hubspot_ids).await
        };
        let companies = match companies {
            Ok(c) => c,
            Err(e) => {
                for t in tasks.iter_mut().filter(|t| t.outcome.is_none()) {
                    t.outcome = Some(retryable(&e));
                }
                return;
            }
        };
        let mut accounts: HashMap<String, Option<String>> = HashMap::new();
        for a in zoho_accounts {
            if accounts.contains_key(&a) {
                continue;
            }
            let found = self
                .mappings
                .find(
                    &record_ref(System::Zoho, ObjectKind::Company, &a),
                    System::HubSpot.as_str(),
                )
                .await
                .ok()
                .flatten();
            accounts.insert(a, found);
        }
        for t in tasks.iter_mut().filter(|t| t.outcome.is_none()) {
            let origin = t.job.origin;
            for (system, r) in [
                (origin, t.record.as_mut()),
                (origin.other(), t.counterpart.as_mut()),
            ] {
                let Some(r) = r else { continue };
                if r.values.contains_key(COMPANY) {
                    continue;
                }
                let company = match system {
                    System::HubSpot => companies.get(&r.id).cloned(),
                    // A Zoho contact: the HubSpot id of its account, if that one is synced.
                    System::Zoho => r
                        .values
                        .get("Account_Name")
                        .and_then(|v| v["id"].as_str())
                        .and_then(|a| accounts.get(a).cloned().flatten()),
                };
                r.values
                    .insert(COMPANY.into(), company.map_or(Value::Null, Value::String));
            }
        }
    }

    /// One round over claimed items; a completion per item, in order.
    pub async fn process_batch(&self, items: &[WorkItem]) -> Vec<Completion> {
        let mut tasks = Vec::with_capacity(items.len());
        let mut out: Vec<Option<Completion>> = vec![None; items.len()];
        for (index, item) in items.iter().enumerate() {
            match item.payload_as::<SyncRecord>() {
                Ok(job) => tasks.push(Task {
                    index,
                    enqueued_at_ms: item.enqueued_at_ms,
                    hubspot_id: (job.origin == System::HubSpot).then(|| job.id.clone()),
                    zoho_id: (job.origin == System::Zoho).then(|| job.id.clone()),
                    job,
                    record: None,
                    counterpart: None,
                    snapshot: None,
                    decision: None,
                    outcome: None,
                    company_for_hubspot: None,
                    company_unsynced: false,
                }),
                Err(error) => out[index] = Some(Completion::Permanent { error }),
            }
        }
        for kind in ObjectKind::ALL {
            let mut of_kind: Vec<&mut Task> =
                tasks.iter_mut().filter(|t| t.job.kind == kind).collect();
            if !of_kind.is_empty() {
                self.round(kind, &mut of_kind).await;
            }
        }
        for t in tasks {
            out[t.index] = Some(t.outcome.unwrap_or(Completion::Done));
        }
        out.into_iter()
            .map(|c| c.unwrap_or(Completion::Done))
            .collect()
    }

    async fn round(&self, kind: ObjectKind, tasks: &mut [&mut Task]) {
        // 1. Mapped counterparts.
        for t in tasks.iter_mut() {
            let origin = t.job.origin;
            match self
                .mappings
                .find(
                    &record_ref(origin, kind, &t.job.id),
                    origin.other().as_str(),
                )
                .await
            {
                Ok(Some(other)) => match origin {
                    System::HubSpot => t.zoho_id = Some(other),
                    System::Zoho => t.hubspot_id = Some(other),
                },
                Ok(None) => {}
                Err(e) => t.outcome = Some(store_failure(&e)),
            }
        }
        // 2. Read the changed records, one batch call per side.
        let origin_ids = |system: System| -> Vec<String> {
            tasks
                .iter()
                .filter(|t| t.outcome.is_none() && t.job.origin == system)
                .map(|t| t.job.id.clone())
                .collect()
        };
        let (hubspot_origin, zoho_origin) = (origin_ids(System::HubSpot), origin_ids(System::Zoho));
        let hubspot_records = self.read_hubspot(kind, &hubspot_origin, None).await;
        let zoho_records = self.read_zoho(kind, &zoho_origin).await;
        for t in tasks.iter_mut().filter(|t| t.outcome.is_none()) {
            let read = match t.job.origin {
                System::HubSpot => &hubspot_records,
                System::Zoho => &zoho_records,
            };
            match read {
                Err(e) => t.outcome = Some(retryable(e)),
                Ok(records) => t.record = records.get(&t.job.id).cloned(),
            }
        }
        // A record equal to its pair's snapshot did not change since the last sync: typically
        // the notification of raccordo's own write. Nothing to do, and no need to read the
        // other side (a change there comes with its own notification, or the poller).
        self.skip_unchanged(kind, tasks).await;
        // Their counterparts, one batch call per side.
        let other_ids = |system: System| -> Vec<String> {
            tasks
                .iter()
                .filter(|t| t.outcome.is_none() && t.job.origin != system)
                .filter_map(|t| match system {
                    System::HubSpot => t.hubspot_id.clone(),
                    System::Zoho => t.zoho_id.clone(),
                })
                .collect()
        };
        let (hubspot_other, zoho_other) = (other_ids(System::HubSpot), other_ids(System::Zoho));
        let hubspot_records = self.read_hubspot(kind, &hubspot_other, None).await;
        let zoho_records = self.read_zoho(kind, &zoho_other).await;
        for t in tasks.iter_mut().filter(|t| t.outcome.is_none()) {
            let (read, id) = match t.job.origin {
                System::HubSpot => (&zoho_records, t.zoho_id.clone()),
                System::Zoho => (&hubspot_records, t.hubspot_id.clone()),
            };
            match read {
                Err(e) => t.outcome = Some(retryable(e)),
                Ok(records) => t.counterpart = id.and_then(|id| records.get(&id).cloned()),
            }
        }
        // A Zoho record gone while its HubSpot counterpart lives: merged in Zoho?
        self.find_merge_survivors(kind, tasks).await;
        // 3. Unmapped records: find the counterpart by the match field.
        self.match_unmapped(kind, tasks).await;
        // The contacts' companies, as a field.
        if with_companies(kind, &self.config) {
            self.attach_companies(tasks).await;
        }
        let object = self.object(kind);
        // 4. Snapshots, decisions; one task per pair.
        let mut seen_pairs = std::collections::HashSet::new();
        for t in tasks.iter_mut().filter(|t| t.outcome.is_none()) {
            // The origin's id is the record read (a merge survivor may stand in for the
            // record the change named).
            let origin_id = t
                .record
                .as_ref()
                .map_or_else(|| t.job.id.clone(), |r| r.id.clone());
            let (h, z) = match t.job.origin {
                System::HubSpot => (
                    Some(origin_id),
                    t.counterpart.as_ref().map(|c| c.id.clone()),
                ),
                System::Zoho => (
                    t.counterpart.as_ref().map(|c| c.id.clone()),
                    Some(origin_id),
                ),
            };
            t.hubspot_id = h.clone();
            t.zoho_id = z.clone();
            // The first item of a pair reads both sides' current state: it covers the rest.
            let sides = [
                h.as_ref().map(|h| format!("h:{h}")),
                z.as_ref().map(|z| format!("z:{z}")),
            ];
            let seen = sides.iter().flatten().any(|s| seen_pairs.contains(s));
            seen_pairs.extend(sides.into_iter().flatten());
            if seen {
                t.outcome = Some(Completion::Done);
                continue;
            }
            if let (Some(h), Some(z), None) = (&h, &z, &t.snapshot) {
                match self
                    .kv
                    .get(&snapshot_key(kind, h), self.clock.now_ms())
                    .await
                {
                    Ok(Some(stored)) => {
                        t.snapshot = serde_json::from_slice::<StoredSnapshot>(&stored.value)
                            .ok()
                            .filter(|s| &s.zoho_id == z)
                            .map(|s| Snapshot { values: s.values });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        t.outcome = Some(store_failure(&e));
                        continue;
                    }
                }
            }
            let decision = plan(
                &object,
                Situation {
                    origin: t.job.origin,
                    record: t.record.as_ref(),
                    counterpart: t.counterpart.as_ref(),
                    snapshot: t.snapshot.as_ref(),
                },
            );
            metrics::counter!("raccordo_sync_decisions_total", "kind" => kind.as_str(), "decision" => decision_name(&decision.plan)).increment(1);
            self.stats
                .decided(kind.as_str(), decision_name(&decision.plan));
            t.decision = Some(decision);
        }
        // 5. Writes, one batch call per side and kind of write.
        self.write(kind, tasks).await;
        // 6. Mappings and snapshots of what was written: one transaction each for the round
        // (a durable commit per record would cost more than the CRM calls).
        let mut links = Vec::new();
        let mut snapshots = Vec::new();
        let mut settled: Vec<(usize, bool)> = Vec::new();
        for (i, t) in tasks.iter_mut().enumerate() {
            if t.outcome.is_some() {
                continue;
            }
            let Some(decision) = t.decision.take() else {
                continue;
            };
            let wrote = matches!(
                decision.plan,
                Plan::Write {
                    hubspot: Some(_),
                    ..
                } | Plan::Write { zoho: Some(_), .. }
            );
            let (completion, pending) = self.settle(kind, t, decision).await;
            if let Some((link, snapshot)) = pending {
                links.push(link);
                snapshots.extend(snapshot);
            }
            t.outcome = Some(completion);
            settled.push((i, wrote));
        }
        let now = self.clock.now_ms();
        let stored = async {
            if !links.is_empty() {
                self.mappings.link_many(&links, now).await?;
            }
            if !snapshots.is_empty() {
                self.kv.put_many(&snapshots, None, now).await?;
            }
            Ok::<(), raccordo_core::StoreError>(())
        }
        .await;
        for (i, wrote) in settled {
            let t = &mut tasks[i];
            match &stored {
                // Written to the CRM, not yet recorded: the retry finds both sides equal.
                Err(e) => t.outcome = Some(store_failure(e)),
                Ok(()) if wrote && t.outcome == Some(Completion::Done) => {
                    self.stats.synced_after(now - t.enqueued_at_ms)
                }
                Ok(()) => {}
            }
        }
        // Failures name the record, for the dead-letter queue and the digest.
        for t in tasks.iter_mut() {
            if let (Some(Completion::Permanent { error }), Some(name)) = (
                t.outcome.as_mut(),
                t.record
                    .as_ref()
                    .and_then(|r| display_name(kind, t.job.origin, r)),
            ) {
                error.push_str(&format!(" (record: {name})"));
            }
        }
    }

    async fn read_hubspot(
        &self,
        kind: ObjectKind,
        ids: &[String],
        id_property: Option<&str>,
    ) -> Result<HashMap<String, CrmRecord>, CrmError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let records = self
            .hubspot
            .read(kind, ids, id_property, &self.hubspot_properties(kind), true)
            .await?;
        Ok(records.into_iter().map(|r| (r.id.clone(), r)).collect())
    }

    async fn read_zoho(
        &self,
        kind: ObjectKind,
        ids: &[String],
    ) -> Result<HashMap<String, CrmRecord>, CrmError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let records = self.zoho.read(kind, ids, &self.zoho_fields(kind)).await?;
        Ok(records.into_iter().map(|r| (r.id.clone(), r)).collect())
    }

    /// Finishes, as in sync, the items whose record equals its pair's snapshot.
    async fn skip_unchanged(&self, kind: ObjectKind, tasks: &mut [&mut Task]) {
        let now = self.clock.now_ms();
        for t in tasks.iter_mut() {
            if t.outcome.is_some() || t.record.is_none() {
                continue;
            }
            let (Some(h), Some(z)) = (&t.hubspot_id, &t.zoho_id) else {
                continue;
            };
            match self.kv.get(&snapshot_key(kind, h), now).await {
                Ok(stored) => {
                    t.snapshot = stored
                        .and_then(|s| serde_json::from_slice::<StoredSnapshot>(&s.value).ok())
                        .filter(|s| &s.zoho_id == z)
                        .map(|s| Snapshot { values: s.values });
                }
                Err(e) => t.outcome = Some(store_failure(&e)),
            }
        }
        if with_companies(kind, &self.config)
            && tasks
                .iter()
                .any(|t| t.outcome.is_none() && t.snapshot.is_some())
        {
            self.attach_companies(tasks).await;
        }
        let object = self.object(kind);
        for t in tasks.iter_mut() {
            let (Some(record), Some(snapshot), None) = (&t.record, &t.snapshot, &t.outcome) else {
                continue;
            };
            let mut issues = Vec::new();
            let values = canonical(&object, t.job.origin, record, &mut issues);
            let unchanged = issues.is_empty()
                && object.fields.iter().all(|f| {
                    snapshot
                        .values
                        .get(&f.hubspot)
                        .is_some_and(|s| values.get(&f.hubspot) == Some(s))
                });
            if unchanged {
                metrics::counter!("raccordo_sync_decisions_total", "kind" => kind.as_str(), "decision" => "in_sync").increment(1);
                self.stats.decided(kind.as_str(), "in_sync");
                t.outcome = Some(Completion::Done);
            }
        }
    }

    /// Zoho merges records by deleting all but one: a Zoho record that is gone while its
    /// HubSpot counterpart lives is looked up again by the match field, and a different
    /// live Zoho record that matches is taken as the survivor: the pair is relinked to it
    /// (instead of the deletion reaching HubSpot, or a duplicate being created later).
    async fn find_merge_survivors(&self, kind: ObjectKind, tasks: &mut [&mut Task]) {
        let object = self.object(kind);
        let Some(key) = object.match_field() else {
            return;
        };
        for t in tasks.iter_mut() {
            if t.outcome.is_some() || t.job.origin != System::Zoho || t.record.is_some() {
                continue;
            }
            let Some(hubspot) = &t.counterpart else {
                continue;
            };
            let mut issues = Vec::new();
            let values = canonical(&object, System::HubSpot, hubspot, &mut issues);
            let Some(Some(value)) = values.get(&key.hubspot).cloned() else {
                continue;
            };
            let wanted = key
                .to_zoho(Some(&value))
                .as_str()
                .map_or(value.clone(), str::to_string);
            match self
                .zoho
                .find_by(kind, &key.zoho, &wanted, &self.zoho_fields(kind))
                .await
            {
                Ok(Some(survivor)) if survivor.id != t.job.id => {
                    tracing::info!(gone = %t.job.id, survivor = %survivor.id, "Zoho record merged: relinking its pair");
                    t.record = Some(survivor);
                }
                Ok(_) => {}
                Err(e) => t.outcome = Some(retryable(&e)),
            }
        }
    }

    /// Finds counterparts of records that have none mapped, by the match field: a batch
    /// read by unique property in HubSpot (for e-mail), a search otherwise.
    async fn match_unmapped(&self, kind: ObjectKind, tasks: &mut [&mut Task]) {
        let object = self.object(kind);
        let Some(key) = object.match_field() else {
            return;
        };
        let mut by_email: Vec<(usize, String)> = Vec::new();
        // HubSpot records whose e-mail is looked up in Zoho in bulk (COQL).
        let mut in_zoho: Vec<(usize, String)> = Vec::new();
        for (i, t) in tasks.iter_mut().enumerate() {
            if t.outcome.is_some() || t.counterpart.is_some() {
                continue;
            }
            let Some(record) = &t.record else { continue };
            let mut issues = Vec::new();
            let values = canonical(&object, t.job.origin, record, &mut issues);
            let Some(Some(value)) = values.get(&key.hubspot).cloned() else {
                continue; // the plan reports the missing match field
            };
            match t.job.origin {
                System::HubSpot if key.kind == FieldType::Email => in_zoho.push((i, value)),
                System::HubSpot => {
                    let lookup = key.to_zoho(Some(&value));
                    let wanted = lookup.as_str().map_or(value.clone(), str::to_string);
                    match self
                        .zoho
                        .find_by(kind, &key.zoho, &wanted, &self.zoho_fields(kind))
                        .await
                    {
                        // The search matches text loosely: keep only a canonical match.
                        Ok(found) => {
                            t.counterpart = found.filter(|r| {
                                key.from_zoho(r.values.get(&key.zoho).unwrap_or(&Value::Null))
                                    .ok()
                                    .flatten()
                                    .as_deref()
                                    == Some(value.as_str())
                            })
                        }
                        Err(e) => t.outcome = Some(retryable(&e)),
                    }
                }
                System::Zoho if key.kind == FieldType::Email => by_email.push((i, value)),
                System::Zoho => match self
                    .hubspot
                    .find_by(kind, &key.hubspot, &value, &self.hubspot_properties(kind))
                    .await
                {
                    Ok(found) => t.counterpart = found,
                    Err(e) => t.outcome = Some(retryable(&e)),
                },
            }
        }
        if !in_zoho.is_empty() {
            let values: Vec<String> = in_zoho.iter().map(|(_, v)| v.clone()).collect();
            match self
                .zoho
                .find_many(kind, &key.zoho, &values, &self.zoho_fields(kind))
                .await
            {
                Ok(found) => {
                    for (i, value) in &in_zoho {
                        tasks[*i].counterpart = found.get(value).cloned();
                    }
                }
                Err(e) => {
                    for (i, _) in &in_zoho {
                        tasks[*i].outcome = Some(retryable(&e));
                    }
                }
            }
        }
        if by_email.is_empty() {
            return;
        }
        let emails: Vec<String> = by_email.iter().map(|(_, e)| e.clone()).collect();
        match self
            .hubspot
            .read(
                kind,
                &emails,
                Some(&key.hubspot),
                &self.hubspot_properties(kind),
                true,
            )
            .await
        {
            Ok(found) => {
                let by_value: HashMap<String, CrmRecord> = found
                    .into_iter()
                    .filter_map(|r| {
                        let v = r.values.get(&key.hubspot)?.as_str()?.to_lowercase();
                        Some((v, r))
                    })
                    .collect();
                for (i, email) in by_email {
                    tasks[i].counterpart = by_value.get(&email).cloned();
                }
            }
            Err(e) => {
                for (i, _) in by_email {
                    tasks[i].outcome = Some(retryable(&e));
                }
            }
        }
    }

    async fn write(&self, kind: ObjectKind, tasks: &mut [&mut Task]) {
        let object = self.object(kind);
        // Gather by call.
        let mut zoho_creates: Vec<(usize, BTreeMap<String, Value>)> = Vec::new();
        let mut zoho_updates: Vec<(usize, String, BTreeMap<String, Value>)> = Vec::new();
        let mut hubspot_creates: Vec<(usize, BTreeMap<String, Value>)> = Vec::new();
        let mut hubspot_updates: Vec<(usize, String, BTreeMap<String, Value>)> = Vec::new();
        let mut hubspot_archives: Vec<(usize, String)> = Vec::new();
        let mut hubspot_deletes: Vec<(usize, String)> = Vec::new();
        let mut zoho_deletes: Vec<(usize, String)> = Vec::new();
        for (i, t) in tasks.iter().enumerate() {
            if t.outcome.is_some() {
                continue;
            }
            let Some(Decision {
                plan: Plan::Write { hubspot, zoho, .. },
                ..
            }) = &t.decision
            else {
                continue;
            };
            match hubspot {
                Some(Write::Create { values, .. }) => hubspot_creates.push((i, values.clone())),
                Some(Write::Update { id, values }) => {
                    hubspot_updates.push((i, id.clone(), values.clone()))
                }
                // Only contacts can be deleted for good in HubSpot (GDPR deletion).
                Some(Write::Archive { id, permanent })
                    if *permanent && kind == ObjectKind::Contact =>
                {
                    hubspot_deletes.push((i, id.clone()))
                }
                Some(Write::Archive { id, .. }) => hubspot_archives.push((i, id.clone())),
                None => {}
            }
            match zoho {
                Some(Write::Create { values, .. }) => zoho_creates.push((i, values.clone())),
                Some(Write::Update { id, values }) => {
                    zoho_updates.push((i, id.clone(), values.clone()))
                }
                Some(Write::Archive { id, .. }) => zoho_deletes.push((i, id.clone())),
                None => {}
            }
        }
        let Some(key) = object.match_field() else {
            return;
        };
        // The company travels as its own call: Zoho's `Account_Name` lookup needs the
        // account's Zoho id, HubSpot an association after the contact is written.
        for (i, values) in zoho_creates
            .iter_mut()
            .map(|(i, v)| (*i, v))
            .chain(zoho_updates.iter_mut().map(|(i, _, v)| (*i, v)))
        {
            if let Some(Value::String(company)) = values.remove(COMPANY) {
                let account = self
                    .mappings
                    .find(
                        &record_ref(System::HubSpot, ObjectKind::Company, &company),
                        System::Zoho.as_str(),
                    )
                    .await
                    .ok()
                    .flatten();
                match account {
                    Some(a) => {
                        values.insert("Account_Name".into(), serde_json::json!({ "id": a }));
                    }
                    None => tasks[i].company_unsynced = true,
                }
            }
        }
        for (i, values) in hubspot_creates
            .iter_mut()
            .map(|(i, v)| (*i, v))
            .chain(hubspot_updates.iter_mut().map(|(i, _, v)| (*i, v)))
        {
            if let Some(Value::String(company)) = values.remove(COMPANY)
                && !company.is_empty()
            {
                tasks[i].company_for_hubspot = Some(company);
            }
        }
        zoho_updates.retain(|(_, _, v)| !v.is_empty());
        hubspot_updates.retain(|(_, _, v)| !v.is_empty());

        if !zoho_creates.is_empty() {
            let records: Vec<_> = zoho_creates.iter().map(|(_, v)| v.clone()).collect();
            match self
                .zoho
                .upsert(kind, &object.zoho_duplicate_fields(), &records)
                .await
            {
                Ok(outcomes) => {
                    for ((i, _), outcome) in zoho_creates.iter().zip(outcomes) {
                        match outcome {
                            Ok(w) => tasks[*i].zoho_id = Some(w.id),
                            Err(e) => tasks[*i].outcome = Some(retryable(&e)),
                        }
                    }
                }
                Err(e) => fail_all(tasks, zoho_creates.iter().map(|(i, _)| *i), &e),
            }
        }
        if !zoho_updates.is_empty() {
            let records: Vec<_> = zoho_updates
                .iter()
                .map(|(_, id, v)| (id.clone(), v.clone()))
                .collect();
            match self.zoho.update(kind, &records).await {
                Ok(outcomes) => {
                    for ((i, _, _), outcome) in zoho_updates.iter().zip(outcomes) {
                        if let Err(e) = outcome {
                            tasks[*i].outcome = Some(retryable(&e));
                        }
                    }
                }
                Err(e) => fail_all(tasks, zoho_updates.iter().map(|(i, _, _)| *i), &e),
            }
        }
        if !hubspot_creates.is_empty() {
            let inputs: Vec<_> = hubspot_creates.iter().map(|(_, v)| v.clone()).collect();
            match self.hubspot.upsert(kind, &key.hubspot, &inputs).await {
                Ok(outcomes) => {
                    for (i, values) in &hubspot_creates {
                        let k = values
                            .get(&key.hubspot)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_lowercase();
                        match outcomes.get(&k) {
                            Some(Ok(w)) => tasks[*i].hubspot_id = Some(w.id.clone()),
                            Some(Err(e)) => tasks[*i].outcome = Some(retryable(e)),
                            None => {
                                tasks[*i].outcome = Some(Completion::Retryable {
                                    error: "hubspot: no result for this record".into(),
                                    retry_after_ms: None,
                                })
                            }
                        }
                    }
                }
                Err(e) => fail_all(tasks, hubspot_creates.iter().map(|(i, _)| *i), &e),
            }
        }
        if !hubspot_updates.is_empty() {
            let inputs: Vec<_> = hubspot_updates
                .iter()
                .map(|(_, id, v)| (id.clone(), v.clone()))
                .collect();
            match self.hubspot.update(kind, &inputs).await {
                Ok(outcomes) => {
                    for (i, id, _) in &hubspot_updates {
                        if let Some(Err(e)) = outcomes.get(id) {
                            tasks[*i].outcome = Some(retryable(e));
                        }
                    }
                }
                Err(e) => fail_all(tasks, hubspot_updates.iter().map(|(i, _, _)| *i), &e),
            }
        }
        for t in tasks.iter_mut().filter(|t| t.outcome.is_none()) {
            let (Some(company), Some(contact)) =
                (t.company_for_hubspot.clone(), t.hubspot_id.clone())
            else {
                continue;
            };
            // A contact has one company, as in Zoho: the new association replaces the old.
            let previous = t
                .records()
                .into_iter()
                .find(|(system, _)| *system == System::HubSpot)
                .and_then(|(_, r)| r.values.get(COMPANY)?.as_str().map(str::to_string))
                .filter(|old| *old != company);
            let mut done = self.hubspot.associate_company(&contact, &company).await;
            if done.is_ok()
                && let Some(old) = previous
            {
                done = self.hubspot.dissociate_company(&contact, &old).await;
            }
            if let Err(e) = done {
                t.outcome = Some(retryable(&e));
            }
        }
        for (i, id) in &hubspot_deletes {
            if let Err(e) = self.hubspot.gdpr_delete(id).await {
                tasks[*i].outcome = Some(retryable(&e));
            }
        }
        if !hubspot_archives.is_empty() {
            let ids: Vec<_> = hubspot_archives.iter().map(|(_, id)| id.clone()).collect();
            if let Err(e) = self.hubspot.archive(kind, &ids).await {
                fail_all(tasks, hubspot_archives.iter().map(|(i, _)| *i), &e);
            }
        }
        if !zoho_deletes.is_empty() {
            let ids: Vec<_> = zoho_deletes.iter().map(|(_, id)| id.clone()).collect();
            if let Err(e) = self.zoho.delete(kind, &ids).await {
                fail_all(tasks, zoho_deletes.iter().map(|(i, _)| *i), &e);
            }
        }
    }

    /// After the writes: what to link and keep as the pair's snapshot (written for the whole
    /// round by the caller), and the item's outcome, with field issues reported.
    async fn settle(
        &self,
        kind: ObjectKind,
        t: &mut Task,
        decision: Decision,
    ) -> (Completion, Option<PendingRecord>) {
        let now = self.clock.now_ms();
        let mut pending = None;
        match decision.plan {
            Plan::Fail(issue) => {
                let error = describe_issues(&[issue]);
                return (Completion::Permanent { error }, None);
            }
            Plan::Quiet(Quiet::NotHot | Quiet::DeletionIgnored | Quiet::InSync) => {}
            Plan::Write {
                hubspot,
                zoho,
                snapshot,
            } => {
                let archived = matches!(hubspot, Some(Write::Archive { .. }))
                    || matches!(zoho, Some(Write::Archive { .. }));
                if archived {
                    let origin = record_ref(t.job.origin, kind, &t.job.id);
                    if let Err(e) = self.mappings.unlink(&origin).await {
                        return (store_failure(&e), None);
                    }
                    if let Some(h) = &t.hubspot_id {
                        let _ = self.kv.delete(&snapshot_key(kind, h), now).await;
                    }
                } else if let (Some(h), Some(z)) = (&t.hubspot_id, &t.zoho_id) {
                    let link = (
                        record_ref(System::HubSpot, kind, h),
                        record_ref(System::Zoho, kind, z),
                    );
                    let stored = snapshot.map(|mut snapshot| {
                        if t.company_unsynced {
                            match t.snapshot.as_ref().and_then(|s| s.values.get(COMPANY)) {
                                Some(old) => snapshot.values.insert(COMPANY.into(), old.clone()),
                                None => snapshot.values.remove(COMPANY),
                            };
                        }
                        let stored = StoredSnapshot {
                            zoho_id: z.clone(),
                            values: snapshot.values,
                        };
                        (
                            snapshot_key(kind, h),
                            serde_json::to_vec(&stored).unwrap_or_default(),
                        )
                    });
                    pending = Some((link, stored));
                }
            }
        }
        let completion = if decision.issues.is_empty() {
            Completion::Done
        } else {
            // The other fields are synced; these go to the dead-letter queue and the digest.
            Completion::Permanent {
                error: describe_issues(&decision.issues),
            }
        };
        (completion, pending)
    }
}

/// A pair to link and its snapshot to keep, once the round's writes are done.
type PendingRecord = (
    (raccordo_core::RecordRef, raccordo_core::RecordRef),
    Option<(String, Vec<u8>)>,
);

/// A person's or company's name as the CRM holds it.
fn display_name(kind: ObjectKind, system: System, record: &CrmRecord) -> Option<String> {
    let fields: &[&str] = match (kind, system) {
        (ObjectKind::Contact, System::HubSpot) => &["firstname", "lastname"],
        (ObjectKind::Contact, System::Zoho) => &["First_Name", "Last_Name"],
        (ObjectKind::Company, System::HubSpot) => &["name"],
        (ObjectKind::Company, System::Zoho) => &["Account_Name"],
    };
    let name = fields
        .iter()
        .filter_map(|f| record.values.get(*f)?.as_str())
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    (!name.is_empty()).then_some(name)
}

fn fail_all(tasks: &mut [&mut Task], indices: impl Iterator<Item = usize>, e: &CrmError) {
    for i in indices {
        tasks[i].outcome = Some(retryable(e));
    }
}

fn decision_name(plan: &Plan) -> &'static str {
    match plan {
        Plan::Quiet(Quiet::InSync) => "in_sync",
        Plan::Quiet(Quiet::NotHot) => "not_hot",
        Plan::Quiet(Quiet::DeletionIgnored) => "deletion_ignored",
        Plan::Write { .. } => "write",
        Plan::Fail(_) => "failed",
    }
}
