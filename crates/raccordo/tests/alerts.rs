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
    let statuses = |body: &Value| -> Vec<String> {
        body["alerts"][0]["deliveries"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|d| d["status"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let body = poll_json(&server, "/api/v1/alerts", READ_TOKEN, |b| {
        statuses(b) == ["delivered", "delivered", "failed"]
    })
    .await;
    let alert = body["alerts"][0].clone();
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
    let dlq = get_json(&server, "/api/v1/dlq", ADMIN_TOKEN).await;
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
    let body = get_json(&server, "/api/v1/alerts", READ_TOKEN).await;
    assert_eq!(body["alerts"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_reach_a_real_smtp_server_over_starttls() {
    let Some(smtp) = support::SmtpSink::start().await else {
        return;
    };
    let port = smtp.port;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let extra = format!(
        r#"
[[alerts.channels]]
type = "email"
host = "127.0.0.1"
port = {port}
tls = "starttls"
from = "raccordo <alerts@raccordo.test>"
to = ["ops@raccordo.test", "marketing@raccordo.test"]
ca_file = "{FIXTURES}/smtp_cert.pem"
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), &extra);
    for _ in 0..5 {
        assert_eq!(send_event(&server, 7).await, StatusCode::ACCEPTED);
    }
    loop {
        let text = smtp.text();
        if text.contains("Subject: [raccordo] duplicate_burst") {
            assert!(text.contains("4 duplicates from source `web`"), "{text}");
            assert!(
                text.contains("ops@raccordo.test") && text.contains("marketing@raccordo.test"),
                "{text}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline + Duration::from_secs(10),
            "no mail arrived: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker records the outcome right after the SMTP exchange.
    let body = poll_json(&server, "/api/v1/alerts", READ_TOKEN, |b| {
        b["alerts"][0]["deliveries"][0]["status"] == "delivered"
    })
    .await;
    assert_eq!(body["alerts"][0]["deliveries"][0]["kind"], "email");
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_rate_and_clock_skew_rules_alert_and_health_shows_the_sources() {
    let (hook, hook_seen) = capture_http(vec![]);
    let secret = "whsec_dGVzdC1hbGVydC1zZWNyZXQtMDEyMzQ1Njc4OWFi";
    let extra = format!(
        r#"
[metrics]
window = "1m"
[alerts.failure_rate]
threshold = 0.5
min_events = 4
[alerts.clock_skew]
threshold = "2m"
[[alerts.channels]]
type = "webhook"
url = "http://{hook}/alerts"
secret = "{secret}"
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), &extra);

    // A window that ended within the last two window lengths: 3 of 4 events failed.
    let mut batch = Vec::new();
    for n in 0..4 {
        let mut e = event(100 + n);
        e["timestamp"] = serde_json::json!(now_rfc3339(-90_000));
        e["stato"] = serde_json::json!(if n == 0 { "completato" } else { "fallito" });
        batch.push(e);
    }
    assert_eq!(
        send_batch(&server, &Value::Array(batch)).await,
        StatusCode::ACCEPTED
    );
    // A current event moves the watermark past that window, which fires final.
    assert_eq!(send_event(&server, 1).await, StatusCode::ACCEPTED);
    let got = wait_for_requests(&hook_seen, 1).await;
    let alert: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(alert["data"]["kind"], "failure_rate", "{alert}");
    assert_eq!(alert["data"]["source"], "all");
    assert!(
        alert["data"]["message"]
            .as_str()
            .unwrap()
            .contains("75 % of 4 events failed"),
        "{alert}"
    );

    // An event three minutes in the future: the sender's clock is ahead of ours.
    let mut ahead = event(7);
    ahead["timestamp"] = serde_json::json!(now_rfc3339(180_000));
    assert_eq!(
        send_batch(&server, &Value::Array(vec![ahead])).await,
        StatusCode::ACCEPTED
    );
    let got = wait_for_requests(&hook_seen, 3).await;
    let kinds: Vec<Value> = got
        .iter()
        .map(|c| serde_json::from_slice::<Value>(&c.body).unwrap()["data"]["kind"].clone())
        .collect();
    assert!(kinds.contains(&Value::from("clock_skew")), "{kinds:?}");

    let history = get_json(&server, "/api/v1/alerts", READ_TOKEN).await;
    let listed: Vec<&str> = history["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&"failure_rate") && listed.contains(&"clock_skew"),
        "{listed:?}"
    );

    let health = get_json(&server, "/api/v1/ingest/health", READ_TOKEN).await;
    let web = health["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "web")
        .unwrap_or_else(|| panic!("{health}"));
    assert_eq!(web["accepted"], 6, "{health}");
    assert!(web["clock_skew_ms"].as_i64().unwrap() > 170_000, "{health}");
    assert_eq!(health["ready"], true);
}
