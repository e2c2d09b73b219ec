//! `EventLog` and `EventQuery`: dedup claims with the append, tailing with positions and
//! the commit signal, filtered reads, restarts.

use raccordo_core::{AppendOutcome, DeliveryClaim, EventFilter, ItemOutcome, LogPositions};

use crate::Backend;
use crate::fixtures::{batch, event, key};

pub async fn append_tail_and_query(backend: &dyn Backend) {
    let opened = backend.open().await;
    let (log, query) = (opened.stores.log.clone(), opened.stores.query.clone());
    let mut committed = log.committed();
    let start = committed.borrow_and_update().clone();
    let mut ids = ulid::Generator::new();
    let first = event(&mut ids, Some(key(1)), "email");
    let first_id = first.id;
    let out = log
        .append(batch(
            0,
            None,
            vec![
                first,
                event(&mut ids, Some(key(1)), "email"),
                event(&mut ids, Some(key(2)), "sms"),
            ],
        ))
        .await
        .unwrap();
    let AppendOutcome::Appended(items) = out else {
        panic!("{out:?}")
    };
    assert_eq!(items[0], ItemOutcome::Accepted(first_id));
    assert_eq!(
        items[1],
        ItemOutcome::Duplicate(first_id),
        "a copy in the same batch"
    );
    assert!(committed.has_changed().unwrap(), "the commit signal moved");
    let head = committed.borrow_and_update().clone();
    assert!(start.is_behind(&head));

    let tailed = log.tail(&start, 100).await.unwrap();
    assert_eq!(tailed.len(), 3, "tails carry duplicates too, flagged");
    assert_eq!(
        tailed.iter().map(|e| e.duplicate).collect::<Vec<_>>(),
        [false, true, false]
    );
    assert_eq!(tailed[0].id, first_id);
    assert_eq!(tailed[0].source.as_str(), "test");
    let mut read = LogPositions::default();
    for e in &tailed {
        assert!(
            e.position.offset > read.get(e.position.partition),
            "offsets grow per partition"
        );
        read.advance(e.position);
    }
    assert!(read.covers(&head), "the tail reached the head");
    assert!(log.tail(&read, 100).await.unwrap().is_empty());
    assert_eq!(
        log.tail(&start, 1).await.unwrap().len(),
        1,
        "the limit holds"
    );

    // The query side leaves duplicates out and filters on payload fields.
    let all = query
        .read(EventFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.events.len(), 2);
    let sms = query
        .read(EventFilter {
            limit: 100,
            fields: vec![("canale".into(), "sms".into())],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sms.events.len(), 1);
    let page = query
        .read(EventFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    let next = query
        .read(EventFilter {
            limit: 1,
            after_seq: page.next_after_seq,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next.events.len(), 1);
    assert_ne!(next.events[0].id, page.events[0].id);
    assert!(log.is_ready());

    // The same delivery id: the first answer again; with another body: a conflict.
    let claim = DeliveryClaim {
        key: key(7),
        body_hash: key(8),
        retention_ms: 10_000,
    };
    let delivered = log
        .append(batch(
            1,
            Some(claim.clone()),
            vec![event(&mut ids, Some(key(3)), "email")],
        ))
        .await
        .unwrap();
    let AppendOutcome::Appended(delivered) = delivered else {
        panic!()
    };
    let replay = log
        .append(batch(
            2,
            Some(claim.clone()),
            vec![event(&mut ids, Some(key(4)), "email")],
        ))
        .await
        .unwrap();
    assert_eq!(
        replay,
        AppendOutcome::DeliveryReplayed(vec![ItemOutcome::Duplicate(delivered[0].id())])
    );
    let conflict = DeliveryClaim {
        body_hash: key(9),
        ..claim
    };
    assert_eq!(
        log.append(batch(3, Some(conflict), vec![])).await.unwrap(),
        AppendOutcome::DeliveryConflict
    );
}

pub async fn dedup_claims_survive_a_restart(backend: &dyn Backend) {
    let mut ids = ulid::Generator::new();
    let claim = DeliveryClaim {
        key: key(7),
        body_hash: key(8),
        retention_ms: 10_000,
    };
    let first = event(&mut ids, Some(key(1)), "email");
    let first_id = first.id;
    let opened = backend.open().await;
    opened
        .stores
        .log
        .append(batch(0, Some(claim.clone()), vec![first]))
        .await
        .unwrap();
    opened.close().await;

    let opened = backend.open().await;
    let log = opened.stores.log.clone();
    assert_eq!(
        log.committed().borrow().total(),
        log.tail(&LogPositions::default(), 10).await.unwrap().len() as i64
    );
    let again = log
        .append(batch(
            1_000,
            None,
            vec![event(&mut ids, Some(key(1)), "email")],
        ))
        .await
        .unwrap();
    assert_eq!(
        again,
        AppendOutcome::Appended(vec![ItemOutcome::Duplicate(first_id)]),
        "business key remembered"
    );
    let replay = log
        .append(batch(
            1_000,
            Some(claim.clone()),
            vec![event(&mut ids, Some(key(2)), "sms")],
        ))
        .await
        .unwrap();
    assert_eq!(
        replay,
        AppendOutcome::DeliveryReplayed(vec![ItemOutcome::Duplicate(first_id)]),
        "delivery remembered"
    );
    let late = log
        .append(batch(
            3_600_000,
            Some(claim),
            vec![event(&mut ids, Some(key(1)), "email")],
        ))
        .await
        .unwrap();
    assert!(
        matches!(late, AppendOutcome::Appended(ref items) if !items[0].is_duplicate()),
        "forgotten after retention: {late:?}"
    );
}

/// A rewrite that picks `"canale":"email"` and writes `zzzzz` over it (same length).
fn erase_email() -> raccordo_core::PayloadRewrite {
    std::sync::Arc::new(|_source: &str, payload: &str| {
        payload
            .contains(r#""canale":"email""#)
            .then(|| payload.replace(r#""canale":"email""#, r#""canale":"zzzzz""#))
    })
}

async fn canali(log: &dyn raccordo_core::EventQuery) -> Vec<String> {
    let all: raccordo_core::EventSelector = std::sync::Arc::new(|_, _| true);
    log.find(all)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.payload["canale"].as_str().unwrap_or("").to_string())
        .collect()
}

pub async fn erasure_rewrites_events_in_place_and_frees_their_claims(backend: &dyn Backend) {
    let opened = backend.open().await;
    let (log, query) = (opened.stores.log.clone(), opened.stores.query.clone());
    let mut ids = ulid::Generator::new();
    log.append(batch(
        0,
        None,
        vec![
            event(&mut ids, Some(key(1)), "email"),
            event(&mut ids, Some(key(2)), "sms"),
            event(&mut ids, Some(key(1)), "email"),
        ],
    ))
    .await
    .unwrap();
    let erased = log.erase(erase_email()).await.unwrap();
    assert_eq!(
        erased.ids.len(),
        2,
        "the event and its business-key duplicate"
    );
    assert_eq!(erased.claims, 1, "the duplicate holds no claim");
    assert_eq!(canali(query.as_ref()).await, ["zzzzz", "sms", "zzzzz"]);
    assert_eq!(
        log.erase(erase_email()).await.unwrap(),
        Default::default(),
        "nothing left to erase"
    );
    // The erased event's key is free again; the other's is still held.
    let again = log
        .append(batch(
            1,
            None,
            vec![
                event(&mut ids, Some(key(1)), "sms"),
                event(&mut ids, Some(key(2)), "sms"),
            ],
        ))
        .await
        .unwrap();
    let AppendOutcome::Appended(items) = again else {
        panic!("{again:?}")
    };
    assert!(
        !items[0].is_duplicate() && items[1].is_duplicate(),
        "{items:?}"
    );
    // The query side reads the rewritten payloads; a length change is refused.
    let page = query
        .read(EventFilter {
            limit: 100,
            fields: vec![("canale".into(), "zzzzz".into())],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1, "the duplicate is left out of queries");
    opened.close().await;

    let opened = backend.open().await;
    assert_eq!(
        canali(opened.stores.query.as_ref()).await,
        ["zzzzz", "sms", "zzzzz", "sms", "sms"],
        "after a restart"
    );
    opened.close().await;
}
