//! `AlertHistory`: durable, newest first, deliveries updated in place.

use raccordo_core::{AlertRecord, DeliveryRecord, DeliveryStatus};

use crate::Backend;

fn alert(id: &str, at: i64) -> AlertRecord {
    AlertRecord {
        id: id.into(),
        kind: "duplicate_burst".into(),
        source: "web".into(),
        message: "4 duplicates".into(),
        at_ms: at,
        deliveries: (0..2)
            .map(|channel| DeliveryRecord {
                channel,
                kind: "webhook".into(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                last_error: None,
            })
            .collect(),
    }
}

pub async fn history_is_durable_and_newest_first(backend: &dyn Backend) {
    let opened = backend.open().await;
    let h = opened.stores.alerts.clone();
    h.record_alert(&alert("alt_1", 1)).await.unwrap();
    h.record_alert(&alert("alt_2", 2)).await.unwrap();
    assert!(
        h.update_delivery(
            "alt_1",
            1,
            DeliveryStatus::Failed,
            5,
            Some("HTTP 400".into())
        )
        .await
        .unwrap()
    );
    assert!(
        !h.update_delivery("alt_9", 0, DeliveryStatus::Delivered, 1, None)
            .await
            .unwrap()
    );
    drop(h);
    opened.close().await;
    let opened = backend.open().await;
    let got = opened.stores.alerts.recent_alerts(10).await.unwrap();
    assert_eq!(
        got.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["alt_2", "alt_1"]
    );
    let d = &got[1].deliveries[1];
    assert_eq!(
        (d.status, d.attempts, d.last_error.as_deref()),
        (DeliveryStatus::Failed, 5, Some("HTTP 400"))
    );
    assert_eq!(got[1].deliveries[0].status, DeliveryStatus::Pending);
    assert_eq!(
        opened.stores.alerts.recent_alerts(1).await.unwrap().len(),
        1
    );
}
