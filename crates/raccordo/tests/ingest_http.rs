//! The ingest routes of the real binary, over real sockets.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::*;

const CONVERSION: &str = "/api/v1/eventi/conversione";

async fn post_key(server: &Server, path: &str, key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(server.url(path))
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn assert_problem(status: StatusCode, expected: StatusCode, body: &Value, slug: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(
        body["type"],
        format!("urn:raccordo:problem:{slug}"),
        "{body}"
    );
    assert_eq!(body["status"], expected.as_u16(), "{body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
}

async fn problem(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(content_type, "application/problem+json");
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_event_is_accepted_once_and_then_answered_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    // Both sendings fall in the current 5-minute bucket, whatever the time of the run: the
    // first 1 s after the bucket starts, the re-send a minute later (within the allowed skew).
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let bucket = raccordo_ingest::dedup::bucket_start(now, 300_000);
    let at = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let mut e = event(1);
    e["timestamp"] = json!(at(bucket + 1_000));
    let first = post_key(&server, CONVERSION, API_KEY, &e).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "accepted");
    let id = first["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("evt_"));

    // The same event re-sent with another timestamp in the same 5-minute bucket.
    let mut again = e.clone();
    again["timestamp"] = json!(at(bucket + 61_000));
    let again_body: Value = post_key(&server, CONVERSION, API_KEY, &again)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again_body, json!({"id": id, "status": "duplicate"}));
    let exact: Value = post_key(&server, CONVERSION, API_KEY, &e)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(exact, json!({"id": id, "status": "duplicate"}));

    let stored = all_events(&server).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["id"], id.as_str());
    assert_eq!(stored[0]["source"], "web");
    assert_eq!(stored[0]["payload"]["id_cliente"], "CLIENTE-TEST-000001");
    assert!(
        metric(
            &server,
            "raccordo_ingest_events_total{source=\"web\",outcome=\"duplicate\"}"
        )
        .await
        .unwrap()
            >= 1.0
    );
    assert!(
        metric(
            &server,
            "raccordo_dedup_hits_total{source=\"web\",layer=\"business_key\"}"
        )
        .await
        .unwrap()
            >= 1.0
    );
}

async fn post_signed(server: &Server, id: &str, ts: i64, body: &[u8]) -> reqwest::Response {
    let mut request = client()
        .post(server.url(CONVERSION))
        .header("content-type", "application/json");
    for (k, v) in signed(WHSEC, id, ts, body) {
        request = request.header(k, v);
    }
    request.body(body.to_vec()).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_webhooks_batches_replay_conflict_and_reject_bad_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let batch = json!([event(10), event(11), event(10)]);
    let body = serde_json::to_vec(&batch).unwrap();
    let response = post_signed(&server, "msg_1", now, &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let items: Vec<Value> = response.json().await.unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["status"], "accepted");
    assert_eq!(items[1]["status"], "accepted");
    assert_eq!(
        items[2],
        json!({"id": items[0]["id"], "status": "duplicate"}),
        "same event twice in one batch"
    );

    // A retry of the same delivery gets the original ids back, all duplicates.
    let retry: Vec<Value> = post_signed(&server, "msg_1", now, &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        retry.iter().map(|i| i["id"].clone()).collect::<Vec<_>>(),
        items.iter().map(|i| i["id"].clone()).collect::<Vec<_>>()
    );
    assert!(retry.iter().all(|i| i["status"] == "duplicate"));
    assert!(
        metric(
            &server,
            "raccordo_dedup_hits_total{source=\"web\",layer=\"delivery_id\"}"
        )
        .await
        .unwrap()
            >= 3.0
    );

    // The same delivery id with another body is a conflict, and stores nothing.
    let other = serde_json::to_vec(&json!([event(12)])).unwrap();
    let (status, p) = problem(post_signed(&server, "msg_1", now, &other).await).await;
    assert_problem(status, StatusCode::CONFLICT, &p, "delivery-id-conflict");

    // Tampered body, wrong secret, stale timestamp.
    let mut request = client()
        .post(server.url(CONVERSION))
        .header("content-type", "application/json");
    for (k, v) in signed(WHSEC, "msg_2", now, &body) {
        request = request.header(k, v);
    }
    let (status, p) = problem(request.body(other.clone()).send().await.unwrap()).await;
    assert_problem(status, StatusCode::UNAUTHORIZED, &p, "invalid-credentials");
    let (status, p) = problem(post_signed(&server, "msg_3", now - 600, &other).await).await;
    assert_problem(
        status,
        StatusCode::UNAUTHORIZED,
        &p,
        "timestamp-outside-tolerance",
    );
    let sig = signed(WHSEC, "msg_2", now, &other);
    assert!(
        !p.to_string().contains(&sig[2].1[3..]),
        "signature echoed: {p}"
    );

    assert_eq!(all_events(&server).await.len(), 2);
}

fn jwt(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    kid: Option<&str>,
    claims: Value,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

async fn post_bearer(server: &Server, path: &str, token: &str, body: &Value) -> reqwest::Response {
    client()
        .post(server.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_sources_check_signature_expiry_issuer_audience_and_not_before() {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let good = json!({"iss":"crm.example","aud":"raccordo","exp":now+60,"iat":now});
    let path = "/webhooks/in/jwt-hs";

    let ok = post_bearer(
        &server,
        path,
        &jwt(Algorithm::HS256, &hs, None, good.clone()),
        &event(20),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::ACCEPTED);

    let cases = [
        (
            json!({"iss":"crm.example","aud":"raccordo","exp":now-60}),
            "token-expired",
        ),
        (
            json!({"iss":"crm.example","aud":"raccordo","exp":now-3}),
            "accepted-within-leeway",
        ),
        (
            json!({"iss":"other","aud":"raccordo","exp":now+60}),
            "invalid-credentials",
        ),
        (
            json!({"iss":"crm.example","aud":"someone-else","exp":now+60}),
            "invalid-credentials",
        ),
        (
            json!({"iss":"crm.example","aud":"raccordo","exp":now+60,"nbf":now+120}),
            "invalid-credentials",
        ),
        (
            json!({"iss":"crm.example","aud":"raccordo"}),
            "invalid-credentials",
        ),
    ];
    for (i, (claims, slug)) in cases.into_iter().enumerate() {
        let token = jwt(Algorithm::HS256, &hs, None, claims.clone());
        let response = post_bearer(&server, path, &token, &event(21 + i as u32)).await;
        if slug == "accepted-within-leeway" {
            assert_eq!(response.status(), StatusCode::ACCEPTED, "{claims}");
            continue;
        }
        let (status, p) = problem(response).await;
        assert_problem(status, StatusCode::UNAUTHORIZED, &p, slug);
        assert!(!p.to_string().contains(&token), "token echoed");
    }
    let wrong_key = EncodingKey::from_secret(b"another-secret-that-is-long-enough-000");
    let (status, p) = problem(
        post_bearer(
            &server,
            path,
            &jwt(Algorithm::HS256, &wrong_key, None, good.clone()),
            &event(30),
        )
        .await,
    )
    .await;
    assert_problem(status, StatusCode::UNAUTHORIZED, &p, "invalid-credentials");

    // RS256 with a PEM public key; an HS256 token must not pass there (algorithm confusion).
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(format!("{FIXTURES}/rsa_private.pem")).unwrap())
            .unwrap();
    let claims = json!({"exp": now + 60, "iat": now});
    let ok = post_bearer(
        &server,
        "/webhooks/in/jwt-rs",
        &jwt(Algorithm::RS256, &rsa, None, claims.clone()),
        &event(31),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    let confused = jwt(
        Algorithm::HS256,
        &EncodingKey::from_secret(&std::fs::read(format!("{FIXTURES}/rsa_public.pem")).unwrap()),
        None,
        claims.clone(),
    );
    let (status, p) =
        problem(post_bearer(&server, "/webhooks/in/jwt-rs", &confused, &event(32)).await).await;
    assert_problem(status, StatusCode::UNAUTHORIZED, &p, "invalid-credentials");

    // ES256 through a JWKS file, selected by `kid`.
    let ec =
        EncodingKey::from_ec_pem(&std::fs::read(format!("{FIXTURES}/ec_private.pem")).unwrap())
            .unwrap();
    let ok = post_bearer(
        &server,
        "/webhooks/in/jwt-es",
        &jwt(Algorithm::ES256, &ec, Some("test-ec-1"), claims.clone()),
        &event(33),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    let (status, p) = problem(
        post_bearer(
            &server,
            "/webhooks/in/jwt-es",
            &jwt(Algorithm::ES256, &ec, Some("unknown"), claims),
            &event(34),
        )
        .await,
    )
    .await;
    assert_problem(status, StatusCode::UNAUTHORIZED, &p, "invalid-credentials");

    let stored = all_events(&server).await;
    let sources: Vec<&str> = stored
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["jwt-hs", "jwt-hs", "jwt-rs", "jwt-es"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_url_is_fetched_before_the_hub_listens() {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let (jwks, hits) =
        serve_json(std::fs::read_to_string(format!("{FIXTURES}/jwks.json")).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "\n[sources.jwks-url]\nauth = [{{ type = \"jwt\", jwks_url = \"http://{jwks}/.well-known/jwks.json\", audience = [\"raccordo\"] }}]\n"
    );
    let config = write_config(dir.path(), "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&extra);
    std::fs::write(&config, text).unwrap();
    // SAFETY: the same value every test sets.
    unsafe { std::env::set_var("TEST_HS_SECRET", HS_SECRET) };
    let server = Server::start(dir.path(), &["--config", config.to_str().unwrap()]);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "fetched once, before listening"
    );

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ec =
        EncodingKey::from_ec_pem(&std::fs::read(format!("{FIXTURES}/ec_private.pem")).unwrap())
            .unwrap();
    let token = jwt(
        Algorithm::ES256,
        &ec,
        Some("test-ec-1"),
        json!({"aud": "raccordo", "exp": now + 60}),
    );
    let ok = post_bearer(&server, "/webhooks/in/jwks-url", &token, &event(60)).await;
    assert_eq!(
        ok.status(),
        StatusCode::ACCEPTED,
        "the first request already finds the keys"
    );
    let wrong_aud = jwt(
        Algorithm::ES256,
        &ec,
        Some("test-ec-1"),
        json!({"aud": "other", "exp": now + 60}),
    );
    let (status, p) =
        problem(post_bearer(&server, "/webhooks/in/jwks-url", &wrong_aud, &event(61)).await).await;
    assert_problem(status, StatusCode::UNAUTHORIZED, &p, "invalid-credentials");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_checked_whole_and_every_failing_item_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    let mut bad_value = event(41);
    bad_value["valore"] = json!(10.001);
    let mut bad_channel = event(43);
    bad_channel["canale"] = json!("fax");
    let mut missing = event(44);
    missing.as_object_mut().unwrap().remove("stato");
    let mut future = event(45);
    future["timestamp"] = json!(now_rfc3339(3_600_000));
    let batch = json!([
        event(40),
        bad_value,
        event(42),
        bad_channel,
        missing,
        future
    ]);
    let (status, p) = problem(post_key(&server, CONVERSION, API_KEY, &batch).await).await;
    assert_problem(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        &p,
        "validation-failed",
    );
    let pointers: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        ["/1/valore", "/3/canale", "/4/stato", "/5/timestamp"],
        "{p}"
    );
    assert_eq!(
        p["errors"][1]["detail"], r#"must be one of "email", "social_media", "webform" or "sms""#,
        "an enum error lists every allowed value"
    );
    assert!(
        all_events(&server).await.is_empty(),
        "nothing of a rejected batch is stored"
    );

    let mut single = event(46);
    single["valore"] = json!(-1);
    let (_, p) = problem(post_key(&server, CONVERSION, API_KEY, &single).await).await;
    assert_eq!(
        p["errors"][0]["pointer"], "/valore",
        "a single event's pointer has no index"
    );

    let too_many = Value::Array((0..1001).map(event).collect());
    let (status, p) = problem(post_key(&server, CONVERSION, API_KEY, &too_many).await).await;
    assert_problem(status, StatusCode::PAYLOAD_TOO_LARGE, &p, "batch-too-large");

    let huge = json!({"padding": "x".repeat(700_000)});
    let (status, p) = problem(post_key(&server, CONVERSION, API_KEY, &huge).await).await;
    assert_problem(status, StatusCode::PAYLOAD_TOO_LARGE, &p, "body-too-large");

    let (status, p) = problem(post_key(&server, CONVERSION, API_KEY, &json!([])).await).await;
    assert_problem(status, StatusCode::BAD_REQUEST, &p, "empty-batch");

    let response = client()
        .post(server.url(CONVERSION))
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body("{\"id_cliente\": ")
        .send()
        .await
        .unwrap();
    let (status, p) = problem(response).await;
    assert_problem(status, StatusCode::BAD_REQUEST, &p, "invalid-json");

    let response = client()
        .post(server.url(CONVERSION))
        .header("x-api-key", API_KEY)
        .header("content-type", "text/plain")
        .body(event(47).to_string())
        .send()
        .await
        .unwrap();
    let (status, p) = problem(response).await;
    assert_problem(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        &p,
        "unsupported-media-type",
    );

    let ok = post_key(
        &server,
        CONVERSION,
        API_KEY,
        &Value::Array((0..1000).map(event).collect()),
    )
    .await;
    assert_eq!(
        ok.status(),
        StatusCode::ACCEPTED,
        "exactly 1000 items is allowed"
    );
    assert_eq!(all_events(&server).await.len(), 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn sources_routes_and_credentials_are_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    let leads_key = "leads-api-key-0123456789";
    let lead = json!({"email": "giulia.bianchi@example.it", "at": now_rfc3339(0)});
    let ok = post_key(&server, "/webhooks/in/leads", leads_key, &lead).await;
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    let dup: Value = post_key(&server, "/webhooks/in/leads", leads_key, &lead)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        dup["status"], "duplicate",
        "a user schema with its own key fields dedups too"
    );

    // The leads schema is not the conversion schema: a conversion event fails it, and the
    // leads source may not post to the conversion route.
    let (status, p) =
        problem(post_key(&server, "/webhooks/in/leads", leads_key, &event(50)).await).await;
    assert_problem(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        &p,
        "validation-failed",
    );
    let response = client()
        .post(server.url(CONVERSION))
        .header("x-raccordo-source", "leads")
        .header("x-api-key", leads_key)
        .json(&event(50))
        .send()
        .await
        .unwrap();
    let (status, p) = problem(response).await;
    assert_problem(status, StatusCode::NOT_FOUND, &p, "unknown-source");

    // A key of one source does not open another.
    let (status, p) =
        problem(post_key(&server, "/webhooks/in/web", leads_key, &event(51)).await).await;
    assert_problem(status, StatusCode::UNAUTHORIZED, &p, "invalid-credentials");
    assert!(!p.to_string().contains(leads_key));
    let (status, p) =
        problem(post_key(&server, "/webhooks/in/nope", API_KEY, &event(52)).await).await;
    assert_problem(status, StatusCode::NOT_FOUND, &p, "unknown-source");
    let (status, p) = problem(
        post_key(
            &server,
            "/webhooks/in/off",
            "off-api-key-0123456789",
            &event(53),
        )
        .await,
    )
    .await;
    assert_problem(status, StatusCode::FORBIDDEN, &p, "source-disabled");
    let response = client()
        .post(server.url(CONVERSION))
        .json(&event(54))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, p) = problem(response).await;
    assert_problem(status, StatusCode::UNAUTHORIZED, &p, "missing-credentials");

    assert_eq!(all_events(&server).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_api_filters_pages_and_needs_a_scoped_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    let mut batch = Vec::new();
    for n in 0..30u32 {
        let mut e = event(100 + n);
        e["canale"] = json!(if n % 3 == 0 { "sms" } else { "email" });
        e["evento"] = json!(if n % 2 == 0 {
            "richiesta_demo"
        } else {
            "acquisto_concluso"
        });
        batch.push(e);
    }
    assert_eq!(
        post_key(&server, CONVERSION, API_KEY, &Value::Array(batch))
            .await
            .status(),
        StatusCode::ACCEPTED
    );

    let c = client();
    let get = |q: &str, token: Option<&str>| {
        let mut r = c.get(server.url(&format!("/api/v1/events{q}")));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let page: Value = get("?canale=sms&evento=richiesta_demo", Some(READ_TOKEN))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = page["events"].as_array().unwrap().len();
    assert_eq!(n, 5, "n%3==0 and n%2==0 for n<30: 0,6,12,18,24");
    assert!(
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["payload"]["canale"] == "sms")
    );

    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = get(&format!("?limit=7{cursor}"), Some(READ_TOKEN))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, (1..=30).collect::<Vec<i64>>());

    let future: Value = get(
        &format!("?from={}", now_rfc3339(60_000).replace('+', "%2B")),
        Some(READ_TOKEN),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(future["events"].as_array().unwrap().is_empty());

    let (status, p) = problem(get("", None).await.unwrap()).await;
    assert_problem(status, StatusCode::UNAUTHORIZED, &p, "missing-credentials");
    let (status, p) = problem(get("", Some("not-a-real-token-at-all")).await.unwrap()).await;
    assert_problem(status, StatusCode::UNAUTHORIZED, &p, "invalid-credentials");
    let (status, p) = problem(get("?limit=5000", Some(READ_TOKEN)).await.unwrap()).await;
    assert_problem(status, StatusCode::BAD_REQUEST, &p, "invalid-parameter");
    assert_eq!(p["parameters"][0]["parameter"], "limit");
    let (status, p) = problem(get("?from=yesterday", Some(ADMIN_TOKEN)).await.unwrap()).await;
    assert_problem(status, StatusCode::BAD_REQUEST, &p, "invalid-parameter");
    assert_eq!(p["parameters"][0]["parameter"], "from");
    let (status, _) = problem(get("?colour=red", Some(ADMIN_TOKEN)).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn operations_endpoints_report_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    let c = client();
    let health = c.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(health.headers().contains_key("x-request-id"));
    assert_eq!(
        c.get(server.url("/readyz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let (status, p) = problem(c.get(server.url("/no/such/route")).send().await.unwrap()).await;
    assert_problem(status, StatusCode::NOT_FOUND, &p, "not-found");

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = serde_json::to_vec(&json!([event(1), event(2)])).unwrap();
    // Signed 90 s "in the future": the sender's clock is ahead of ours.
    assert_eq!(
        post_signed(&server, "msg_skew", now + 90, &body)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let skew = metric(
        &server,
        "raccordo_source_clock_skew_seconds{source=\"web\"}",
    )
    .await
    .unwrap();
    assert!((85.0..=95.0).contains(&skew), "skew {skew}");
    assert_eq!(
        metric(
            &server,
            "raccordo_ingest_events_total{source=\"web\",outcome=\"accepted\"}"
        )
        .await,
        Some(2.0)
    );
    assert!(
        metric(&server, "raccordo_storage_commit_group_events_count")
            .await
            .unwrap()
            >= 1.0
    );
    assert!(metric(&server, "raccordo_http_request_duration_seconds_count{route=\"/api/v1/eventi/conversione\",status=\"202\"}").await.is_some());
    // The async runtime's own lateness is sampled all along (every 10 ms).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(&server, "raccordo_runtime_lag_seconds_count")
        .await
        .is_none_or(|ticks| ticks < 2.0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the runtime's lateness is not sampled"
        );
        tokio::task::yield_now().await;
    }
    post_key(&server, CONVERSION, "wrong-key-0123456789", &event(3)).await;
    assert_eq!(metric(&server, "raccordo_ingest_rejected_total{source=\"unauthenticated\",reason=\"invalid-credentials\"}").await, Some(1.0));

    // Logs are JSON lines, and a rejected request is logged with its request id.
    let rejected = server.log_line(|v| v["message"] == "request rejected" && v["status"] == 401);
    assert!(
        rejected["span"]["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 26),
        "{rejected}"
    );
}
