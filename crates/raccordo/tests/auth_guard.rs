//! Failed authentication on the real binary: counted per source, an address that fails too
//! often is blocked (webhooks and the admin API alike) and an alert goes out; other
//! addresses are untouched; an admin can lift the block. The admin API has its own rate
//! limit per address.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

fn client_from(local: &str) -> reqwest::Client {
    support::client_from(local, Duration::from_secs(10))
}

async fn post(client: &reqwest::Client, server: &Server, key: &str) -> reqwest::Response {
    client
        .post(server.url("/webhooks/in/web"))
        .header("x-api-key", key)
        .json(&event(1))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failures_block_the_address_alert_and_can_be_lifted() {
    let (hook, hook_seen) = capture_http(vec![200; 4]);
    let extra = format!(
        r#"
[ingest.auth_failures]
max_failures = 5
window = "1m"
block_for = "10m"

[[alerts.channels]]
type = "webhook"
url = "http://{hook}/alerts"
secret = "whsec_dGVzdC1hbGVydC1zZWNyZXQtMDEyMzQ1Njc4OWFi"
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), &extra);
    let attacker = client_from("127.0.0.5");
    let neighbour = client_from("127.0.0.6");

    for _ in 0..5 {
        let r = post(&attacker, &server, "wrong-key-0123456789").await;
        assert_eq!(r.status(), 401);
    }
    // Blocked now: even the right key is refused, with how long to wait.
    let r = post(&attacker, &server, API_KEY).await;
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((590..=600).contains(&retry_after), "{retry_after}");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "urn:raccordo:problem:address-blocked");
    // The admin API refuses the address too.
    let r = attacker
        .get(server.url("/api/v1/events"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);

    // Another address is served as before.
    assert_eq!(post(&neighbour, &server, API_KEY).await.status(), 202);

    // The failures are counted per source and reason.
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "raccordo_auth_failures_total{source=\"web\",reason=\"invalid-credentials\"}"
        ) && l.ends_with(" 5")),
        "{metrics}"
    );

    // One alert names the address.
    let alerts = wait_for_requests(&hook_seen, 1).await;
    let alert = String::from_utf8_lossy(&alerts[0].body).to_string();
    assert!(
        alert.contains("auth-failures") && alert.contains("127.0.0.5"),
        "{alert}"
    );

    // Listed, then lifted by an admin from another address.
    let listed = get_json(&server, "/api/v1/security/blocked", ADMIN_TOKEN).await;
    assert_eq!(listed["blocked"][0]["address"], "127.0.0.5", "{listed}");
    assert_eq!(listed["blocked"][0]["source"], "web");
    let lifted = client()
        .delete(server.url("/api/v1/security/blocked/127.0.0.5"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), 204);
    assert_eq!(post(&attacker, &server, API_KEY).await.status(), 202);
    let again = client()
        .delete(server.url("/api/v1/security/blocked/127.0.0.5"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn guessing_admin_tokens_blocks_and_the_admin_api_has_its_own_rate_limit() {
    let extra = r#"
[ingest.auth_failures]
max_failures = 3

[admin]
limits = { per_address_per_second = 5 }
"#;
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), extra);

    // Guessing tokens.
    let guesser = client_from("127.0.0.7");
    for _ in 0..3 {
        let r = guesser
            .get(server.url("/api/v1/events"))
            .bearer_auth("not-a-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = post(&guesser, &server, API_KEY).await;
    assert_eq!(r.status(), 429, "blocked for webhooks too");

    // The rate limit: a burst of twice the rate passes, the rest is told to wait.
    let busy = client_from("127.0.0.8");
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = busy
            .get(server.url("/api/v1/events?limit=1"))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status == 429 {
            assert!(r.headers().contains_key("retry-after"));
            let problem: Value = r.json().await.unwrap();
            assert_eq!(problem["type"], "urn:raccordo:problem:rate-limited");
        }
        statuses.push(status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((10..30).contains(&ok), "{statuses:?}");
    assert!(statuses.contains(&429));
    // Webhooks from that address are not the admin API's business.
    assert_eq!(post(&busy, &server, API_KEY).await.status(), 202);
    // Nor is another address.
    let calm = client_from("127.0.0.9");
    let r = calm
        .get(server.url("/api/v1/events?limit=1"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_actions_are_audited_by_token_name_and_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    // An admin action (nothing to unblock: answered 404, still an action taken).
    let r = client()
        .delete(server.url("/api/v1/security/blocked/192.0.2.1?note=secret-value"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Not audited: a read, a webhook, and an admin route refused to a read-only token.
    let _ = get_json(&server, "/api/v1/events", READ_TOKEN).await;
    assert_eq!(send_event(&server, 1).await, 202);
    let refused = client()
        .delete(server.url("/api/v1/security/blocked/192.0.2.1"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    let page = get_json(&server, "/api/v1/audit", ADMIN_TOKEN).await;
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{page}");
    let record = &records[0];
    assert_eq!(record["actor"], "ops", "the token's name, never the token");
    assert_eq!(
        record["action"],
        "DELETE /api/v1/security/blocked/{address}"
    );
    assert_eq!(record["target"], "/api/v1/security/blocked/192.0.2.1");
    assert_eq!(record["status"], 404);
    assert!(
        !page.to_string().contains("secret-value"),
        "no query values"
    );
    assert!(!page.to_string().contains(ADMIN_TOKEN));
    // Read-only tokens cannot read it.
    let r = client()
        .get(server.url("/api/v1/audit"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_in_paths_queries_and_credentials_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_configured(dir.path(), "");
    let pasted = "sk-live-PASTED0123456789";
    // A key pasted where a source name goes, and into queries.
    for path in [
        format!("/webhooks/in/{pasted}"),
        format!("/webhooks/in/web?api_key={pasted}"),
        format!("/api/v1/events/{pasted}"),
    ] {
        let _ = client()
            .post(server.url(&path))
            .header("x-api-key", "wrong-key-PASTED-as-well")
            .json(&event(1))
            .send()
            .await
            .unwrap();
    }
    let _ = client()
        .get(server.url("/api/v1/events"))
        .bearer_auth("not-the-token-PASTED-too")
        .send()
        .await
        .unwrap();
    assert_eq!(send_event(&server, 2).await, 202);
    let _ = get_json(&server, "/api/v1/events", ADMIN_TOKEN).await;
    server.terminate();
    let stdout = server.stdout.lock().unwrap().join("\n");
    let stderr = server.stderr_text();
    assert!(
        stdout.contains("\"route\""),
        "requests are logged by route: {stdout}"
    );
    for secret in ["PASTED", API_KEY, ADMIN_TOKEN, READ_TOKEN, WHSEC] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} reached the log:\n{stdout}\n{stderr}"
        );
    }
}
