//! The AI client against the AI sandbox, over real sockets, with the cache and the rate-limit
//! buckets in a real SQLite store.

use std::sync::Arc;
use std::time::Duration;

use raccordo_ai::{AiClient, AiError, Prompt, Provider};
use raccordo_core::{Clock, SystemClock};
use raccordo_sandbox::{Product, Running, SandboxConfig};
use raccordo_storage_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{Value, json};

async fn sandbox() -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = SandboxConfig::new(Product::Ai, "127.0.0.1:0".parse().unwrap());
    raccordo_sandbox::start(config).await.unwrap()
}

fn provider(s: &Running, name: &str) -> Provider {
    Provider {
        kind: raccordo_ai::ProviderKind::OpenaiCompatible,
        name: name.into(),
        base_url: format!("{}/v1", s.base_url),
        api_key: s
            .credentials
            .iter()
            .find(|(k, _)| *k == "api_key")
            .unwrap()
            .1
            .clone(),
        model: "raccordo-sandbox-1".into(),
        timeout: Duration::from_secs(10),
        requests_per_minute: 600,
        tokens_per_minute: 200_000,
        input_price_per_mtok: 0.15,
        output_price_per_mtok: 0.60,
    }
}

async fn calls(s: &Running) -> Vec<Value> {
    reqwest::get(format!("{}/_sandbox/calls", s.base_url))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["path"] == "/v1/chat/completions")
        .cloned()
        .collect()
}

async fn knobs(s: &Running, knobs: Value) {
    reqwest::Client::new()
        .patch(format!("{}/_sandbox/knobs", s.base_url))
        .json(&knobs)
        .send()
        .await
        .unwrap();
}

fn ticket(text: &str) -> Prompt {
    Prompt {
        system: Some("Classify the support ticket.".into()),
        user: text.into(),
        subject: None,
        schema: Some(json!({
            "type": "object", "additionalProperties": false, "required": ["sentiment", "summary"],
            "properties": {
                "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
                "summary": {"type": "string", "maxLength": 120}
            }
        })),
        flow: "tickets".into(),
    }
}

fn client(providers: Vec<Provider>, store: &SqliteStore) -> AiClient {
    let stores = store.stores();
    AiClient::new(
        providers,
        stores.kv.clone(),
        Duration::from_secs(3600),
        stores.rate_limits.clone(),
        Arc::new(SystemClock) as Arc<dyn Clock>,
        // The emulator listens on loopback.
        &Arc::new(raccordo_outbound::OutboundPolicy::allow_all()),
    )
    .unwrap()
}

fn store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(SqliteOptions::new(dir.path().join("raccordo.db"))).unwrap()
}

#[tokio::test]
async fn answers_follow_the_schema_are_counted_and_cached() {
    let ai = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let client = client(vec![provider(&ai, "sandbox")], &store);
    let prompt = ticket("Terzo reclamo in un mese: l'app è lentissima e si blocca continuamente.");
    let first = client.complete(&prompt).await.unwrap();
    assert!(!first.cached);
    assert_eq!(
        first.content["sentiment"], "negative",
        "{:?}",
        first.content
    );
    assert!(first.prompt_tokens > 0 && first.completion_tokens > 0);
    assert!(first.cost > 0.0);
    // The same request again: from the cache, with no call.
    let again = client.complete(&prompt).await.unwrap();
    assert!(again.cached);
    assert_eq!(again.content, first.content);
    assert_eq!(calls(&ai).await.len(), 1, "the sandbox saw one call");
    // Another input is another entry.
    let other = client
        .complete(&ticket("Grazie, tutto perfetto!"))
        .await
        .unwrap();
    assert!(!other.cached);
    assert_eq!(calls(&ai).await.len(), 2);
}

#[tokio::test]
async fn a_429_is_waited_out_as_retry_after_says_then_the_fallback_answers() {
    let primary = sandbox().await;
    let fallback = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    knobs(&primary, json!({"throttle_rate": 1.0})).await;
    let client = client(
        vec![
            provider(&primary, "primary"),
            provider(&fallback, "fallback"),
        ],
        &store,
    );
    let answer = client
        .complete(&ticket("Il portale non funziona."))
        .await
        .unwrap();
    assert_eq!(answer.provider, "fallback");
    let tried = calls(&primary).await;
    assert_eq!(tried.len(), 4, "four attempts on the primary");
    for pair in tried.windows(2) {
        let gap = pair[1]["at_ms"].as_i64().unwrap() - pair[0]["at_ms"].as_i64().unwrap();
        assert!(gap >= 950, "Retry-After: 1 was honoured ({gap} ms)");
    }
}

#[tokio::test]
async fn an_answer_that_cannot_fit_the_schema_gets_one_repair_then_a_clear_failure() {
    let ai = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let client = client(vec![provider(&ai, "sandbox")], &store);
    // No integer is at least 5 and at most 1: whatever the model says, it does not fit.
    let mut prompt = ticket("Vorrei sapere se il piano Business include gli utenti esterni.");
    prompt.schema = Some(json!({
        "type": "object", "required": ["score"],
        "properties": {"score": {"type": "integer", "minimum": 5, "maximum": 1}}
    }));
    match client.complete(&prompt).await {
        Err(AiError::InvalidOutput { pointer, .. }) => assert_eq!(pointer, "/score"),
        other => panic!("{other:?}"),
    }
    assert_eq!(calls(&ai).await.len(), 2, "the answer and one repair");
    // A schema that is not one is refused before any call.
    prompt.schema = Some(json!({"type": 17}));
    assert!(matches!(
        client.complete(&prompt).await,
        Err(AiError::BadSchema(_))
    ));
    assert_eq!(calls(&ai).await.len(), 2);
}
