//! `IdMappings`: both directions, replacement on relink, unlink.

use raccordo_core::RecordRef;

use crate::Backend;

pub async fn link_find_relink_unlink(backend: &dyn Backend) {
    let opened = backend.open().await;
    let m = opened.stores.mappings.clone();
    let hs = RecordRef::new("hubspot", "contacts", "101");
    let zo = RecordRef::new("zoho", "contacts", "9001");
    m.link(&hs, &zo, 0).await.unwrap();
    assert_eq!(m.find(&hs, "zoho").await.unwrap().as_deref(), Some("9001"));
    assert_eq!(
        m.find(&zo, "hubspot").await.unwrap().as_deref(),
        Some("101")
    );
    assert_eq!(
        m.find(&RecordRef::new("hubspot", "companies", "101"), "zoho")
            .await
            .unwrap(),
        None,
        "objects are apart"
    );
    // A merge in HubSpot: 102 survives and takes the Zoho record over.
    let survivor = RecordRef::new("hubspot", "contacts", "102");
    m.link(&survivor, &zo, 1).await.unwrap();
    assert_eq!(
        m.find(&zo, "hubspot").await.unwrap().as_deref(),
        Some("102")
    );
    assert_eq!(
        m.find(&hs, "zoho").await.unwrap(),
        None,
        "the old id no longer maps"
    );
    assert_eq!(m.count("hubspot", "contacts", "zoho").await.unwrap(), 1);
    assert_eq!(m.count("zoho", "contacts", "hubspot").await.unwrap(), 1);
    assert_eq!(m.count("hubspot", "companies", "zoho").await.unwrap(), 0);
    assert_eq!(m.unlink(&survivor).await.unwrap(), 1);
    assert_eq!(m.count("hubspot", "contacts", "zoho").await.unwrap(), 0);
    // Many pairs at once, as a sync round links them.
    let pairs: Vec<(RecordRef, RecordRef)> = (0..50)
        .map(|i| {
            (
                RecordRef::new("hubspot", "contacts", format!("h{i}")),
                RecordRef::new("zoho", "contacts", format!("z{i}")),
            )
        })
        .collect();
    m.link_many(&pairs, 2).await.unwrap();
    assert_eq!(m.count("hubspot", "contacts", "zoho").await.unwrap(), 50);
    assert_eq!(
        m.find(&RecordRef::new("zoho", "contacts", "z7"), "hubspot")
            .await
            .unwrap()
            .as_deref(),
        Some("h7")
    );
    assert_eq!(m.find(&zo, "hubspot").await.unwrap(), None);
    opened.close().await;
}
