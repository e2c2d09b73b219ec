//! AI flows on the real binary, against the HubSpot and AI sandboxes: a support ticket
//! arrives on a webhook source, is classified by the model, written to the HubSpot contact,
//! and a negative one is announced on a channel. Runs are inspected, replayed and started as
//! async jobs through the API; a `kill -9` mid-flow resumes at the step it was in.

mod support;

use raccordo_sandbox::{Product, Running, SandboxConfig};
use serde_json::{Value, json};
use support::{
    ADMIN_TOKEN, READ_TOKEN, Server, capture_http, client, get_json, poll_json, wait_for_requests,
};

const TICKETS_KEY: &str = "tickets-api-key-0123456789";
const JOB_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn credential<'a>(s: &'a Running, name: &str) -> &'a str {
    &s.credentials.iter().find(|(k, _)| *k == name).unwrap().1
}

async fn sandbox(product: Product) -> Running {
    let mut config = SandboxConfig::new(product, "127.0.0.1:0".parse().unwrap());
    config.seed_size = (0, 0);
    raccordo_sandbox::start(config).await.unwrap()
}

async fn create_contact(hs: &Running, email: &str) -> String {
    let created: Value = client()
        .post(format!("{}/crm/v3/objects/contacts", hs.base_url))
        .bearer_auth(credential(hs, "token"))
        .json(&json!({"properties": {"email": email, "firstname": "Anna", "lastname": "Ricci"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["id"].as_str().unwrap().to_string()
}

async fn contact(hs: &Running, id: &str) -> Value {
    client()
        .get(format!(
            "{}/crm/v3/objects/contacts/{id}?properties=ai_sentiment,ai_intent,ai_summary",
            hs.base_url
        ))
        .bearer_auth(credential(hs, "token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn ai_calls(ai: &Running) -> usize {
    let calls: Value = client()
        .get(format!("{}/_sandbox/calls", ai.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["path"] == "/v1/chat/completions")
        .count()
}

/// Writes the hub's config into `dir`: a ticket source, the AI sandbox as provider, and
/// `flows`.
fn write_config(dir: &std::path::Path, hs: &Running, ai: &Running, flows: &str) {
    std::fs::write(
        dir.join("ticket.schema.json"),
        r#"{"type":"object","required":["ticket_id","email","message"],"properties":{"ticket_id":{"type":"string"},"email":{"type":"string"},"message":{"type":"string"}}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("raccordo.toml"), config(hs, ai, flows)).unwrap();
}

fn config(hs: &Running, ai: &Running, flows: &str) -> String {
    format!(
        r#"
[server]
data_dir = "data"

# The emulators and capture servers of the tests listen on loopback over plain http.
[outbound]
allow_internal = ["127.0.0.1"]
allow_http = ["127.0.0.1"]

[sources.tickets]
schema = "ticket.schema.json"
key_fields = ["/ticket_id"]
auth = [{{ type = "api_key", keys = ["{TICKETS_KEY}"] }}]

[[admin.tokens]]
name = "dashboard"
token = "{READ_TOKEN}"
scopes = ["read"]

[[admin.tokens]]
name = "ops"
token = "{ADMIN_TOKEN}"
scopes = ["admin"]

[crm.hubspot]
base_url = "{hs_url}"
access_token = "{hs_token}"
client_secret = "{hs_secret}"

[jobs]
callback_secret = "{JOB_SECRET}"

[[ai.providers]]
name = "sandbox"
base_url = "{ai_url}/v1"
api_key = "{ai_key}"
model = "raccordo-sandbox-1"
input_price_per_mtok = 0.15
output_price_per_mtok = 0.6
{flows}
"#,
        hs_url = hs.base_url,
        hs_token = credential(hs, "token"),
        hs_secret = credential(hs, "client_secret"),
        ai_url = ai.base_url,
        ai_key = credential(ai, "api_key"),
    )
}

fn ticket_flow(notify_url: &str) -> String {
    format!(
        r#"
[[flows]]
name = "ticket-triage"
description = "Classify a support ticket, write it to the HubSpot contact, announce negative ones"
trigger = {{ type = "webhook", source = "tickets" }}
input_schema = {{ type = "object", required = ["email", "message"], properties = {{ email = {{ type = "string" }}, message = {{ type = "string", minLength = 1 }} }} }}

[[flows.steps]]
name = "classify"
type = "ai"
system = "You classify customer support tickets."
input = "{{{{ trigger.message }}}}"
prompt = "Classify this ticket: {{{{ input }}}}"
schema = {{ type = "object", additionalProperties = false, required = ["sentiment", "intent", "summary"], properties = {{ sentiment = {{ type = "string", enum = ["positive", "neutral", "negative"] }}, intent = {{ type = "string", enum = ["billing", "technical", "cancellation", "purchase", "information"] }}, summary = {{ type = "string", maxLength = 200 }} }} }}

[[flows.steps]]
name = "update-contact"
type = "crm_update"
system = "hubspot"
match = {{ email = "{{{{ trigger.email }}}}" }}
properties = {{ ai_sentiment = "{{{{ steps.classify.sentiment }}}}", ai_intent = "{{{{ steps.classify.intent }}}}", ai_summary = "{{{{ steps.classify.summary }}}}" }}

[[flows.steps]]
name = "only-negative"
type = "filter"
condition = "steps.classify.sentiment == 'negative'"

[[flows.steps]]
name = "alert-team"
type = "notify"
channel = {{ type = "webhook", url = "{notify_url}", secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }}
message = "Negative ticket from {{{{ trigger.email }}}}: {{{{ steps.classify.summary }}}}"
"#
    )
}

async fn post_ticket(server: &Server, email: &str, message: &str) -> reqwest::StatusCode {
    client()
        .post(server.url("/webhooks/in/tickets"))
        .header("x-api-key", TICKETS_KEY)
        .json(&json!({"ticket_id": format!("T-{}", message.len()), "email": email, "message": message}))
        .send()
        .await
        .unwrap()
        .status()
}

async fn runs(server: &Server, flow: &str) -> Vec<Value> {
    get_json(
        server,
        &format!("/api/v1/flows/runs?flow={flow}"),
        READ_TOKEN,
    )
    .await["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn finished_run(server: &Server, id: &str) -> Value {
    poll_json(
        server,
        &format!("/api/v1/flows/runs/{id}"),
        READ_TOKEN,
        |r| r["status"] != "running" && r["status"].is_string(),
    )
    .await
}

#[tokio::test]
async fn a_ticket_is_classified_written_to_hubspot_announced_replayed_and_run_as_a_job() {
    let hs = sandbox(Product::HubSpot).await;
    let ai = sandbox(Product::Ai).await;
    let (notify, notified) = capture_http(vec![]);
    let contact_id = create_contact(&hs, "anna.ricci@example.it").await;
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &hs,
        &ai,
        &ticket_flow(&format!("http://{notify}/hook")),
    );
    let server = Server::start(dir.path(), &["--config", "raccordo.toml"]);

    // A complaint arrives on the webhook source and runs the whole flow.
    let status = post_ticket(
        &server,
        "anna.ricci@example.it",
        "Servizio pessimo: l'app è bloccata e non funziona, voglio un rimborso.",
    )
    .await;
    assert_eq!(status, 202);
    let run_id = poll_json(
        &server,
        "/api/v1/flows/runs?flow=ticket-triage",
        READ_TOKEN,
        |b| b["runs"].as_array().is_some_and(|r| r.len() == 1),
    )
    .await["runs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = finished_run(&server, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    let classify = &steps[0];
    assert_eq!(classify["name"], "classify");
    assert_eq!(
        classify["input"]["input"],
        "Servizio pessimo: l'app è bloccata e non funziona, voglio un rimborso."
    );
    assert!(classify["tokens"].as_u64().unwrap() > 0, "{classify}");
    assert!(classify["cost"].as_f64().unwrap() > 0.0, "{classify}");
    let sentiment = classify["output"]["sentiment"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        sentiment, "negative",
        "the sandbox reads a complaint as negative"
    );
    assert_eq!(steps[1]["output"]["id"], contact_id.as_str());
    assert_eq!(steps[2]["output"]["passed"], true);
    assert_eq!(steps[3]["status"], "succeeded");

    // HubSpot holds the classification; the team got one signed notification.
    let record = contact(&hs, &contact_id).await;
    assert_eq!(record["properties"]["ai_sentiment"], "negative");
    assert_eq!(
        record["properties"]["ai_intent"],
        classify["output"]["intent"]
    );
    let got = wait_for_requests(&notified, 1).await;
    assert!(got[0].header("webhook-signature").is_some());
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert!(body.to_string().contains("anna.ricci@example.it"), "{body}");

    // A payload failing the flow's input schema starts nothing via the API, and the
    // problem names the field without echoing it.
    let refused = client()
        .post(server.url("/api/v1/flows/ticket-triage/runs"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"message": "secret-looking text 12345"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/input");
    assert!(!problem.to_string().contains("12345"));
    assert_eq!(
        runs(&server, "ticket-triage").await.len(),
        1,
        "nothing was started"
    );

    // Replay from the model step: the cache answers (no new call reaches the sandbox) and
    // HubSpot ends in the same state.
    let calls_before = ai_calls(&ai).await;
    let replay = client()
        .post(server.url(&format!("/api/v1/flows/runs/{run_id}/replay")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"from": "classify"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    let replayed_id = replay.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(replayed_id, run_id);
    let replayed = finished_run(&server, &replayed_id).await;
    assert_eq!(replayed["status"], "succeeded", "{replayed}");
    assert_eq!(replayed["steps"][0]["output"], classify["output"]);
    assert_eq!(
        ai_calls(&ai).await,
        calls_before,
        "the replay's model answer came from the cache"
    );
    assert_eq!(
        contact(&hs, &contact_id).await["properties"],
        record["properties"]
    );

    // Replay from the CRM step with an edited input: only what the edit says changes.
    let mut edited = steps[1]["input"].clone();
    edited["properties"]["ai_sentiment"] = json!("neutral");
    let replay = client()
        .post(server.url(&format!("/api/v1/flows/runs/{run_id}/replay")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"from": "update-contact", "input": edited}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    let id = replay.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let edited_run = finished_run(&server, &id).await;
    assert_eq!(
        edited_run["steps"][0]["status"], "succeeded",
        "the earlier step is carried over"
    );
    assert_eq!(
        contact(&hs, &contact_id).await["properties"]["ai_sentiment"],
        "neutral"
    );

    // Both replays ran the later steps again, the alert among them (a replay is a new run).
    let alerts_before_job = wait_for_requests(&notified, 3).await.len();
    assert_eq!(alerts_before_job, 3);

    // An async job: the same Idempotency-Key gives the same job; it ends with the result,
    // announced by a signed completion webhook that is retried after a 503.
    let (callback, called) = capture_http(vec![503]);
    let job = |key: &'static str| {
        let url = server.url("/api/v1/jobs");
        let callback_url = format!("http://{callback}/done");
        async move {
            client()
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .header("idempotency-key", key)
                .json(&json!({"flow": "ticket-triage", "callback_url": callback_url, "input": {"email": "anna.ricci@example.it", "message": "Grazie, ora l'esportazione funziona: ottimo lavoro!"}}))
                .send()
                .await
                .unwrap()
        }
    };
    let first = job("job-key-1").await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let second: Value = job("job-key-1").await.json().await.unwrap();
    assert_eq!(first["job_id"], second["job_id"]);
    let done = poll_json(
        &server,
        &format!("/api/v1/jobs/{}", first["job_id"].as_str().unwrap()),
        READ_TOKEN,
        |j| j["state"] != "running",
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // A positive ticket stops at the filter: the last output is the filter's.
    assert_eq!(done["result"]["passed"], false, "{done}");
    assert_eq!(
        notified.lock().unwrap().len(),
        alerts_before_job,
        "no alert for a positive ticket"
    );
    let deliveries = wait_for_requests(&called, 2).await;
    let secret = raccordo_notify::signer::WebhookSecret::parse(JOB_SECRET).unwrap();
    for d in &deliveries {
        let id = d.header("webhook-id").unwrap();
        assert_eq!(
            id,
            format!("job_{}", first["job_id"].as_str().unwrap()),
            "the same id on every retry"
        );
        use base64::Engine;
        let signature = d
            .header("webhook-signature")
            .unwrap()
            .strip_prefix("v1,")
            .unwrap();
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .unwrap();
        assert!(secret.verify(
            id,
            d.header("webhook-timestamp").unwrap(),
            &d.body,
            &signature
        ));
    }
    let announced: Value = serde_json::from_slice(&deliveries[1].body).unwrap();
    assert_eq!(announced["type"], "job.succeeded");
    assert_eq!(announced["data"]["result"], done["result"]);

    // A callback to nowhere is refused and starts nothing.
    let refused = client()
        .post(server.url("/api/v1/jobs"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"flow": "ticket-triage", "callback_url": "ftp://x", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["errors"][0]["pointer"],
        "/callback_url"
    );

    // The flow as a graph with each step's recent status.
    let graph = get_json(&server, "/api/v1/flows", READ_TOKEN).await;
    let flow = &graph["flows"][0];
    assert_eq!(flow["name"], "ticket-triage");
    assert_eq!(flow["steps"].as_array().unwrap().len(), 4);
    assert_eq!(flow["steps"][3]["skipped"], 1, "{flow}");
    assert!(flow["steps"][0]["p50_ms"].is_number());

    // The call log: every integration the flow used, with error rates and latencies, and
    // no secret, e-mail address or record id in it.
    let log = get_json(&server, "/api/v1/calls?limit=1000", READ_TOKEN).await;
    for service in ["hubspot", "ai:sandbox", "notify:webhook"] {
        let s = log["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == service)
            .unwrap_or_else(|| panic!("no {service} in {log}"));
        assert!(s["calls_total"].as_u64().unwrap() > 0, "{s}");
        assert!(s["p95_ms"].is_u64(), "{s}");
    }
    let text = log.to_string();
    let record_path = format!("/{contact_id}");
    for secret in [
        credential(&hs, "token"),
        credential(&ai, "api_key"),
        "anna.ricci",
        &record_path,
    ] {
        assert!(!text.contains(secret), "the call log leaks `{secret}`");
    }
    let prometheus = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        prometheus.contains("raccordo_outbound_calls_total{"),
        "no call counter in /metrics"
    );
}

#[tokio::test]
async fn a_flow_killed_mid_step_resumes_there_without_redoing_earlier_steps() {
    let hs = sandbox(Product::HubSpot).await;
    let ai = sandbox(Product::Ai).await;
    let (hook, hooked) = capture_http(vec![]);
    let contact_id = create_contact(&hs, "marco@example.it").await;
    let flows = format!(
        r#"
[[flows]]
name = "slow"
trigger = {{ type = "api" }}

[[flows.steps]]
name = "record"
type = "http"
method = "POST"
url = "http://{hook}/record"
body = {{ email = "{{{{ trigger.email }}}}" }}

[[flows.steps]]
name = "classify"
type = "ai"
prompt = "Classify: {{{{ trigger.message }}}}"
schema = {{ type = "object", required = ["sentiment"], properties = {{ sentiment = {{ type = "string", enum = ["positive", "neutral", "negative"] }} }} }}
timeout = "20s"

[[flows.steps]]
name = "write"
type = "crm_update"
system = "hubspot"
match = {{ id = "{contact_id}" }}
properties = {{ ai_sentiment = "{{{{ steps.classify.sentiment }}}}" }}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &hs, &ai, &flows);
    let mut server = Server::start(dir.path(), &["--config", "raccordo.toml"]);

    // The model answers slowly, so the hub is killed while the `classify` step is in flight.
    client()
        .patch(format!("{}/_sandbox/knobs", ai.base_url))
        .json(&json!({"latency_ms": 4000}))
        .send()
        .await
        .unwrap();
    let started: Value = client()
        .post(server.url("/api/v1/flows/slow/runs"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"email": "marco@example.it", "message": "L'app è bloccata e non funziona"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["run_id"].as_str().unwrap().to_string();
    poll_json(
        &server,
        &format!("/api/v1/flows/runs/{id}"),
        READ_TOKEN,
        |r| {
            r["steps"]
                .as_array()
                .is_some_and(|s| s.len() == 2 && s[1]["status"] == "running")
        },
    )
    .await;
    server.kill9();
    client()
        .patch(format!("{}/_sandbox/knobs", ai.base_url))
        .json(&json!({"latency_ms": 0}))
        .send()
        .await
        .unwrap();

    let server = Server::start(dir.path(), &["--config", "raccordo.toml"]);
    let run = finished_run(&server, &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        hooked.lock().unwrap().len(),
        1,
        "the step done before the kill was not done again"
    );
    assert_eq!(run["steps"][0]["attempts"], 1);
    assert_eq!(
        run["steps"][1]["attempts"], 2,
        "the step cut off was attempted again"
    );
    assert_eq!(
        contact(&hs, &contact_id).await["properties"]["ai_sentiment"],
        run["steps"][1]["output"]["sentiment"]
    );
}

#[test]
fn check_names_the_flow_step_and_field_of_every_mistake() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ticket.schema.json"),
        r#"{"type":"object"}"#,
    )
    .unwrap();
    let config = r#"
[sources.tickets]
schema = "ticket.schema.json"
auth = [{ type = "api_key", keys = ["tickets-api-key-0123456789"] }]

[[ai.providers]]
name = "offline"
kind = "offline"

[[flows]]
name = "broken"
trigger = { type = "webhook", source = "nowhere" }

[[flows.steps]]
name = "classify"
type = "ai"
prompt = "Classify {{ trigger.message "
schema = { type = "objekt" }

[[flows.steps]]
name = "write"
type = "crm_update"
system = "hubspot"
match = { email = "{{ steps.later.email }}" }
properties = { a = "{{ trigerr.x }}" }

[[flows.steps]]
name = "jump"
type = "branch"
condition = "true"
then = "classify"

[[flows.steps]]
name = "mystery"
type = "teleport"

[[flows.steps]]
name = "call"
type = "http"
url = "ftp://example.com"
colour = "blue"
"#;
    let path = dir.path().join("raccordo.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for expected in [
        "flows.broken.trigger.source: no `[[sources]]` entry is named `nowhere`",
        "flows.broken.steps.classify.schema: not a valid JSON Schema",
        "flows.broken.steps.write.match.email: `steps.later` is not a step that runs before this one",
        "flows.broken.steps.jump.then: `classify` does not come after this step",
        "flows.broken.steps.mystery.type: unknown step type `teleport`",
        "flows.broken.steps.call.colour: unknown field `colour`",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

async fn knobs(ai: &Running, knobs: Value) {
    let r = client()
        .patch(format!("{}/_sandbox/knobs", ai.base_url))
        .json(&knobs)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

async fn start(server: &Server, flow: &str, input: Value) -> String {
    let r: Value = client()
        .post(server.url(&format!("/api/v1/flows/{flow}/runs")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&input)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["run_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn model_429s_timeouts_and_answers_that_break_the_schema() {
    let hs = sandbox(Product::HubSpot).await;
    let ai = sandbox(Product::Ai).await;
    let flows = r#"
[[flows]]
name = "throttled"
trigger = { type = "api" }
[[flows.steps]]
name = "classify"
type = "ai"
prompt = "Classifica: {{ trigger.text }}"
timeout = "20s"
retry = { attempts = 5, backoff = "100ms" }

[[flows]]
name = "slow"
trigger = { type = "api" }
[[flows.steps]]
name = "classify"
type = "ai"
prompt = "Riassumi: {{ trigger.text }}"
timeout = "1s"
retry = { attempts = 5, backoff = "100ms" }

[[flows]]
name = "strict"
trigger = { type = "api" }
[[flows.steps]]
name = "score"
type = "ai"
prompt = "Dai un punteggio: {{ trigger.text }}"
schema = { type = "object", required = ["score"], properties = { score = { type = "integer", minimum = 5, maximum = 1 } } }
"#;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &hs, &ai, flows);
    let server = Server::start(dir.path(), &["--config", "raccordo.toml"]);

    // Every call answered 429 with `Retry-After: 1`: the client waits it out between calls,
    // then the step is retried on its policy; once the limit lifts, the run succeeds.
    knobs(&ai, json!({"throttle_rate": 1.0})).await;
    let id = start(
        &server,
        "throttled",
        json!({"text": "Il pagamento non funziona"}),
    )
    .await;
    poll_json(
        &server,
        &format!("/api/v1/flows/runs/{id}"),
        READ_TOKEN,
        |r| {
            r["steps"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("429"))
        },
    )
    .await;
    knobs(&ai, json!({"throttle_rate": 0.0})).await;
    let run = finished_run(&server, &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["steps"][0]["attempts"].as_u64().unwrap() >= 2, "{run}");
    let calls: Value = client()
        .get(format!("{}/_sandbox/calls", ai.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let throttled: Vec<i64> = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == 429)
        .map(|c| c["at_ms"].as_i64().unwrap())
        .collect();
    assert!(throttled.len() >= 4, "{calls}");
    // Within one attempt the client's calls are `Retry-After` (1 s) apart.
    assert!(throttled[1] - throttled[0] >= 900, "{throttled:?}");

    // A model slower than the step's timeout: the attempt is cut off, recorded, retried.
    knobs(&ai, json!({"latency_ms": 3000})).await;
    let id = start(&server, "slow", json!({"text": "Ordine in ritardo"})).await;
    poll_json(
        &server,
        &format!("/api/v1/flows/runs/{id}"),
        READ_TOKEN,
        |r| {
            r["steps"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out after 1000 ms"))
        },
    )
    .await;
    knobs(&ai, json!({"latency_ms": 0})).await;
    let run = finished_run(&server, &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    // An answer that cannot fit the schema: one repair, then the run fails for good,
    // naming the field; the step is not retried.
    let id = start(&server, "strict", json!({"text": "Ottimo servizio"})).await;
    let run = finished_run(&server, &id).await;
    assert_eq!(run["status"], "failed", "{run}");
    let step = &run["steps"][0];
    assert_eq!(step["attempts"], 1);
    assert!(
        step["error"].as_str().unwrap().contains("`/score`"),
        "{step}"
    );
}

#[tokio::test]
async fn a_crm_change_starts_its_flow_and_the_flows_own_write_does_not_loop() {
    let port = support::free_port();
    let mut hs_config = SandboxConfig::new(Product::HubSpot, "127.0.0.1:0".parse().unwrap());
    hs_config.seed_size = (0, 0);
    hs_config.webhook_url = Some(format!("http://127.0.0.1:{port}/webhooks/hubspot"));
    let hs = raccordo_sandbox::start(hs_config).await.unwrap();
    let ai = sandbox(Product::Ai).await;
    let flows = r#"
[[flows]]
name = "welcome"
trigger = { type = "crm_change", system = "hubspot", object = "contact" }

[[flows.steps]]
name = "mark"
type = "crm_update"
system = "hubspot"
match = { id = "{{ trigger.id }}" }
properties = { ai_intent = "welcome" }
"#;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &hs, &ai, flows);
    let server = Server::start_on(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &["--config", "raccordo.toml"],
    );
    let id = create_contact(&hs, "nuovo@example.it").await;
    let run = poll_json(
        &server,
        "/api/v1/flows/runs?flow=welcome",
        READ_TOKEN,
        |b| b["runs"][0]["status"] == "succeeded",
    )
    .await;
    assert_eq!(
        contact(&hs, &id).await["properties"]["ai_intent"],
        "welcome"
    );
    let first = get_json(
        &server,
        &format!(
            "/api/v1/flows/runs/{}",
            run["runs"][0]["id"].as_str().unwrap()
        ),
        READ_TOKEN,
    )
    .await;
    assert_eq!(first["trigger"]["id"], id.as_str());
    assert_eq!(first["trigger"]["system"], "hubspot");
    // The flow's write comes back as a HubSpot notification; it starts nothing. The echo
    // counter says the notification arrived and was recognised.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while support::metric(&server, "raccordo_flow_echoes_ignored_total")
        .await
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the echo never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(runs(&server, "welcome").await.len(), 1, "no loop");
}

#[test]
fn the_shipped_examples_pass_check() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    for example in ["support-tickets", "nightly-lead-scoring"] {
        let out = std::process::Command::new(support::BIN)
            .args([
                "check",
                "--config",
                &format!("{examples}/{example}/raccordo.toml"),
            ])
            .envs([
                ("TICKETS_API_KEY", "tickets-api-key-0123456789"),
                ("ADMIN_TOKEN", ADMIN_TOKEN),
                (
                    "HUBSPOT_TOKEN",
                    "pat-eu1-00000000-0000-0000-0000-000000000000",
                ),
                ("HUBSPOT_CLIENT_SECRET", "hubspot-client-secret-0000"),
                ("AI_API_KEY", "sk-test"),
                (
                    "SLACK_WEBHOOK_URL",
                    "https://hooks.slack.com/services/T0/B0/X",
                ),
                ("ZOHO_CLIENT_ID", "1000.CLIENT"),
                ("ZOHO_CLIENT_SECRET", "zoho-client-secret"),
                ("ZOHO_REFRESH_TOKEN", "1000.refresh"),
                ("ZOHO_CHANNEL_TOKEN", "zoho-channel-token-000000"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{example}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs `sdk-tests/mcp_client.py` with the official MCP client; its JSON report.
fn mcp_client(python: &std::path::Path, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk-tests/mcp_client.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mcp client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn an_mcp_client_queries_the_hub_and_starts_flows_within_its_tokens_scope() {
    let Some(python) = support::sdk_python() else {
        return;
    };
    let hs = sandbox(Product::HubSpot).await;
    let ai = sandbox(Product::Ai).await;
    let flows = r#"
[[flows]]
name = "echo"
trigger = { type = "api" }
[[flows.steps]]
name = "shape"
type = "map"
fields = { said = "{{ trigger.text }}" }
"#;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &hs, &ai, flows);
    let server = Server::start(dir.path(), &["--config", "raccordo.toml"]);

    // Without a token, the endpoint is closed.
    let anonymous = client()
        .post(server.url("/mcp"))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let url = server.url("/mcp");
    let seen = mcp_client(&python, &["http", &url, ADMIN_TOKEN, "echo"]);
    assert_eq!(seen["server"], "raccordo", "{seen}");
    for tool in [
        "query_metrics",
        "query_events",
        "sync_record_state",
        "list_flows",
        "start_flow",
        "list_flow_runs",
        "get_flow_run",
    ] {
        assert!(
            seen["tools"].as_array().unwrap().iter().any(|t| t == tool),
            "{tool} missing: {seen}"
        );
    }
    assert_eq!(seen["flows"], json!(["echo"]));
    assert_eq!(seen["start_error"], false, "{seen}");
    assert_eq!(seen["run_status"], "succeeded", "{seen}");
    assert_eq!(seen["metrics_error"], false, "{seen}");
    assert_eq!(seen["missing_flow"]["error"], true);
    assert!(
        seen["missing_flow"]["text"]
            .as_str()
            .unwrap()
            .contains("404"),
        "{seen}"
    );
    let run = get_json(
        &server,
        &format!("/api/v1/flows/runs/{}", seen["run_id"].as_str().unwrap()),
        READ_TOKEN,
    )
    .await;
    assert_eq!(
        run["steps"][0]["output"]["said"],
        "Il servizio è ottimo, grazie!"
    );

    // Over stdio, with a read-only token: reads work, starting a flow is refused.
    let hub = server.url("");
    let seen = mcp_client(
        &python,
        &["stdio", support::BIN, hub.trim_end_matches('/'), READ_TOKEN],
    );
    assert_eq!(seen["runs_error"], false, "{seen}");
    assert_eq!(seen["runs"], 1, "{seen}");
    assert_eq!(seen["start_refused"]["error"], true, "{seen}");
    assert!(
        seen["start_refused"]["text"]
            .as_str()
            .unwrap()
            .contains("403"),
        "{seen}"
    );
    assert_eq!(
        runs(&server, "echo").await.len(),
        1,
        "nothing was started by the read-only agent"
    );

    // Every tool call over HTTP was audited in the hub's log (the stdio ones went through
    // the API as the read-only token's requests).
    let audit = server.log_line(|v| {
        v["target"] == "raccordo::audit"
            && v.to_string().contains("start_flow")
            && v.to_string().contains("refused")
    });
    assert!(audit.to_string().contains("mcp tool call"), "{audit}");
}

#[tokio::test]
async fn a_scheduled_flow_fires_once_per_firing_and_the_cli_reads_and_replays_runs() {
    let hs = sandbox(Product::HubSpot).await;
    let ai = sandbox(Product::Ai).await;
    let flows = r#"
[[flows]]
name = "tick"
trigger = { type = "schedule", cron = "* * * * * *", payload = { source = "clock" } }
[[flows.steps]]
name = "stamp"
type = "map"
fields = { from = "{{ trigger.source }}", run = "{{ run.id }}" }
"#;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &hs, &ai, flows);
    let server = Server::start(dir.path(), &["--config", "raccordo.toml"]);
    // Every second: wait (bounded) for three firings.
    let page = poll_json(&server, "/api/v1/flows/runs?flow=tick", READ_TOKEN, |b| {
        b["runs"].as_array().is_some_and(|r| r.len() >= 3)
    })
    .await;
    let runs = page["runs"].as_array().unwrap();
    let mut starts: Vec<i64> = runs
        .iter()
        .map(|r| r["started_at_ms"].as_i64().unwrap())
        .collect();
    starts.sort();
    assert!(
        starts.windows(2).all(|w| w[1] - w[0] >= 500),
        "one run per firing: {starts:?}"
    );
    let id = runs.iter().find(|r| r["status"] == "succeeded").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The CLI shows the run, and replays it with an edited input.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(support::BIN)
            .args(args)
            .args([
                "--url",
                server.url("").trim_end_matches('/'),
                "--token",
                ADMIN_TOKEN,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let shown = cli(&["flows", "show", &id]);
    assert!(
        shown.contains("stamp") && shown.contains("\"from\":\"clock\""),
        "{shown}"
    );
    let replayed = cli(&[
        "flows",
        "replay",
        &id,
        "--from",
        "stamp",
        "--input",
        r#"{"from":"edited"}"#,
        "--wait",
    ]);
    assert!(
        replayed.contains("succeeded") && replayed.contains("\"from\":\"edited\""),
        "{replayed}"
    );
    let listed = cli(&["flows", "list"]);
    assert!(
        listed.contains("tick") && listed.contains("stamp"),
        "{listed}"
    );
}
