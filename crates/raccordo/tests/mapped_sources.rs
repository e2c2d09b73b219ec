//! Sources with their own payloads (a HubSpot webhook, a Zoho CRM record) become
//! conversions through a field mapping, on the real binary.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::*;

const HUBSPOT_KEY: &str = "hubspot-api-key-0123456789";
const ZOHO_KEY: &str = "zoho-api-key-0123456789";

/// HubSpot's webhook v3 payload (an array of events, epoch-ms `occurredAt`, numeric ids)
/// and a Zoho CRM deal as a workflow webhook sends it (its own field names, an offset
/// date-time, a lookup object for the campaign).
const MAPPED_SOURCES: &str = r#"
[metrics]
goals = ["acquisto_concluso"]

[sources.hubspot]
auth = [{ type = "api_key", keys = ["hubspot-api-key-0123456789"] }]
schema = "hubspot.schema.json"
[sources.hubspot.mapping]
customer = "/objectId"
event = { pointer = "/propertyValue", map = { closedwon = "acquisto_concluso", appointmentscheduled = "richiesta_demo" } }
time = { pointer = "/occurredAt", format = "epoch_ms" }
channel = { const = "crm" }
[sources.hubspot.mapping.dimensions]
portal = "/portalId"

[sources.zoho]
auth = [{ type = "api_key", keys = ["zoho-api-key-0123456789"] }]
schema = "zoho.schema.json"
[sources.zoho.mapping]
customer = { pointer = "/Email", format = "lowercase" }
event = { const = "acquisto_concluso" }
status = { pointer = "/Stage", map = { "Closed Won" = "completato", "Closed Lost" = "fallito" }, default = "in_corso" }
time = "/Modified_Time"
value = "/Amount"
channel = { pointer = "/Lead_Source", map = { "Web Download" = "webform", "Advertisement" = "social_media" } }
campaign = "/Campaign_Source/name"
"#;

fn write_schemas(dir: &std::path::Path) {
    std::fs::write(
        dir.join("hubspot.schema.json"),
        json!({
            "type": "object",
            "required": ["objectId", "occurredAt", "subscriptionType"],
            "properties": {
                "eventId": {"type": "integer"}, "subscriptionId": {"type": "integer"},
                "portalId": {"type": "integer"}, "appId": {"type": "integer"},
                "occurredAt": {"type": "integer"}, "subscriptionType": {"type": "string"},
                "attemptNumber": {"type": "integer"}, "objectId": {"type": "integer"},
                "propertyName": {"type": "string"}, "propertyValue": {"type": "string"},
                "changeSource": {"type": "string"}
            }
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("zoho.schema.json"),
        json!({
            "type": "object",
            "required": ["id", "Email", "Stage", "Modified_Time"],
            "additionalProperties": false,
            "properties": {
                "id": {"type": "string"}, "Deal_Name": {"type": "string"},
                "Email": {"type": "string", "format": "email"},
                "Stage": {"type": "string"}, "Amount": {"type": ["number", "null"]},
                "Lead_Source": {"type": "string"},
                "Modified_Time": {"type": "string", "format": "date-time"},
                "Campaign_Source": {"type": ["object", "null"], "properties": {"name": {"type": "string"}, "id": {"type": "string"}}}
            }
        })
        .to_string(),
    )
    .unwrap();
}

/// A time `offset_ms` after the start of a 5-minute window that began 2 to 7 minutes ago:
/// events a few seconds apart all land in that one window, whenever the test runs.
/// Chosen once per test process, so that every event of a test shares the window.
fn at_ms(offset_ms: i64) -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        (now - 120_000).div_euclid(300_000) * 300_000
    });
    base + offset_ms
}

fn hubspot_event(event_id: i64, object_id: i64, stage: &str, offset_ms: i64) -> Value {
    json!({
        "eventId": event_id, "subscriptionId": 2881778, "portalId": 62515, "appId": 1160452,
        "occurredAt": at_ms(offset_ms), "subscriptionType": "deal.propertyChange",
        "attemptNumber": 0, "objectId": object_id, "propertyName": "dealstage",
        "propertyValue": stage, "changeSource": "CRM"
    })
}

/// A Zoho deal modified at `at_ms(offset_ms)`, its time written at +01:00 as Zoho does for
/// an org in Rome.
fn zoho_deal(id: &str, email: &str, stage: &str, amount: f64, offset_ms: i64) -> Value {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(at_ms(offset_ms) as i128 * 1_000_000)
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(1, 0, 0).unwrap());
    json!({
        "id": id, "Deal_Name": format!("Deal {id}"), "Email": email, "Stage": stage,
        "Amount": amount, "Lead_Source": "Web Download",
        "Modified_Time": at.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "Campaign_Source": {"name": "Autunno", "id": "4876876000000345001"}
    })
}

async fn post(server: &Server, source: &str, key: &str, body: &Value) -> (StatusCode, Value) {
    let answer = client()
        .post(server.url(&format!("/webhooks/in/{source}")))
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    (status, answer.json().await.unwrap_or(Value::Null))
}

fn row<'a>(rows: &'a [Value], value: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["value"] == value)
}

#[tokio::test(flavor = "multi_thread")]
async fn hubspot_and_zoho_payloads_become_metrics_per_source_channel_and_dimension() {
    let dir = tempfile::tempdir().unwrap();
    write_schemas(dir.path());
    let server = start_configured(dir.path(), MAPPED_SOURCES);

    // HubSpot: two deals won and one demo booked, as one webhook delivery.
    let (status, body) = post(
        &server,
        "hubspot",
        HUBSPOT_KEY,
        &json!([
            hubspot_event(1, 1246965, "closedwon", 1_000),
            hubspot_event(2, 1246966, "closedwon", 2_000),
            hubspot_event(3, 1246967, "appointmentscheduled", 3_000),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // Zoho: one deal won, one lost, and the same customer again in another case.
    for deal in [
        zoho_deal("1", "Ada@Example.it", "Closed Won", 1250.5, 4_000),
        zoho_deal("2", "bruno@example.it", "Closed Lost", 300.0, 5_000),
        zoho_deal("3", "ada@example.it", "Negotiation", 80.0, 6_000),
    ] {
        let (status, body) = post(&server, "zoho", ZOHO_KEY, &deal).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }

    let rows = metrics_until(&server, "dimension=source", |rows| {
        row(rows, "hubspot").is_some_and(|r| r["events"] == 3)
            && row(rows, "zoho").is_some_and(|r| r["events"] == 3)
    })
    .await;
    let hubspot = row(&rows, "hubspot").unwrap();
    assert_eq!(hubspot["conversions"], 2, "{hubspot}");
    assert_eq!(hubspot["active_customers"], 3);
    let zoho = row(&rows, "zoho").unwrap();
    assert_eq!(zoho["conversions"], 1, "only the won deal: {zoho}");
    assert_eq!(zoho["failures"], 1, "the lost deal");
    assert_eq!(
        zoho["active_customers"], 2,
        "e-mails compared lower-cased: {zoho}"
    );
    assert_eq!(zoho["total_value"], 1630.5);
    assert_eq!(zoho["average_conversion_value"], 1250.5);

    // The mapped channel and campaign rows, and the extra dimension.
    let channels = metrics_until(&server, "dimension=canale", |rows| {
        row(rows, "crm").is_some() && row(rows, "webform").is_some()
    })
    .await;
    assert_eq!(row(&channels, "crm").unwrap()["conversions"], 2);
    assert_eq!(row(&channels, "webform").unwrap()["conversions"], 1);
    let campaigns = metrics_until(&server, "dimension=campagna", |rows| {
        row(rows, "Autunno").is_some()
    })
    .await;
    assert_eq!(row(&campaigns, "Autunno").unwrap()["events"], 3);
    let portals = metrics_until(&server, "dimension=portal", |rows| {
        row(rows, "62515").is_some()
    })
    .await;
    assert_eq!(row(&portals, "62515").unwrap()["conversions"], 2);
    let overall = metrics_until(&server, "dimension=all", |rows| {
        rows.iter()
            .map(|r| r["events"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == 6
    })
    .await;
    assert_eq!(
        overall
            .iter()
            .map(|r| r["conversions"].as_u64().unwrap())
            .sum::<u64>(),
        3
    );

    // The live stream follows an extra dimension too: its open windows, provisional.
    let mut stream = client()
        .get(server.url("/api/v1/metrics/stream?dimension=portal"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !text.contains(r#""dimension":"portal","value":"62515""#) {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("a provisional message with the portal row")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        !text.contains(r#""dimension":"canale""#),
        "only the asked dimension: {text}"
    );
    drop(stream);

    // An unknown dimension is refused with the ones that exist.
    let answer = client()
        .get(server.url("/api/v1/metrics?dimension=country"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let problem: Value = answer.json().await.unwrap();
    assert!(
        problem.to_string().contains("`portal`"),
        "the extra dimension is listed: {problem}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_the_mapping_cannot_read_is_refused_with_its_field_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    write_schemas(dir.path());
    let server = start_configured(dir.path(), MAPPED_SOURCES);

    // The second event has an `occurredAt` that is no epoch time, the schema allows it
    // (an integer), the mapping does not: year 10 000 and beyond.
    let mut far = hubspot_event(5, 1246970, "closedwon", 7_000);
    far["occurredAt"] = json!(900_000_000_000_000_i64);
    let (status, problem) = post(
        &server,
        "hubspot",
        HUBSPOT_KEY,
        &json!([hubspot_event(4, 1246969, "closedwon", 7_000), far]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{problem}");
    assert_eq!(errors[0]["pointer"], "/1/occurredAt");
    assert!(
        !problem.to_string().contains("900000000000000"),
        "the value is not echoed: {problem}"
    );
    assert!(
        all_events(&server).await.is_empty(),
        "a refused batch stores nothing"
    );

    // A Zoho deal without e-mail: the schema requires it, so the schema says so first.
    let mut deal = zoho_deal("9", "x@example.it", "Closed Won", 1.0, 8_000);
    deal.as_object_mut().unwrap().remove("Email");
    let (status, problem) = post(&server, "zoho", ZOHO_KEY, &deal).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem.to_string().contains("Email"), "{problem}");
}

#[test]
fn check_flags_mapping_pointers_the_schema_cannot_produce_and_runs_a_sample_through_the_mapping() {
    let dir = tempfile::tempdir().unwrap();
    write_schemas(dir.path());
    let config = write_config(dir.path(), MAPPED_SOURCES);
    let bin = env!("CARGO_BIN_EXE_raccordo");

    let deal = dir.path().join("deal.json");
    std::fs::write(
        &deal,
        zoho_deal("1", "Ada@Example.it", "Closed Won", 1250.5, 4_000).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .env("TEST_HS_SECRET", HS_SECRET)
        .args(["check", "--config"])
        .arg(&config)
        .arg("--event")
        .arg(&deal)
        .args(["--source", "zoho"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "customer:     ada@example.it",
        "value:        1250.50",
        "channel:      webform",
        "campaign:     Autunno",
        "conversion:   yes",
    ] {
        assert!(
            text.contains(expected),
            "`{expected}` missing from:\n{text}"
        );
    }

    // Zoho's schema is closed (`additionalProperties: false`): `/Contact_Email` can never be
    // there, and `/Campaign_Source/name/x` goes below a string.
    let broken = MAPPED_SOURCES
        .replace(
            "customer = { pointer = \"/Email\"",
            "customer = { pointer = \"/Contact_Email\"",
        )
        .replace(
            "campaign = \"/Campaign_Source/name\"",
            "campaign = \"/Campaign_Source/name/x\"",
        );
    let config = write_config(dir.path(), &broken);
    let out = std::process::Command::new(bin)
        .env("TEST_HS_SECRET", HS_SECRET)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("sources.zoho.mapping.customer") && text.contains("`/Contact_Email`"),
        "{text}"
    );
    assert!(
        text.contains("sources.zoho.mapping.campaign")
            && text.contains("`/Campaign_Source/name/x`"),
        "{text}"
    );
}
