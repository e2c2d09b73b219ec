//! `RejectedRequests`: durable, newest first, filtered, paged, replays recorded, purged by
//! age and by count.

use raccordo_core::{RejectedFilter, RejectedRequest, ReplayRecord};

use crate::Backend;

fn request(n: u32, source: &str, status: u16, at: i64) -> RejectedRequest {
    RejectedRequest {
        // ULID-like ids sort by arrival; these sort by `n`.
        id: format!("req_{n:04}"),
        source: Some(source.into()),
        target: format!("/webhooks/in/{source}"),
        received_at_ms: at,
        status,
        problem: serde_json::json!({"status": status, "title": "Invalid event"}),
        headers: vec![("x-api-key".into(), "[redacted]".into())],
        body: format!("{{\"n\":{n}}}").into_bytes(),
        body_bytes: 7,
        authenticated: status != 401,
        replay: None,
    }
}

fn filter(
    source: Option<&str>,
    status: Option<u16>,
    before: Option<&str>,
    limit: usize,
) -> RejectedFilter {
    RejectedFilter {
        source: source.map(str::to_string),
        status,
        before_id: before.map(str::to_string),
        limit,
    }
}

fn ids(list: &[RejectedRequest]) -> Vec<&str> {
    list.iter().map(|r| r.id.as_str()).collect()
}

pub async fn refused_requests_are_durable_filtered_paged_and_purged(backend: &dyn Backend) {
    let opened = backend.open().await;
    let store = opened.stores.requests.clone();
    for (n, source, status) in [
        (1, "web", 422),
        (2, "forms", 401),
        (3, "web", 415),
        (4, "web", 422),
    ] {
        store
            .record_rejected(&request(n, source, status, i64::from(n) * 1000))
            .await
            .unwrap();
    }
    let all = store
        .rejected_requests(&filter(None, None, None, 10))
        .await
        .unwrap();
    assert_eq!(ids(&all), ["req_0004", "req_0003", "req_0002", "req_0001"]);
    assert_eq!(all[3], request(1, "web", 422, 1000), "stored whole");
    let web_422 = store
        .rejected_requests(&filter(Some("web"), Some(422), None, 10))
        .await
        .unwrap();
    assert_eq!(ids(&web_422), ["req_0004", "req_0001"]);
    let page = store
        .rejected_requests(&filter(None, None, Some("req_0003"), 1))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["req_0002"], "the cursor pages backwards");

    let replay = ReplayRecord {
        at_ms: 9000,
        status: 202,
        answer: serde_json::json!({"status": "accepted"}),
    };
    assert!(store.record_replay("req_0001", &replay).await.unwrap());
    assert!(!store.record_replay("req_9999", &replay).await.unwrap());
    opened.close().await;

    let opened = backend.open().await;
    let store = opened.stores.requests.clone();
    let first = store.rejected_request("req_0001").await.unwrap().unwrap();
    assert_eq!(first.replay, Some(replay), "survives a restart");
    assert!(store.rejected_request("req_9999").await.unwrap().is_none());

    // Older than 2 s go (1 of them); then at most 2 are kept (1 more).
    assert_eq!(store.purge_rejected(2000, 100).await.unwrap(), 1);
    assert_eq!(store.purge_rejected(0, 2).await.unwrap(), 1);
    let left = store
        .rejected_requests(&filter(None, None, None, 10))
        .await
        .unwrap();
    assert_eq!(ids(&left), ["req_0004", "req_0003"]);
    opened.close().await;
}
