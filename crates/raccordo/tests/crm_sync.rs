//! HubSpot ↔ Zoho sync on the real binary, against the two sandboxes: HubSpot's signed
//! webhooks and Zoho's channel notifications come in over HTTP, the hub registers the Zoho
//! channel itself, and records end up on the other side exactly once.

mod support;

use std::time::Duration;

use raccordo_sandbox::{Product, Running, SandboxConfig};
use serde_json::{Value, json};
use support::crm::*;
use support::{Server, client, free_port};

#[tokio::test]
async fn contacts_sync_both_ways_through_webhooks_exactly_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let hs = sandbox(Product::HubSpot, Some(format!("{public}/webhooks/hubspot"))).await;
    let z = sandbox(Product::Zoho, None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = hub_config(&public, &hs, &z, "");
    std::fs::write(dir.path().join("raccordo.toml"), config).unwrap();
    let server = Server::start_on(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &["--config", "raccordo.toml"],
    );

    // Forged and unsigned webhooks are refused and change nothing.
    let forged = client()
        .post(server.url("/webhooks/hubspot"))
        .header("x-hubspot-signature-v3", "bm9wZQ==")
        .header("x-hubspot-request-timestamp", "1")
        .body(r#"[{"subscriptionType":"contact.creation","objectId":1}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let zoho_forged = client()
        .post(server.url("/webhooks/zoho"))
        .json(&json!({"module": "Contacts", "ids": ["1"], "operation": "update", "token": "wrong-token-0000000000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(zoho_forged.status(), 401);

    // Contacts created in HubSpot reach Zoho through the signed webhooks.
    for i in 0..20 {
        let created = client()
            .post(format!("{}/crm/v3/objects/contacts", hs.base_url))
            .bearer_auth(credential(&hs, "token"))
            .json(&json!({"properties": {"email": format!("cliente{i}@example.it"), "firstname": "Giulia", "lastname": format!("Conti{i}"), "city": "Padova"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let token = zoho_token(&z).await;
    let contacts = eventually("20 contacts in Zoho", || async {
        let c = zoho_contacts(&z, &token).await;
        (c.len() >= 20).then_some(c)
    })
    .await;
    let mut emails: Vec<&str> = contacts
        .iter()
        .map(|c| c["Email"].as_str().unwrap())
        .collect();
    emails.sort();
    emails.dedup();
    assert_eq!(emails.len(), 20, "no contact exists twice in Zoho");

    // An edit in Zoho comes back through the notification channel the hub registered.
    let target = contacts
        .iter()
        .find(|c| c["Email"] == "cliente3@example.it")
        .unwrap();
    let updated = client()
        .put(format!("{}/crm/v8/Contacts", z.base_url))
        .header("authorization", format!("Zoho-oauthtoken {token}"))
        .json(&json!({"data": [{"id": target["id"], "Mailing_City": "Trieste"}]}))
        .send()
        .await
        .unwrap();
    assert!(updated.status().is_success());
    eventually("the Zoho edit in HubSpot", || async {
        let c = hubspot_search(&hs, "cliente3@example.it").await?;
        (c["properties"]["city"] == "Trieste").then_some(())
    })
    .await;

    // A hot Zoho contact is created in HubSpot.
    let inserted = client()
        .post(format!("{}/crm/v8/Contacts", z.base_url))
        .header("authorization", format!("Zoho-oauthtoken {token}"))
        .json(&json!({"data": [{"Email": "caldo@example.it", "Last_Name": "Ferri", "Lifecycle_Stage": "Sales Qualified Lead"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(inserted.status(), 201);
    let hot = eventually("the hot Zoho contact in HubSpot", || async {
        hubspot_search(&hs, "caldo@example.it").await
    })
    .await;
    assert_eq!(hot["properties"]["lifecyclestage"], "salesqualifiedlead");

    // Nothing was created twice: the sandboxes saw each e-mail once.
    let contacts = zoho_contacts(&z, &token).await;
    assert_eq!(contacts.len(), 21, "20 from HubSpot and the hot one");
    let all: Value = client()
        .get(format!(
            "{}/crm/v3/objects/contacts?limit=100&properties=email",
            hs.base_url
        ))
        .bearer_auth(credential(&hs, "token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["results"].as_array().unwrap().len(), 21);
}

/// Sends a request until the sandbox answers 2xx (the sandboxes inject faults into the
/// test's own calls too; an injected fault is answered before the call takes effect).
async fn until_ok(request: impl Fn() -> reqwest::RequestBuilder) -> Value {
    let mut last = String::new();
    for attempt in 0..40u64 {
        match request().send().await {
            Ok(r) if r.status().is_success() => return r.json().await.unwrap_or(Value::Null),
            Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        // A bounded backoff between tries of a call the sandbox refused on purpose.
        tokio::time::sleep(Duration::from_millis(20 * attempt.min(10))).await;
    }
    panic!("the sandbox kept failing: {last}");
}

async fn all_hubspot_contacts(hs: &Running) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!(
            "{}/crm/v3/objects/contacts?limit=100&properties=email,firstname,lastname,city",
            hs.base_url
        );
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page = until_ok(|| client().get(&url).bearer_auth(credential(hs, "token"))).await;
        out.extend(page["results"].as_array().cloned().unwrap_or_default());
        match page["paging"]["next"]["after"].as_str() {
            Some(a) => after = Some(a.to_string()),
            None => return out,
        }
    }
}

async fn all_zoho_contacts(z: &Running, token: &str) -> Vec<Value> {
    let mut out = Vec::new();
    // Past 2000 records Zoho pages by `page_token`.
    let mut cursor = "page=1".to_string();
    loop {
        let url = format!(
            "{}/crm/v8/Contacts?fields=Email,First_Name,Last_Name,Mailing_City&per_page=200&sort_by=id&{cursor}",
            z.base_url
        );
        let r = client()
            .get(&url)
            .header("authorization", format!("Zoho-oauthtoken {token}"))
            .send()
            .await
            .unwrap();
        if r.status() == 204 {
            return out;
        }
        let body: Value = r.json().await.unwrap();
        out.extend(body["data"].as_array().cloned().unwrap_or_default());
        if body["info"]["more_records"] != true {
            return out;
        }
        cursor = match body["info"]["next_page_token"].as_str() {
            Some(t) => format!("page_token={t}"),
            None => format!("page={}", body["info"]["page"].as_u64().unwrap_or(1) + 1),
        };
    }
}

/// HubSpot contacts by e-mail → (first, last, city), and the same for Zoho.
type Fields = std::collections::BTreeMap<String, (String, String, String)>;

fn hubspot_fields(contacts: &[Value]) -> Fields {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    contacts
        .iter()
        .map(|c| {
            let p = &c["properties"];
            (
                s(&p["email"]),
                (s(&p["firstname"]), s(&p["lastname"]), s(&p["city"])),
            )
        })
        .collect()
}

fn zoho_fields(contacts: &[Value]) -> Fields {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    contacts
        .iter()
        .map(|c| {
            (
                s(&c["Email"]),
                (
                    s(&c["First_Name"]),
                    s(&c["Last_Name"]),
                    s(&c["Mailing_City"]),
                ),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_burst_of_5000_with_faults_expired_tokens_repeated_webhooks_and_a_kill_9_ends_in_agreement()
 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let hs = sandbox(Product::HubSpot, Some(format!("{public}/webhooks/hubspot"))).await;
    let z = sandbox(Product::Zoho, None).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[admin.tokens]]
name = "ops"
token = "admin-token-0123456789abcdef"
scopes = ["admin"]

[sync]
poll_every = "1s"
[sync.retry]
first_delay = "200ms"
max_delay = "2s"
attempts = 10
"#;
    std::fs::write(
        dir.path().join("raccordo.toml"),
        hub_config(&public, &hs, &z, extra),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--config", "raccordo.toml"];
    let mut server = Server::start_on(dir.path(), &listen, &args);

    // 20 % of the calls to each CRM fail: 5xx and 429s.
    knobs(&hs, json!({"error_rate": 0.15, "throttle_rate": 0.05})).await;
    knobs(&z, json!({"error_rate": 0.1, "throttle_rate": 0.1})).await;

    // A burst of 5 000 new contacts, created 100 per call.
    const N: usize = 5000;
    let token = credential(&hs, "token").to_string();
    let mut ids = Vec::new();
    for batch in 0..N / 100 {
        let inputs: Vec<Value> = (batch * 100..(batch + 1) * 100)
            .map(|i| json!({"properties": {"email": format!("raffica{i}@example.it"), "firstname": "Marco", "lastname": format!("Galli{i}"), "city": "Bari"}}))
            .collect();
        let created = until_ok(|| {
            client()
                .post(format!(
                    "{}/crm/v3/objects/contacts/batch/create",
                    hs.base_url
                ))
                .bearer_auth(&token)
                .json(&json!({ "inputs": inputs }))
        })
        .await;
        ids.extend(
            created["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string()),
        );
        if batch == N / 200 {
            // The hub dies mid-burst and comes back on the same address and data.
            server.kill9();
            server = Server::start_on(dir.path(), &listen, &args);
            // Zoho's access tokens expire under it.
            until_ok(|| client().post(format!("{}/_sandbox/tokens/expire", z.base_url))).await;
        }
    }
    // Repeated and reordered webhooks: HubSpot retries, and may deliver out of order.
    let events: Vec<Value> = ids
        .iter()
        .take(30)
        .rev()
        .flat_map(|id| {
            let e = json!({"eventId": 1, "subscriptionType": "contact.propertyChange", "objectId": id.parse::<u64>().unwrap(), "propertyName": "city", "propertyValue": "Bari", "occurredAt": 1});
            [e.clone(), e]
        })
        .collect();
    let body = Value::Array(events).to_string();
    let url = format!("{public}/webhooks/hubspot");
    let ts = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let signature = raccordo_sandbox::hubspot::signature_v3(
        credential(&hs, "client_secret"),
        "POST",
        &url,
        body.as_bytes(),
        ts,
    );
    let replayed = client()
        .post(&url)
        .header("x-hubspot-signature-v3", signature)
        .header("x-hubspot-request-timestamp", ts.to_string())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 200);

    // Edits in Zoho of records the sync created, while faults continue.
    let zoho_token = zoho_token(&z).await;
    let edited = eventually("the first contacts in Zoho", || async {
        let c = all_zoho_contacts(&z, &zoho_token).await;
        (c.len() >= 20).then_some(c)
    })
    .await;
    for c in edited.iter().take(10) {
        until_ok(|| {
            client()
                .put(format!("{}/crm/v8/Contacts", z.base_url))
                .header("authorization", format!("Zoho-oauthtoken {zoho_token}"))
                .json(&json!({"data": [{"id": c["id"], "Mailing_City": "Lecce"}]}))
        })
        .await;
    }

    knobs(&hs, json!({"error_rate": 0.0, "throttle_rate": 0.0})).await;
    knobs(&z, json!({"error_rate": 0.0, "throttle_rate": 0.0})).await;
    let (hubspot_side, zoho_side) =
        eventually_long("both CRMs agree on every mapped field", || async {
            let h = hubspot_fields(&all_hubspot_contacts(&hs).await);
            let zc = all_zoho_contacts(&z, &zoho_token).await;
            let zf = zoho_fields(&zc);
            (zc.len() == N && h == zf).then_some((h, zc))
        })
        .await;
    assert_eq!(hubspot_side.len(), N);
    // No contact exists twice in Zoho: one record per e-mail, and no more records than that.
    let mut emails: Vec<String> = zoho_side
        .iter()
        .map(|c| c["Email"].as_str().unwrap().to_string())
        .collect();
    emails.sort();
    emails.dedup();
    assert_eq!(emails.len(), N);
    let lecce = hubspot_side
        .values()
        .filter(|(_, _, city)| city == "Lecce")
        .count();
    assert_eq!(lecce, 10, "the Zoho edits reached HubSpot");
    // Every failure was retried to success: nothing is left in the dead-letter queue.
    let dlq: Value = client()
        .get(server.url("/api/v1/dlq?queue=sync"))
        .bearer_auth(support::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dlq["dead_letters"], json!([]), "{dlq}");
    // The health view agrees: every pair linked, nothing left, and the faults were seen.
    let health: Value = client()
        .get(server.url("/api/v1/sync/health"))
        .bearer_auth(support::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["pairs"]["contact"], N, "{health}");
    assert_eq!(health["queue"]["dead_letters"], 0, "{health}");
    let zoho_calls = &health["activity"]["zoho_calls"];
    assert!(zoho_calls["ok"].as_u64().unwrap() > 0, "{health}");
    // The counters start with the process: the one restarted after kill -9 may have made
    // few Zoho calls while the faults lasted, so the faults are looked for on both CRMs.
    let faults =
        |calls: &Value| calls["throttled"].as_u64().unwrap() + calls["retryable"].as_u64().unwrap();
    assert!(
        faults(zoho_calls) + faults(&health["activity"]["hubspot_calls"]) > 0,
        "the injected faults show: {health}"
    );
    assert!(
        health["activity"]["delay_ms"]["count"].as_u64().unwrap() > 0,
        "{health}"
    );
    assert!(
        health["activity"]["delay_ms"]["p99"].as_u64().is_some(),
        "{health}"
    );
    server.terminate();
}

/// [`eventually`] with a longer deadline, for convergence after retries.
async fn eventually_long<T, F, Fut>(what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(
        what,
        Duration::from_secs(300),
        Duration::from_millis(250),
        probe,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_missing_its_email_is_dead_lettered_mailed_in_the_digest_and_replayed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(smtp) = support::SmtpSink::start().await else {
        return;
    };
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let hs = sandbox(Product::HubSpot, Some(format!("{public}/webhooks/hubspot"))).await;
    let z = sandbox(Product::Zoho, None).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        r#"
[[admin.tokens]]
name = "ops"
token = "{admin}"
scopes = ["admin"]

[sync.digest]
every = "1s"
email = {{ {email} }}
"#,
        admin = support::ADMIN_TOKEN,
        email = smtp.email_settings()
    );
    std::fs::write(
        dir.path().join("raccordo.toml"),
        hub_config(&public, &hs, &z, &extra),
    )
    .unwrap();
    let mut server = Server::start_on(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &["--config", "raccordo.toml"],
    );

    // A contact typed into HubSpot without an e-mail: it cannot be matched safely.
    let created: Value = client()
        .post(format!("{}/crm/v3/objects/contacts", hs.base_url))
        .bearer_auth(credential(&hs, "token"))
        .json(&json!({"properties": {"firstname": "Senza", "lastname": "Email"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();

    // The digest names the operation, the systems, the record, the field and the replay.
    let mail = eventually("the failure digest", || async {
        let text = smtp.decoded_text();
        text.contains("Subject: [raccordo] 1 failed sync operation(s)")
            .then_some(text)
    })
    .await;
    for part in [
        format!("sync_record: contact {id}, hubspot -> zoho"),
        "field `email` (hubspot): missing".to_string(),
        "(record: Senza Email)".to_string(),
        "raccordo dlq replay".to_string(),
        format!("{public}/api/v1/dlq/"),
    ] {
        assert!(mail.contains(&part), "{part} not in the digest:\n{mail}");
    }

    // The CLI lists it.
    let hub = ["--url", &public, "--token", support::ADMIN_TOKEN];
    let list = std::process::Command::new(support::BIN)
        .args(["dlq", "list", "--queue", "sync"])
        .args(hub)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{listed}");
    assert!(
        listed.contains("`email`") && listed.contains("1 dead letter(s)"),
        "{listed}"
    );

    // The dashboard's sync page shows the failure and its reason (real headless Chromium).
    if let Some(browser) = support::chromium() {
        let url = server.url(&format!("/#token={}", support::ADMIN_TOKEN));
        let dom =
            String::from_utf8(support::headless(browser, &["--dump-dom"], &url).stdout).unwrap();
        assert!(
            dom.contains(r#"data-cell="sync-failed">1<"#),
            "the sync page counts the failure: {dom}"
        );
        assert!(
            dom.contains("field `email` (hubspot): missing"),
            "and gives its reason"
        );
        assert!(
            !dom.contains("Senza Email"),
            "reasons leave the record's name out"
        );
    }

    // Someone adds the e-mail in HubSpot and replays the operation: the contact reaches
    // Zoho once, though both the change's webhook and the replay sync it.
    let fixed = client()
        .patch(format!("{}/crm/v3/objects/contacts/{id}", hs.base_url))
        .bearer_auth(credential(&hs, "token"))
        .json(&json!({"properties": {"email": "senza.email@example.it"}}))
        .send()
        .await
        .unwrap();
    assert!(fixed.status().is_success());
    let replay = std::process::Command::new(support::BIN)
        .args([
            "dlq",
            "replay",
            "--all",
            "--queue",
            "sync",
            "--matching",
            "`email`",
        ])
        .args(hub)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(String::from_utf8_lossy(&replay.stdout).contains("queued again"));
    let token = zoho_token(&z).await;
    eventually("the fixed contact in Zoho", || async {
        let c = zoho_contacts(&z, &token).await;
        c.iter()
            .any(|c| c["Email"] == "senza.email@example.it")
            .then_some(())
    })
    .await;
    assert_eq!(zoho_contacts(&z, &token).await.len(), 1);
    server.terminate();
}

/// Runs `raccordo connect SYSTEM`, plays the browser (follows the consent page's redirect
/// to the command's local callback) and returns the command's output.
async fn connect(system: &str, hub: &str) -> std::process::Output {
    use std::io::BufRead;
    let mut child = std::process::Command::new(support::BIN)
        .args(["connect", system, "--callback-port", "0", "--url", hub])
        .args(["--token", support::ADMIN_TOKEN])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let url = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "no URL printed: {printed}"
        );
        printed.push_str(&line);
        if let Some(url) = line.trim().strip_prefix("http") {
            break format!("http{url}");
        }
    };
    // The browser: the sandbox's consent page approves at once and redirects to the callback.
    let page = reqwest::Client::new().get(&url).send().await.unwrap();
    assert!(page.status().is_success(), "{}", page.status());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let mut output = child.wait_with_output().unwrap();
    output.stdout = format!("{printed}{rest}").into_bytes();
    output
}

#[tokio::test(flavor = "multi_thread")]
async fn raccordo_connect_gets_grants_for_both_crms_and_the_sync_then_works() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let hs = sandbox(Product::HubSpot, Some(format!("{public}/webhooks/hubspot"))).await;
    let z = sandbox(Product::Zoho, None).await;
    let dir = tempfile::tempdir().unwrap();
    // HubSpot as an OAuth app and Zoho, both without any grant yet.
    let config = format!(
        r#"
[server]
data_dir = "data"

# The emulators and capture servers of the tests listen on loopback over plain http.
[outbound]
allow_internal = ["127.0.0.1"]
allow_http = ["127.0.0.1"]

[[admin.tokens]]
name = "ops"
token = "{admin}"
scopes = ["admin"]

[crm]
public_url = "{public}"

[crm.hubspot]
base_url = "{hs_url}"
authorize_url = "{hs_url}/oauth/authorize"
client_id = "{hs_id}"
client_secret = "{hs_secret}"

[crm.zoho]
base_url = "{z_url}"
token_url = "{z_url}/oauth/v2/token"
authorize_url = "{z_url}/oauth/v2/auth"
client_id = "{z_id}"
client_secret = "{z_secret}"
channel_token = "{CHANNEL_TOKEN}"

[sync]
poll_every = "1s"
[sync.retry]
first_delay = "200ms"
max_delay = "1s"
attempts = 20
"#,
        admin = support::ADMIN_TOKEN,
        hs_url = hs.base_url,
        hs_id = credential(&hs, "client_id"),
        hs_secret = credential(&hs, "client_secret"),
        z_url = z.base_url,
        z_id = credential(&z, "client_id"),
        z_secret = credential(&z, "client_secret"),
    );
    std::fs::write(dir.path().join("raccordo.toml"), config).unwrap();
    let mut server = Server::start_on(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &["--config", "raccordo.toml"],
    );

    for system in ["hubspot", "zoho"] {
        let out = connect(system, &public).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{system}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("connected: raccordo holds a grant for {system}")),
            "{text}"
        );
        if system == "hubspot" {
            assert!(
                text.contains("code_challenge_method=S256"),
                "HubSpot gets PKCE: {text}"
            );
        } else {
            assert!(
                text.contains("access_type=offline"),
                "Zoho is asked for a refresh token: {text}"
            );
        }
    }
    // A code cannot be used twice, and a made-up one is refused.
    let refused = client()
        .post(server.url("/api/v1/crm/zoho/grant"))
        .bearer_auth(support::ADMIN_TOKEN)
        .json(&json!({"code": "1000.made-up", "redirect_uri": "http://127.0.0.1:1/callback"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "urn:raccordo:problem:grant-refused");

    // With the grants, the sync runs: a HubSpot contact reaches Zoho.
    let created = client()
        .post(format!("{}/crm/v3/objects/contacts", hs.base_url))
        .bearer_auth(credential(&hs, "token"))
        .json(&json!({"properties": {"email": "connesso@example.it", "lastname": "Marino"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let token = zoho_token(&z).await;
    eventually("the contact in Zoho, through OAuth grants", || async {
        let c = zoho_contacts(&z, &token).await;
        c.iter()
            .any(|c| c["Email"] == "connesso@example.it")
            .then_some(())
    })
    .await;
    // The grants are stored sealed: neither refresh token is in the database file.
    let plain = credential(&z, "refresh_token").as_bytes();
    for file in ["data/raccordo.db", "data/raccordo.db-wal"] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(plain.len()).any(|w| w == plain),
            "Zoho's refresh token in clear in {file}"
        );
    }
    server.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_grant_raises_one_alert_and_no_refresh_storm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let hs = sandbox(Product::HubSpot, None).await;
    let z = sandbox(Product::Zoho, None).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        r#"
[[admin.tokens]]
name = "ops"
token = "{admin}"
scopes = ["admin"]

[sync]
poll_every = "200ms"
"#,
        admin = support::ADMIN_TOKEN
    );
    // The user revoked the grant in Zoho: the configured refresh token no longer works.
    let config = hub_config(&public, &hs, &z, &extra).replace(
        &format!("refresh_token = \"{}\"", credential(&z, "refresh_token")),
        "refresh_token = \"1000.revoked-by-the-user\"",
    );
    std::fs::write(dir.path().join("raccordo.toml"), config).unwrap();
    let mut server = Server::start_on(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &["--config", "raccordo.toml"],
    );
    let alerts = support::poll_json(&server, "/api/v1/alerts", support::ADMIN_TOKEN, |b| {
        b["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["kind"] == "crm_grant_refused"))
    })
    .await;
    let alert = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "crm_grant_refused")
        .unwrap();
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("raccordo connect zoho"),
        "{alert}"
    );
    // The poller kept running meanwhile (every 200 ms); Zoho saw one refresh attempt.
    let (refreshes, log) = zoho_token_requests(&z).await;
    assert_eq!(refreshes, 1, "{log}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_brings_both_seeded_crms_into_one_set_of_pairs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Both sandboxes seeded with the same 100 people and 20 companies (same seed), as when
    // a team starts syncing two CRMs that already share their contacts.
    let seeded = |product| async move {
        let mut config = SandboxConfig::new(product, "127.0.0.1:0".parse().unwrap());
        config.seed_size = (20, 100);
        config.rate_limit = (product == Product::HubSpot).then_some(2000);
        // The Zoho sandbox seeds from `seed ^ 0x5a`: this gives it HubSpot's people.
        config.seed = if product == Product::Zoho {
            1 ^ 0x5a
        } else {
            1
        };
        raccordo_sandbox::start(config).await.unwrap()
    };
    let hs = seeded(Product::HubSpot).await;
    let z = seeded(Product::Zoho).await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "\n[[admin.tokens]]\nname = \"ops\"\ntoken = \"{}\"\nscopes = [\"admin\"]\n",
        support::ADMIN_TOKEN
    );
    std::fs::write(
        dir.path().join("raccordo.toml"),
        hub_config(&public, &hs, &z, &extra),
    )
    .unwrap();
    let mut server = Server::start_on(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &["--config", "raccordo.toml"],
    );

    let reconcile = |public: String| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(support::BIN)
                .args([
                    "reconcile",
                    "--url",
                    &public,
                    "--token",
                    support::ADMIN_TOKEN,
                ])
                .output()
                .unwrap()
        })
    };
    // Before: nothing is linked; every HubSpot contact matches a Zoho one, unlinked.
    let before = reconcile(public.clone()).await.unwrap();
    let text = String::from_utf8_lossy(&before.stdout).to_string();
    assert!(before.status.success(), "{text}");
    assert!(
        text.contains("contacts: 100 in HubSpot, 100 in Zoho, 0 linked pairs (0 in agreement); 0 differ, 0 missing in Zoho, 0 hot missing in HubSpot, 100 matching but unlinked"),
        "{text}"
    );
    let html = text.trim_end().rsplit(" and ").next().unwrap().to_string();
    assert!(
        std::fs::read_to_string(&html)
            .unwrap()
            .contains("Integrity report")
    );

    let backfill_url = public.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(support::BIN)
            .args([
                "sync",
                "backfill",
                "--url",
                &backfill_url,
                "--token",
                support::ADMIN_TOKEN,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.trim_end().ends_with("backfill done"), "{text}");
    assert!(text.contains("hubspot contacts 100 ✓"), "{text}");

    let health: Value = client()
        .get(server.url("/api/v1/sync/health"))
        .bearer_auth(support::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health["pairs"]["contact"], 100,
        "every contact matched by e-mail: {health}"
    );
    assert_eq!(
        health["activity"]["mapping_problems"],
        json!([]),
        "the default mappings match both sandboxes' field metadata: {health}"
    );
    assert_eq!(
        health["pairs"]["company"], 20,
        "every company matched by site or name: {health}"
    );
    assert_eq!(health["queue"]["dead_letters"], 0, "{health}");
    let token = zoho_token(&z).await;
    assert_eq!(
        all_zoho_contacts(&z, &token).await.len(),
        100,
        "matched, not duplicated"
    );
    // After: every pair linked and in agreement.
    let after = reconcile(public.clone()).await.unwrap();
    let text = String::from_utf8_lossy(&after.stdout).to_string();
    assert!(
        text.contains("contacts: 100 in HubSpot, 100 in Zoho, 100 linked pairs (100 in agreement)"),
        "{text}"
    );
    assert!(text.contains("0 problem(s)"), "{text}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_integrity_report_compares_the_days_conversions_with_the_crms_count() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let hs = sandbox(Product::HubSpot, None).await;
    let z = sandbox(Product::Zoho, None).await;
    let dir = tempfile::tempdir().unwrap();
    let crm = hub_config("http://127.0.0.1:1", &hs, &z, "");
    // Everything after `[server]`'s own lines: the CRM sections of the standard hub config.
    let crm = &crm[crm.find("[crm]").unwrap()..];
    let extra = format!(
        r#"
{crm}
[sync]
poll_every = "1h"

[[sync.conversion_checks]]
name = "acquisti"
source = "web"
crm = "hubspot"
field = "lifecyclestage"
value = "customer"
date_field = "createdate"
"#
    );
    let server = support::start_configured(dir.path(), &extra);
    for n in 0..3 {
        assert_eq!(support::send_event(&server, n).await, 202);
    }
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let customer = |i: u32| {
        client()
            .post(format!("{}/crm/v3/objects/contacts", hs.base_url))
            .bearer_auth(credential(&hs, "token"))
            .json(&json!({"properties": {"email": format!("cliente{i}@acquisti.it"), "lifecyclestage": "customer"}}))
            .send()
    };
    for i in 0..2 {
        assert_eq!(customer(i).await.unwrap().status(), 201);
    }
    let reconcile = || {
        let (url, day) = (server.url(""), today.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(support::BIN)
                .args([
                    "reconcile",
                    "--day",
                    &day,
                    "--url",
                    &url,
                    "--token",
                    support::ADMIN_TOKEN,
                ])
                .output()
                .unwrap()
        })
    };
    let out = reconcile().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "conversions `acquisti` on {today}: 3 in the hub, 2 in the CRM: DIFFER"
        )),
        "{text}"
    );
    assert_eq!(customer(2).await.unwrap().status(), 201);
    let out = reconcile().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(&format!(
            "conversions `acquisti` on {today}: 3 in the hub, 3 in the CRM: agree"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_that_time_out_are_retried_until_the_crm_answers_again() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let hs = sandbox(Product::HubSpot, Some(format!("{public}/webhooks/hubspot"))).await;
    let z = sandbox(Product::Zoho, None).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        r#"
[[admin.tokens]]
name = "ops"
token = "{admin}"
scopes = ["admin"]

[sync]
poll_every = "1h"
[sync.retry]
first_delay = "200ms"
max_delay = "1s"
attempts = 30
"#,
        admin = support::ADMIN_TOKEN
    );
    // Calls to Zoho are abandoned after 300 ms; Zoho answers after 600 ms for now.
    let config = hub_config(&public, &hs, &z, &extra).replace(
        &format!("channel_token = \"{CHANNEL_TOKEN}\""),
        &format!("channel_token = \"{CHANNEL_TOKEN}\"\ntimeout = \"300ms\""),
    );
    std::fs::write(dir.path().join("raccordo.toml"), config).unwrap();
    let mut server = Server::start_on(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &["--config", "raccordo.toml"],
    );
    knobs(&z, json!({"latency_ms": 600})).await;
    for i in 0..5 {
        let r = client()
            .post(format!("{}/crm/v3/objects/contacts", hs.base_url))
            .bearer_auth(credential(&hs, "token"))
            .json(&json!({"properties": {"email": format!("lento{i}@example.it"), "lastname": "Lento"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // The hub's calls to Zoho time out (and are counted as retryable) …
    support::poll_json(&server, "/api/v1/sync/health", support::ADMIN_TOKEN, |h| {
        h["activity"]["zoho_calls"]["retryable"].as_u64() >= Some(3)
    })
    .await;
    // … and once Zoho is quick again, the retries get the contacts across.
    knobs(&z, json!({"latency_ms": 0})).await;
    let token = zoho_token(&z).await;
    eventually("the contacts in Zoho after the timeouts", || async {
        (zoho_contacts(&z, &token).await.len() == 5).then_some(())
    })
    .await;
    server.terminate();
}
