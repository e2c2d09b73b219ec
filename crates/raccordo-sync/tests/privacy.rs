//! Sync state as a holder of personal data, on the embedded store: the snapshots that hold
//! a customer's e-mail address are exported and erased, with their pairs' mappings; other
//! pairs stay.

use std::sync::Arc;

use raccordo_core::privacy::{PersonalData, Pseudonymiser, Subject};
use raccordo_core::{ManualClock, RecordRef};
use raccordo_storage_sqlite::{SqliteOptions, SqliteStore};
use raccordo_sync::privacy::SnapshotsHolder;
use raccordo_sync::worker::SNAPSHOT_PREFIX;

#[tokio::test]
async fn snapshots_holding_an_address_go_with_their_mappings() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("raccordo.db"))).unwrap();
    let stores = store.stores().clone();
    let clock = Arc::new(ManualClock::new(1_000));
    for (hubspot, zoho, email) in [
        ("11", "z11", "ada@example.it"),
        ("12", "z12", "bob@example.it"),
    ] {
        let value =
            serde_json::json!({ "zoho_id": zoho, "values": { "email": email, "firstname": "X" } });
        stores
            .kv
            .put(
                &format!("{SNAPSHOT_PREFIX}contact:{hubspot}"),
                serde_json::to_vec(&value).unwrap(),
                None,
                1_000,
            )
            .await
            .unwrap();
        stores
            .mappings
            .link(
                &RecordRef::new("hubspot", "contact", hubspot),
                &RecordRef::new("zoho", "contact", zoho),
                1_000,
            )
            .await
            .unwrap();
    }
    let holder = SnapshotsHolder {
        kv: stores.kv.clone(),
        mappings: stores.mappings.clone(),
        clock: clock.clone(),
    };
    // Matched case-insensitively: snapshots keep addresses lower-cased.
    let ada = Subject::new("Ada@Example.it").unwrap();
    let export = holder.export(&ada).await.unwrap().unwrap();
    assert_eq!(export[0]["hubspot_id"], "11");
    assert_eq!(export[0]["zoho_id"], "z11");
    assert_eq!(export.as_array().unwrap().len(), 1);

    let erased = holder.erase(&ada, &Pseudonymiser::random()).await.unwrap();
    assert_eq!(erased, vec![("sync_snapshots", 1), ("id_mappings", 1)]);
    let hubspot = |id: &str| RecordRef::new("hubspot", "contact", id);
    assert_eq!(
        stores.mappings.find(&hubspot("11"), "zoho").await.unwrap(),
        None
    );
    assert_eq!(
        stores.mappings.find(&hubspot("12"), "zoho").await.unwrap(),
        Some("z12".into())
    );
    assert!(holder.export(&ada).await.unwrap().is_none());
    assert_eq!(
        holder.erase(&ada, &Pseudonymiser::random()).await.unwrap(),
        vec![("sync_snapshots", 0), ("id_mappings", 0)]
    );
    stores.log.close().await;
}
