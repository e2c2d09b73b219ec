//! `WindowStore`: results replace, checkpoints prune, scopes stay apart, restarts keep all.

use raccordo_core::{LogPosition, LogPositions, WindowCheckpoint, WindowResult};

use crate::Backend;

fn result(start: i64, value: &str, stats: &str) -> WindowResult {
    WindowResult {
        window_start_ms: start,
        window_end_ms: start + 300_000,
        dimension: "canale".into(),
        value: value.into(),
        stats: stats.into(),
    }
}

pub async fn results_checkpoints_and_scopes(backend: &dyn Backend) {
    let opened = backend.open().await;
    let w = opened.stores.windows.clone();
    assert_eq!(w.checkpoint("live").await.unwrap(), None);
    w.put_results(
        "live",
        vec![
            result(0, "email", "{\"n\":1}"),
            result(300_000, "email", "{\"n\":2}"),
        ],
    )
    .await
    .unwrap();
    w.put_results("live", vec![result(0, "email", "{\"n\":3}")])
        .await
        .unwrap();
    w.put_results("other", vec![result(0, "sms", "{}")])
        .await
        .unwrap();
    let mut positions = LogPositions::default();
    positions.advance(LogPosition {
        partition: 0,
        offset: 41,
    });
    positions.advance(LogPosition {
        partition: 3,
        offset: 7,
    });
    // Forget windows that ended before 400 000: the first one goes.
    w.put_checkpoint(
        "live",
        WindowCheckpoint {
            positions: positions.clone(),
            state: "{\"op\":1}".into(),
        },
        400_000,
    )
    .await
    .unwrap();
    drop(w);
    opened.close().await;

    let opened = backend.open().await;
    let w = opened.stores.windows.clone();
    let saved = w.checkpoint("live").await.unwrap().unwrap();
    assert_eq!(saved.positions, positions);
    assert_eq!(saved.state, "{\"op\":1}");
    let live = w.results("live").await.unwrap();
    assert_eq!(live, vec![result(300_000, "email", "{\"n\":2}")]);
    assert_eq!(
        w.results("other").await.unwrap().len(),
        1,
        "scopes are apart"
    );
    // Ranges: windows overlapping [from, to), in the scope only.
    w.put_results(
        "live",
        vec![result(600_000, "sms", "{}"), result(900_000, "email", "{}")],
    )
    .await
    .unwrap();
    let starts =
        |rows: Vec<WindowResult>| rows.iter().map(|r| r.window_start_ms).collect::<Vec<_>>();
    assert_eq!(
        starts(w.results_between("live", 600_000, 900_000).await.unwrap()),
        vec![600_000],
        "the window ending at `from` is out, the one starting at `to` too"
    );
    assert_eq!(
        starts(w.results_between("live", 600_001, 900_001).await.unwrap()),
        vec![600_000, 900_000]
    );
    assert!(
        w.results_between("other", 600_000, 900_000)
            .await
            .unwrap()
            .is_empty()
    );
    w.clear("live").await.unwrap();
    assert_eq!(w.checkpoint("live").await.unwrap(), None);
    assert!(w.results("live").await.unwrap().is_empty());
    assert_eq!(w.results("other").await.unwrap().len(), 1);
}
