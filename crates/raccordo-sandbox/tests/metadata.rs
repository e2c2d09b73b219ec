//! The metadata calls and the search and history behaviour connectors rely on, over HTTP.

use raccordo_sandbox::{Product, Running, SandboxConfig};
use serde_json::{Value, json};

async fn start(product: Product) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = SandboxConfig::new(product, "127.0.0.1:0".parse().unwrap());
    config.seed_size = (3, 10);
    raccordo_sandbox::start(config).await.unwrap()
}

fn credential<'a>(s: &'a Running, name: &str) -> &'a str {
    &s.credentials.iter().find(|(k, _)| *k == name).unwrap().1
}

async fn get(s: &Running, path: &str, auth: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", s.base_url))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(s: &Running, path: &str, auth: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", s.base_url))
        .header("authorization", auth)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn hubspot_serves_the_metadata_history_and_filters_connectors_use() {
    let hs = start(Product::HubSpot).await;
    let auth = format!("Bearer {}", credential(&hs, "token"));
    let (status, props) = get(&hs, "/crm/v3/properties/contacts", &auth).await;
    assert_eq!(status, 200);
    let stage = props["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "lifecyclestage")
        .unwrap();
    assert_eq!(stage["type"], "enumeration");
    assert!(
        stage["options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["value"] == "marketingqualifiedlead")
    );
    let (status, legacy) = get(&hs, "/properties/v2/companies/properties", &auth).await;
    assert_eq!(status, 200);
    assert!(
        legacy
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "domain")
    );
    assert_eq!(
        get(&hs, "/crm/v3/properties/contacts/email", &auth).await.1["hasUniqueValue"],
        true
    );
    assert_eq!(
        get(&hs, "/crm/v3/properties/contacts/nope", &auth).await.0,
        404
    );
    assert_eq!(
        get(&hs, "/crm/v3/schemas", &auth).await.1["results"],
        json!([])
    );
    assert_eq!(
        get(&hs, "/crm/v3/owners", &auth).await.1["results"][0]["email"],
        "admin@raccordo-sandbox.it"
    );
    assert_eq!(
        get(&hs, "/crm/v3/pipelines/deals", &auth).await.1["results"][0]["id"],
        "default"
    );
    assert!(get(&hs, "/account-info/v3/details", &auth).await.1["portalId"].is_number());

    // Seeded records have distinct creation times.
    let (_, page) = get(
        &hs,
        "/crm/v3/objects/contacts?limit=10&properties=createdate",
        &auth,
    )
    .await;
    let mut created: Vec<&str> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["properties"]["createdate"].as_str().unwrap())
        .collect();
    created.sort();
    created.dedup();
    assert_eq!(created.len(), 10);

    // Top-level `filters` are applied, not ignored.
    let id = page["results"][0]["id"].as_str().unwrap().to_string();
    let (_, found) = post(
        &hs,
        "/crm/v3/objects/contacts/search",
        &auth,
        json!({"filters": [{"propertyName": "hs_object_id", "operator": "EQ", "value": id}], "limit": 100}),
    )
    .await;
    assert_eq!(found["total"], 1, "{found}");

    // Property history, newest first, on single and batch reads.
    let r = reqwest::Client::new()
        .patch(format!("{}/crm/v3/objects/contacts/{id}", hs.base_url))
        .header("authorization", &auth)
        .json(&json!({"properties": {"city": "Trento"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, read) = get(
        &hs,
        &format!("/crm/v3/objects/contacts/{id}?propertiesWithHistory=city"),
        &auth,
    )
    .await;
    let history = read["propertiesWithHistory"]["city"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["value"], "Trento");
    let (_, batch) = post(
        &hs,
        "/crm/v3/objects/contacts/batch/read",
        &auth,
        json!({"inputs": [{"id": id}], "properties": ["city"], "propertiesWithHistory": ["city"]}),
    )
    .await;
    assert_eq!(
        batch["results"][0]["propertiesWithHistory"]["city"][0]["value"],
        "Trento"
    );

    // The v4 batch read of associations (seeded contacts belong to companies).
    let (status, assoc) = post(
        &hs,
        "/crm/v4/associations/contacts/companies/batch/read",
        &auth,
        json!({"inputs": [{"id": id}]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        assoc["results"][0]["to"][0]["associationTypes"][0]["typeId"],
        279
    );

    // Access-token metadata for an OAuth token.
    let form = [
        ("grant_type", "authorization_code".to_string()),
        ("code", {
            let r = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
                .get(format!(
                    "{}/oauth/authorize?client_id={}&redirect_uri=http://localhost/cb&state=s",
                    hs.base_url,
                    credential(&hs, "client_id")
                ))
                .send()
                .await
                .unwrap();
            let location = r.headers()["location"].to_str().unwrap().to_string();
            location
                .split("code=")
                .nth(1)
                .unwrap()
                .split('&')
                .next()
                .unwrap()
                .to_string()
        }),
        ("redirect_uri", "http://localhost/cb".to_string()),
        ("client_id", credential(&hs, "client_id").to_string()),
        (
            "client_secret",
            credential(&hs, "client_secret").to_string(),
        ),
    ];
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", raccordo_sandbox::encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let token: Value = reqwest::Client::new()
        .post(format!("{}/oauth/v1/token", hs.base_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = token["access_token"].as_str().unwrap();
    let (status, info) = get(&hs, &format!("/oauth/v1/access-tokens/{access}"), "").await;
    assert_eq!(status, 200);
    assert_eq!(info["token_type"], "access");
    assert_eq!(get(&hs, "/oauth/v1/access-tokens/CJnope", "").await.0, 404);
}

#[tokio::test]
async fn zoho_serves_v2_module_metadata_picklists_and_keeps_secrets_out_of_the_call_log() {
    let z = start(Product::Zoho).await;
    // The token request with its parameters in the query string, as Zoho allows.
    let token: Value = reqwest::Client::new()
        .post(format!(
            "{}/oauth/v2/token?grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
            z.base_url,
            credential(&z, "client_id"),
            credential(&z, "client_secret"),
            credential(&z, "refresh_token")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth = format!(
        "Zoho-oauthtoken {}",
        token["access_token"].as_str().unwrap()
    );
    let (status, v2) = get(&z, "/crm/v2/Contacts", &auth).await;
    assert_eq!(status, 200, "v2 lists without `fields`");
    assert!(v2["data"][0]["Email"].is_string());
    assert_eq!(
        get(&z, "/crm/v8/Contacts", &auth).await.0,
        400,
        "v8 wants `fields`"
    );
    let (_, module) = get(&z, "/crm/v8/settings/modules/Contacts", &auth).await;
    assert_eq!(module["modules"][0]["api_name"], "Contacts");
    let (_, fields) = get(&z, "/crm/v8/settings/fields?module=Contacts", &auth).await;
    let stage = fields["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["api_name"] == "Lifecycle_Stage")
        .unwrap();
    assert_eq!(stage["display_label"], "Lifecycle Stage");
    assert!(
        stage["pick_list_values"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["actual_value"] == "Sales Qualified Lead")
    );
    assert!(
        get(&z, "/crm/v8/org", &auth).await.1["org"][0]["license_details"]["paid"].is_boolean()
    );
    let (_, log) = get(&z, "/_sandbox/calls", "").await;
    let text = log.to_string();
    assert!(text.contains("refresh_token=<redacted>"), "{text}");
    assert!(!text.contains(credential(&z, "refresh_token")), "{text}");
    assert!(!text.contains(credential(&z, "client_secret")), "{text}");
}
