//! Alerts from the real binary to real HTTP receivers on loopback.

mod support;

use std::time::Duration;

use raccordo_ingest::auth::{StandardWebhooksConfig, StandardWebhooksVerifier};
use reqwest::StatusCode;
use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_burst_is_delivered_retried_and_dead_lettered() {
    let (slack, slack_seen) = capture_http(vec![200]);
    let (hook, hook_seen) = capture_http(vec![500, 200]);
    let (broken, broken_seen) = capture_http(vec![400, 400, 400, 400, 400, 400]);
    let secret = "whsec_dGVzdC1hbGVydC1zZWNyZXQtMDEyMzQ1Njc4OWFi";
    let extra = format!(
        r#"
[alerts]
retry_first_delay = "100ms"
[[alerts.channels]]
type = "slack"
url = "http://{slack}/services/T000/B000/XXXX"
[[alerts.channels]]
type = "webhook"
url = "http://{hook}/alerts"
secret = "{secret}"
[[alerts.channels]]
type = "webhook"
url = "http://{broken}/gone"
secret = "{secret}"
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), &extra);

    // One event and four copies of it: more than 3 duplicates within 10 minutes.
    for _ in 0..5 {
        assert_eq!(send_event(&server, 42).await, StatusCode::ACCEPTED);
    }

    let slack_requests = wait_for_requests(&slack_seen, 1).await;
    let message: Value = serde_json::from_slice(&slack_requests[0].body).unwrap();
    assert!(
        message["blocks"].as_array().is_some_and(|b| b.len() >= 2),
        "Block Kit: {message}"
    );
    assert!(
        message["text"]
            .as_str()
            .unwrap()
            .contains("4 duplicates from source `web`"),
        "{message}"
    );

    // The generic webhook failed once (500) and was retried; the retry is correctly signed.
    let hook_requests = wait_for_requests(&hook_seen, 2).await;
    let retry = &hook_requests[1];
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, retry.header(name).unwrap().parse().unwrap());
    }
    let verifier = StandardWebhooksVerifier::new(&StandardWebhooksConfig {
        secrets: vec![secret.into()],
        tolerance: Duration::from_secs(300),
    })
    .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    assert!(
        verifier
            .verify(&headers, &retry.body, now)
            .unwrap()
            .is_some(),
        "signature verifies"
    );

    // A 400 is permanent: one attempt, then the dead-letter queue.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let alert = loop {
        let body: Value = client()
            .get(server.url("/api/v1/alerts"))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let alert = body["alerts"][0].clone();
        let statuses: Vec<&str> = alert["deliveries"]
            .as_array()
            .map(|d| d.iter().map(|d| d["status"].as_str().unwrap()).collect())
            .unwrap_or_default();
        if statuses == ["delivered", "delivered", "failed"] {
            break alert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries never settled: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(alert["kind"], "duplicate_burst");
    assert_eq!(alert["deliveries"][1]["attempts"], 2);
    assert_eq!(alert["deliveries"][2]["last_error"], "HTTP 400");
    assert_eq!(
        broken_seen.lock().unwrap().len(),
        1,
        "no retry after a permanent failure"
    );

    let r = client()
        .get(server.url("/api/v1/dlq"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "the dead-letter queue needs the admin scope"
    );
    let dlq: Value = client()
        .get(server.url("/api/v1/dlq"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let letter = &dlq["dead_letters"][0];
    assert_eq!(
        (letter["queue"].as_str(), letter["last_error"].as_str()),
        (Some("alerts"), Some("HTTP 400"))
    );
    let id = letter["id"].as_i64().unwrap();
    let r = client()
        .post(server.url(&format!("/api/v1/dlq/{id}/replay")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    wait_for_requests(&broken_seen, 2).await; // replayed: delivered again (and refused again)

    // The cooldown holds: more duplicates now raise no second alert.
    assert_eq!(send_event(&server, 42).await, StatusCode::ACCEPTED);
    let body: Value = client()
        .get(server.url("/api/v1/alerts"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["alerts"].as_array().unwrap().len(), 1);
}
