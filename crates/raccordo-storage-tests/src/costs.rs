//! `CampaignCosts`: a day's figure is replaced, other days stay.

use crate::Backend;

pub async fn costs_replace_per_day(backend: &dyn Backend) {
    let opened = backend.open().await;
    let c = opened.stores.costs.clone();
    c.put_costs("black-friday", &[(20_000, 1_000), (20_001, 2_000)])
        .await
        .unwrap();
    c.put_costs("black-friday", &[(20_001, 2_500)])
        .await
        .unwrap();
    c.put_costs("a-first", &[(20_000, 1)]).await.unwrap();
    drop(c);
    opened.close().await;
    let opened = backend.open().await;
    assert_eq!(
        opened.stores.costs.all_costs().await.unwrap(),
        vec![
            ("a-first".to_string(), 20_000, 1),
            ("black-friday".to_string(), 20_000, 1_000),
            ("black-friday".to_string(), 20_001, 2_500),
        ]
    );
}
