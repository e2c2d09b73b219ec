//! A store from before the segment log (events and claims in SQLite tables) opens with its
//! events, sequence numbers and live claims intact, moved into segments once.

use raccordo_core::{AppendOutcome, EventFilter, EventId, ItemOutcome};
use raccordo_storage_sqlite::{SqliteOptions, SqliteStore};
use raccordo_storage_tests::fixtures::{batch, event, key};
use rusqlite::params;

#[tokio::test]
async fn an_older_store_moves_its_events_and_claims_into_segments_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raccordo.db");
    let mut ids = ulid::Generator::new();
    let first = EventId::generate(&mut ids, 1_000);
    let second = EventId::generate(&mut ids, 1_000);
    {
        // Tables as migrations 1–6 left them, with two events (the second a duplicate of the
        // first, at seq 7 after a gap) and the first one's business-key claim.
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        raccordo_storage_sqlite::migrations::run_until(&mut conn, 6).unwrap();
        conn.execute(
            "INSERT INTO events (seq, id, source, event_time, received_at, payload) VALUES (5, ?1, 'web', 1000, 2000, '{\"canale\":\"sms\"}')",
            params![first.to_string()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO events (seq, id, source, event_time, received_at, payload, duplicate_of) VALUES (7, ?1, 'web', 1000, 2000, '{\"canale\":\"sms\"}', ?2)",
            params![second.to_string(), first.to_string()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO dedup_claims (key, event_id, expires_at) VALUES (?1, ?2, 3600000)",
            params![&key(1).0[..], &first.as_u128().to_be_bytes()[..]],
        )
        .unwrap();
    }
    let store = SqliteStore::open(SqliteOptions::new(&path)).unwrap();
    let stores = store.stores();
    let page = stores
        .query
        .read(EventFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1, "the duplicate is kept but not listed");
    assert_eq!((page.events[0].seq, page.events[0].id), (5, first));
    let tail = stores.log.tail(&Default::default(), 10).await.unwrap();
    assert_eq!(
        tail.iter()
            .map(|e| (e.position.offset, e.duplicate))
            .collect::<Vec<_>>(),
        vec![(5, false), (7, true)],
        "sequence numbers and duplicate flags are kept"
    );
    // The claim is live: the same key is a duplicate of the imported event.
    let out = stores
        .log
        .append(batch(3_000, None, vec![event(&mut ids, Some(key(1)), "x")]))
        .await
        .unwrap();
    assert_eq!(
        out,
        AppendOutcome::Appended(vec![ItemOutcome::Duplicate(first)])
    );
    assert_eq!(
        stores.log.committed().borrow().get(0),
        8,
        "new events follow the imported ones"
    );
    stores.log.close().await;
    drop(store);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('events', 'dedup_claims', 'delivery_claims')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "the old tables are gone");
    drop(conn);
    // Opening again imports nothing twice.
    let store = SqliteStore::open(SqliteOptions::new(&path)).unwrap();
    let tail = store
        .stores()
        .log
        .tail(&Default::default(), 10)
        .await
        .unwrap();
    assert_eq!(tail.len(), 3);
}
