//! `WorkQueue`: per-key order, coalescing, leases, retries, dead letters, typed jobs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use raccordo_core::{
    Completion, CompletionOutcome, Enqueued, Job, NewWorkItem, RetryPolicy, WorkQueue,
};
use serde_json::json;

use crate::Backend;

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

async fn claimed_ns(q: &dyn WorkQueue, now: i64) -> Vec<(String, u64)> {
    q.claim("sync", 100, LEASE, now)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.group_key, i.payload["n"].as_u64().unwrap()))
        .collect()
}

pub async fn per_key_fifo_and_parallel_keys(backend: &dyn Backend) {
    let opened = backend.open().await;
    let q = opened.stores.queue.clone();
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
    assert!(
        claimed_ns(q.as_ref(), 1).await.is_empty(),
        "both keys are busy"
    );
    let policy = RetryPolicy::default();
    assert_eq!(
        q.complete(&first[0], Completion::Done, &policy, 0.5, 2)
            .await
            .unwrap(),
        CompletionOutcome::Completed
    );
    assert_eq!(
        claimed_ns(q.as_ref(), 3).await,
        [("hubspot:contact:1".to_string(), 2)]
    );
}

pub async fn coalescing(backend: &dyn Backend) {
    let opened = backend.open().await;
    let q = opened.stores.queue.clone();
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

pub async fn retries_dead_letters_and_replay(backend: &dyn Backend) {
    let opened = backend.open().await;
    let q = opened.stores.queue.clone();
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

pub async fn permanent_failures_and_retry_after(backend: &dyn Backend) {
    let opened = backend.open().await;
    let q = opened.stores.queue.clone();
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

pub async fn expired_lease_hands_over_after_restart(backend: &dyn Backend) {
    let policy = RetryPolicy::default();
    let stale = {
        let opened = backend.open().await;
        let q = opened.stores.queue.clone();
        q.enqueue(item("k", "op", 1, false), 0).await.unwrap();
        let held = q.claim("sync", 1, LEASE, 0).await.unwrap().remove(0);
        drop(q);
        opened.close().await;
        held
    };
    // The store opened again (the worker crashed): the item is still there.
    let opened = backend.open().await;
    let q = opened.stores.queue.clone();
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

/// Several workers claiming at once: every item goes to exactly one of them.
pub async fn two_workers_never_hold_the_same_item(backend: &dyn Backend) {
    let opened = backend.open().await;
    let q = opened.stores.queue.clone();
    for n in 0..40 {
        q.enqueue(item(&format!("k{n}"), "op", n, false), 0)
            .await
            .unwrap();
    }
    let claims = (0..4).map(|_| {
        let q = q.clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = q.claim("sync", 3, LEASE, 1).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|i| i.id));
            }
        })
    });
    let mut all: Vec<i64> = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let claimed = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        (claimed, all.len()),
        (40, 40),
        "each item claimed exactly once"
    );
}

/// Parallel consumers over interleaved keys: within a key, items complete in enqueue order
/// and never two at a time.
pub async fn fifo_per_key_under_parallel_consumers(backend: &dyn Backend) {
    let opened = backend.open().await;
    let q = opened.stores.queue.clone();
    let keys = 5u32;
    let per_key = 8u32;
    for n in 0..keys * per_key {
        q.enqueue(item(&format!("key{}", n % keys), "op", n, false), 0)
            .await
            .unwrap();
    }
    let order: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let busy: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let workers = (0..4).map(|_| {
        let (q, order, busy) = (q.clone(), order.clone(), busy.clone());
        tokio::spawn(async move {
            let policy = RetryPolicy::default();
            let mut idle = 0;
            while idle < 20 {
                let got = q.claim("sync", 2, LEASE, 1).await.unwrap();
                if got.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                for it in got {
                    assert!(
                        busy.lock().unwrap().insert(it.group_key.clone()),
                        "two items of {} in flight at once",
                        it.group_key
                    );
                    order
                        .lock()
                        .unwrap()
                        .entry(it.group_key.clone())
                        .or_default()
                        .push(it.payload["n"].as_u64().unwrap());
                    busy.lock().unwrap().remove(&it.group_key);
                    let done = q
                        .complete(&it, Completion::Done, &policy, 0.5, 2)
                        .await
                        .unwrap();
                    assert_eq!(done, CompletionOutcome::Completed);
                }
            }
        })
    });
    for w in futures_util::future::join_all(workers).await {
        w.unwrap();
    }
    let order = order.lock().unwrap();
    assert_eq!(order.len(), keys as usize);
    for (key, seen) in order.iter() {
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(seen, &sorted, "{key} ran out of order");
        assert_eq!(seen.len(), per_key as usize, "{key}");
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct SyncContact {
    system: String,
    id: String,
}

impl Job for SyncContact {
    const QUEUE: &'static str = "sync";
    const OPERATION: &'static str = "sync_contact";
    fn group_key(&self) -> String {
        format!("{}:contact:{}", self.system, self.id)
    }
}

/// A typed job goes in and comes out as the same value, on its own queue and key.
pub async fn typed_jobs(backend: &dyn Backend) {
    let opened = backend.open().await;
    let q = opened.stores.queue.clone();
    let job = SyncContact {
        system: "hubspot".into(),
        id: "123".into(),
    };
    q.enqueue(NewWorkItem::job(&job, true).unwrap(), 0)
        .await
        .unwrap();
    let held = q.claim("sync", 1, LEASE, 0).await.unwrap().remove(0);
    assert_eq!(held.group_key, "hubspot:contact:123");
    assert_eq!(held.payload_as::<SyncContact>().unwrap(), job);
}

/// What a queue holds, and the embedded hub's release of a dead run's leases.
pub async fn depth_and_released_leases(backend: &dyn Backend) {
    let opened = backend.open().await;
    let q = opened.stores.queue.clone();
    let policy = RetryPolicy::default();
    for n in 0..4 {
        q.enqueue(item(&format!("k{n}"), "op", n, false), 0)
            .await
            .unwrap();
    }
    let held = q.claim("sync", 2, LEASE, 0).await.unwrap();
    assert_eq!(held.len(), 2);
    q.complete(
        &held[0],
        Completion::Retryable {
            error: "503".into(),
            retry_after_ms: None,
        },
        &policy,
        0.5,
        1,
    )
    .await
    .unwrap();
    let depth = q.depth("sync", 2).await.unwrap();
    assert_eq!(
        (
            depth.waiting,
            depth.in_flight,
            depth.retrying,
            depth.dead_letters
        ),
        (3, 1, 1, 0)
    );
    assert_eq!(
        q.depth("other", 2).await.unwrap(),
        raccordo_core::QueueDepth::default()
    );
    // The run holding the lease died: release it, and the item is claimable at once.
    assert_eq!(q.release_all_leases().await.unwrap(), 1);
    let again = q.claim("sync", 10, LEASE, 3).await.unwrap();
    assert!(
        again.iter().any(|i| i.id == held[1].id),
        "the released item is taken again"
    );
    assert_eq!(
        q.depth("sync", 3).await.unwrap().in_flight,
        again.len() as u64
    );
    opened.close().await;
}
