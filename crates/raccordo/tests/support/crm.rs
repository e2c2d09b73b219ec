//! The HubSpot and Zoho sandboxes for the black-box sync tests, and a hub config that talks
//! to them.

use std::time::Duration;

use raccordo_sandbox::{Product, Running, SandboxConfig};
use serde_json::{Value, json};

use super::client;

pub fn credential<'a>(s: &'a Running, name: &str) -> &'a str {
    &s.credentials.iter().find(|(k, _)| *k == name).unwrap().1
}

pub const CHANNEL_TOKEN: &str = "raccordo-test-channel-token-01";

pub async fn sandbox(product: Product, webhook_url: Option<String>) -> Running {
    let mut config = SandboxConfig::new(product, "127.0.0.1:0".parse().unwrap());
    config.seed_size = (0, 0);
    if product == Product::HubSpot {
        // The test's own calls share the account's limit with the hub's.
        config.rate_limit = Some(2000);
    }
    config.webhook_url = webhook_url;
    raccordo_sandbox::start(config).await.unwrap()
}

/// Polls `probe` until it returns `Some` (bounded: a deadline, not a pause).
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(
        what,
        Duration::from_secs(30),
        Duration::from_millis(50),
        probe,
    )
    .await
}

/// [`eventually`] with its own deadline and polling interval.
pub async fn eventually_within<T, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    probe: F,
) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(every).await;
    }
}

pub async fn zoho_token(z: &Running) -> String {
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", credential(z, "client_id")),
        ("client_secret", credential(z, "client_secret")),
        ("refresh_token", credential(z, "refresh_token")),
    ];
    for _ in 0..40 {
        let answer: Value = match client()
            .post(format!("{}/oauth/v2/token", z.base_url))
            .form(&form)
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if let Some(token) = answer["access_token"].as_str() {
            return token.to_string();
        }
    }
    panic!("no Zoho access token");
}

pub async fn zoho_contacts(z: &Running, token: &str) -> Vec<Value> {
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

pub async fn hubspot_search(hs: &Running, email: &str) -> Option<Value> {
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

pub fn hub_config(public: &str, hs: &Running, z: &Running, extra: &str) -> String {
    format!(
        r#"
[server]
data_dir = "data"

# The emulators and capture servers of the tests listen on loopback over plain http.
[outbound]
allow_internal = ["127.0.0.1"]
allow_http = ["127.0.0.1"]

[crm]
public_url = "{public}"

[crm.hubspot]
base_url = "{hs_url}"
access_token = "{hs_token}"
client_secret = "{hs_secret}"
burst_per_10s = 1000

[crm.zoho]
base_url = "{z_url}"
token_url = "{z_url}/oauth/v2/token"
client_id = "{z_id}"
client_secret = "{z_secret}"
refresh_token = "{z_refresh}"
channel_token = "{CHANNEL_TOKEN}"
{extra}
"#,
        hs_url = hs.base_url,
        hs_token = credential(hs, "token"),
        hs_secret = credential(hs, "client_secret"),
        z_url = z.base_url,
        z_id = credential(z, "client_id"),
        z_secret = credential(z, "client_secret"),
        z_refresh = credential(z, "refresh_token"),
    )
}

/// Changes the sandbox's fault knobs (`PATCH /_sandbox/knobs`).
pub async fn knobs(sandbox: &Running, knobs: Value) {
    let r = client()
        .patch(format!("{}/_sandbox/knobs", sandbox.base_url))
        .json(&knobs)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// How many token requests (`POST /oauth/v2/token`) the Zoho sandbox has answered, and its
/// call log (for a failing assertion's message).
pub async fn zoho_token_requests(z: &Running) -> (usize, Value) {
    let log: Value = client()
        .get(format!("{}/_sandbox/calls", z.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let requests = log["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["path"] == "/oauth/v2/token")
        .count();
    (requests, log)
}
