//! The CRM clients against the HubSpot and Zoho sandboxes, over real sockets, with the
//! token manager on a real SQLite state store.

use std::collections::BTreeMap;
use std::sync::Arc;

use raccordo_core::crm::ObjectKind;
use raccordo_core::{BucketSpec, Clock, SystemClock};
use raccordo_crm::tokens::TokenSource;
use raccordo_crm::{
    CrmError, HubSpotClient, HubSpotSettings, OAuthGrant, OAuthTokens, Sealer, StaticToken,
    ZohoClient, ZohoSettings,
};
use raccordo_sandbox::{Product, Running, SandboxConfig};
use raccordo_storage_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{Value, json};

async fn sandbox(product: Product) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = SandboxConfig::new(product, "127.0.0.1:0".parse().unwrap());
    config.seed_size = (0, 0);
    raccordo_sandbox::start(config).await.unwrap()
}

fn credential<'a>(s: &'a Running, name: &str) -> &'a str {
    &s.credentials.iter().find(|(k, _)| *k == name).unwrap().1
}

async fn calls(s: &Running) -> Vec<Value> {
    reqwest::get(format!("{}/_sandbox/calls", s.base_url))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["calls"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("the sandbox lists its calls"))
}

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
    pairs.iter().map(|(k, v)| ((*k).into(), json!(v))).collect()
}

fn store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(SqliteOptions::new(dir.path().join("raccordo.db"))).unwrap()
}

#[tokio::test]
async fn hubspot_upserts_by_email_in_batches_of_100_and_a_repeat_creates_nothing() {
    let hs = sandbox(Product::HubSpot).await;
    let dir = tempfile::tempdir().unwrap();
    let stores = store(&dir).stores();
    let client = HubSpotClient::new(
        &HubSpotSettings {
            base_url: hs.base_url.clone(),
            outbound: std::sync::Arc::new(raccordo_outbound::OutboundPolicy::allow_all()),
            ..HubSpotSettings::default()
        },
        Arc::new(StaticToken(credential(&hs, "token").into())),
        stores.rate_limits.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let inputs: Vec<_> = (0..150)
        .map(|i| {
            props(&[
                ("email", &format!("persona{i}@example.it")),
                ("lastname", "Rossi"),
            ])
        })
        .collect();
    let first = client
        .upsert(ObjectKind::Contact, "email", &inputs)
        .await
        .unwrap();
    assert_eq!(first.len(), 150);
    assert!(first.values().all(|w| w.as_ref().unwrap().created));
    let again = client
        .upsert(ObjectKind::Contact, "email", &inputs)
        .await
        .unwrap();
    for (email, w) in &again {
        let w = w.as_ref().unwrap();
        assert!(!w.created, "{email} created twice");
        assert_eq!(w.id, first[email].as_ref().unwrap().id);
    }
    let upserts = calls(&hs)
        .await
        .iter()
        .filter(|c| c["path"] == "/crm/v3/objects/contacts/batch/upsert")
        .count();
    assert_eq!(upserts, 4, "two batch calls per 150 records");

    // Reads by id and by e-mail; an update; an archive.
    let id = first["persona7@example.it"].as_ref().unwrap().id.clone();
    let fields = vec!["email".to_string(), "lastname".to_string()];
    let by_email = client
        .read(
            ObjectKind::Contact,
            &["persona7@example.it".into(), "nobody@example.it".into()],
            Some("email"),
            &fields,
            true,
        )
        .await
        .unwrap();
    assert_eq!(by_email.len(), 1);
    assert_eq!(by_email[0].id, id);
    assert!(by_email[0].modified_at_ms > 0);
    let updated = client
        .update(
            ObjectKind::Contact,
            &[(id.clone(), props(&[("lastname", "Bianchi")]))],
        )
        .await
        .unwrap();
    assert_eq!(updated[&id], Ok(()));
    let read = client
        .read(
            ObjectKind::Contact,
            std::slice::from_ref(&id),
            None,
            &fields,
            false,
        )
        .await
        .unwrap();
    assert_eq!(read[0].values["lastname"], json!("Bianchi"));
    client
        .archive(ObjectKind::Contact, std::slice::from_ref(&id))
        .await
        .unwrap();
    let gone = client
        .read(ObjectKind::Contact, &[id], None, &fields, false)
        .await
        .unwrap();
    assert!(gone.is_empty());
}

#[tokio::test]
async fn hubspot_validation_errors_are_permanent_and_name_the_property() {
    let hs = sandbox(Product::HubSpot).await;
    let dir = tempfile::tempdir().unwrap();
    let stores = store(&dir).stores();
    let client = HubSpotClient::new(
        &HubSpotSettings {
            base_url: hs.base_url.clone(),
            outbound: std::sync::Arc::new(raccordo_outbound::OutboundPolicy::allow_all()),
            ..HubSpotSettings::default()
        },
        Arc::new(StaticToken(credential(&hs, "token").into())),
        stores.rate_limits.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let outcome = client
        .upsert(
            ObjectKind::Contact,
            "email",
            &[props(&[
                ("email", "a@b.it"),
                ("lifecyclestage", "freezing"),
            ])],
        )
        .await;
    let err = match outcome {
        Err(e) => e,
        Ok(map) => map["a@b.it"].clone().unwrap_err(),
    };
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(err.field(), Some("lifecyclestage"), "{err:?}");

    let bad_token = HubSpotClient::new(
        &HubSpotSettings {
            base_url: hs.base_url.clone(),
            outbound: std::sync::Arc::new(raccordo_outbound::OutboundPolicy::allow_all()),
            ..HubSpotSettings::default()
        },
        Arc::new(StaticToken("pat-wrong".into())),
        stores.rate_limits.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let refused = bad_token
        .read(ObjectKind::Contact, &["1".into()], None, &[], false)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, CrmError::Unauthorized { .. }),
        "{refused:?}"
    );
}

fn zoho_grant(z: &Running) -> OAuthGrant {
    OAuthGrant {
        system: "zoho",
        token_url: format!("{}/oauth/v2/token", z.base_url),
        client_id: credential(z, "client_id").into(),
        client_secret: credential(z, "client_secret").into(),
        refresh_ahead_ms: 5 * 60_000,
        refresh_budget: BucketSpec::per_interval(10, 600_000),
    }
}

#[tokio::test]
async fn zoho_upserts_with_no_workflows_and_refreshes_an_expired_token_once() {
    let z = sandbox(Product::Zoho).await;
    let dir = tempfile::tempdir().unwrap();
    let stores = store(&dir).stores();
    let sealer = Arc::new(Sealer::from_key(&[3; 32]).unwrap());
    let tokens = Arc::new(OAuthTokens::new(
        zoho_grant(&z),
        reqwest::Client::new(),
        stores.secrets.clone(),
        stores.rate_limits.clone(),
        sealer.clone(),
        Arc::new(SystemClock) as Arc<dyn Clock>,
    ));
    tokens
        .store_refresh_token(credential(&z, "refresh_token"))
        .await
        .unwrap();
    // The grant is stored sealed: the refresh token is nowhere in the database file.
    let stored = stores
        .secrets
        .get_secret("oauth:zoho:refresh")
        .await
        .unwrap()
        .unwrap();
    let plain = credential(&z, "refresh_token").as_bytes();
    assert!(!stored.value.windows(plain.len()).any(|w| w == plain));

    let client = ZohoClient::new(
        &ZohoSettings {
            base_url: z.base_url.clone(),
            outbound: std::sync::Arc::new(raccordo_outbound::OutboundPolicy::allow_all()),
            ..ZohoSettings::default()
        },
        tokens.clone(),
        stores.rate_limits.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let records: Vec<_> = (0..120)
        .map(|i| {
            props(&[
                ("Email", &format!("cliente{i}@example.it")),
                ("Last_Name", "Verdi"),
            ])
        })
        .collect();
    let first = client
        .upsert(ObjectKind::Contact, &["Email".to_string()], &records)
        .await
        .unwrap();
    assert!(first.iter().all(|w| w.as_ref().unwrap().created));
    assert_eq!(tokens.refreshes(), 1);

    // The access token expires mid-run: one refresh, then the same upsert updates.
    reqwest::Client::new()
        .post(format!("{}/_sandbox/tokens/expire", z.base_url))
        .send()
        .await
        .unwrap();
    let again = client
        .upsert(ObjectKind::Contact, &["Email".to_string()], &records)
        .await
        .unwrap();
    for (a, b) in first.iter().zip(&again) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(a.id, b.id);
        assert!(!b.created);
    }
    assert_eq!(tokens.refreshes(), 2);

    // Bulk lookup by e-mail (COQL, 50 values per query), whatever the case.
    let wanted: Vec<String> = (0..60)
        .map(|i| format!("Cliente{i}@Example.it"))
        .chain(["nessuno@example.it".to_string()])
        .collect();
    let found = client
        .find_many(
            ObjectKind::Contact,
            "Email",
            &wanted,
            &["Email".to_string()],
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 60);
    assert_eq!(
        found["cliente7@example.it"].id,
        first[7].as_ref().unwrap().id
    );
    let coql = calls(&z)
        .await
        .iter()
        .filter(|c| c["path"] == "/crm/v8/coql")
        .count();
    assert_eq!(coql, 2, "61 values in two queries");

    // A missing mandatory field fails that record only, naming the field.
    let mixed = client
        .upsert(
            ObjectKind::Contact,
            &["Email".to_string()],
            &[
                props(&[("Email", "senza.cognome@example.it")]),
                props(&[("Email", "ok@example.it"), ("Last_Name", "Neri")]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(mixed[0].as_ref().unwrap_err().field(), Some("Last_Name"));
    assert!(mixed[1].is_ok());

    let id = first[3].as_ref().unwrap().id.clone();
    let fields = vec!["Email".to_string(), "Last_Name".to_string()];
    let found = client
        .find_by(ObjectKind::Contact, "Email", "cliente3@example.it", &fields)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, id);
    assert!(found.modified_at_ms > 0);
    assert!(
        client
            .find_by(ObjectKind::Contact, "Email", "cliente3@example", &fields)
            .await
            .unwrap()
            .is_none(),
        "`equals` matching a part is not a match"
    );
    client
        .update(
            ObjectKind::Contact,
            &[(id.clone(), props(&[("Last_Name", "Gialli")]))],
        )
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    let read = client
        .read(ObjectKind::Contact, &[id], &fields)
        .await
        .unwrap();
    assert_eq!(read[0].values["Last_Name"], json!("Gialli"));
}

#[tokio::test]
async fn a_refused_refresh_fails_fast_without_a_storm() {
    let z = sandbox(Product::Zoho).await;
    let dir = tempfile::tempdir().unwrap();
    let stores = store(&dir).stores();
    let tokens = Arc::new(OAuthTokens::new(
        zoho_grant(&z),
        reqwest::Client::new(),
        stores.secrets.clone(),
        stores.rate_limits.clone(),
        Arc::new(Sealer::from_key(&[4; 32]).unwrap()),
        Arc::new(SystemClock) as Arc<dyn Clock>,
    ));
    tokens
        .store_refresh_token("1000.revoked-by-the-user")
        .await
        .unwrap();
    for _ in 0..5 {
        let e = tokens.access_token().await.unwrap_err();
        assert!(matches!(e, CrmError::Unauthorized { .. }), "{e:?}");
    }
    let token_calls = calls(&z)
        .await
        .iter()
        .filter(|c| c["path"] == "/oauth/v2/token")
        .count();
    assert_eq!(token_calls, 1, "one refused refresh, then no more attempts");
    assert!(tokens.refused(), "the refusal is known, for the alert");
    // A new grant (`raccordo connect`) clears the refusal.
    tokens
        .store_refresh_token(credential(&z, "refresh_token"))
        .await
        .unwrap();
    assert!(tokens.access_token().await.is_ok());
    assert!(!tokens.refused());
}
