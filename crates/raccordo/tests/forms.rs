//! A website posts straight to a source, in real headless Chromium: `fetch` from an allowed
//! origin passes the CORS preflight and its form-encoded body is stored as JSON; another
//! origin is refused by the preflight; a plain HTML form post is accepted and the browser is
//! sent back to the site's thank-you page, with an urlencoded and a multipart body.

mod support;

use std::net::SocketAddr;

use serde_json::Value;
use support::*;

const KEY: &str = "website-form-key-0123456789";

/// Serves `pages` (path → HTML) on a loopback port of its own: a site with its own origin.
async fn site(pages: Vec<(&'static str, String)>) -> SocketAddr {
    let mut app = axum::Router::new();
    for (path, html) in pages {
        app = app.route(
            path,
            axum::routing::get(move || {
                let html = html.clone();
                async move { axum::response::Html(html) }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn fetch_page(hub: &str, email: &str) -> String {
    format!(
        r#"<!doctype html><body><script>
fetch("{hub}/webhooks/in/website", {{ method: "POST",
  headers: {{ "content-type": "application/x-www-form-urlencoded", "x-api-key": "{KEY}" }},
  body: "email={email}&valore=12%2C50&campagna=natale" }})
  .then(r => document.body.setAttribute("data-result", r.status))
  .catch(() => document.body.setAttribute("data-result", "blocked"));
</script></body>"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_website_posts_through_cors_and_a_plain_form_is_redirected_back() {
    let Some(browser) = chromium() else { return };
    let port = free_port();
    let hub = format!("http://127.0.0.1:{port}");
    let allowed = site(vec![
        ("/contact", fetch_page(&hub, "anna%40example.it")),
        (
            "/form",
            format!(
                r#"<!doctype html><body><form id="f" method="post" action="{hub}/webhooks/in/website?api_key={KEY}">
<input name="email" value="luca@example.it"><input name="valore" value="30"></form>
<script>document.getElementById("f").submit()</script></body>"#
            ),
        ),
        (
            "/iscrizione",
            format!(
                r#"<!doctype html><body><form id="f" method="post" enctype="multipart/form-data" action="{hub}/webhooks/in/website?api_key={KEY}">
<input name="email" value="sara@example.it"><input name="valore" value="45,90"><input name="campagna" value="primavera"></form>
<script>document.getElementById("f").submit()</script></body>"#
            ),
        ),
        (
            "/grazie",
            r#"<!doctype html><body data-page="grazie">Grazie!</body>"#.to_string(),
        ),
    ])
    .await;
    let other = site(vec![("/contact", fetch_page(&hub, "eve%40example.it"))]).await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lead.schema.json"),
        r#"{"type":"object","required":["email"],"properties":{"email":{"type":"string"},"valore":{"type":"number"},"campagna":{"type":"string"}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("raccordo.toml"),
        format!(
            r#"
[server]
data_dir = "data"

[sources.website]
schema = "lead.schema.json"
key_fields = ["/email"]
auth = [{{ type = "api_key", keys = ["{KEY}"] }}]
cors = {{ allowed_origins = ["http://{allowed}"] }}
forms = {{ redirect = "http://{allowed}/grazie", numbers = ["valore"] }}

[[admin.tokens]]
name = "ops"
token = "{ADMIN_TOKEN}"
scopes = ["admin"]
"#
        ),
    )
    .unwrap();
    let server = Server::start_on(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &["--config", "raccordo.toml"],
    );

    // The preflight for the site's origin names it and what it may send.
    let preflight = client()
        .request(reqwest::Method::OPTIONS, server.url("/webhooks/in/website"))
        .header("origin", format!("http://{allowed}"))
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204, "{:?}", preflight.headers());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        format!("http://{allowed}").as_str()
    );

    // fetch from the site's origin: preflight, then the form-encoded body is stored.
    let dom = String::from_utf8(
        headless(
            browser,
            &["--dump-dom"],
            &format!("http://{allowed}/contact"),
        )
        .stdout,
    )
    .unwrap();
    assert!(dom.contains(r#"data-result="202""#), "{dom}");

    // The same page on another origin: the preflight is refused and nothing is sent.
    let dom = String::from_utf8(
        headless(browser, &["--dump-dom"], &format!("http://{other}/contact")).stdout,
    )
    .unwrap();
    assert!(dom.contains(r#"data-result="blocked""#), "{dom}");
    let preflight = client()
        .request(reqwest::Method::OPTIONS, server.url("/webhooks/in/website"))
        .header("origin", format!("http://{other}"))
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 403);

    // A plain HTML form: accepted, and the browser lands on the site's thank-you page.
    let dom = String::from_utf8(
        headless(browser, &["--dump-dom"], &format!("http://{allowed}/form")).stdout,
    )
    .unwrap();
    assert!(dom.contains(r#"data-page="grazie""#), "{dom}");

    // The same with `enctype="multipart/form-data"`.
    let dom = String::from_utf8(
        headless(
            browser,
            &["--dump-dom"],
            &format!("http://{allowed}/iscrizione"),
        )
        .stdout,
    )
    .unwrap();
    assert!(dom.contains(r#"data-page="grazie""#), "{dom}");

    let events = all_events(&server).await;
    let payloads: Vec<&Value> = events.iter().map(|e| &e["payload"]).collect();
    assert_eq!(payloads.len(), 3, "{payloads:?}");
    assert!(
        payloads.iter().any(|p| p["email"] == "sara@example.it"
            && p["valore"] == 45.9
            && p["campagna"] == "primavera"),
        "{payloads:?}"
    );
    assert!(
        payloads.iter().any(|p| p["email"] == "anna@example.it"
            && p["valore"] == 12.5
            && p["campagna"] == "natale"),
        "{payloads:?}"
    );
    assert!(
        payloads
            .iter()
            .any(|p| p["email"] == "luca@example.it" && p["valore"] == 30.0),
        "{payloads:?}"
    );
    assert!(!payloads.iter().any(|p| p["email"] == "eve@example.it"));
}
