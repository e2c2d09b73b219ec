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
        dom.contains(r#"data-open-series="email" data-open-last="7""#),
        "the channel chart's email line ends at 7 conversions, dashed: the window is open"
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
        dom.contains(r#"data-open-series="duplicates" data-open-last="4""#),
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

/// The page without its script (which holds both languages' texts): what a reader sees.
fn without_script(dom: &str) -> String {
    match (dom.find("<script>"), dom.rfind("</script>")) {
        (Some(start), Some(end)) if end > start => format!("{}{}", &dom[..start], &dom[end..]),
        _ => dom.to_string(),
    }
}

/// Saves a screenshot at `size` (`W,H`) and checks it is a real picture.
fn screenshot(browser: &str, url: &str, name: &str, size: &str) {
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&shot);
    headless(
        browser,
        &[
            &format!("--screenshot={}", shot.display()),
            &format!("--window-size={size}"),
        ],
        url,
    );
    let bytes = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        bytes > 15_000,
        "a screenshot was saved at {} ({bytes} bytes)",
        shot.display()
    );
    eprintln!("dashboard screenshot ({size}): {}", shot.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manager_reads_closed_and_open_windows_late_events_and_refusals_in_one_language() {
    let Some(browser) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A second source on the built-in schema, read through a mapping with an extra
    // dimension (the device in `metadati`).
    let server = start_configured(
        dir.path(),
        "[metrics]\nallowed_lateness = \"0s\"\n\n\
         [sources.shop]\nauth = [{ type = \"api_key\", keys = [\"shop-api-key-0123456789\"] }]\n\
         [sources.shop.mapping]\ncustomer = \"/id_cliente\"\nevent = \"/evento\"\nstatus = \"/stato\"\n\
         value = \"/valore\"\nchannel = \"/canale\"\ndimensions = { device = \"/metadati/dispositivo\" }\n",
    );
    let at = |n: u32, offset_ms: i64| {
        let mut e = event(n);
        e["timestamp"] = json!(now_rfc3339(offset_ms));
        e["canale"] = json!("email");
        e
    };
    // A closed window 20 minutes ago, then the open one now.
    let old = -20 * 60_000;
    assert_eq!(
        send_batch(&server, &json!([at(1, old), at(2, old), at(3, old)])).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send_batch(&server, &json!([at(4, 0), at(5, 0)])).await,
        StatusCode::ACCEPTED
    );
    metrics_until(&server, "dimension=canale&value=email", |rows| {
        rows.iter()
            .any(|r| r["status"] == "final" && r["events"] == 3)
    })
    .await;
    // Too late for its closed window, and a refused request.
    let late: serde_json::Value = client()
        .post(server.url("/api/v1/eventi/conversione"))
        .header("x-api-key", API_KEY)
        .json(&at(6, old))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(late["late"], true, "{late}");
    let mut bad = at(7, 0);
    bad["canale"] = json!("fax");
    assert_eq!(
        send_batch(&server, &json!([bad])).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let mut from_shop = at(8, 0);
    from_shop["metadati"] = json!({"dispositivo": "mobile"});
    from_shop["canale"] = json!("sms");
    let answer = client()
        .post(server.url("/api/v1/eventi/conversione"))
        .header("x-api-key", "shop-api-key-0123456789")
        .header("x-raccordo-source", "shop")
        .json(&from_shop)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    metrics_until(&server, "dimension=device", |rows| !rows.is_empty()).await;
    poll_json(&server, "/api/v1/requests", READ_TOKEN, |p| {
        p["requests"].as_array().is_some_and(|r| !r.is_empty())
    })
    .await;
    poll_json(&server, "/api/v1/metrics/late", READ_TOKEN, |t| {
        t["total_events"] == 1
    })
    .await;

    let italian = server.url(&format!("/#token={READ_TOKEN}&lang=it&range=1h"));
    let dom = without_script(
        &String::from_utf8(headless(browser, &["--dump-dom"], &italian).stdout).unwrap(),
    );
    assert!(dom.contains(r#"data-lang="it""#), "{dom}");
    assert!(dom.contains("Conversioni per canale"));
    assert!(
        !dom.contains("Conversions by channel"),
        "one language per page"
    );
    assert!(
        dom.contains(r#"data-series="email" data-last="3""#),
        "the closed window is a solid line ending at 3: {dom}"
    );
    assert!(
        dom.contains(r#"data-open-series="email" data-open-last="2""#),
        "the open window is drawn apart (dashed), not as a drop: {dom}"
    );
    assert!(dom.contains(r#"data-open-band="1""#), "and shaded");
    assert!(
        dom.contains(r#"data-series="rate-email""#)
            || dom.contains(r#"data-open-series="rate-email""#),
        "conversion rate per channel"
    );
    assert!(dom.contains(r#"id="chart-cpa""#) && dom.contains(r#"id="chart-avg""#));
    assert!(
        dom.contains(&format!(r#"data-late="{}""#, late["id"].as_str().unwrap())),
        "the late event is listed by id"
    );
    assert!(
        dom.contains(r#"data-request-status="422""#),
        "the refused request is listed"
    );
    assert!(dom.contains(r#"id="kpi-late">1<"#), "{dom}");
    assert!(
        dom.contains(r#"data-dim-value="device=mobile""#),
        "the extra dimension has its own table: {dom}"
    );

    let english = server.url(&format!("/#token={READ_TOKEN}&lang=en&range=7d"));
    let dom = without_script(
        &String::from_utf8(headless(browser, &["--dump-dom"], &english).stdout).unwrap(),
    );
    assert!(dom.contains(r#"data-lang="en""#) && dom.contains(r#"lang="en""#));
    assert!(dom.contains("Conversions by channel") && dom.contains(">Channel<"));
    for italian_word in [
        "Conversioni per canale",
        ">Canale<",
        "Eventi in ritardo",
        "Richieste rifiutate",
    ] {
        assert!(
            !dom.contains(italian_word),
            "`{italian_word}` on the English page"
        );
    }
    assert!(
        dom.contains(r#"data-range="7d" aria-pressed="true""#),
        "the 7-day range is selected"
    );

    // A source without events: its figures, not the hub's.
    let leads = server.url(&format!("/#token={READ_TOKEN}&source=leads"));
    let dom = String::from_utf8(headless(browser, &["--dump-dom"], &leads).stdout).unwrap();
    assert!(dom.contains(r#"id="kpi-events">0<"#), "{dom}");

    // Readable on a phone: nothing wider than the screen.
    let dom = String::from_utf8(
        headless(browser, &["--dump-dom", "--window-size=390,844"], &italian).stdout,
    )
    .unwrap();
    assert!(
        dom.contains(r#"data-overflow="0""#),
        "wider than a phone: {dom}"
    );
    let dom = String::from_utf8(
        headless(browser, &["--dump-dom", "--window-size=1366,768"], &english).stdout,
    )
    .unwrap();
    assert!(dom.contains(r#"data-overflow="0""#));
    screenshot(browser, &italian, "dashboard-1366x768-it.png", "1366,768");
    screenshot(browser, &english, "dashboard-390x844-en.png", "390,844");
}
