//! HubSpot ↔ Zoho sync on the real binary, against the two sandboxes: HubSpot's signed
//! webhooks and Zoho's channel notifications come in over HTTP, the hub registers the Zoho
//! channel itself, and records end up on the other side exactly once.

mod support;

use std::time::Duration;

use raccordo_sandbox::{Product, Running, SandboxConfig};
use serde_json::{Value, json};
use support::{Server, client, free_port};

fn credential<'a>(s: &'a Running, name: &str) -> &'a str {
    &s.credentials.iter().find(|(k, _)| *k == name).unwrap().1
}

const CHANNEL_TOKEN: &str = "raccordo-test-channel-token-01";

async fn sandbox(product: Product, webhook_url: Option<String>) -> Running {
    let mut config = SandboxConfig::new(product, "127.0.0.1:0".parse().unwrap());
    config.seed_size = (0, 0);
    config.webhook_url = webhook_url;
    raccordo_sandbox::start(config).await.unwrap()
}

/// Polls `probe` until it returns `Some` (bounded: a deadline, not a pause).
async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn zoho_token(z: &Running) -> String {
    let answer: Value = client()
        .post(format!("{}/oauth/v2/token", z.base_url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", credential(z, "client_id")),
            ("client_secret", credential(z, "client_secret")),
            ("refresh_token", credential(z, "refresh_token")),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"].as_str().unwrap().to_string()
}

async fn zoho_contacts(z: &Running, token: &str) -> Vec<Value> {
    let r = client()
        .get(format!(
            "{}/crm/v8/Contacts?fields=Email,Last_Name,Mailing_City&per_page=200",
            z.base_url
        ))
        .header("authorization", format!("Zoho-oauthtoken {token}"))
        .send()
        .await
        .unwrap();
    if r.status() == 204 {
        return Vec::new();
    }
    r.json::<Value>().await.unwrap()["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn hubspot_search(hs: &Running, email: &str) -> Option<Value> {
    let found: Value = client()
        .post(format!("{}/crm/v3/objects/contacts/search", hs.base_url))
        .bearer_auth(credential(hs, "token"))
        .json(&json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": email}]}], "properties": ["email", "city", "lifecyclestage"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    found["results"].as_array().and_then(|r| r.first().cloned())
}

#[tokio::test]
async fn contacts_sync_both_ways_through_webhooks_exactly_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let hs = sandbox(Product::HubSpot, Some(format!("{public}/webhooks/hubspot"))).await;
    let z = sandbox(Product::Zoho, None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[server]
data_dir = "data"

[crm]
public_url = "{public}"

[crm.hubspot]
base_url = "{hs_url}"
access_token = "{hs_token}"
client_secret = "{hs_secret}"

[crm.zoho]
base_url = "{z_url}"
token_url = "{z_url}/oauth/v2/token"
client_id = "{z_id}"
client_secret = "{z_secret}"
refresh_token = "{z_refresh}"
channel_token = "{CHANNEL_TOKEN}"
"#,
        hs_url = hs.base_url,
        hs_token = credential(&hs, "token"),
        hs_secret = credential(&hs, "client_secret"),
        z_url = z.base_url,
        z_id = credential(&z, "client_id"),
        z_secret = credential(&z, "client_secret"),
        z_refresh = credential(&z, "refresh_token"),
    );
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
