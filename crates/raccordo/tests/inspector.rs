//! The request inspector on the real binary: refused requests are kept with credentials
//! redacted, listed and shown, and replayed once the source is fixed (across a restart).

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::*;

const LEADS_KEY: &str = "leads-api-key-0123456789";

async fn post_lead(server: &Server, key: &str, body: &Value) -> StatusCode {
    client()
        .post(server.url("/webhooks/in/leads?api_key=query-secret-42"))
        .header("x-api-key", key)
        .header("idempotency-key", "lead-7")
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
}

async fn replay(server: &Server, id: &str, token: &str) -> (StatusCode, Value) {
    let answer = client()
        .post(server.url(&format!("/api/v1/requests/{id}/replay")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_are_kept_redacted_and_replayed_once_the_source_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_configured(dir.path(), "");

    // The `leads` schema requires `at`; this form tool does not send it.
    let lead = json!({"email": "ada@example.it"});
    assert_eq!(
        post_lead(&server, LEADS_KEY, &lead).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        post_lead(&server, "wrong-key-0123456789", &lead).await,
        StatusCode::UNAUTHORIZED
    );
    // A path naming no source is a scanner's, not a sender's mistake: not kept.
    let unknown = client()
        .post(server.url("/webhooks/in/nope"))
        .json(&lead)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let page = poll_json(&server, "/api/v1/requests", READ_TOKEN, |p| {
        p["requests"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    let listed = page["requests"].as_array().unwrap();
    let (unauthorized, invalid) = (&listed[0], &listed[1]);
    assert_eq!(unauthorized["status"], 401, "newest first: {page}");
    assert_eq!(unauthorized["replayable"], false);
    assert_eq!(invalid["status"], 422);
    assert_eq!(invalid["source"], "leads");
    assert_eq!(invalid["errors"], 1);
    assert_eq!(invalid["replayable"], true);
    let filtered = get_json(&server, "/api/v1/requests?status=401", READ_TOKEN).await;
    assert_eq!(filtered["requests"].as_array().unwrap().len(), 1);

    // Shown whole, with no credential in it.
    let id = invalid["id"].as_str().unwrap().to_string();
    let shown = get_json(&server, &format!("/api/v1/requests/{id}"), READ_TOKEN).await;
    assert_eq!(
        serde_json::from_str::<Value>(shown["body"].as_str().unwrap()).unwrap(),
        lead
    );
    assert_eq!(shown["problem"]["errors"][0]["pointer"], "/at", "{shown}");
    let text = shown.to_string();
    for secret in [LEADS_KEY, "query-secret-42"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(text.contains("[redacted]"), "{text}");
    let all = get_json(&server, "/api/v1/requests", READ_TOKEN)
        .await
        .to_string()
        + &get_json(
            &server,
            &format!("/api/v1/requests/{}", unauthorized["id"].as_str().unwrap()),
            READ_TOKEN,
        )
        .await
        .to_string();
    assert!(!all.contains("wrong-key-0123456789"), "{all}");

    // Replaying before the fix is refused again, and that is recorded; a read token cannot
    // replay, and a request that failed authentication cannot be replayed at all.
    let (status, problem) = replay(&server, &id, ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(
        replay(&server, &id, READ_TOKEN).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, problem) =
        replay(&server, unauthorized["id"].as_str().unwrap(), ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(all_events(&server).await.is_empty());

    // The fix: the schema no longer requires `at` (arrival time is used). Restart on it.
    std::fs::write(
        dir.path().join("lead.schema.json"),
        r#"{"type":"object","required":["email"],"properties":{"email":{"type":"string","format":"email"},"at":{"type":"string","format":"date-time"}}}"#,
    )
    .unwrap();
    server.terminate();
    let server = Server::start(
        dir.path(),
        &[
            "--config",
            dir.path().join("raccordo.toml").to_str().unwrap(),
        ],
    );
    let shown = get_json(&server, &format!("/api/v1/requests/{id}"), READ_TOKEN).await;
    assert_eq!(
        shown["replay"]["status"], 422,
        "the first replay is kept: {shown}"
    );
    let (status, answer) = replay(&server, &id, ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["status"], "accepted");
    let events = all_events(&server).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["source"], "leads");
    assert_eq!(events[0]["id"], answer["id"]);
    let (status, _) = replay(&server, &id, ADMIN_TOKEN).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an accepted replay is not repeated"
    );
    let page = get_json(&server, "/api/v1/requests", READ_TOKEN).await;
    assert_eq!(page["requests"][1]["replayed"], 202, "{page}");
}
