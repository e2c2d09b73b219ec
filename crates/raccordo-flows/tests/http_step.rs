//! The `http` step against a real HTTP server: each auth kind reaches the remote as it
//! expects, an OAuth2 client-credentials token is fetched once and reused, the credentials
//! stay out of the recorded input, and answers are sorted into retryable and permanent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use raccordo_core::{Clock, SystemClock};
use raccordo_flows::steps::{self, BuildContext, StepEnv};
use raccordo_flows::{CrmClients, Services, StepConfig, StepError};
use raccordo_storage_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{Value, json};

struct Remote {
    base: String,
    token_calls: Arc<AtomicUsize>,
}

/// A token endpoint (client credentials, form-encoded) and an API that wants its token, a
/// key, or basic credentials; `/busy` answers 429 with `Retry-After`, `/gone` 404.
async fn remote() -> Remote {
    let token_calls = Arc::new(AtomicUsize::new(0));
    let counter = token_calls.clone();
    let app = Router::new()
        .route(
            "/token",
            post(move |body: String| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let ok = body.contains("grant_type=client_credentials")
                        && body.contains("client_id=raccordo")
                        && body.contains("client_secret=s3cret");
                    if ok {
                        (
                            StatusCode::OK,
                            axum::Json(json!({"access_token": "tok-1", "token_type": "Bearer", "expires_in": 3600})),
                        )
                    } else {
                        (
                            StatusCode::UNAUTHORIZED,
                            axum::Json(json!({"error": "invalid_client"})),
                        )
                    }
                }
            }),
        )
        .route(
            "/api/thing",
            get(|headers: HeaderMap| async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let who = match (header("authorization").as_str(), header("x-api-key").as_str()) {
                    ("Bearer tok-1", _) => "oauth2",
                    ("Bearer static-token", _) => "bearer",
                    ("Basic cmFjY29yZG86cHc=", _) => "basic",
                    (_, "k-123") => "api_key",
                    _ => {
                        return (
                            StatusCode::UNAUTHORIZED,
                            axum::Json(json!({"error": "who are you"})),
                        );
                    }
                };
                (
                    StatusCode::OK,
                    axum::Json(json!({"who": who, "idempotency": header("idempotency-key")})),
                )
            }),
        )
        .route(
            "/busy",
            get(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "7")],
                    "slow down",
                )
            }),
        )
        .route("/gone", get(|| async { StatusCode::NOT_FOUND }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Remote { base, token_calls }
}

/// An `http` step named `call` with these settings.
fn step(settings: Value) -> Arc<dyn steps::Step> {
    let mut config = json!({ "name": "call", "type": "http" });
    for (k, v) in settings.as_object().unwrap() {
        config[k] = v.clone();
    }
    let config: StepConfig = serde_json::from_value(config).unwrap();
    let names = ["call".to_string()];
    steps::build(
        &config,
        &BuildContext {
            step_names: &names,
            index: 0,
            outbound: &Arc::new(raccordo_outbound::OutboundPolicy::allow_all()),
        },
    )
    .unwrap()
}

fn services(dir: &tempfile::TempDir) -> (SqliteStore, Services) {
    // reqwest is built without a default TLS provider (the binary installs ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("raccordo.db"))).unwrap();
    let kv = store.stores().kv.clone();
    let services = Services::new(
        None,
        Arc::new(CrmClients::default()),
        // The servers these tests call listen on loopback.
        &Arc::new(raccordo_outbound::OutboundPolicy::allow_all()),
        Arc::new(SystemClock) as Arc<dyn Clock>,
        kv,
    )
    .unwrap();
    (store, services)
}

/// Renders the step's input and runs it once.
async fn call(
    step: &Arc<dyn steps::Step>,
    services: &Services,
) -> (Value, Result<Value, StepError>) {
    let context = minijinja::Value::from_serialize(
        json!({ "trigger": { "id": 7 }, "steps": {}, "run": { "id": "run_x", "flow": "f" } }),
    );
    let input = step.input(&context).unwrap();
    let env = StepEnv {
        services,
        flow: "f",
        run_id: "run_x",
        step: "call",
    };
    let out = step.run(&input, &env).await.map(|o| o.output);
    (input, out)
}

fn oauth2(remote: &Remote, secret: &str) -> Value {
    json!({"type": "oauth2_client_credentials", "token_url": format!("{}/token", remote.base), "client_id": "raccordo", "client_secret": secret})
}

#[tokio::test]
async fn every_auth_kind_reaches_the_remote_and_stays_out_of_the_record() {
    let remote = remote().await;
    let dir = tempfile::tempdir().unwrap();
    let (_store, services) = services(&dir);
    let url = format!("{}/api/thing", remote.base);
    for (auth, who, secret) in [
        (
            json!({"type": "bearer", "token": "static-token"}),
            "bearer",
            "static-token",
        ),
        (
            json!({"type": "api_key", "key": "k-123"}),
            "api_key",
            "k-123",
        ),
        (
            json!({"type": "basic", "username": "raccordo", "password": "pw"}),
            "basic",
            "pw\"",
        ),
        (oauth2(&remote, "s3cret"), "oauth2", "s3cret"),
    ] {
        let step = step(json!({ "url": url, "auth": auth }));
        let (input, output) = call(&step, &services).await;
        let output = output.unwrap();
        assert_eq!(output["status"], 200);
        assert_eq!(output["body"]["who"], who);
        assert_eq!(
            output["body"]["idempotency"], "run_x:call",
            "the same key on every attempt"
        );
        assert!(
            !input.to_string().contains(secret),
            "the recorded input holds no credential: {input}"
        );
    }
    // A second OAuth2 call reuses the token.
    let again = step(json!({ "url": url, "auth": oauth2(&remote, "s3cret") }));
    call(&again, &services).await.1.unwrap();
    assert_eq!(
        remote.token_calls.load(Ordering::SeqCst),
        1,
        "one token for both calls"
    );

    // A refused client: the token endpoint says no, and retrying cannot help.
    let bad = step(json!({ "url": url, "auth": oauth2(&remote, "wrong") }));
    let (_, err) = call(&bad, &services).await;
    assert!(matches!(err, Err(StepError::Permanent { .. })), "{err:?}");
}

#[tokio::test]
async fn a_429_is_retryable_with_its_wait_and_a_404_is_permanent() {
    let remote = remote().await;
    let dir = tempfile::tempdir().unwrap();
    let (_store, services) = services(&dir);
    let (_, busy) = call(
        &step(json!({ "url": format!("{}/busy", remote.base) })),
        &services,
    )
    .await;
    assert_eq!(
        busy,
        Err(StepError::Retryable {
            message: "HTTP 429 from the remote".into(),
            retry_after_ms: Some(7000)
        })
    );
    let (_, gone) = call(
        &step(json!({ "url": format!("{}/gone", remote.base) })),
        &services,
    )
    .await;
    assert!(matches!(gone, Err(StepError::Permanent { .. })), "{gone:?}");
    // Nothing listens on the discard port: a connection error is worth another attempt.
    let (_, down) = call(&step(json!({ "url": "http://127.0.0.1:9/x" })), &services).await;
    assert!(matches!(down, Err(StepError::Retryable { .. })), "{down:?}");
}
