//! The segment log against real files: what is specific to this backend (group commit, the
//! bounded writer queue, the freeze lock, close, roll-over, crash recovery, damage,
//! retention). The contract every backend shares is in `raccordo-storage-tests`, which runs
//! on this log through the embedded store.

use std::sync::Arc;

use raccordo_core::{
    AppendOutcome, DedupKey, DeliveryClaim, EventFilter, EventId, EventLog, EventQuery,
    ItemOutcome, StoreError,
};
use raccordo_log_segments::{SegmentLog, SegmentLogOptions};
use raccordo_storage_tests::fixtures::{batch, event, key};

fn open(dir: &tempfile::TempDir, queue: usize) -> SegmentLog {
    let mut options = SegmentLogOptions::new(dir.path().join("log"));
    options.queue_capacity = queue;
    SegmentLog::open(options).unwrap().0
}

async fn all(log: &SegmentLog) -> Vec<raccordo_core::StoredEvent> {
    log.read(EventFilter {
        limit: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .events
}

#[tokio::test]
async fn business_key_duplicates_are_stored_once_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir, 16);
    let mut ids = ulid::Generator::new();
    let first = event(&mut ids, Some(key(1)), "1");
    let first_id = first.id;
    let same = event(&mut ids, Some(key(1)), "1");
    let other = event(&mut ids, Some(key(2)), "2");
    let out = log
        .append(batch(0, None, vec![first, same, other]))
        .await
        .unwrap();
    let AppendOutcome::Appended(items) = out else {
        panic!("{out:?}")
    };
    assert_eq!(items[0], ItemOutcome::Accepted(first_id));
    assert_eq!(
        items[1],
        ItemOutcome::Duplicate(first_id),
        "second copy in the same batch"
    );
    assert!(matches!(items[2], ItemOutcome::Accepted(_)));

    let again = event(&mut ids, Some(key(1)), "1");
    let out = log
        .append(batch(3_599_999, None, vec![again]))
        .await
        .unwrap();
    assert_eq!(
        out,
        AppendOutcome::Appended(vec![ItemOutcome::Duplicate(first_id)]),
        "inside retention"
    );

    let late = event(&mut ids, Some(key(1)), "1");
    let late_id = late.id;
    let out = log
        .append(batch(3_600_000, None, vec![late]))
        .await
        .unwrap();
    assert_eq!(
        out,
        AppendOutcome::Appended(vec![ItemOutcome::Accepted(late_id)]),
        "after retention"
    );
    assert_eq!(all(&log).await.len(), 3);
}

#[tokio::test]
async fn delivery_ids_replay_the_first_answer_and_refuse_another_body() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir, 16);
    let mut ids = ulid::Generator::new();
    let claim = |body: u8| DeliveryClaim {
        key: key(9),
        body_hash: key(body),
        retention_ms: 1_000,
    };
    let events = vec![
        event(&mut ids, Some(key(1)), "1"),
        event(&mut ids, Some(key(2)), "2"),
    ];
    let stored: Vec<EventId> = events.iter().map(|e| e.id).collect();
    log.append(batch(0, Some(claim(1)), events)).await.unwrap();

    let retry = vec![
        event(&mut ids, Some(key(1)), "1"),
        event(&mut ids, Some(key(2)), "2"),
    ];
    let out = log.append(batch(500, Some(claim(1)), retry)).await.unwrap();
    assert_eq!(
        out,
        AppendOutcome::DeliveryReplayed(
            stored
                .iter()
                .map(|id| ItemOutcome::Duplicate(*id))
                .collect()
        )
    );

    let conflict = vec![event(&mut ids, Some(key(3)), "3")];
    assert_eq!(
        log.append(batch(500, Some(claim(2)), conflict))
            .await
            .unwrap(),
        AppendOutcome::DeliveryConflict
    );
    assert_eq!(
        all(&log).await.len(),
        2,
        "neither the replay nor the conflict stored anything"
    );

    let expired = vec![event(&mut ids, Some(key(4)), "4")];
    assert!(matches!(
        log.append(batch(1_000, Some(claim(2)), expired))
            .await
            .unwrap(),
        AppendOutcome::Appended(_)
    ));
}

#[tokio::test]
async fn concurrent_appends_share_commits_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(&dir, 1024));
    let mut tasks = Vec::new();
    for t in 0..64u32 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = ulid::Generator::new();
            let mut accepted = 0;
            for i in 0..20u32 {
                let n = t * 100 + i;
                let mut k = [0u8; 16];
                k[..4].copy_from_slice(&n.to_le_bytes());
                let out = log
                    .append(batch(
                        0,
                        None,
                        vec![event(&mut ids, Some(DedupKey(k)), &n.to_string())],
                    ))
                    .await
                    .unwrap();
                if let AppendOutcome::Appended(items) = out {
                    accepted += items.iter().filter(|i| !i.is_duplicate()).count();
                }
            }
            accepted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 64 * 20);
    let mut seen = 0;
    let mut cursor = None;
    loop {
        let page = log
            .read(EventFilter {
                after_seq: cursor,
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap();
        seen += page.events.len();
        match page.next_after_seq {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, 64 * 20, "paging visits every event once");
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_instead_of_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(&dir, 1));
    // Hold the freeze lock, as a backup would: the writer blocks before its next commit,
    // so the one-slot queue fills up.
    let blocker = std::fs::File::open(dir.path().join("log/freeze.lock")).unwrap();
    blocker.lock().unwrap();
    let mut pending = Vec::new();
    let mut overloaded = false;
    let mut ids = ulid::Generator::new();
    for n in 0..4u8 {
        let log2 = log.clone();
        let b = batch(
            0,
            None,
            vec![event(&mut ids, Some(key(n + 10)), &n.to_string())],
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        pending.push(tokio::spawn(async move {
            let fut = log2.append(b);
            let _ = tx.send(());
            fut.await
        }));
        rx.await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut results = Vec::new();
    blocker.unlock().unwrap();
    for p in pending {
        results.push(p.await.unwrap());
    }
    for r in &results {
        match r {
            Err(StoreError::Overloaded { retry_after_ms }) => {
                overloaded = true;
                assert!(*retry_after_ms > 0);
            }
            Ok(AppendOutcome::Appended(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        overloaded,
        "with the writer blocked, 4 appends cannot fit a 1-slot queue: {results:?}"
    );
    let stored = all(&log).await.len();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(stored, ok, "exactly the acknowledged appends are stored");
}

#[tokio::test]
async fn close_finishes_queued_work_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir, 16);
    let mut ids = ulid::Generator::new();
    log.append(batch(0, None, vec![event(&mut ids, None, "1")]))
        .await
        .unwrap();
    log.close().await;
    assert!(!log.is_ready());
    let refused = log
        .append(batch(0, None, vec![event(&mut ids, None, "2")]))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    let reopened = open(&dir, 16);
    assert_eq!(all(&reopened).await.len(), 1);
}
