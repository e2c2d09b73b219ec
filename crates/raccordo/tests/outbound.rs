//! Outbound safety on the real binary: `raccordo check` reports URLs the hub must not call
//! (internal addresses however written, plain http, a bare scheme), and a URL that arrives at
//! run time for a loopback address the config did not allow is refused before anything is
//! sent.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::*;

const ADMIN: &str = "admin-token-0123456789abcdef";

fn check(config: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn check_reports_internal_plain_http_and_bare_urls_and_accepts_uppercase_https() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
[server]
data_dir = "data"

[sources.web]
auth = [{ type = "api_key", keys = ["web-api-key-0123456789"] }]

[[alerts.channels]]
type = "slack"
url = "http://169.254.169.254/latest/meta-data/iam/SECRETPATH"

[[alerts.channels]]
type = "webhook"
url = "https://[::ffff:169.254.169.254]/"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYqr"

[[alerts.channels]]
type = "slack"
url = "http://hooks.slack.com/services/T000/B000/XXXX"

[[alerts.channels]]
type = "webhook"
url = "http://"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYqr"

[[alerts.channels]]
type = "slack"
url = "HTTPS://hooks.slack.com/services/T000/B000/XXXX"

[[alerts.channels]]
type = "slack"
url = "https://localhost:8443/hook"

[crm.hubspot]
base_url = "http://10.0.0.7"
access_token = "pat-0123456789"
client_secret = "hubspot-secret-0123456789"
"#;
    let path = dir.path().join("raccordo.toml");
    std::fs::write(&path, config).unwrap();
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for (key, why) in [
        ("alerts.channels[0]", "cloud metadata"),
        ("alerts.channels[1]", "cloud metadata"),
        ("alerts.channels[2]", "plain http"),
        ("alerts.channels[3]", "not a URL"),
        ("alerts.channels[5]", "local name"),
        ("crm.hubspot.base_url", "private address"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&format!("{key}:")) && l.contains(why)),
            "expected {key} refused for {why}:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("alerts.channels[4]"),
        "an uppercase HTTPS URL to a public host is fine:\n{stderr}"
    );
    assert!(
        !stderr.contains("SECRETPATH"),
        "a URL's path is never echoed:\n{stderr}"
    );

    // Allowing the metadata address by name does not allow it: only `allow_internal`
    // entries open internal targets, and this config names none.
    let https_only = config
        .replace("http://169.254.169.254", "https://169.254.169.254")
        .replace("http://hooks.slack", "https://hooks.slack")
        .replace("\"http://\"", "\"https://hooks.example.com/x\"")
        .replace(
            "https://localhost:8443/hook",
            "https://hooks.slack.com/services/T/B/X",
        )
        .replace("http://10.0.0.7", "https://10.0.0.7");
    std::fs::write(&path, &https_only).unwrap();
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("alerts.channels[0]: `url`: 169.254.169.254 is a cloud metadata address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("crm.hubspot.base_url: 10.0.0.7 is a private address"),
        "{stderr}"
    );

    // ...and listing them does.
    std::fs::write(
        &path,
        format!(
            "{https_only}\n[outbound]\nallow_internal = [\"169.254.169.254\", \"10.0.0.0/8\", \"::ffff:169.254.169.254\"]\n"
        ),
    )
    .unwrap();
    let out = check(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_time_url_to_a_loopback_address_the_config_did_not_allow_is_never_called() {
    // Two capture servers: 127.0.0.1 is allowed by the config, 127.0.0.3 is not.
    let (allowed, allowed_seen) = capture_http(vec![200; 4]);
    let (forbidden, forbidden_seen) = {
        let listener = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(0usize));
        let count = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
                *count.lock().unwrap() += 1;
            }
        });
        (addr, seen)
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[server]
data_dir = "data"

[outbound]
allow_internal = ["127.0.0.1"]
allow_http = ["127.0.0.1", "127.0.0.3"]

[[admin.tokens]]
name = "ops"
token = "{ADMIN}"
scopes = ["admin"]

[[flows]]
name = "relay"
trigger = {{ type = "api" }}

[[flows.steps]]
name = "call"
type = "http"
method = "POST"
url = "{{{{ trigger.target }}}}"
body = {{ note = "hello" }}
retry = {{ attempts = 1 }}
"#
    );
    std::fs::write(dir.path().join("raccordo.toml"), config).unwrap();
    let server = Server::start(dir.path(), &["--config", "raccordo.toml"]);

    // The allowed address is called.
    let ok = run_to_end(&server, format!("http://{allowed}/hook")).await;
    assert_eq!(ok["status"], "succeeded", "{ok}");
    assert_eq!(wait_for_requests(&allowed_seen, 1).await.len(), 1);

    // Loopback addresses the config did not allow, in three spellings: refused, not sent.
    for target in [
        format!("http://{forbidden}/hook"),
        format!("http://[::ffff:127.0.0.3]:{}/hook", forbidden.port()),
        format!("http://2130706435:{}/hook", forbidden.port()),
    ] {
        let run = run_to_end(&server, target.clone()).await;
        assert_eq!(run["status"], "failed", "{target}: {run}");
        let text = run.to_string();
        assert!(
            text.contains("allow_internal"),
            "{target}: the refusal says how to allow it: {run}"
        );
    }
    assert_eq!(*forbidden_seen.lock().unwrap(), 0, "no connection was made");
}

/// Starts the `relay` flow with `target` and waits until the run ends.
async fn run_to_end(server: &Server, target: String) -> Value {
    let response = client()
        .post(server.url("/api/v1/flows/relay/runs"))
        .bearer_auth(ADMIN)
        .json(&json!({ "target": target }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let id = body["run_id"].as_str().unwrap().to_string();
    poll_json(server, &format!("/api/v1/flows/runs/{id}"), ADMIN, |r| {
        r["status"] != "running" && r["status"] != "queued"
    })
    .await
}
