//! The command line as a newcomer meets it.

mod support;

use std::process::Command;

use reqwest::StatusCode;
use support::*;

#[test]
fn help_texts_explain_every_command() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for command in ["serve", "check", "loadgen", "sandbox", "demo"] {
        assert!(text.contains(command), "{text}");
        let out = Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8(out.stdout).unwrap().len() > 300,
            "{command} --help is too thin"
        );
    }
}

/// Nodes sharing a store must seal CRM tokens with one key: without `RACCORDO_SECRET_KEY`
/// each would make its own, so the config is refused, by key.
#[test]
fn a_shared_store_with_a_crm_needs_the_secret_key_in_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nodes.toml");
    std::fs::write(
        &config,
        "[storage]\nbackend = \"cluster\"\n\n[storage.postgres]\nurl = \"host=127.0.0.1\"\n\n\
         [storage.redis]\nurl = \"redis://127.0.0.1\"\n\n[crm.hubspot]\naccess_token = \"pat-na1-00000000\"\nclient_secret = \"hubspot-app-secret-0000\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", config.to_str().unwrap()])
        .env_remove("RACCORDO_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("storage.backend: nodes sharing a store seal the CRM tokens with one key: set RACCORDO_SECRET_KEY"),
        "{stderr}"
    );
}

#[test]
fn check_reports_every_problem_with_its_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "");
    let out = Command::new(BIN)
        .args(["check", "--config", good.to_str().unwrap()])
        .env("TEST_HS_SECRET", HS_SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("ok (6 source(s), 2 admin token(s)")
    );

    let out = Command::new(BIN)
        .args(["check", "--config", good.to_str().unwrap()])
        .env_remove("TEST_HS_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("raccordo.toml:17: environment variable TEST_HS_SECRET is not set"),
        "{stderr}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[storage]\ndurability = \"sometimes\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("bad.toml:2:") && stderr.contains("sometimes"),
        "{stderr}"
    );

    // Values that parse but make no sense are reported by key, with their line.
    let odd = dir.path().join("odd.toml");
    std::fs::write(
        &odd,
        "[metrics]\nprovisional_every = \"2s\"\n\n[alerts.failure_rate]\nthreshold = 1.5\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", odd.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("odd.toml:2: metrics.provisional_every: must be between 50ms and 500ms"),
        "{stderr}"
    );
    assert!(
        stderr.contains("odd.toml:5: alerts.failure_rate.threshold: must be between 0 and 1"),
        "{stderr}"
    );

    // Type mistakes in several sections are all reported in one run, each with its line.
    let many = dir.path().join("many.toml");
    std::fs::write(
        &many,
        "[server]\nrequest_timeout = \"forever\"\ncolour = \"blue\"\n\n[storage]\ndurability = \"sometimes\"\n\n[metrics]\nbogus = 1\n\n\
         [sources.web]\nauth = [{ type = \"api_key\", keys = [\"${UNSET_WEB_KEY}\"] }]\ntime_feld = \"/at\"\n\
         [sources.shop]\nauth = [{ type = \"api_key\", keys = [\"${UNSET_SHOP_KEY}\"] }]\n\
         [sources.shop.mapping]\ncustomer = \"/email\"\nevent = { pointer = \"/type\", format = \"cents\" }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", many.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    // Two mistakes in one section, a bad variant, an unknown key, two unset variables, a
    // misspelt key in a source and a mapping mistake found past all of them.
    for expected in [
        "many.toml:2: server.request_timeout: invalid value",
        "many.toml:3: server.colour: unknown field `colour`",
        "many.toml:6: storage.durability: unknown variant `sometimes`",
        "many.toml:9: metrics.bogus: unknown field `bogus`",
        "many.toml:12: environment variable UNSET_WEB_KEY is not set",
        "many.toml:13: sources.web.time_feld: unknown field `time_feld`",
        "many.toml:15: environment variable UNSET_SHOP_KEY is not set",
        "many.toml:18: sources.shop.mapping.event.format: must be one of `text`, `lowercase`",
        "8 problem(s) found",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in {stderr}"
        );
    }

    // A goal no source can send would never count; a hub without admin tokens is warned of.
    let goals = dir.path().join("goals.toml");
    let source =
        "[sources.web]\nauth = [{ type = \"api_key\", keys = [\"0123456789abcdef0123\"] }]\n";
    std::fs::write(
        &goals,
        format!("[metrics]\ngoals = [\"acquisto\"]\n{source}"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", goals.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(
            "goals.toml:2: metrics.goals[0]: `acquisto` is no event type any source can send"
        ),
        "{stderr}"
    );
    std::fs::write(&goals, source).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", goals.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("warning: no `[[admin.tokens]]`"),
        "{stdout}"
    );

    // A sample payload runs through the source's checks without a hub.
    let sample = dir.path().join("sample.json");
    let mut e = event(1);
    e["timestamp"] = serde_json::json!("2026-11-22T10:15:30.123+01:00");
    std::fs::write(&sample, e.to_string()).unwrap();
    let run = |sample: &std::path::Path| {
        Command::new(BIN)
            .args(["check", "--config", goals.to_str().unwrap(), "--event"])
            .arg(sample)
            .args(["--source", "web"])
            .output()
            .unwrap()
    };
    let out = run(&sample);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("event time:   2026-11-22T09:15:30"),
        "{stdout}"
    );
    assert!(
        stdout.contains("windows:      [2026-11-22T09:15:00Z, 2026-11-22T09:20:00Z)"),
        "{stdout}"
    );
    assert!(stdout.contains("conversion:   yes"), "{stdout}");
    e["canale"] = serde_json::json!("fax");
    std::fs::write(&sample, e.to_string()).unwrap();
    let out = run(&sample);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("/canale: must be one of"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_start_without_config_prints_working_credentials_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let banner = server.stderr_containing("Live dashboard");
    let api_key = banner
        .split_whitespace()
        .find(|w| w.starts_with("rk_"))
        .expect("an API key in the banner")
        .to_string();
    let admin = banner
        .split_whitespace()
        .find(|w| w.starts_with("ra_"))
        .expect("an admin token")
        .to_string();
    let r = client()
        .post(server.url("/api/v1/eventi/conversione"))
        .header("x-api-key", &api_key)
        .json(&event(7))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = client()
        .get(server.url("/api/v1/events"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mode = std::fs::metadata(dir.path().join("raccordo-data/credentials.toml")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    assert_eq!(server.terminate().code(), Some(0));

    let server = Server::start(dir.path(), &[]);
    let banner = server.stderr_containing("credentials.toml");
    assert!(
        !banner.contains(&api_key),
        "credentials are printed only at first start"
    );
    assert!(banner.contains("credentials.toml"));
    let r = client()
        .post(server.url("/api/v1/eventi/conversione"))
        .header("x-api-key", &api_key)
        .json(&event(8))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "the same key still works");
}

/// `raccordo loadgen` against `addr` with signed traffic to `source:web` and `args`; its
/// JSON report.
async fn loadgen_json(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    args: &[&str],
) -> serde_json::Value {
    let out = tokio::process::Command::new(BIN)
        .args(["loadgen", "--url", &format!("http://{addr}")])
        .args(["--route", "source:web", "--webhook-secret", WHSEC])
        .args(["--json", "--duration", "60s"])
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn loadgen_sends_signed_traffic_and_counts_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    let report = loadgen_json(
        dir.path(),
        server.addr,
        &[
            "--requests",
            "400",
            "--concurrency",
            "8",
            "--batch-size",
            "5",
            "--duplicates",
            "0.1",
        ],
    )
    .await;
    assert_eq!(report["requests"], 400);
    assert_eq!(report["events"], 2000);
    assert_eq!(report["transport_errors"], 0);
    let accepted = report["accepted"].as_u64().unwrap();
    let duplicate = report["duplicate"].as_u64().unwrap();
    assert_eq!(accepted + duplicate, 2000, "{report}");
    assert!(duplicate > 50, "about 10% duplicates: {report}");
    assert_eq!(all_events(&server).await.len() as u64, accepted);
    // Each second's slowest answer: together they hold the run's slowest.
    let seconds: Vec<f64> = report["max_latency_ms_per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let slowest = seconds.iter().copied().fold(0.0, f64::max);
    let max = report["latency_ms"]["max"].as_f64().unwrap();
    assert!(
        !seconds.is_empty() && (slowest - max).abs() <= max * 0.01,
        "{report}"
    );
    assert!(
        report.get("max_send_lag_ms_per_second").is_none(),
        "the closed loop has no schedule to be late against: {report}"
    );

    // Retried deliveries (same webhook-id, same body) are answered as the first time, all
    // duplicates, and store nothing more.
    let retried = loadgen_json(
        dir.path(),
        server.addr,
        &[
            "--requests",
            "300",
            "--concurrency",
            "4",
            "--seed",
            "7",
            "--retries",
            "0.3",
        ],
    )
    .await;
    let (fresh, again) = (
        retried["accepted"].as_u64().unwrap(),
        retried["duplicate"].as_u64().unwrap(),
    );
    assert_eq!(fresh + again, 300, "{retried}");
    assert!((50..150).contains(&again), "about 30% retries: {retried}");
    assert_eq!(all_events(&server).await.len() as u64, accepted + fresh);

    // The open loop also says how late the generator itself sent: never later than the
    // answers it timed from the same schedule.
    let report = loadgen_json(
        dir.path(),
        server.addr,
        &["--rate", "400", "--requests", "600", "--seed", "3"],
    )
    .await;
    assert_eq!(report["requests"], 600, "{report}");
    let per_second = |name: &str| -> Vec<f64> {
        report[name]
            .as_array()
            .unwrap_or_else(|| panic!("{name} in {report}"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (latency, lag) = (
        per_second("max_latency_ms_per_second"),
        per_second("max_send_lag_ms_per_second"),
    );
    assert_eq!(
        latency.len(),
        2,
        "600 requests at 400/s span two seconds: {report}"
    );
    assert_eq!(lag.len(), latency.len(), "{report}");
    for (answered, sent) in latency.iter().zip(&lag) {
        assert!(sent > &0.0 && sent <= answered, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn costs_import_sends_each_campaign_and_names_the_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    let csv = dir.path().join("costs.csv");
    std::fs::write(
        &csv,
        "campaign,date,amount\npromo-natale,2026-12-01,120.50\npromo-natale,2026-12-02,99\nfiera milano,2026-11-30,10.123\nfiera milano,2026-11-31,5\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(BIN)
        .args([
            "costs",
            "import",
            csv.to_str().unwrap(),
            "--url",
            &format!("http://{}", server.addr),
            "--token",
            ADMIN_TOKEN,
        ])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("promo-natale: 2 day(s) stored"), "{stdout}");
    assert!(
        stderr.contains("costs.csv:4: amount:") && stderr.contains("costs.csv:5: date:"),
        "{stderr}"
    );
    let help = Command::new(BIN)
        .args(["costs", "import", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("campaign,date,amount"));
}
