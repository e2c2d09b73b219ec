//! `ConsumerOffsets`: per consumer and partition, never backwards, durable.

use raccordo_core::{LogPosition, LogPositions};

use crate::Backend;

fn at(pairs: &[(u32, i64)]) -> LogPositions {
    let mut p = LogPositions::default();
    for (partition, offset) in pairs {
        p.advance(LogPosition {
            partition: *partition,
            offset: *offset,
        });
    }
    p
}

pub async fn offsets_never_move_back_and_survive_a_restart(backend: &dyn Backend) {
    let opened = backend.open().await;
    let o = opened.stores.offsets.clone();
    assert_eq!(
        o.load("sync-intake").await.unwrap(),
        LogPositions::default()
    );
    o.commit("sync-intake", &at(&[(0, 10), (1, 5)]))
        .await
        .unwrap();
    o.commit("sync-intake", &at(&[(0, 7), (1, 9)]))
        .await
        .unwrap();
    o.commit("flows", &at(&[(0, 1)])).await.unwrap();
    drop(o);
    opened.close().await;
    let opened = backend.open().await;
    assert_eq!(
        opened.stores.offsets.load("sync-intake").await.unwrap(),
        at(&[(0, 10), (1, 9)])
    );
    assert_eq!(
        opened.stores.offsets.load("flows").await.unwrap(),
        at(&[(0, 1)])
    );
}
