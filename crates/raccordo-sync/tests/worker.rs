//! The sync worker against the HubSpot and Zoho sandboxes, on a real SQLite state store:
//! creates, edits, echoes, missing fields and a re-run after a lost mapping.

use std::collections::BTreeMap;
use std::sync::Arc;

use raccordo_core::crm::{ObjectKind, System};
use raccordo_core::{BucketSpec, Clock, Completion, RetryPolicy, Stores, SystemClock, WorkItem};
use raccordo_crm::{
    HubSpotClient, HubSpotSettings, OAuthGrant, OAuthTokens, Sealer, StaticToken, ZohoClient,
    ZohoSettings,
};
use raccordo_sandbox::{Product, Running, SandboxConfig};
use raccordo_storage_sqlite::{SqliteOptions, SqliteStore};
use raccordo_sync::SyncConfig;
use raccordo_sync::jobs::{QUEUE, enqueue_change, record_ref};
use raccordo_sync::worker::{BATCH, SyncWorker};
use serde_json::{Value, json};

struct World {
    hs: Running,
    z: Running,
    _dir: tempfile::TempDir,
    _store: SqliteStore,
    stores: Stores,
    hubspot: Arc<HubSpotClient>,
    zoho: Arc<ZohoClient>,
    worker: SyncWorker,
}

fn credential<'a>(s: &'a Running, name: &str) -> &'a str {
    &s.credentials.iter().find(|(k, _)| *k == name).unwrap().1
}

async fn world() -> World {
    world_seeded(0).await
}

/// Both sandboxes, HubSpot seeded with `contacts` contacts.
async fn world_seeded(contacts: usize) -> World {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let start = |product| async move {
        let mut config = SandboxConfig::new(product, "127.0.0.1:0".parse().unwrap());
        config.seed_size = (
            0,
            if product == Product::HubSpot {
                contacts
            } else {
                0
            },
        );
        raccordo_sandbox::start(config).await.unwrap()
    };
    let hs = start(Product::HubSpot).await;
    let z = start(Product::Zoho).await;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("raccordo.db"))).unwrap();
    let stores = store.stores();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let hubspot = Arc::new(
        HubSpotClient::new(
            &HubSpotSettings {
                base_url: hs.base_url.clone(),
                outbound: std::sync::Arc::new(raccordo_outbound::OutboundPolicy::allow_all()),
                ..HubSpotSettings::default()
            },
            Arc::new(StaticToken(credential(&hs, "token").into())),
            stores.rate_limits.clone(),
            clock.clone(),
        )
        .unwrap(),
    );
    let tokens = Arc::new(OAuthTokens::new(
        OAuthGrant {
            system: "zoho",
            token_url: format!("{}/oauth/v2/token", z.base_url),
            client_id: credential(&z, "client_id").into(),
            client_secret: credential(&z, "client_secret").into(),
            refresh_ahead_ms: 300_000,
            refresh_budget: BucketSpec::per_interval(10, 600_000),
        },
        reqwest::Client::new(),
        stores.secrets.clone(),
        stores.rate_limits.clone(),
        Arc::new(Sealer::from_key(&[9; 32]).unwrap()),
        clock.clone(),
    ));
    tokens
        .store_refresh_token(credential(&z, "refresh_token"))
        .await
        .unwrap();
    let zoho = Arc::new(
        ZohoClient::new(
            &ZohoSettings {
                base_url: z.base_url.clone(),
                outbound: std::sync::Arc::new(raccordo_outbound::OutboundPolicy::allow_all()),
                ..ZohoSettings::default()
            },
            tokens,
            stores.rate_limits.clone(),
            clock.clone(),
        )
        .unwrap(),
    );
    let worker = SyncWorker {
        hubspot: hubspot.clone(),
        zoho: zoho.clone(),
        mappings: stores.mappings.clone(),
        kv: stores.kv.clone(),
        config: Arc::new(SyncConfig::default()),
        clock,
        stats: Arc::new(raccordo_sync::health::SyncStats::new(
            hubspot.stats(),
            zoho.stats(),
        )),
    };
    World {
        hs,
        z,
        _dir: dir,
        _store: store,
        stores,
        hubspot,
        zoho,
        worker,
    }
}

impl World {
    async fn change(&self, origin: System, id: &str) {
        enqueue_change(
            self.stores.queue.as_ref(),
            self.stores.mappings.as_ref(),
            ObjectKind::Contact,
            origin,
            id,
            SystemClock.now_ms(),
        )
        .await
        .unwrap();
    }

    /// Runs rounds until nothing is due; the completions seen.
    async fn drain(&self) -> Vec<(WorkItem, Completion)> {
        let mut seen = Vec::new();
        loop {
            let now = SystemClock.now_ms();
            let items = self
                .stores
                .queue
                .claim(QUEUE, BATCH, 60_000, now)
                .await
                .unwrap();
            if items.is_empty() {
                return seen;
            }
            let completions = self.worker.process_batch(&items).await;
            assert_eq!(completions.len(), items.len());
            for (item, completion) in items.into_iter().zip(completions) {
                self.stores
                    .queue
                    .complete(
                        &item,
                        completion.clone(),
                        &RetryPolicy::default(),
                        0.5,
                        SystemClock.now_ms(),
                    )
                    .await
                    .unwrap();
                seen.push((item, completion));
            }
        }
    }

    async fn calls(&self, sandbox: &Running, method: &str, path_part: &str) -> usize {
        let all: Value = reqwest::get(format!("{}/_sandbox/calls", sandbox.base_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all["calls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["method"] == method && c["path"].as_str().unwrap().contains(path_part))
            .count()
    }

    async fn zoho_contacts(&self) -> Vec<raccordo_core::crm::CrmRecord> {
        let fields = vec!["Email".into(), "Last_Name".into(), "Mailing_City".into()];
        let mut all = Vec::new();
        for page in 1.. {
            let (records, more) = self
                .zoho
                .modified_since(ObjectKind::Contact, 0, page, &fields)
                .await
                .unwrap();
            all.extend(records);
            if !more {
                return all;
            }
        }
        all
    }
}

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
    pairs.iter().map(|(k, v)| ((*k).into(), json!(v))).collect()
}

#[tokio::test]
async fn hubspot_contacts_reach_zoho_once_in_batches_and_their_echoes_write_nothing() {
    let w = world().await;
    let inputs: Vec<_> = (0..150)
        .map(|i| {
            props(&[
                ("email", &format!("Persona{i}@Example.it")),
                ("firstname", "Anna"),
                ("lastname", &format!("Rossi{i}")),
                ("phone", "02 1234 5678"),
                ("lifecyclestage", "lead"),
            ])
        })
        .collect();
    let created = w
        .hubspot
        .upsert(ObjectKind::Contact, "email", &inputs)
        .await
        .unwrap();
    for written in created.values() {
        w.change(System::HubSpot, &written.as_ref().unwrap().id)
            .await;
        // A duplicated webhook coalesces with the pending item.
        w.change(System::HubSpot, &written.as_ref().unwrap().id)
            .await;
    }
    let done = w.drain().await;
    assert_eq!(done.len(), 150, "duplicates coalesced");
    assert!(done.iter().all(|(_, c)| *c == Completion::Done), "{done:?}");
    let contacts = w.zoho_contacts().await;
    assert_eq!(contacts.len(), 150);
    let sample = contacts
        .iter()
        .find(|c| c.values["Email"] == "persona7@example.it")
        .unwrap();
    assert_eq!(sample.values["Last_Name"], "Rossi7");
    assert_eq!(w.calls(&w.z, "POST", "/upsert").await, 2, "100 per call");

    // The echoes: Zoho notifies about every record raccordo wrote; nothing is written back.
    let hubspot_writes = w.calls(&w.hs, "POST", "/batch/update").await
        + w.calls(&w.hs, "POST", "/batch/upsert").await;
    for c in &contacts {
        w.change(System::Zoho, &c.id).await;
    }
    let echoes = w.drain().await;
    assert_eq!(echoes.len(), 150);
    assert!(echoes.iter().all(|(_, c)| *c == Completion::Done));
    assert_eq!(
        w.calls(&w.hs, "POST", "/batch/update").await
            + w.calls(&w.hs, "POST", "/batch/upsert").await,
        hubspot_writes,
        "no write goes back to HubSpot"
    );
    assert_eq!(w.calls(&w.z, "PUT", "/crm/v8/Contacts").await, 0);

    // An edit in Zoho goes to HubSpot, field by field.
    let zoho_id = sample.id.clone();
    w.zoho
        .update(
            ObjectKind::Contact,
            &[(zoho_id.clone(), props(&[("Mailing_City", "Bologna")]))],
        )
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    w.change(System::Zoho, &zoho_id).await;
    let done = w.drain().await;
    assert_eq!(done.len(), 1);
    let hubspot_id = w
        .stores
        .mappings
        .find(
            &record_ref(System::Zoho, ObjectKind::Contact, &zoho_id),
            "hubspot",
        )
        .await
        .unwrap()
        .unwrap();
    let read = w
        .hubspot
        .read(
            ObjectKind::Contact,
            &[hubspot_id],
            None,
            &["city".into(), "lastname".into()],
            false,
        )
        .await
        .unwrap();
    assert_eq!(read[0].values["city"], "Bologna");
    assert_eq!(read[0].values["lastname"], "Rossi7");
}

#[tokio::test]
async fn a_contact_without_email_is_dead_lettered_naming_the_field_and_a_lost_mapping_creates_nothing_twice()
 {
    let w = world().await;
    let created = w
        .hubspot
        .upsert(
            ObjectKind::Contact,
            "email",
            &[props(&[("email", "ok@example.it"), ("lastname", "Neri")])],
        )
        .await
        .unwrap();
    let ok_id = created["ok@example.it"].as_ref().unwrap().id.clone();
    // HubSpot contacts can exist without an e-mail (created in the UI, say).
    let no_email: Value = reqwest::Client::new()
        .post(format!("{}/crm/v3/objects/contacts", w.hs.base_url))
        .bearer_auth(credential(&w.hs, "token"))
        .json(&json!({"properties": {"firstname": "Senza", "lastname": "Email"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let no_email_id = no_email["id"].as_str().unwrap().to_string();
    w.change(System::HubSpot, &ok_id).await;
    w.change(System::HubSpot, &no_email_id).await;
    let done = w.drain().await;
    assert_eq!(done.len(), 2);
    let letters = w
        .stores
        .queue
        .dead_letters(Some(QUEUE), None, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0]
            .last_error
            .contains("field `email` (hubspot): missing"),
        "{}",
        letters[0].last_error
    );
    assert!(letters[0].payload["id"] == no_email_id);

    // The mapping is lost (as if the hub died between the write and the link): the next
    // sync upserts by e-mail and finds the record it made, instead of making another.
    w.stores
        .mappings
        .unlink(&record_ref(System::HubSpot, ObjectKind::Contact, &ok_id))
        .await
        .unwrap();
    w.hubspot
        .update(
            ObjectKind::Contact,
            &[(ok_id.clone(), props(&[("city", "Torino")]))],
        )
        .await
        .unwrap();
    w.change(System::HubSpot, &ok_id).await;
    w.drain().await;
    let contacts = w.zoho_contacts().await;
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    assert_eq!(contacts[0].values["Mailing_City"], "Torino");
}

#[tokio::test]
async fn an_interrupted_backfill_resumes_at_its_page() {
    let w = world_seeded(250).await;
    let backfill = raccordo_sync::backfill::Backfill {
        hubspot: w.hubspot.clone(),
        zoho: w.zoho.clone(),
        queue: w.stores.queue.clone(),
        mappings: w.stores.mappings.clone(),
        kv: w.stores.kv.clone(),
        config: Arc::new(SyncConfig::default()),
        clock: Arc::new(SystemClock),
    };
    let wake = tokio::sync::Notify::new();
    raccordo_sync::backfill::start(w.stores.kv.as_ref(), 0)
        .await
        .unwrap();
    // Zoho is down: HubSpot's contacts are paged (three pages), then Zoho's list fails.
    let knobs = |on: bool| {
        let url = format!("{}/_sandbox/knobs", w.z.base_url);
        async move {
            reqwest::Client::new()
                .patch(url)
                .json(&json!({"error_rate": if on { 1.0 } else { 0.0 }}))
                .send()
                .await
                .unwrap();
        }
    };
    knobs(true).await;
    assert!(backfill.run_pending(&wake).await.is_err());
    let state = raccordo_sync::backfill::load(w.stores.kv.as_ref(), 0)
        .await
        .unwrap()
        .unwrap();
    assert!(
        state.lists[0].done && state.lists[0].queued == 250,
        "{state:?}"
    );
    assert!(state.last_error.is_some());
    // Zoho is back: the backfill goes on from Zoho's list, without paging HubSpot again.
    knobs(false).await;
    assert!(backfill.run_pending(&wake).await.unwrap());
    let state = raccordo_sync::backfill::load(w.stores.kv.as_ref(), 0)
        .await
        .unwrap()
        .unwrap();
    assert!(
        state.finished_at_ms.is_some() && state.queued() == 250,
        "{state:?}"
    );
    assert_eq!(w.calls(&w.hs, "GET", "/crm/v3/objects/contacts").await, 3);
    // And the worker syncs what was queued.
    let done = w.drain().await;
    assert_eq!(done.len(), 250);
    assert_eq!(w.zoho_contacts().await.len(), 250);
}

async fn create_company(w: &World, name: &str, domain: &str) -> String {
    let r: Value = reqwest::Client::new()
        .post(format!("{}/crm/v3/objects/companies", w.hs.base_url))
        .bearer_auth(credential(&w.hs, "token"))
        .json(&json!({"properties": {"name": name, "domain": domain}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_contacts_company_follows_it_both_ways() {
    let w = world().await;
    let one = create_company(&w, "Uno S.r.l.", "uno.it").await;
    let two = create_company(&w, "Due S.r.l.", "due.it").await;
    let contact: Value = reqwest::Client::new()
        .post(format!("{}/crm/v3/objects/contacts", w.hs.base_url))
        .bearer_auth(credential(&w.hs, "token"))
        .json(&json!({"properties": {"email": "socio@uno.it", "lastname": "Socio"},
            "associations": [{"to": {"id": one}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 279}]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let contact = contact["id"].as_str().unwrap().to_string();
    for company in [&one, &two] {
        enqueue_change(
            w.stores.queue.as_ref(),
            w.stores.mappings.as_ref(),
            ObjectKind::Company,
            System::HubSpot,
            company,
            SystemClock.now_ms(),
        )
        .await
        .unwrap();
    }
    w.drain().await;
    let account = |hubspot_id: String| {
        let mappings = w.stores.mappings.clone();
        async move {
            mappings
                .find(
                    &record_ref(System::HubSpot, ObjectKind::Company, &hubspot_id),
                    "zoho",
                )
                .await
                .unwrap()
                .unwrap()
        }
    };
    let (account_one, account_two) = (account(one.clone()).await, account(two.clone()).await);
    // HubSpot → Zoho: the contact lands in Zoho with its company's account.
    w.change(System::HubSpot, &contact).await;
    w.drain().await;
    let zoho_contact = w
        .zoho
        .find_by(
            ObjectKind::Contact,
            "Email",
            "socio@uno.it",
            &["Email".into(), "Account_Name".into()],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(zoho_contact.values["Account_Name"]["id"], account_one);
    // Zoho → HubSpot: the contact moves to the other account; in HubSpot it now belongs to
    // that company only.
    w.zoho
        .update(
            ObjectKind::Contact,
            &[(
                zoho_contact.id.clone(),
                [("Account_Name".to_string(), json!({"id": account_two}))].into(),
            )],
        )
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    w.change(System::Zoho, &zoho_contact.id).await;
    w.drain().await;
    let companies = w
        .hubspot
        .companies_of(std::slice::from_ref(&contact))
        .await
        .unwrap();
    // `companies_of` gives the lowest associated id: `two` only if `one` was dissociated.
    assert_eq!(companies.get(&contact), Some(&two));
    // And nothing ping-pongs: the echo of the HubSpot association writes nothing to Zoho.
    let zoho_writes = w.calls(&w.z, "PUT", "/crm/v8/Contacts").await;
    w.change(System::HubSpot, &contact).await;
    w.drain().await;
    assert_eq!(w.calls(&w.z, "PUT", "/crm/v8/Contacts").await, zoho_writes);
}

#[tokio::test]
async fn mappings_are_checked_against_the_crms_field_metadata() {
    let w = world().await;
    let clean =
        raccordo_sync::metadata::check_against_crms(&SyncConfig::default(), &w.hubspot, &w.zoho)
            .await
            .unwrap();
    assert_eq!(
        clean,
        Vec::<String>::new(),
        "the defaults fit the sandboxes"
    );
    let mut config = SyncConfig::default();
    config
        .contacts
        .fields
        .push(raccordo_sync::FieldMapping::picklist(
            "hs_lead_status",
            "Lead_Status_Old",
            &[("HOT", "Caldo")],
        ));
    let problems = raccordo_sync::metadata::check_against_crms(&config, &w.hubspot, &w.zoho)
        .await
        .unwrap();
    assert!(
        problems.contains(&"contacts: Zoho has no field `Lead_Status_Old`".to_string()),
        "{problems:?}"
    );
    assert!(
        problems.contains(&"contacts: `hs_lead_status`: HubSpot has no option `HOT`".to_string()),
        "{problems:?}"
    );
}

#[tokio::test]
async fn a_zoho_merge_relinks_the_pair_instead_of_deleting_in_hubspot() {
    let mut w = world().await;
    // Deletions would archive in HubSpot: the merge must not look like one.
    let mut config = SyncConfig::default();
    config.contacts.on_delete = raccordo_sync::OnDelete::Archive;
    w.worker.config = Arc::new(config);
    let created = w
        .hubspot
        .upsert(
            ObjectKind::Contact,
            "email",
            &[props(&[
                ("email", "unito@example.it"),
                ("lastname", "Unito"),
            ])],
        )
        .await
        .unwrap();
    let hubspot_id = created["unito@example.it"].as_ref().unwrap().id.clone();
    w.change(System::HubSpot, &hubspot_id).await;
    w.drain().await;
    let first = w.zoho_contacts().await.remove(0).id;
    let other = w
        .zoho
        .upsert(
            ObjectKind::Contact,
            &["Email".to_string()],
            &[props(&[
                ("Email", "altro@example.it"),
                ("Last_Name", "Unito"),
            ])],
        )
        .await
        .unwrap()[0]
        .clone()
        .unwrap()
        .id;
    // Zoho merges `first` into `other`: `first` is deleted, `other` keeps its e-mail.
    w.zoho
        .delete(ObjectKind::Contact, std::slice::from_ref(&first))
        .await
        .unwrap();
    w.zoho
        .update(
            ObjectKind::Contact,
            &[(other.clone(), props(&[("Email", "unito@example.it")]))],
        )
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    w.change(System::Zoho, &first).await;
    let done = w.drain().await;
    assert!(done.iter().all(|(_, c)| *c == Completion::Done), "{done:?}");
    let linked = w
        .stores
        .mappings
        .find(
            &record_ref(System::HubSpot, ObjectKind::Contact, &hubspot_id),
            "zoho",
        )
        .await
        .unwrap();
    assert_eq!(
        linked.as_deref(),
        Some(other.as_str()),
        "relinked to the survivor"
    );
    let still_there = w
        .hubspot
        .read(
            ObjectKind::Contact,
            std::slice::from_ref(&hubspot_id),
            None,
            &["email".into()],
            false,
        )
        .await
        .unwrap();
    assert_eq!(still_there.len(), 1, "not archived in HubSpot");
}

#[tokio::test]
async fn on_delete_delete_removes_a_hubspot_contact_for_good() {
    let mut w = world().await;
    let mut config = SyncConfig::default();
    config.contacts.on_delete = raccordo_sync::OnDelete::Delete;
    w.worker.config = Arc::new(config);
    let created = w
        .hubspot
        .upsert(
            ObjectKind::Contact,
            "email",
            &[props(&[
                ("email", "oblio@example.it"),
                ("lastname", "Oblio"),
            ])],
        )
        .await
        .unwrap();
    let hubspot_id = created["oblio@example.it"].as_ref().unwrap().id.clone();
    w.change(System::HubSpot, &hubspot_id).await;
    w.drain().await;
    let zoho_id = w.zoho_contacts().await.remove(0).id;
    // Erased in Zoho: HubSpot forgets the contact too, beyond its 90-day restore.
    w.zoho
        .delete(ObjectKind::Contact, std::slice::from_ref(&zoho_id))
        .await
        .unwrap();
    w.change(System::Zoho, &zoho_id).await;
    let done = w.drain().await;
    assert!(done.iter().all(|(_, c)| *c == Completion::Done), "{done:?}");
    let status = reqwest::Client::new()
        .get(format!(
            "{}/crm/v3/objects/contacts/{hubspot_id}?archived=true",
            w.hs.base_url
        ))
        .bearer_auth(credential(&w.hs, "token"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "not even archived");
    assert_eq!(w.calls(&w.hs, "POST", "/gdpr-delete").await, 1);
    let linked = w
        .stores
        .mappings
        .find(
            &record_ref(System::HubSpot, ObjectKind::Contact, &hubspot_id),
            "zoho",
        )
        .await
        .unwrap();
    assert_eq!(linked, None, "the pair is unlinked");
}
