//! `RateLimitStore`: atomic takes, refill, the wait it reports.

use raccordo_core::{Admission, BucketSpec};

use crate::Backend;

pub async fn concurrent_takes_never_overdraw(backend: &dyn Backend) {
    let opened = backend.open().await;
    let r = opened.stores.rate_limits.clone();
    let spec = BucketSpec::per_interval(10, 10_000);
    let takers = (0..25).map(|_| {
        let r = r.clone();
        tokio::spawn(async move { r.take("hubspot:app", spec, 1.0, 0).await.unwrap() })
    });
    let allowed = futures_util::future::join_all(takers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .filter(|a| matches!(a, Admission::Allowed { .. }))
        .count();
    assert_eq!(allowed, 10, "exactly the bucket's capacity");
}

pub async fn buckets_refill_and_say_when(backend: &dyn Backend) {
    let opened = backend.open().await;
    let r = opened.stores.rate_limits.clone();
    let spec = BucketSpec::per_interval(2, 2_000); // one token a second
    for _ in 0..2 {
        assert!(matches!(
            r.take("b", spec, 1.0, 0).await.unwrap(),
            Admission::Allowed { .. }
        ));
    }
    assert_eq!(
        r.take("b", spec, 1.0, 0).await.unwrap(),
        Admission::Limited {
            retry_after_ms: 1_000
        }
    );
    assert!(matches!(
        r.take("b", spec, 1.0, 1_000).await.unwrap(),
        Admission::Allowed { .. }
    ));
    assert!(
        matches!(
            r.take("other", spec, 2.0, 1_000).await.unwrap(),
            Admission::Allowed { .. }
        ),
        "buckets are apart"
    );
}
