//! `KeyValueStore`: expiry, versions, compare-and-swap.

use crate::Backend;

pub async fn put_get_expiry_and_delete(backend: &dyn Backend) {
    let opened = backend.open().await;
    let kv = opened.stores.kv.clone();
    assert_eq!(kv.get("a", 0).await.unwrap(), None);
    let v1 = kv.put("a", b"one".to_vec(), Some(1_000), 0).await.unwrap();
    let got = kv.get("a", 999).await.unwrap().expect("live");
    assert_eq!(
        (got.value.as_slice(), got.version, got.expires_at_ms),
        (&b"one"[..], v1, Some(1_000))
    );
    assert_eq!(
        kv.get("a", 1_000).await.unwrap(),
        None,
        "expired at its expiry time"
    );
    let v2 = kv.put("a", b"two".to_vec(), None, 2_000).await.unwrap();
    assert!(v2 > v1, "versions grow, even across expiry");
    assert!(kv.delete("a", 2_001).await.unwrap());
    assert!(!kv.delete("a", 2_002).await.unwrap(), "already gone");
    assert_eq!(kv.get("a", 2_003).await.unwrap(), None);
    kv.put("b", b"x".to_vec(), Some(10), 0).await.unwrap();
    assert!(kv.purge_expired(100).await.unwrap() >= 1);
    // Several entries at once; a later write of one of them replaces it.
    let entries: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("many:{i}"), format!("v{i}").into_bytes()))
        .collect();
    kv.put_many(&entries, None, 3_000).await.unwrap();
    assert_eq!(
        kv.get("many:13", 3_001).await.unwrap().unwrap().value,
        b"v13"
    );
    kv.put_many(&[("many:13".into(), b"w".to_vec())], None, 3_002)
        .await
        .unwrap();
    assert_eq!(kv.get("many:13", 3_003).await.unwrap().unwrap().value, b"w");
}

pub async fn compare_and_swap_race_has_one_winner(backend: &dyn Backend) {
    let opened = backend.open().await;
    let kv = opened.stores.kv.clone();
    let base = kv.put("cursor", b"0".to_vec(), None, 0).await.unwrap();
    let racers = (0..8).map(|i| {
        let kv = kv.clone();
        tokio::spawn(async move {
            kv.compare_and_swap("cursor", Some(base), format!("{i}").into_bytes(), None, 1)
                .await
                .unwrap()
        })
    });
    let won: Vec<u64> = futures_util::future::join_all(racers)
        .await
        .into_iter()
        .filter_map(Result::unwrap)
        .collect();
    assert_eq!(won.len(), 1, "exactly one writer wins: {won:?}");
    let now = kv.get("cursor", 2).await.unwrap().unwrap();
    assert_eq!(now.version, won[0]);
    // Creating only if absent.
    assert!(
        kv.compare_and_swap("new", None, b"x".to_vec(), None, 3)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        kv.compare_and_swap("new", None, b"y".to_vec(), None, 4)
            .await
            .unwrap()
            .is_none()
    );
    // A stale version loses.
    assert!(
        kv.compare_and_swap("cursor", Some(base), b"z".to_vec(), None, 5)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn entries_survive_a_restart(backend: &dyn Backend) {
    let opened = backend.open().await;
    let version = opened
        .stores
        .kv
        .put("k", b"v".to_vec(), None, 0)
        .await
        .unwrap();
    opened.close().await;
    let opened = backend.open().await;
    let got = opened.stores.kv.get("k", 1).await.unwrap().unwrap();
    assert_eq!((got.value, got.version), (b"v".to_vec(), version));
}
