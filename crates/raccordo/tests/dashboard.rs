//! The dashboard in real headless Chromium (Debian's `chromium`).

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_draws_the_events_sent_during_the_test() {
    let Some(browser) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    let page = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    let batch: Vec<_> = (0..7u32)
        .map(|n| {
            let mut e = event(n);
            e["canale"] = json!("email");
            e
        })
        .collect();
    assert_eq!(send_batch(&server, &batch).await, StatusCode::ACCEPTED);
    // Four copies of one event: a duplicate burst, which the alert history shows.
    for _ in 0..4 {
        assert_eq!(
            send_batch(&server, &json!([batch[0].clone()])).await,
            StatusCode::ACCEPTED
        );
    }
    // Wait until the live view has the events (the page reads the same API).
    metrics_until(&server, "dimension=canale&value=email", |rows| {
        rows.iter()
            .any(|r| r["events"] == 7 && r["duplicates"] == 4)
    })
    .await;

    let url = server.url(&format!("/#token={READ_TOKEN}"));
    let dom = String::from_utf8(headless(browser, &["--dump-dom"], &url).stdout).unwrap();
    assert!(
        dom.contains(r#"data-cell="email-events">7<"#),
        "the table shows the 7 email events: {dom}"
    );
    assert!(
        dom.contains(r#"data-series="email" data-last="7""#),
        "the channel chart's email line ends at 7 conversions"
    );
    assert!(
        dom.contains(r#"data-cell="web-accepted">7<"#),
        "the ingest health table shows the source's 7 accepted events"
    );
    assert!(
        dom.contains(r#"data-alert="duplicate_burst""#),
        "the alert history shows the duplicate burst"
    );
    assert!(
        dom.contains(r#"data-series="duplicati" data-last="4""#),
        "the problems chart shows the 4 duplicates"
    );
    assert!(
        dom.contains(r#"<form class="token" id="token-form" hidden="">"#),
        "no token prompt when a token was given"
    );

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        browser,
        &[&format!("--screenshot={}", shot.display())],
        &url,
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "a screenshot of the dashboard was saved at {} ({size} bytes)",
        shot.display()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_draws_each_flow_as_its_steps_and_the_integrations_calls() {
    let Some(browser) = chromium() else { return };
    let (hook, _hooked) = capture_http(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let flows = format!(
        r#"
[[flows]]
name = "leads"
description = "VIP leads are announced"
trigger = {{ type = "api" }}

[[flows.steps]]
name = "shape"
type = "map"
fields = {{ who = "{{{{ trigger.name }}}}", vip = "{{{{ trigger.vip }}}}" }}

[[flows.steps]]
name = "route"
type = "branch"
condition = "steps.shape.vip"
then = "announce"

[[flows.steps]]
name = "ordinary"
type = "filter"
condition = "false"

[[flows.steps]]
name = "announce"
type = "http"
method = "POST"
url = "http://{hook}/vip"
body = {{ who = "{{{{ steps.shape.who }}}}" }}
"#
    );
    let server = start_configured(dir.path(), &flows);
    for (name, vip) in [("Anna", true), ("Bruno", false)] {
        let r = client()
            .post(server.url("/api/v1/flows/leads/runs"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": name, "vip": vip}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    poll_json(&server, "/api/v1/flows/runs?flow=leads", READ_TOKEN, |b| {
        b["runs"]
            .as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["status"] == "succeeded"))
    })
    .await;

    let url = server.url(&format!("/#token={READ_TOKEN}"));
    let dom = String::from_utf8(headless(browser, &["--dump-dom"], &url).stdout).unwrap();
    assert!(
        dom.contains(r#"data-step="leads/shape" data-last="succeeded" data-ok="2""#),
        "the first step ran in both runs: {dom}"
    );
    assert!(
        dom.contains("↪ announce"),
        "the branch shows where it jumps"
    );
    assert!(
        dom.contains(r#"data-step="leads/announce" data-last="skipped" data-ok="1""#)
            || dom.contains(r#"data-step="leads/announce" data-last="succeeded" data-ok="1""#),
        "the VIP run called out, the other did not: {dom}"
    );
    assert!(
        dom.contains(r#"data-cell="http:127.0.0.1-calls">1<"#),
        "the integrations table counts the one outbound call: {dom}"
    );

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-flows.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        browser,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,2400",
        ],
        &url,
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "a screenshot was saved at {} ({size} bytes)",
        shot.display()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
}
