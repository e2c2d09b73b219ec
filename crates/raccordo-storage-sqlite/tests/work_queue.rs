//! The SQLite work queue: per-key order, coalescing, leases, retries, dead letters.

use raccordo_core::{Completion, CompletionOutcome, Enqueued, NewWorkItem, RetryPolicy, WorkQueue};
use raccordo_storage_sqlite::SqliteWorkQueue;
use serde_json::json;

const LEASE: i64 = 60_000;

fn item(key: &str, op: &str, n: u32, coalesce: bool) -> NewWorkItem {
    NewWorkItem {
        queue: "sync".into(),
        group_key: key.into(),
        operation: op.into(),
        payload: json!({ "n": n }),
        coalesce,
    }
}

fn open(dir: &tempfile::TempDir) -> SqliteWorkQueue {
    SqliteWorkQueue::open(&dir.path().join("q.db")).unwrap()
}

async fn claimed_ns(q: &SqliteWorkQueue, now: i64) -> Vec<(String, u64)> {
    q.claim("sync", 100, LEASE, now)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.group_key, i.payload["n"].as_u64().unwrap()))
        .collect()
}

#[tokio::test]
async fn items_of_one_key_run_one_at_a_time_in_order_and_keys_run_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    for (key, n) in [
        ("hubspot:contact:1", 1),
        ("hubspot:contact:1", 2),
        ("hubspot:contact:2", 3),
        ("hubspot:contact:1", 4),
    ] {
        q.enqueue(item(key, "upsert", n, false), 0).await.unwrap();
    }
    let first = q.claim("sync", 100, LEASE, 0).await.unwrap();
    let got: Vec<u64> = first
        .iter()
        .map(|i| i.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        got,
        [1, 3],
        "the head of each key, nothing behind a head in flight"
    );
    assert!(claimed_ns(&q, 1).await.is_empty(), "both keys are busy");
    let policy = RetryPolicy::default();
    assert_eq!(
        q.complete(&first[0], Completion::Done, &policy, 0.5, 2)
            .await
            .unwrap(),
        CompletionOutcome::Completed
    );
    assert_eq!(
        claimed_ns(&q, 3).await,
        [("hubspot:contact:1".to_string(), 2)]
    );
}

#[tokio::test]
async fn pending_changes_of_a_record_coalesce_but_not_into_one_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let a = q
        .enqueue(item("zoho:contact:9", "sync", 1, true), 0)
        .await
        .unwrap();
    let b = q
        .enqueue(item("zoho:contact:9", "sync", 2, true), 1)
        .await
        .unwrap();
    let Enqueued::New(id) = a else {
        panic!("{a:?}")
    };
    assert_eq!(b, Enqueued::Coalesced(id));
    let held = q.claim("sync", 10, LEASE, 2).await.unwrap();
    assert_eq!(held.len(), 1);
    // The worker may already have read the record: a change now needs a run of its own.
    assert!(matches!(
        q.enqueue(item("zoho:contact:9", "sync", 3, true), 3)
            .await
            .unwrap(),
        Enqueued::New(_)
    ));
}

#[tokio::test]
async fn retries_back_off_then_dead_letter_with_the_last_error_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let policy = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    q.enqueue(item("hubspot:company:5", "create", 1, false), 0)
        .await
        .unwrap();
    let mut now = 0;
    let mut outcomes = Vec::new();
    for attempt in 1..=3u32 {
        let held = q.claim("sync", 1, LEASE, now).await.unwrap();
        assert_eq!(held.len(), 1, "attempt {attempt} is due at {now}");
        assert_eq!(held[0].attempts, attempt);
        let failure = Completion::Retryable {
            error: format!("503 on attempt {attempt}"),
            retry_after_ms: None,
        };
        let outcome = q
            .complete(&held[0], failure, &policy, 0.5, now)
            .await
            .unwrap();
        if let CompletionOutcome::RetryAt(at) = outcome {
            assert!(
                q.claim("sync", 1, LEASE, at - 1).await.unwrap().is_empty(),
                "not before its time"
            );
            now = at;
        }
        outcomes.push(outcome);
    }
    assert_eq!(outcomes[0], CompletionOutcome::RetryAt(30_000));
    assert_eq!(outcomes[1], CompletionOutcome::RetryAt(90_000));
    let CompletionOutcome::DeadLettered(dead) = outcomes[2] else {
        panic!("{outcomes:?}")
    };
    let letters = q.dead_letters(Some("sync"), None, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].id,
            letters[0].attempts,
            letters[0].last_error.as_str()
        ),
        (dead, 3, "503 on attempt 3")
    );
    assert_eq!(
        (letters[0].operation.as_str(), letters[0].group_key.as_str()),
        ("create", "hubspot:company:5")
    );
    assert_eq!(letters[0].failed_at_ms, now);

    let replayed = q.replay(dead, now + 1).await.unwrap().expect("replayed");
    assert!(q.dead_letters(None, None, 10).await.unwrap().is_empty());
    let again = q.claim("sync", 1, LEASE, now + 1).await.unwrap();
    assert_eq!(
        (again[0].id, again[0].attempts),
        (replayed, 1),
        "a replay starts its attempts afresh"
    );
    assert_eq!(
        q.replay(dead, now + 2).await.unwrap(),
        None,
        "a dead letter replays once"
    );
}

#[tokio::test]
async fn permanent_failures_skip_the_retries_and_retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let policy = RetryPolicy::default();
    q.enqueue(item("a", "create", 1, false), 0).await.unwrap();
    q.enqueue(item("b", "create", 2, false), 0).await.unwrap();
    let held = q.claim("sync", 10, LEASE, 0).await.unwrap();
    let permanent = Completion::Permanent {
        error: "MANDATORY_NOT_FOUND Last_Name".into(),
    };
    assert!(matches!(
        q.complete(&held[0], permanent, &policy, 0.5, 1)
            .await
            .unwrap(),
        CompletionOutcome::DeadLettered(_)
    ));
    let throttled = Completion::Retryable {
        error: "429".into(),
        retry_after_ms: Some(120_000),
    };
    assert_eq!(
        q.complete(&held[1], throttled, &policy, 0.5, 1)
            .await
            .unwrap(),
        CompletionOutcome::RetryAt(120_001)
    );
}

#[tokio::test]
async fn an_expired_lease_hands_the_item_over_and_the_stale_worker_cannot_complete_it() {
    let dir = tempfile::tempdir().unwrap();
    let policy = RetryPolicy::default();
    let stale = {
        let q = open(&dir);
        q.enqueue(item("k", "op", 1, false), 0).await.unwrap();
        q.claim("sync", 1, LEASE, 0).await.unwrap().remove(0)
    };
    // A new process on the same file (the worker crashed): the item is still there.
    let q = open(&dir);
    assert!(
        q.claim("sync", 1, LEASE, LEASE - 1)
            .await
            .unwrap()
            .is_empty(),
        "lease still held"
    );
    let fresh = q.claim("sync", 1, LEASE, LEASE).await.unwrap().remove(0);
    assert_eq!((fresh.id, fresh.attempts), (stale.id, 2));
    assert_eq!(
        q.complete(&stale, Completion::Done, &policy, 0.5, LEASE + 1)
            .await
            .unwrap(),
        CompletionOutcome::LeaseLost
    );
    assert_eq!(
        q.complete(&fresh, Completion::Done, &policy, 0.5, LEASE + 1)
            .await
            .unwrap(),
        CompletionOutcome::Completed
    );
}
