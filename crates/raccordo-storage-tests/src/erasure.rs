//! What a data subject's erasure relies on in every store: finding the documents that hold
//! their id, exactly, and removing them without touching anyone else's.

use raccordo_core::{
    Completion, NewRun, NewWorkItem, RejectedRequest, RetryPolicy, RunStatus, StepRecord,
    StepStatus,
};
use serde_json::json;

use crate::Backend;

const ADA: &str = r#""ada@example.com""#;

fn rejected(n: u32, body: &str) -> RejectedRequest {
    RejectedRequest {
        id: format!("req_{n:04}"),
        source: Some("web".into()),
        target: "/webhooks/in/web".into(),
        received_at_ms: i64::from(n),
        status: 422,
        problem: json!({ "status": 422 }),
        headers: vec![],
        body: body.as_bytes().to_vec(),
        body_bytes: body.len() as u64,
        authenticated: true,
        replay: None,
    }
}

pub async fn documents_holding_a_subject_are_found_and_erased(backend: &dyn Backend) {
    let opened = backend.open().await;
    let s = opened.stores.clone();

    // Refused requests: found by body, newest first; others stay.
    s.requests
        .record_rejected(&rejected(1, r#"{"email":"ada@example.com"}"#))
        .await
        .unwrap();
    s.requests
        .record_rejected(&rejected(2, r#"{"email":"bob@example.com"}"#))
        .await
        .unwrap();
    s.requests
        .record_rejected(&rejected(3, "email=ada@example.com&x=1"))
        .await
        .unwrap();
    let held = s
        .requests
        .rejected_holding("ada@example.com")
        .await
        .unwrap();
    let ids: Vec<String> = held.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, ["req_0003", "req_0001"]);
    assert_eq!(s.requests.delete_rejected(&ids).await.unwrap(), 2);
    assert_eq!(s.requests.delete_rejected(&ids).await.unwrap(), 0);
    assert!(
        s.requests
            .rejected_holding("ada@example.com")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.requests
            .rejected_request("req_0002")
            .await
            .unwrap()
            .is_some()
    );

    // Runs: by trigger or by any step's record; the whole run goes with its steps.
    for (id, trigger, step_output) in [
        ("run_a", json!({ "email": "ada@example.com" }), json!({})),
        (
            "run_b",
            json!({ "email": "bob@example.com" }),
            json!({ "to": "ada@example.com" }),
        ),
        ("run_c", json!({ "email": "ada@example.com.it" }), json!({})),
    ] {
        s.runs
            .create_run(NewRun {
                id: id.into(),
                kind: "enrich".into(),
                trigger,
                started_at_ms: 1,
            })
            .await
            .unwrap();
        s.runs
            .record_step(
                id,
                StepRecord {
                    index: 0,
                    name: "write".into(),
                    status: StepStatus::Succeeded,
                    input: json!({}),
                    output: Some(step_output),
                    error: None,
                    attempts: 1,
                    started_at_ms: 1,
                    finished_at_ms: Some(2),
                    tokens: None,
                    cost: None,
                },
            )
            .await
            .unwrap();
        s.runs
            .finish_run(id, RunStatus::Succeeded, 2)
            .await
            .unwrap();
    }
    let mut runs = s.runs.runs_holding(ADA).await.unwrap();
    runs.sort();
    assert_eq!(runs, ["run_a", "run_b"], "exact values only: not run_c");
    assert_eq!(s.runs.delete_runs(&runs).await.unwrap(), 2);
    assert!(s.runs.run("run_a").await.unwrap().is_none());
    assert!(s.runs.runs_holding(ADA).await.unwrap().is_empty());
    assert!(s.runs.run("run_c").await.unwrap().is_some());

    // Key-value entries: by prefix and value; erased ones read as absent.
    let kv = &s.kv;
    kv.put(
        "ai:cache:1",
        br#"{"who":"ada@example.com"}"#.to_vec(),
        None,
        0,
    )
    .await
    .unwrap();
    kv.put(
        "ai:cache:2",
        br#"{"who":"bob@example.com"}"#.to_vec(),
        None,
        0,
    )
    .await
    .unwrap();
    kv.put("sync:x", br#"{"who":"ada@example.com"}"#.to_vec(), None, 0)
        .await
        .unwrap();
    kv.put(
        "ai:cache:3",
        br#"{"who":"ada@example.com"}"#.to_vec(),
        Some(10),
        0,
    )
    .await
    .unwrap();
    let keys = kv
        .keys_holding("ai:cache:", ADA.as_bytes(), 20)
        .await
        .unwrap();
    assert_eq!(keys, ["ai:cache:1"], "by prefix, live entries only");
    assert_eq!(kv.erase_keys(&keys, 20).await.unwrap(), 1);
    assert!(kv.get("ai:cache:1", 20).await.unwrap().is_none());
    assert!(kv.get("ai:cache:2", 20).await.unwrap().is_some());
    assert!(kv.get("sync:x", 20).await.unwrap().is_some());
    assert!(
        kv.keys_holding("ai:cache:", ADA.as_bytes(), 20)
            .await
            .unwrap()
            .is_empty()
    );

    // Work items and dead letters by payload.
    let q = &s.queue;
    let item = |n: u32, email: &str| NewWorkItem {
        queue: "sync".into(),
        group_key: format!("k{n}"),
        operation: "upsert".into(),
        payload: json!({ "email": email }),
        coalesce: false,
    };
    q.enqueue(item(1, "ada@example.com"), 0).await.unwrap();
    q.enqueue(item(2, "bob@example.com"), 0).await.unwrap();
    q.enqueue(item(3, "ada@example.com"), 0).await.unwrap();
    let claimed = q.claim("sync", 10, 60_000, 0).await.unwrap();
    let third = claimed.iter().find(|i| i.group_key == "k3").unwrap();
    q.complete(
        third,
        Completion::Permanent {
            error: "refused".into(),
        },
        &RetryPolicy::default(),
        0.5,
        1,
    )
    .await
    .unwrap();
    assert_eq!(q.dead_letters(None, None, 10).await.unwrap().len(), 1);
    assert_eq!(q.erase_holding(ADA).await.unwrap(), (1, 1));
    assert!(q.dead_letters(None, None, 10).await.unwrap().is_empty());
    assert_eq!(q.erase_holding(ADA).await.unwrap(), (0, 0));
    let depth = q.depth("sync", 1).await.unwrap();
    assert_eq!(
        (depth.waiting + depth.in_flight, depth.dead_letters),
        (1, 0),
        "Bob's item stays"
    );
    opened.close().await;
}
