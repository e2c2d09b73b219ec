//! `raccordo migrate`: an embedded hub's data moved onto PostgreSQL, then served by a node
//! on it — the same events, a retried delivery and a repeated event still answered as
//! duplicates (their claims moved), the windows carried on from the moved checkpoint, and a
//! sealed secret opening under the nodes' key. Built and run with the `postgres` feature.
#![cfg(feature = "postgres")]

mod support;

use serde_json::{Value, json};
use support::pg::{database, drop_schema, fresh_schema};
use support::{API_KEY, BIN, READ_TOKEN, Server, WHSEC, client, event, get_json, signed};

/// The key the nodes seal with (32 bytes, base64).
const SECRET_KEY: &str = "MTJlOGY2ZjQ0YjE0ZmM2MzAyZDM5NjBiNmY3ZWEyZTI=";

fn config(storage: &str) -> String {
    format!(
        r#"
[server]
data_dir = "data"
{storage}

[sources.web]
auth = [
  {{ type = "api_key", keys = ["{API_KEY}"] }},
  {{ type = "standard_webhooks", secrets = ["{WHSEC}"] }},
]

[[admin.tokens]]
name = "dashboard"
token = "{READ_TOKEN}"
scopes = ["read"]
"#
    )
}

async fn post(server: &Server, body: &Value, delivery: Option<&str>) -> Vec<Value> {
    let bytes = serde_json::to_vec(body).unwrap();
    let mut request = client()
        .post(server.url("/api/v1/eventi/conversione"))
        .header("content-type", "application/json");
    match delivery {
        Some(id) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            for (k, v) in signed(WHSEC, id, now, &bytes) {
                request = request.header(k, v);
            }
        }
        None => request = request.header("x-api-key", API_KEY),
    }
    let response = request.body(bytes).send().await.unwrap();
    assert_eq!(response.status(), 202);
    match response.json::<Value>().await.unwrap() {
        Value::Array(items) => items,
        one => vec![one],
    }
}

/// Every stored event id, in log order.
async fn event_ids(server: &Server) -> Vec<String> {
    let page = get_json(server, "/api/v1/events?limit=1000", READ_TOKEN).await;
    page["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// The overall rows of every window, summed (the test may straddle a window's end).
async fn overall(server: &Server) -> Value {
    let rows = get_json(server, "/api/v1/metrics?dimension=all", READ_TOKEN).await;
    let rows = rows["rows"].as_array().unwrap_or_else(|| panic!("{rows}"));
    let sum = |field: &str| {
        rows.iter()
            .map(|r| r[field].as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    json!({
        "events": sum("events"),
        "duplicates": sum("duplicates"),
        "total_value": (sum("total_value") * 100.0).round() / 100.0,
    })
}

fn migrate(from: &std::path::Path, to: &std::path::Path) -> std::process::Output {
    // From the embedded hub's directory: its config's `data_dir` is relative to where the
    // hub runs.
    std::process::Command::new(BIN)
        .current_dir(from.parent().unwrap())
        .args(["migrate", "--from"])
        .arg(from)
        .arg("--config")
        .arg(to)
        .env("RACCORDO_SECRET_KEY", SECRET_KEY)
        .env_remove("RACCORDO_SECRET_KEY_PREVIOUS")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_hub_moves_to_postgresql_with_its_claims_windows_and_secrets() {
    let Some(schema) = fresh_schema() else {
        return;
    };
    // The embedded hub takes conversions: single ones, a repeated one, a signed delivery.
    let embedded = tempfile::tempdir().unwrap();
    std::fs::write(embedded.path().join("raccordo.toml"), config("")).unwrap();
    let mut hub = Server::start(embedded.path(), &["--config", "raccordo.toml"]);
    for n in 0..20 {
        post(&hub, &event(n), None).await;
    }
    let repeated = event(100);
    post(&hub, &repeated, None).await;
    assert_eq!(post(&hub, &repeated, None).await[0]["status"], "duplicate");
    let batch = json!([event(200), event(201)]);
    let delivered = post(&hub, &batch, Some("msg_moved")).await;
    let ids_before = event_ids(&hub).await;
    assert_eq!(ids_before.len(), 23, "duplicates are not listed");
    let window_before = overall(&hub).await;
    assert_eq!(window_before["events"], 23.0);
    assert_eq!(window_before["duplicates"], 1.0);
    assert_eq!(hub.terminate().code(), Some(0));

    // A secret sealed with the embedded hub's key file.
    let data = embedded.path().join("data");
    {
        let store = raccordo_storage_sqlite::SqliteStore::open(
            raccordo_storage_sqlite::SqliteOptions::new(data.join("raccordo.db")),
        )
        .unwrap();
        let sealer =
            raccordo_crm::seal::Sealer::from_env_or_file(&data.join("secret.key")).unwrap();
        let sealed = sealer.seal("zoho:grant", b"refresh-token-1").unwrap();
        store
            .stores()
            .secrets
            .put_secret("zoho:grant", sealed, None)
            .await
            .unwrap();
        store.stores().log.close().await;
    }

    // Migrate into an empty schema.
    let target = tempfile::tempdir().unwrap();
    let storage = format!(
        "\n[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"{}\"\nschema = \"{schema}\"\n",
        database()
    );
    std::fs::write(target.path().join("raccordo.toml"), config(&storage)).unwrap();
    let moved = migrate(
        &embedded.path().join("raccordo.toml"),
        &target.path().join("raccordo.toml"),
    );
    let said = String::from_utf8_lossy(&moved.stdout).to_string();
    assert!(
        moved.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    assert!(said.contains("events: 24 copied (log head 24)"), "{said}");
    assert!(
        said.contains("dedup claims: 23 business key(s), 1 delivery id(s)"),
        "{said}"
    );
    assert!(said.contains("secrets: 1 re-sealed"), "{said}");

    // A node on PostgreSQL serves what the embedded hub held.
    let node = Server::start_with(
        target.path(),
        "127.0.0.1:0",
        &["--config", "raccordo.toml"],
        &[("RACCORDO_SECRET_KEY", SECRET_KEY)],
    );
    assert_eq!(event_ids(&node).await, ids_before);
    // The claims moved: a retried delivery gets its original ids back, a repeated event is
    // a duplicate; nothing new is stored.
    let retried = post(&node, &batch, Some("msg_moved")).await;
    assert_eq!(
        retried.iter().map(|i| &i["id"]).collect::<Vec<_>>(),
        delivered.iter().map(|i| &i["id"]).collect::<Vec<_>>()
    );
    assert!(retried.iter().all(|i| i["status"] == "duplicate"));
    assert_eq!(post(&node, &repeated, None).await[0]["status"], "duplicate");
    assert_eq!(event_ids(&node).await.len(), 23);
    // The windows went on from the moved checkpoint: the same counts, plus the duplicate
    // just sent (counted as such, once).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let window = overall(&node).await;
        if window["duplicates"] == 2.0 {
            assert_eq!(window["events"], window_before["events"]);
            assert_eq!(window["total_value"], window_before["total_value"]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{window}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(node);

    // The secret opens under the nodes' key.
    let (pg, connection) = tokio_postgres::connect(&database(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let sealed: Vec<u8> = pg
        .query_one(
            &format!("SELECT value FROM {schema}.secrets WHERE name = 'zoho:grant'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let nodes = raccordo_crm::seal::Sealer::from_base64(SECRET_KEY).unwrap();
    assert_eq!(
        nodes.open("zoho:grant", &sealed).unwrap(),
        b"refresh-token-1"
    );

    // A second migration into the same schema is refused: it holds data now.
    let again = migrate(
        &embedded.path().join("raccordo.toml"),
        &target.path().join("raccordo.toml"),
    );
    assert!(!again.status.success());
    let refused = String::from_utf8_lossy(&again.stderr);
    assert!(refused.contains("already holds data"), "{refused}");

    drop_schema(&schema).await;
}
