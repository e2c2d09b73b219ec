//! The sandboxes against the official Python SDKs, and `raccordo demo` end to end.
//!
//! The SDK scripts live in `sdk-tests/`; `.ci/run` installs the pinned SDKs
//! (`sdk-tests/requirements.txt`) into a virtual environment and points
//! `RACCORDO_SDK_PYTHON` at its interpreter.

mod support;

use support::sdk_python;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_raccordo")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Sandbox {
    child: Child,
    url: String,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `raccordo sandbox ARGS --port 0` and reads its URL from the banner.
fn sandbox(args: &[&str]) -> Sandbox {
    let mut child = Command::new(binary())
        .arg("sandbox")
        .args(args)
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the sandbox");
    let mut first = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    reader.read_line(&mut first).unwrap();
    // Keep draining the banner so the sandbox never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let url = first
        .split(" on ")
        .nth(1)
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|| panic!("no URL in the banner: {first:?}"));
    Sandbox { child, url }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_script(python: &PathBuf, script: &str, env: &[(&str, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(python)
        .arg(repo().join("sdk-tests").join(script))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
    eprintln!("{script}: {}", stdout.trim());
}

#[test]
fn the_official_openai_client_works_against_the_ai_sandbox() {
    let Some(python) = sdk_python() else { return };
    let s = sandbox(&["ai", "--token", "sk-sandbox-test-0123456789"]);
    run_script(
        &python,
        "openai_sdk.py",
        &[
            ("SANDBOX_URL", s.url.clone()),
            ("SANDBOX_KEY", "sk-sandbox-test-0123456789".into()),
        ],
    );
}

#[test]
fn the_official_hubspot_client_works_against_the_hubspot_sandbox() {
    let Some(python) = sdk_python() else { return };
    let hook = free_port();
    let hook_url = format!("http://127.0.0.1:{hook}/hook");
    let s = sandbox(&[
        "hubspot",
        "--token",
        "pat-eu1-test",
        "--client-id",
        "app-test",
        "--client-secret",
        "secret-test",
        "--webhook-url",
        &hook_url,
    ]);
    run_script(
        &python,
        "hubspot_sdk.py",
        &[
            ("SANDBOX_URL", s.url.clone()),
            ("SANDBOX_TOKEN", "pat-eu1-test".into()),
            ("SANDBOX_CLIENT_ID", "app-test".into()),
            ("SANDBOX_CLIENT_SECRET", "secret-test".into()),
            ("WEBHOOK_PORT", hook.to_string()),
        ],
    );
}

#[test]
fn the_official_zoho_client_works_against_the_zoho_sandbox() {
    let Some(python) = sdk_python() else { return };
    let s = sandbox(&[
        "zoho",
        "--client-id",
        "1000.TESTCLIENT",
        "--client-secret",
        "zoho-secret",
        "--refresh-token",
        "1000.refresh",
    ]);
    run_script(
        &python,
        "zoho_sdk.py",
        &[
            ("SANDBOX_URL", s.url.clone()),
            ("SANDBOX_CLIENT_ID", "1000.TESTCLIENT".into()),
            ("SANDBOX_CLIENT_SECRET", "zoho-secret".into()),
            ("SANDBOX_REFRESH_TOKEN", "1000.refresh".into()),
            ("NOTIFY_PORT", free_port().to_string()),
        ],
    );
}

/// The number after `label` in a summary line.
fn count(line: &str, label: &str) -> u64 {
    line.split(label)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` count in {line:?}"))
}

#[test]
fn the_demo_runs_everything_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(binary())
        .args(["demo", "--duration", "6s", "--port", "0", "--rate", "30"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Dashboard:     http://127.0.0.1:"),
        "{stdout}"
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    assert!(count(summary, "events accepted ") > 50, "{summary}");
    assert!(count(summary, "hubspot ") >= 2, "{summary}");
    assert!(count(summary, "zoho ") >= 2, "{summary}");
    assert!(
        count(summary, "written ") >= 1,
        "the hub synced changes between the CRM sandboxes: {summary}"
    );
    assert!(
        count(summary, "in sync ") >= 1,
        "the echoes of its own writes changed nothing: {summary}"
    );
    assert!(
        count(summary, "flows succeeded ") >= 1,
        "the shipped ticket flow ran on the tickets: {summary}"
    );
    assert!(
        summary.contains(", failed 0, team alerts"),
        "no ticket flow failed: {summary}"
    );
    assert!(!summary.contains("traffic errors"), "{summary}");
    assert!(stdout.trim_end().ends_with("stopped"), "{stdout}");
    assert!(
        dir.path().join("raccordo-demo/raccordo.db").exists(),
        "the hub kept its data"
    );
}

/// A blocking JSON call to a sandbox.
fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut args = vec!["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, url];
    let header;
    if let Some(t) = token {
        header = format!("authorization: Bearer {t}");
        args.extend(["-H", header.as_str()]);
    }
    if let Some(b) = body {
        args.extend(["-H", "content-type: application/json", "--data-binary", b]);
    }
    let out = Command::new("curl").args(&args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn sandbox_state_survives_a_restart_and_knobs_change_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hubspot.json");
    let state_arg = state.to_str().unwrap();
    let args = [
        "hubspot",
        "--token",
        "pat-state",
        "--state-file",
        state_arg,
        "--seed-size",
        "2,5",
    ];
    let email = "anna.moretti@example.it";
    let id = {
        let s = sandbox(&args);
        let (status, body) = call(
            "POST",
            &format!("{}/crm/v3/objects/contacts", s.url),
            Some("pat-state"),
            Some(&format!(
                r#"{{"properties":{{"email":"{email}","firstname":"Anna"}}}}"#
            )),
        );
        assert_eq!(status, 201, "{body}");
        let created: serde_json::Value = serde_json::from_str(&body).unwrap();

        // Knobs: a bad value is refused whole; a good one takes effect and is logged.
        let knobs = format!("{}/_sandbox/knobs", s.url);
        let (status, _) = call("PATCH", &knobs, None, Some(r#"{"error_rate": 2}"#));
        assert_eq!(status, 400);
        let (status, _) = call("PATCH", &knobs, None, Some(r#"{"error_rate": 1.0}"#));
        assert_eq!(status, 200);
        let (status, body) = call(
            "GET",
            &format!("{}/crm/v3/objects/contacts", s.url),
            Some("pat-state"),
            None,
        );
        assert_eq!(status, 500, "{body}");
        let (_, calls) = call("GET", &format!("{}/_sandbox/calls", s.url), None, None);
        let calls: serde_json::Value = serde_json::from_str(&calls).unwrap();
        let last = calls["calls"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (last["status"].as_u64(), last["injected"].as_str()),
            (Some(500), Some("error")),
            "{calls}"
        );
        created["id"].as_str().unwrap().to_string()
        // Dropping `s` kills the process: nothing but the state file carries the contact over.
    };
    let s = sandbox(&args);
    let (status, body) = call(
        "GET",
        &format!(
            "{}/crm/v3/objects/contacts/{}?idProperty=email",
            s.url,
            email.replace('@', "%40")
        ),
        Some("pat-state"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let read: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(read["id"].as_str(), Some(id.as_str()), "{read}");
    let (status, _) = call(
        "GET",
        &format!("{}/crm/v3/objects/contacts?limit=100", s.url),
        Some("pat-state"),
        None,
    );
    assert_eq!(
        status, 200,
        "knobs are not persisted: the restarted sandbox answers normally"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hubspot_webhooks_are_retried_until_delivered() {
    let (hook, seen) = support::capture_http(vec![503]);
    let hook_url = format!("http://{hook}/hook");
    let s = sandbox(&[
        "hubspot",
        "--token",
        "pat-retry",
        "--webhook-url",
        &hook_url,
        "--seed-size",
        "1,1",
    ]);
    let (status, body) = call(
        "POST",
        &format!("{}/crm/v3/objects/companies", s.url),
        Some("pat-retry"),
        Some(r#"{"properties":{"name":"Pastificio Riprova S.r.l.","city":"Gragnano"}}"#),
    );
    assert_eq!(status, 201, "{body}");
    let id: u64 = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The first delivery is answered 503; the same events come again with attemptNumber 1.
    let requests = support::wait_for_requests(&seen, 2).await;
    for (attempt, request) in requests.iter().enumerate() {
        let events: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        let event = &events[0];
        assert_eq!(event["subscriptionType"], "company.creation", "{events}");
        assert_eq!(event["objectId"], id);
        assert_eq!(event["attemptNumber"], attempt as u64, "{events}");
        assert!(request.header("x-hubspot-signature-v3").is_some());
    }
}
