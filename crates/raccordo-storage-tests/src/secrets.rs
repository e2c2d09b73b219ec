//! `SecretStore`: versions, restarts, single-flight leases.

use crate::Backend;

pub async fn secrets_are_versioned_and_survive_a_restart(backend: &dyn Backend) {
    let opened = backend.open().await;
    let s = opened.stores.secrets.clone();
    assert_eq!(s.get_secret("hubspot:refresh").await.unwrap(), None);
    let v1 = s
        .put_secret("hubspot:refresh", b"r1".to_vec(), None)
        .await
        .unwrap();
    let v2 = s
        .put_secret("hubspot:refresh", b"r2".to_vec(), Some(99))
        .await
        .unwrap();
    assert!(v2 > v1);
    drop(s);
    opened.close().await;
    let opened = backend.open().await;
    let got = opened
        .stores
        .secrets
        .get_secret("hubspot:refresh")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.value, got.expires_at_ms, got.version),
        (b"r2".to_vec(), Some(99), v2)
    );
    opened
        .stores
        .secrets
        .put_secret("zoho:refresh", b"z".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        opened.stores.secrets.secret_names().await.unwrap(),
        ["hubspot:refresh", "zoho:refresh"],
        "every name once, in order"
    );
}

pub async fn two_workers_one_lease(backend: &dyn Backend) {
    let opened = backend.open().await;
    let s = opened.stores.secrets.clone();
    let racers = (0..6).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            (
                i,
                s.try_lease("refresh:zoho", &format!("worker-{i}"), 1_000, 0)
                    .await
                    .unwrap(),
            )
        })
    });
    let winners: Vec<usize> = futures_util::future::join_all(racers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .filter_map(|(i, won)| won.then_some(i))
        .collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    let holder = format!("worker-{}", winners[0]);
    let other = if winners[0] == 0 {
        "worker-1"
    } else {
        "worker-0"
    };
    assert!(
        s.try_lease("refresh:zoho", &holder, 1_000, 500)
            .await
            .unwrap(),
        "the holder extends"
    );
    assert!(
        !s.try_lease("refresh:zoho", other, 1_000, 1_499)
            .await
            .unwrap(),
        "held until 1500"
    );
    assert!(
        s.try_lease("refresh:zoho", other, 1_000, 1_500)
            .await
            .unwrap(),
        "expired: taken over"
    );
    s.release_lease("refresh:zoho", &holder).await.unwrap();
    assert!(
        !s.try_lease("refresh:zoho", &holder, 1_000, 1_600)
            .await
            .unwrap(),
        "a stale holder cannot release another's lease"
    );
    s.release_lease("refresh:zoho", other).await.unwrap();
    assert!(
        s.try_lease("refresh:zoho", &holder, 1_000, 1_700)
            .await
            .unwrap()
    );
}
