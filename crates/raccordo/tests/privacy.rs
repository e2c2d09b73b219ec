//! A customer's erasure and export on the real binary: conversion events (a business-key
//! duplicate among them), a refused request, a support ticket whose flow run asked the AI
//! sandbox (a cached answer) — then `DELETE /api/v1/customers/{id}` by customer id and by
//! e-mail address, and every store checked afterwards, down to the bytes of the data
//! directory once the hub has stopped.

mod support;

use raccordo_sandbox::{Product, Running, SandboxConfig};
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, API_KEY, READ_TOKEN, Server, client, get_json, poll_json};

const TICKETS_KEY: &str = "tickets-api-key-0123456789";
const ADA: &str = "CLIENTE-TEST-000001";
const ADA_EMAIL: &str = "ada.lovelace@example.it";
const BOB: &str = "CLIENTE-TEST-000002";

fn credential<'a>(s: &'a Running, name: &str) -> &'a str {
    &s.credentials.iter().find(|(k, _)| *k == name).unwrap().1
}

fn config(ai: &Running) -> String {
    format!(
        r#"
[server]
data_dir = "data"

[outbound]
allow_internal = ["127.0.0.1"]
allow_http = ["127.0.0.1"]

[sources.web]
auth = [{{ type = "api_key", keys = ["{API_KEY}"] }}]

[sources.tickets]
schema = "ticket.schema.json"
key_fields = ["/ticket_id"]
auth = [{{ type = "api_key", keys = ["{TICKETS_KEY}"] }}]

[[admin.tokens]]
name = "dashboard"
token = "{READ_TOKEN}"
scopes = ["read"]

[[admin.tokens]]
name = "dpo"
token = "{ADMIN_TOKEN}"
scopes = ["admin"]

[[ai.providers]]
name = "sandbox"
base_url = "{ai_url}/v1"
api_key = "{ai_key}"
model = "raccordo-sandbox-1"

[[flows]]
name = "ticket-triage"
trigger = {{ type = "webhook", source = "tickets" }}

[[flows.steps]]
name = "classify"
type = "ai"
input = "{{{{ trigger.message }}}}"
prompt = "Ticket from {{{{ trigger.email }}}}: {{{{ input }}}}"
schema = {{ type = "object", required = ["sentiment"], properties = {{ sentiment = {{ type = "string" }} }} }}
"#,
        ai_url = ai.base_url,
        ai_key = credential(ai, "api_key"),
    )
}

fn conversion(customer: &str, valore: f64, at: &str, localita: &str) -> Value {
    json!({
        "id_cliente": customer,
        "evento": "acquisto_concluso",
        "timestamp": at,
        "valore": valore,
        "canale": "email",
        "stato": "completato",
        "metadati": {"campagna": "autunno", "dispositivo": "mobile", "localita": localita}
    })
}

async fn post(server: &Server, path: &str, key: &str, body: &Value) -> u16 {
    client()
        .post(server.url(path))
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn admin(method: reqwest::Method, server: &Server, path: &str) -> (u16, Value) {
    let response = client()
        .request(method, server.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn events(server: &Server) -> Vec<Value> {
    get_json(server, "/api/v1/events?limit=1000", READ_TOKEN).await["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every file under `dir` that holds `needle`'s bytes.
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            found.push(entry.display().to_string());
        }
    }
    found
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_customer_is_exported_then_erased_from_every_store_and_nothing_of_them_stays_on_disk() {
    let mut ai_config = SandboxConfig::new(Product::Ai, "127.0.0.1:0".parse().unwrap());
    ai_config.seed_size = (0, 0);
    let ai = raccordo_sandbox::start(ai_config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ticket.schema.json"),
        r#"{"type":"object","required":["ticket_id","email","message"]}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("raccordo.toml"), config(&ai)).unwrap();
    let mut server = Server::start(dir.path(), &["--config", "raccordo.toml"]);

    // Ada: two conversions and a business-key duplicate of the first; Bob: two.
    let at = support::now_rfc3339(-2_000);
    let at2 = support::now_rfc3339(-1_000);
    for (customer, valore, at) in [
        (ADA, 10.0, &at),
        (ADA, 20.0, &at2),
        (ADA, 10.0, &at),
        (BOB, 30.0, &at),
        (BOB, 40.0, &at2),
    ] {
        let body = conversion(customer, valore, at, "Milano");
        assert_eq!(
            post(&server, "/api/v1/eventi/conversione", API_KEY, &body).await,
            202
        );
    }
    // A refused request about Ada (an unknown event type), kept by the request inspector.
    let mut refused = conversion(ADA, 5.0, &at, "Milano");
    refused["evento"] = json!("telefonata");
    assert_eq!(
        post(&server, "/api/v1/eventi/conversione", API_KEY, &refused).await,
        422
    );
    // Support tickets: each runs the flow, which asks the AI sandbox (and caches the answer).
    for (n, email) in [(1, ADA_EMAIL), (2, "bob@example.it")] {
        let ticket = json!({"ticket_id": format!("T-{n}"), "email": email, "message": "L'app non funziona, pessimo servizio."});
        assert_eq!(
            post(&server, "/webhooks/in/tickets", TICKETS_KEY, &ticket).await,
            202
        );
    }
    poll_json(
        &server,
        "/api/v1/flows/runs?flow=ticket-triage",
        READ_TOKEN,
        |r| {
            r["runs"].as_array().is_some_and(|runs| {
                runs.len() == 2 && runs.iter().all(|run| run["status"] == "succeeded")
            })
        },
    )
    .await;
    poll_json(&server, "/api/v1/requests", READ_TOKEN, |p| {
        p["requests"].as_array().is_some_and(|r| r.len() == 1)
    })
    .await;
    let before = events(&server).await;
    assert_eq!(
        before.len(),
        6,
        "4 conversions (the duplicate left out) and 2 tickets: {before:?}"
    );

    // The export: by customer id, then by e-mail address.
    let (status, export) = admin(
        reqwest::Method::GET,
        &server,
        &format!("/api/v1/customers/{ADA}/export"),
    )
    .await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(export["customer"], ADA);
    assert_eq!(
        export["data"]["events"].as_array().unwrap().len(),
        3,
        "the duplicate included: {export}"
    );
    assert_eq!(
        export["data"]["rejected_requests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(export["data"].get("runs").is_none());
    let (_, by_email) = admin(
        reqwest::Method::GET,
        &server,
        &format!("/api/v1/customers/{ADA_EMAIL}/export"),
    )
    .await;
    assert_eq!(
        by_email["data"]["events"].as_array().unwrap().len(),
        1,
        "{by_email}"
    );
    assert_eq!(by_email["data"]["runs"].as_array().unwrap().len(), 1);
    assert_eq!(by_email["data"]["ai_cache"].as_array().unwrap().len(), 1);

    // The erasure, by customer id and by e-mail address.
    let (status, erased) = admin(
        reqwest::Method::DELETE,
        &server,
        &format!("/api/v1/customers/{ADA}"),
    )
    .await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["erased"]["events"], 3, "{erased}");
    assert_eq!(
        erased["erased"]["dedup_claims"], 2,
        "two claims, the duplicate took none"
    );
    assert_eq!(erased["erased"]["rejected_requests"], 1);
    let fingerprint = erased["customer_fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fingerprint.len(), 32);
    let (status, erased) = admin(
        reqwest::Method::DELETE,
        &server,
        &format!("/api/v1/customers/{ADA_EMAIL}"),
    )
    .await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        (
            &erased["erased"]["events"],
            &erased["erased"]["runs"],
            &erased["erased"]["ai_cache"]
        ),
        (&json!(1), &json!(1), &json!(1)),
        "{erased}"
    );

    // Idempotent: nothing left.
    let (_, again) = admin(
        reqwest::Method::DELETE,
        &server,
        &format!("/api/v1/customers/{ADA}"),
    )
    .await;
    assert!(
        again["erased"]
            .as_object()
            .unwrap()
            .values()
            .all(|n| n == 0),
        "{again}"
    );
    let (_, export) = admin(
        reqwest::Method::GET,
        &server,
        &format!("/api/v1/customers/{ADA}/export"),
    )
    .await;
    assert_eq!(
        export["data"],
        json!({}),
        "nothing is held about Ada any more"
    );

    // Every event is still there with its counts and values; Ada's carry pseudonyms, Bob's
    // are untouched.
    let after = events(&server).await;
    assert_eq!(after.len(), before.len());
    let text = serde_json::to_string(&after).unwrap();
    assert!(!text.contains(ADA) && !text.contains(ADA_EMAIL), "{text}");
    assert_eq!(text.matches(BOB).count(), 2);
    let values = |list: &[Value]| {
        let mut v: Vec<String> = list
            .iter()
            .map(|e| e["payload"]["valore"].to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(values(&before), values(&after));
    let pseudonyms: std::collections::HashSet<&str> = after
        .iter()
        .filter(|e| e["source"] == "web" && e["payload"]["id_cliente"] != BOB)
        .map(|e| e["payload"]["id_cliente"].as_str().unwrap())
        .collect();
    assert_eq!(
        pseudonyms.len(),
        1,
        "one pseudonym for all of Ada's events: {pseudonyms:?}"
    );
    let pseudonym = pseudonyms.into_iter().next().unwrap();
    assert_eq!(pseudonym.len(), ADA.len());
    for e in after
        .iter()
        .filter(|e| e["payload"]["id_cliente"] == pseudonym)
    {
        assert_ne!(
            e["payload"]["metadati"]["localita"], "Milano",
            "personal fields too"
        );
        assert_eq!(
            e["payload"]["metadati"]["campagna"], "autunno",
            "the rest stays"
        );
    }
    for e in after.iter().filter(|e| e["payload"]["id_cliente"] == BOB) {
        assert_eq!(e["payload"]["metadati"]["localita"], "Milano");
    }
    // Ada's business key is free again: the same conversion is stored as new, not as a
    // duplicate of an event that no longer names her.
    let (status, answer) = {
        let response = client()
            .post(server.url("/api/v1/eventi/conversione"))
            .header("x-api-key", API_KEY)
            .json(&conversion(ADA, 10.0, &at, "Milano"))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 202);
    assert_eq!(answer["status"], "accepted", "{answer}");

    // The audit log: both erasures and both exports by the token's name, the customer by
    // fingerprint only.
    let audit = get_json(&server, "/api/v1/audit?limit=100", ADMIN_TOKEN).await;
    let records = audit["records"].as_array().unwrap();
    let erasures: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "DELETE /api/v1/customers/{id}")
        .collect();
    assert_eq!(erasures.len(), 3);
    assert!(
        erasures
            .iter()
            .all(|r| r["actor"] == "dpo" && r["status"] == 200)
    );
    assert!(
        erasures
            .iter()
            .any(|r| r["target"] == format!("customer:{fingerprint}")
                && r["detail"]["erased"]["events"] == 3)
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r["action"] == "GET /api/v1/customers/{id}/export")
            .count(),
        3
    );
    let audit_text = audit.to_string();
    assert!(
        !audit_text.contains(ADA) && !audit_text.contains(ADA_EMAIL),
        "{audit_text}"
    );

    // A read token may neither export nor erase; a bad id is a precise 400.
    let refused = client()
        .delete(server.url(&format!("/api/v1/customers/{BOB}")))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let (status, problem) =
        admin(reqwest::Method::DELETE, &server, "/api/v1/customers/%20%0A").await;
    assert_eq!(status, 400, "{problem}");

    // Once stopped, not one byte of Ada's id or address is left in the data directory, and
    // the hub never logged either.
    server.terminate();
    let data = dir.path().join("data");
    // The re-sent conversion above named Ada again, after her erasure: only its event may
    // hold her id, so erase it too before looking (as a DPO would be told to).
    let mut server = Server::start(dir.path(), &["--config", "raccordo.toml"]);
    let (status, erased) = admin(
        reqwest::Method::DELETE,
        &server,
        &format!("/api/v1/customers/{ADA}"),
    )
    .await;
    assert_eq!(
        (status, &erased["erased"]["events"]),
        (200, &json!(1)),
        "{erased}"
    );
    server.terminate();
    assert_eq!(files_holding(&data, ADA), Vec::<String>::new());
    assert_eq!(files_holding(&data, ADA_EMAIL), Vec::<String>::new());
    assert!(
        !files_holding(&data, BOB).is_empty(),
        "the check can find what is there"
    );
    let log = server.stderr_text();
    assert!(
        !log.contains(ADA) && !log.contains(ADA_EMAIL),
        "personal data in the log"
    );
}
