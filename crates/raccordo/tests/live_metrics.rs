//! Live conversion metrics from the real binary: provisional, final, rebuilt after kill -9.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::*;

fn at(n: u32, offset_ms: i64, evento: &str, canale: &str, valore: f64) -> Value {
    let mut e = event(n);
    e["timestamp"] = json!(now_rfc3339(offset_ms));
    e["evento"] = json!(evento);
    e["canale"] = json!(canale);
    e["valore"] = json!(valore);
    e
}

fn row<'a>(rows: &'a [Value], value: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["value"] == value)
}

#[tokio::test(flavor = "multi_thread")]
async fn windows_go_provisional_then_final_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_configured(dir.path(), "");
    // Four events 20 minutes ago (one 5-minute window, well before the watermark).
    let old = -20 * 60_000;
    let batch = json!([
        at(1, old, "acquisto_concluso", "email", 100.0),
        at(2, old, "acquisto_concluso", "email", 50.5),
        at(3, old, "richiesta_demo", "email", 0.0),
        at(4, old, "acquisto_concluso", "sms", 10.0),
    ]);
    assert_eq!(send_batch(&server, &batch).await, StatusCode::ACCEPTED);
    // The first event again: a business-key duplicate, counted apart and durably.
    assert_eq!(
        send_batch(&server, &json!([batch[0].clone()])).await,
        StatusCode::ACCEPTED
    );

    let rows = metrics_until(&server, "dimension=canale", |rows| {
        row(rows, "email").is_some_and(|r| r["events"] == 3 && r["duplicates"] == 1)
    })
    .await;
    let email = row(&rows, "email").unwrap();
    assert_eq!(
        email["status"], "provisional",
        "nothing has moved the watermark past the window"
    );

    // A current event moves the watermark 20 minutes on: the old window becomes final.
    assert_eq!(send_event(&server, 5).await, StatusCode::ACCEPTED);
    let rows = metrics_until(&server, "dimension=canale", |rows| {
        row(rows, "email").is_some_and(|r| r["status"] == "final")
    })
    .await;
    let email = row(&rows, "email").unwrap().clone();
    assert_eq!(
        (email["events"].as_u64(), email["conversions"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(email["total_value"], 150.5);
    assert_eq!(email["duplicates"], 1, "the duplicate is not an event");
    assert_eq!(email["average_conversion_value"], 75.25);
    assert_eq!(
        email["conversion_rate"]
            .as_f64()
            .map(|r| (r * 1000.0).round()),
        Some(667.0),
        "2 of 3 customers"
    );
    let sms = row(&rows, "sms").unwrap().clone();

    server.kill9();
    let server = Server::start(
        dir.path(),
        &[
            "--config",
            dir.path().join("raccordo.toml").to_str().unwrap(),
        ],
    );
    let rows = metrics_until(&server, "dimension=canale", |rows| {
        row(rows, "email").is_some_and(|r| r["status"] == "final")
    })
    .await;
    assert_eq!(
        row(&rows, "email").unwrap(),
        &email,
        "rebuilt from the log, counted once"
    );
    assert_eq!(row(&rows, "sms").unwrap(), &sms);
    // The restarted tailer reaches the sixth event a moment after the windows are back:
    // wait for the live view to have read everything the log holds.
    poll_json(&server, "/api/v1/ingest/health", READ_TOKEN, |h| {
        h["live"]["processed_seq"].as_i64() >= h["live"]["committed_seq"].as_i64()
            && h["live"]["committed_seq"].as_i64() >= Some(6)
    })
    .await;
    let all = metrics_until(&server, "dimension=all", |rows| rows.len() >= 2).await;
    assert_eq!(
        all.iter()
            .map(|r| r["events"].as_u64().unwrap())
            .sum::<u64>(),
        5
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_publishes_provisional_results_and_then_the_final_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    let mut stream = client()
        .get(server.url("/api/v1/metrics/stream?dimension=canale&value=webform"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let old = -20 * 60_000;
    let batch = json!([
        at(1, old, "acquisto_concluso", "webform", 30.0),
        at(2, old, "iscrizione_evento", "webform", 0.0)
    ]);
    assert_eq!(send_batch(&server, &batch).await, StatusCode::ACCEPTED);
    let (_, provisional) = support::sse_until(&mut stream, &mut buffer, |event, data| {
        event == "provisional"
            && data["rows"]
                .as_array()
                .is_some_and(|rows| rows.iter().any(|r| r["events"] == 2))
    })
    .await;
    assert!(
        provisional["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["value"] == "webform"),
        "filtered: {provisional}"
    );

    assert_eq!(send_event(&server, 3).await, StatusCode::ACCEPTED); // moves the watermark past the window
    let (_, fin) = support::sse_until(&mut stream, &mut buffer, |event, _| event == "final").await;
    let row = &fin["rows"][0];
    assert_eq!(
        (
            row["status"].as_str(),
            row["events"].as_u64(),
            row["conversions"].as_u64()
        ),
        (Some("final"), Some(2), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn campaign_costs_give_cpa_and_bad_costs_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_configured(dir.path(), "");
    let today = time::OffsetDateTime::now_utc().date();
    let days: Vec<Value> = [-1i64, 0, 1]
        .iter()
        .map(|d| json!({"date": (today + time::Duration::days(*d)).to_string(), "amount": 288.0}))
        .collect();
    let put = |token: &'static str, body: Value| {
        client()
            .put(server.url("/api/v1/campaigns/test/costs"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let r = put(READ_TOKEN, json!({"days": days})).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "read scope cannot write");
    let bad = json!({"days": [{"date": "2026-13-01", "amount": 1}, {"date": "2026-11-01", "amount": 1.234}, {"date": "2026-11-02", "amount": 5}]});
    let r = put(ADMIN_TOKEN, bad).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p: Value = r.json().await.unwrap();
    let pointers: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/days/0/date", "/days/1/amount"]);
    let r = put(ADMIN_TOKEN, json!({"days": days})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Two conversions in campaign `test` (the helper's campaign), 20 minutes ago.
    let old = -20 * 60_000;
    let batch = json!([
        at(1, old, "acquisto_concluso", "email", 10.0),
        at(2, old, "acquisto_concluso", "sms", 20.0)
    ]);
    assert_eq!(send_batch(&server, &batch).await, StatusCode::ACCEPTED);
    assert_eq!(send_event(&server, 3).await, StatusCode::ACCEPTED);
    let final_row = |rows: &[Value]| rows.iter().find(|r| r["status"] == "final").cloned();
    let rows = metrics_until(&server, "dimension=campagna&value=test", |rows| {
        final_row(rows).is_some()
    })
    .await;
    let row = final_row(&rows).unwrap();
    // 288.00 a day is 1.00 per 5-minute window; 2 conversions → CPA 0.50.
    assert_eq!(
        (row["spend"].as_f64(), row["cpa"].as_f64()),
        (Some(1.0), Some(0.5)),
        "{row}"
    );

    server.kill9();
    let server = Server::start(
        dir.path(),
        &[
            "--config",
            dir.path().join("raccordo.toml").to_str().unwrap(),
        ],
    );
    let rows = metrics_until(&server, "dimension=campagna&value=test", |rows| {
        final_row(rows).is_some()
    })
    .await;
    assert_eq!(
        final_row(&rows).unwrap()["cpa"].as_f64(),
        Some(0.5),
        "costs are durable"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_come_as_csv_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    assert_eq!(send_event(&server, 1).await, StatusCode::ACCEPTED);
    metrics_until(&server, "dimension=all", |rows| !rows.is_empty()).await;
    let r = client()
        .get(server.url("/api/v1/metrics?dimension=all&format=csv"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let text = r.text().await.unwrap();
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("window_start_ms,window_end_ms,dimension,value,status,events,"),
        "{text}"
    );
    assert!(
        lines.next().unwrap().contains(",all,,provisional,1,"),
        "{text}"
    );
    let r = client()
        .get(server.url("/api/v1/metrics?format=xml"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // The windows per stream partition are a cluster's (with a stream); elsewhere the view
    // is refused, naming the parameter.
    let r = client()
        .get(server.url("/api/v1/metrics?view=partitions"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    if std::env::var("RACCORDO_TEST_BACKEND").as_deref() == Ok("cluster") {
        assert_eq!(r.status(), StatusCode::OK);
    } else {
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let problem: Value = r.json().await.unwrap();
        assert!(problem.to_string().contains("view"), "{problem}");
    }
    let r = client()
        .get(server.url("/api/v1/metrics?view=everything"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_resumes_from_the_checkpoint_and_counts_what_came_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_configured(
        dir.path(),
        // No lateness: a window's state is dropped as it fires, so after the restart its
        // result can only come from the saved results, not from the operator.
        "[metrics]\ncheckpoint_every = \"1s\"\nallowed_lateness = \"0s\"\n",
    );
    let old = -20 * 60_000;
    let batch = json!([
        at(1, old, "acquisto_concluso", "email", 100.0),
        at(2, old, "acquisto_concluso", "email", 50.5),
        at(3, old, "richiesta_demo", "email", 0.0),
        at(4, old, "acquisto_concluso", "sms", 10.0),
    ]);
    assert_eq!(send_batch(&server, &batch).await, StatusCode::ACCEPTED);
    assert_eq!(send_event(&server, 5).await, StatusCode::ACCEPTED);
    // Wait for a checkpoint that covers all five events, and for the watermark to have
    // passed the window of the old ones (it ends at most 15 minutes ago): the answer below
    // says "late" from the watermark, which a cluster node learns only as every partition's
    // owner publishes it, possibly after the checkpoint.
    let passed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 14 * 60_000;
    let health = poll_json(&server, "/api/v1/ingest/health", READ_TOKEN, |h| {
        h["live"]["checkpoint_seq"].as_i64() >= Some(5)
            && h["live"]["watermark_ms"].as_i64() >= Some(passed)
    })
    .await;
    let saved = health["live"]["checkpoint_seq"].as_i64().unwrap();
    // An event too late for the fired window, then kill -9 at once: the restart must count
    // it as late whether or not a checkpoint caught it.
    let answer = client()
        .post(server.url("/api/v1/eventi/conversione"))
        .header("x-api-key", API_KEY)
        .json(&json!([at(6, old, "acquisto_concluso", "email", 20.0)]))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer[0]["status"], "accepted");
    assert_eq!(
        answer[0]["late"], true,
        "the answer says the event is already too late for its window: {answer}"
    );
    server.kill9();

    let server = Server::start(
        dir.path(),
        &[
            "--config",
            dir.path().join("raccordo.toml").to_str().unwrap(),
        ],
    );
    let rows = metrics_until(&server, "dimension=canale", |rows| {
        row(rows, "email").is_some_and(|r| r["status"] == "final")
    })
    .await;
    let email = row(&rows, "email").unwrap();
    assert_eq!(
        (
            email["events"].as_u64(),
            email["conversions"].as_u64(),
            email["total_value"].as_f64()
        ),
        (Some(3), Some(2), Some(150.5)),
        "the saved result, counted once: {email}"
    );
    assert_eq!(row(&rows, "sms").unwrap()["events"], 1);
    // (A cluster node's partitions say where they resumed as their owners publish.)
    let health = poll_json(&server, "/api/v1/ingest/health", READ_TOKEN, |h| {
        h["live"]["restored_from_seq"].as_i64() >= Some(saved)
    })
    .await;
    assert!(
        health["live"]["restored_from_seq"].as_i64() >= Some(saved),
        "resumed from the checkpoint, not from the start: {health}"
    );
    // The restarted tailer reaches the sixth event a moment after the windows are back:
    // wait for the live view to have read everything the log holds. (A cluster node's
    // partitions get there as their owners publish: wait for the rows themselves.)
    poll_json(&server, "/api/v1/ingest/health", READ_TOKEN, |h| {
        h["live"]["processed_seq"].as_i64() >= h["live"]["committed_seq"].as_i64()
            && h["live"]["committed_seq"].as_i64() >= Some(6)
    })
    .await;
    let sum = |rows: &[Value], field: &str| -> u64 {
        rows.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum()
    };
    let all = metrics_until(&server, "dimension=all", |rows| {
        rows.len() >= 2 && sum(rows, "late") >= 1
    })
    .await;
    assert_eq!(
        all.iter()
            .map(|r| r["events"].as_u64().unwrap())
            .sum::<u64>(),
        5,
        "five events in windows"
    );
    assert_eq!(
        all.iter().map(|r| r["late"].as_u64().unwrap()).sum::<u64>(),
        1,
        "and the sixth reported late, once: {all:?}"
    );
    // The late event shows on its channel's row too, not only on the overall one.
    let channels = metrics_until(&server, "dimension=canale", |rows| !rows.is_empty()).await;
    assert_eq!(
        channels
            .iter()
            .filter(|r| r["value"] == "email")
            .map(|r| r["late"].as_u64().unwrap())
            .sum::<u64>(),
        1,
        "{channels:?}"
    );
    assert_eq!(
        channels
            .iter()
            .filter(|r| r["value"] != "email")
            .map(|r| r["late"].as_u64().unwrap())
            .sum::<u64>(),
        0,
        "{channels:?}"
    );
}

/// Runs `raccordo late …` against the server; (success, stdout + stderr).
fn late_cli(server: &Server, token: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .arg("late")
        .args(args)
        .args(["--url", &server.url(""), "--token", token])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_event_is_listed_by_id_counted_in_prometheus_and_reaggregated_by_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_configured(
        dir.path(),
        "[metrics]\ncheckpoint_every = \"100ms\"\nallowed_lateness = \"0s\"\n",
    );
    let old = -20 * 60_000;
    let batch = json!([
        at(1, old, "acquisto_concluso", "email", 100.0),
        at(2, old, "richiesta_demo", "email", 0.0),
    ]);
    assert_eq!(send_batch(&server, &batch).await, StatusCode::ACCEPTED);
    assert_eq!(send_event(&server, 3).await, StatusCode::ACCEPTED);
    metrics_until(&server, "dimension=canale&value=email", |rows| {
        rows.iter()
            .any(|r| r["status"] == "final" && r["events"] == 2)
    })
    .await;

    // Too late for its (fired, purged) window: accepted, stored, and said to be late.
    let answer: Value = client()
        .post(server.url("/api/v1/eventi/conversione"))
        .header("x-api-key", API_KEY)
        .json(&at(4, old, "acquisto_concluso", "email", 20.0))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["late"], true, "{answer}");
    let id = answer["id"].as_str().unwrap().to_string();

    let table = poll_json(&server, "/api/v1/metrics/late", READ_TOKEN, |t| {
        t["total_events"] == 1
    })
    .await;
    let listed = &table["events"][0];
    assert_eq!(listed["id"], id.as_str(), "{table}");
    assert_eq!(listed["source"], "web");
    assert_eq!(listed["dimensions"]["canale"], "email");
    let counted: Vec<(String, String)> = table["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["dimension"].as_str().unwrap().to_string(),
                c["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for wanted in [("all", ""), ("source", "web"), ("canale", "email")] {
        assert!(
            counted.contains(&(wanted.0.to_string(), wanted.1.to_string())),
            "{wanted:?} missing from {counted:?}"
        );
    }
    // Filters: another source or another channel has none.
    let other = get_json(&server, "/api/v1/metrics/late?source=leads", READ_TOKEN).await;
    assert_eq!(other["total_events"], 0, "{other}");
    let sms = get_json(
        &server,
        "/api/v1/metrics/late?dimension=canale&value=sms",
        READ_TOKEN,
    )
    .await;
    assert_eq!(sms["total_events"], 0, "{sms}");
    assert_eq!(
        metric(&server, "raccordo_live_late_events_total{source=\"web\"}").await,
        Some(1.0)
    );

    // The CLI lists it; re-aggregation needs the admin scope.
    let (ok, text) = late_cli(&server, READ_TOKEN, &["list"]);
    assert!(ok && text.contains(&id), "{text}");
    let (ok, text) = late_cli(&server, READ_TOKEN, &["reaggregate"]);
    assert!(!ok, "a read token cannot change results: {text}");
    let (ok, text) = late_cli(&server, ADMIN_TOKEN, &["reaggregate", "--source", "web"]);
    assert!(ok, "{text}");
    assert!(text.starts_with("1 late event(s)"), "{text}");

    // Counted in its window now, and no longer late.
    let email = |rows: &[Value]| {
        rows.iter()
            .find(|r| r["value"] == "email" && r["status"] == "final")
            .cloned()
    };
    let rows = metrics_until(&server, "dimension=canale&value=email", |rows| {
        email(rows).is_some_and(|r| r["events"] == 3)
    })
    .await;
    let row = email(&rows).unwrap();
    assert_eq!(
        (row["conversions"].as_u64(), row["late"].as_u64()),
        (Some(2), Some(0)),
        "{row}"
    );
    assert_eq!(row["total_value"], 120.0);
    assert_eq!(
        row["exact_distinct"], false,
        "the customers of a re-aggregated window are an upper bound"
    );
    let table = get_json(&server, "/api/v1/metrics/late", READ_TOKEN).await;
    assert_eq!(table["total_events"], 0, "{table}");

    // The answer came once the change was saved: kill -9 and a restart keep it, once.
    server.kill9();
    let server = Server::start(
        dir.path(),
        &[
            "--config",
            dir.path().join("raccordo.toml").to_str().unwrap(),
        ],
    );
    let rows = metrics_until(&server, "dimension=canale&value=email", |rows| {
        email(rows).is_some()
    })
    .await;
    let row = email(&rows).unwrap();
    assert_eq!(
        (row["events"].as_u64(), row["late"].as_u64()),
        (Some(3), Some(0)),
        "{row}"
    );
    let table = get_json(&server, "/api/v1/metrics/late", READ_TOKEN).await;
    assert_eq!(table["total_events"], 0, "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn windows_older_than_memory_keeps_are_read_back_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    // Three days ago, then now: the old window fires, is saved, and leaves memory (48 h).
    let old = -3 * 24 * 3_600_000;
    assert_eq!(
        send_batch(
            &server,
            &json!([
                at(1, old, "acquisto_concluso", "sms", 42.0),
                at(2, old, "richiesta_demo", "sms", 0.0)
            ])
        )
        .await,
        StatusCode::ACCEPTED
    );
    assert_eq!(send_event(&server, 3).await, StatusCode::ACCEPTED);
    let from = time::OffsetDateTime::now_utc() - time::Duration::days(4);
    let from = from
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
        .replace('+', "%2B");
    // Waits for the window to be final: on a cluster node the tailer may count the batch
    // a moment before it reads the current event that moves the watermark.
    let rows = metrics_until(
        &server,
        &format!("from={from}&dimension=canale&value=sms"),
        |rows| !rows.is_empty() && rows.iter().all(|r| r["status"] == "final"),
    )
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["events"].as_u64(), rows[0]["conversions"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(rows[0]["status"], "final");
    // The default range (6 h) does not reach it.
    let recent = get_json(
        &server,
        "/api/v1/metrics?dimension=canale&value=sms",
        READ_TOKEN,
    )
    .await;
    assert!(recent["rows"].as_array().unwrap().is_empty(), "{recent}");
}
