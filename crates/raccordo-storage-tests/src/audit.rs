//! `AuditLog`: durable, newest first, paged; records cannot be overwritten.

use raccordo_core::AuditRecord;

use crate::Backend;

fn record(n: u32, actor: &str) -> AuditRecord {
    AuditRecord {
        id: format!("aud_{n:04}"),
        at_ms: i64::from(n) * 1000,
        actor: actor.into(),
        action: "POST /api/v1/requests/{id}/replay".into(),
        target: format!("/api/v1/requests/req_{n}/replay"),
        status: 202,
        detail: serde_json::json!({"n": n}),
    }
}

pub async fn audit_records_are_durable_newest_first_and_never_overwritten(backend: &dyn Backend) {
    let opened = backend.open().await;
    let audit = opened.stores.audit.clone();
    for n in 1..=4 {
        audit.append_audit(&record(n, "ops")).await.unwrap();
    }
    // Appending a record with an id already used fails and changes nothing.
    assert!(audit.append_audit(&record(2, "intruder")).await.is_err());
    opened.close().await;

    let opened = backend.open().await;
    let audit = opened.stores.audit.clone();
    let all = audit.audit_records(None, 10).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["aud_0004", "aud_0003", "aud_0002", "aud_0001"]);
    assert_eq!(all[2], record(2, "ops"), "stored whole, not overwritten");
    let page = audit.audit_records(Some("aud_0003"), 1).await.unwrap();
    assert_eq!(page[0].id, "aud_0002", "the cursor pages backwards");
    opened.close().await;
}
