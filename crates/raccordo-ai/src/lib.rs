//! The model behind AI steps (DESIGN §3 "AI step"): OpenAI-compatible chat completions — the
//! sandbox, OpenAI, or any compatible server by base URL — with:
//!
//! - structured output checked against a JSON schema, and one repair attempt that shows the
//!   model its error before a clear failure naming the field;
//! - a result cache keyed by model + prompt + input hash, with a TTL, in the shared
//!   key-value store (a repeated request makes no call);
//! - per-provider request and token rate limits in the shared rate-limit store;
//! - timeouts, retries of 429/5xx/timeouts honouring `Retry-After`, then a fallback provider;
//! - token and cost accounting per provider and per flow, as metrics and on each answer.

use std::sync::Arc;
use std::time::Duration;

use raccordo_core::{Admission, BucketSpec, Clock, KeyValueStore, RateLimitStore};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub mod config;
pub mod offline;

pub use config::{AiConfig, ProviderConfig};

/// What answers: a chat-completions API, or the built-in offline classifier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI's API or any server that speaks it (`base_url`).
    #[default]
    OpenaiCompatible,
    /// [`offline::classify`]: sentiment and intent by lexicon, no call, no key, no cost.
    Offline,
}

/// One OpenAI-compatible endpoint and what it costs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Provider {
    /// A name for metrics and answers (`openai`, `sandbox`, …).
    pub name: String,
    pub kind: ProviderKind,
    /// The API root including `/v1` (`https://api.openai.com/v1`).
    pub base_url: String,
    pub api_key: String,
    pub model: String,
    pub timeout: Duration,
    /// Requests per minute the account allows.
    pub requests_per_minute: u32,
    /// Tokens per minute the account allows (prompt and completion).
    pub tokens_per_minute: u32,
    /// Price per million prompt and completion tokens, in the account's currency.
    pub input_price_per_mtok: f64,
    pub output_price_per_mtok: f64,
}

/// What to ask.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub system: Option<String>,
    /// The rendered user message.
    pub user: String,
    /// The text under analysis, when the prompt names one: what the offline provider reads
    /// (a model reads the whole prompt).
    pub subject: Option<String>,
    /// The answer must be JSON valid against this schema (`response_format` `json_schema`).
    pub schema: Option<Value>,
    /// Label of the flow asking, for the accounting.
    pub flow: String,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// The content: parsed JSON with a schema, else the text as a JSON string.
    pub content: Value,
    pub provider: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
    /// Served from the cache (no call, no tokens spent).
    pub cached: bool,
    /// Calls made (retries and the repair included).
    pub calls: u32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AiError {
    /// The model's answer does not fit the schema, even after the repair attempt.
    #[error("the model's answer does not match the schema at `{pointer}`: {reason}")]
    InvalidOutput { pointer: String, reason: String },
    /// Every provider failed for a reason that may pass (429, 5xx, timeouts).
    #[error("{provider}: {message}")]
    Unavailable {
        provider: String,
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// The request itself was refused (bad key, bad model, a schema the API rejects).
    #[error("{provider}: {message}")]
    Refused { provider: String, message: String },
    #[error("the output schema is not a valid JSON Schema: {0}")]
    BadSchema(String),
}

/// Calls per provider before giving up on it (and trying the fallback).
const ATTEMPTS: u32 = 4;
/// Longest `Retry-After` waited in place.
const MAX_WAIT: Duration = Duration::from_secs(20);

/// Where cached answers live in the key-value store.
pub const CACHE_PREFIX: &str = "ai:cache:";

/// A cached answer. The prompt itself is not kept, only fingerprints of its words, so that
/// a data subject's erasure finds the answers made from their data (an id or an e-mail
/// address in the prompt) without the cache keeping a copy of the prompt.
#[derive(Serialize, Deserialize)]
struct CacheEntry {
    content: Value,
    words: Vec<String>,
}

impl CacheEntry {
    fn new(prompt: &Prompt, content: &Value) -> Self {
        let text = [
            prompt.system.as_deref().unwrap_or(""),
            prompt.user.as_str(),
            prompt.subject.as_deref().unwrap_or(""),
        ]
        .join("\n");
        Self {
            content: content.clone(),
            words: raccordo_core::privacy::word_fingerprints(&text),
        }
    }
}

/// The AI cache as a holder of personal data: answers made from prompts holding the
/// subject's id are exported and deleted.
pub struct CacheHolder {
    pub cache: Arc<dyn KeyValueStore>,
    pub clock: Arc<dyn Clock>,
}

impl CacheHolder {
    async fn keys(
        &self,
        subject: &raccordo_core::privacy::Subject,
    ) -> Result<Vec<String>, raccordo_core::StoreError> {
        // The fingerprint as it sits in the entry's JSON: a quoted string.
        let needle = format!(
            "\"{}\"",
            raccordo_core::privacy::word_fingerprint(subject.id())
        );
        let mut keys = self
            .cache
            .keys_holding(CACHE_PREFIX, needle.as_bytes(), self.clock.now_ms())
            .await?;
        // Answers that quote the id themselves.
        keys.extend(
            self.cache
                .keys_holding(
                    CACHE_PREFIX,
                    subject.json_literal().as_bytes(),
                    self.clock.now_ms(),
                )
                .await?,
        );
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

#[async_trait::async_trait]
impl raccordo_core::privacy::PersonalData for CacheHolder {
    fn name(&self) -> &'static str {
        "ai_cache"
    }

    async fn export(
        &self,
        subject: &raccordo_core::privacy::Subject,
    ) -> Result<Option<Value>, raccordo_core::StoreError> {
        let mut answers = Vec::new();
        for key in self.keys(subject).await? {
            if let Some(entry) = self.cache.get(&key, self.clock.now_ms()).await?
                && let Ok(CacheEntry { content, .. }) = serde_json::from_slice(&entry.value)
            {
                answers.push(content);
            }
        }
        Ok((!answers.is_empty()).then_some(Value::Array(answers)))
    }

    async fn erase(
        &self,
        subject: &raccordo_core::privacy::Subject,
        _: &raccordo_core::privacy::Pseudonymiser,
    ) -> Result<raccordo_core::privacy::Erased, raccordo_core::StoreError> {
        let keys = self.keys(subject).await?;
        let erased = self.cache.erase_keys(&keys, self.clock.now_ms()).await?;
        Ok(vec![("ai_cache", erased)])
    }
}

pub struct AiClient {
    http: reqwest::Client,
    providers: Vec<Provider>,
    cache: Arc<dyn KeyValueStore>,
    cache_ttl: Duration,
    limits: Arc<dyn RateLimitStore>,
    clock: Arc<dyn Clock>,
}

enum Failure {
    Retry(String, Option<u64>),
    Refused(String),
}

impl AiClient {
    /// `providers` in order of preference: the first, then the fallbacks.
    pub fn new(
        providers: Vec<Provider>,
        cache: Arc<dyn KeyValueStore>,
        cache_ttl: Duration,
        limits: Arc<dyn RateLimitStore>,
        clock: Arc<dyn Clock>,
        outbound: &raccordo_outbound::Outbound,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: raccordo_outbound::client_builder(outbound, raccordo_outbound::Redirects::Follow)
                .build()?,
            providers,
            cache,
            cache_ttl,
            limits,
            clock,
        })
    }

    /// The cache key: model, prompt, schema and input, hashed.
    fn cache_key(provider: &Provider, prompt: &Prompt) -> String {
        let mut h = Sha256::new();
        for part in [
            provider.base_url.as_str(),
            provider.model.as_str(),
            prompt.system.as_deref().unwrap_or(""),
            prompt.user.as_str(),
            prompt.subject.as_deref().unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(
            prompt
                .schema
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default(),
        );
        let digest = h.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{CACHE_PREFIX}{hex}")
    }

    pub async fn complete(&self, prompt: &Prompt) -> Result<Answer, AiError> {
        let validator = match &prompt.schema {
            Some(s) => {
                Some(jsonschema::validator_for(s).map_err(|e| AiError::BadSchema(e.to_string()))?)
            }
            None => None,
        };
        let mut last = None;
        for provider in &self.providers {
            let key = Self::cache_key(provider, prompt);
            if let Ok(Some(hit)) = self.cache.get(&key, self.clock.now_ms()).await
                && let Ok(CacheEntry { content, .. }) = serde_json::from_slice(&hit.value)
            {
                metrics::counter!("raccordo_ai_cache_hits_total", "provider" => provider.name.clone()).increment(1);
                return Ok(Answer {
                    content,
                    provider: provider.name.clone(),
                    model: provider.model.clone(),
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    cost: 0.0,
                    cached: true,
                    calls: 0,
                });
            }
            match self.ask(provider, prompt, validator.as_ref()).await {
                Ok(answer) => {
                    let bytes = serde_json::to_vec(&CacheEntry::new(prompt, &answer.content))
                        .unwrap_or_default();
                    let ttl = Some(self.cache_ttl.as_millis() as i64);
                    let _ = self.cache.put(&key, bytes, ttl, self.clock.now_ms()).await;
                    return Ok(answer);
                }
                // A provider that cannot serve now: the next one is tried.
                Err(e @ AiError::Unavailable { .. }) => {
                    tracing::warn!(provider = %provider.name, error = %e, "AI provider unavailable; trying the fallback");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(AiError::Refused {
            provider: String::new(),
            message: "no AI provider is configured".into(),
        }))
    }

    /// One provider: the call (retried), the schema check, one repair.
    async fn ask(
        &self,
        provider: &Provider,
        prompt: &Prompt,
        validator: Option<&jsonschema::Validator>,
    ) -> Result<Answer, AiError> {
        if provider.kind == ProviderKind::Offline {
            return Self::offline(provider, prompt, validator);
        }
        let mut messages = Vec::new();
        if let Some(system) = &prompt.system {
            messages.push(json!({ "role": "system", "content": system }));
        }
        messages.push(json!({ "role": "user", "content": prompt.user }));
        let mut answer = Answer {
            content: Value::Null,
            provider: provider.name.clone(),
            model: provider.model.clone(),
            prompt_tokens: 0,
            completion_tokens: 0,
            cost: 0.0,
            cached: false,
            calls: 0,
        };
        for attempt in 0..2 {
            let text = self.call(provider, prompt, &messages, &mut answer).await?;
            let Some(validator) = validator else {
                answer.content = Value::String(text);
                return Ok(answer);
            };
            let problem = match serde_json::from_str::<Value>(&text) {
                Err(e) => Some((String::new(), format!("not JSON ({e})"))),
                Ok(v) => {
                    let first = validator
                        .iter_errors(&v)
                        .next()
                        .map(|e| (e.instance_path().to_string(), e.to_string()));
                    if first.is_none() {
                        answer.content = v;
                        return Ok(answer);
                    }
                    first
                }
            };
            let (pointer, reason) = problem.unwrap_or_default();
            if attempt == 1 {
                return Err(AiError::InvalidOutput { pointer, reason });
            }
            // The repair: the model sees its answer and what is wrong with it.
            metrics::counter!("raccordo_ai_repairs_total", "provider" => provider.name.clone())
                .increment(1);
            messages.push(json!({ "role": "assistant", "content": text }));
            messages.push(json!({ "role": "user", "content": format!(
                "That answer does not match the required JSON schema at `{pointer}`: {reason}. Answer again with only the JSON document."
            ) }));
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// The offline classifier's answer, checked like a model's (it cannot repair one).
    fn offline(
        provider: &Provider,
        prompt: &Prompt,
        validator: Option<&jsonschema::Validator>,
    ) -> Result<Answer, AiError> {
        let text = prompt.subject.as_deref().unwrap_or(&prompt.user);
        let content = serde_json::to_value(offline::classify(text)).unwrap_or_default();
        if let Some(e) = validator.and_then(|v| v.iter_errors(&content).next()) {
            return Err(AiError::InvalidOutput {
                pointer: e.instance_path().to_string(),
                reason: format!(
                    "{e} (the offline provider answers sentiment, intent, language and confidence)"
                ),
            });
        }
        metrics::counter!("raccordo_ai_calls_total", "provider" => provider.name.clone(), "flow" => prompt.flow.clone())
            .increment(1);
        Ok(Answer {
            content,
            provider: provider.name.clone(),
            model: "offline-lexicon".into(),
            prompt_tokens: 0,
            completion_tokens: 0,
            cost: 0.0,
            cached: false,
            calls: 1,
        })
    }

    /// One chat completion, retried; adds its tokens and cost to `answer`.
    async fn call(
        &self,
        provider: &Provider,
        prompt: &Prompt,
        messages: &[Value],
        answer: &mut Answer,
    ) -> Result<String, AiError> {
        let mut body = json!({ "model": provider.model, "messages": messages });
        if let Some(schema) = &prompt.schema {
            body["response_format"] = json!({ "type": "json_schema", "json_schema": { "name": "answer", "strict": true, "schema": schema } });
        }
        let estimate =
            (prompt.user.len() + prompt.system.as_deref().map_or(0, str::len)) as f64 / 4.0;
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            self.take(provider, estimate).await?;
            answer.calls += 1;
            let outcome =
                raccordo_core::calls::attempt_scope(attempt + 1, self.send(provider, &body)).await;
            match outcome {
                Ok(v) => {
                    let usage = &v["usage"];
                    let (p, c) = (
                        usage["prompt_tokens"].as_u64().unwrap_or(0),
                        usage["completion_tokens"].as_u64().unwrap_or(0),
                    );
                    let cost = (p as f64 * provider.input_price_per_mtok
                        + c as f64 * provider.output_price_per_mtok)
                        / 1_000_000.0;
                    answer.prompt_tokens += p;
                    answer.completion_tokens += c;
                    answer.cost += cost;
                    let labels = [
                        ("provider", provider.name.clone()),
                        ("flow", prompt.flow.clone()),
                    ];
                    metrics::counter!("raccordo_ai_tokens_total", &labels).increment(p + c);
                    metrics::counter!("raccordo_ai_calls_total", &labels).increment(1);
                    metrics::gauge!("raccordo_ai_cost_total", &labels).increment(cost);
                    return Ok(v["choices"][0]["message"]["content"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string());
                }
                Err(Failure::Refused(message)) => {
                    return Err(AiError::Refused {
                        provider: provider.name.clone(),
                        message,
                    });
                }
                Err(Failure::Retry(message, retry_after_ms)) => {
                    last = message;
                    let wait = retry_after_ms
                        .map(Duration::from_millis)
                        .unwrap_or(Duration::from_millis(200 << attempt));
                    if wait > MAX_WAIT || attempt + 1 == ATTEMPTS {
                        return Err(AiError::Unavailable {
                            provider: provider.name.clone(),
                            message: last,
                            retry_after_ms,
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Err(AiError::Unavailable {
            provider: provider.name.clone(),
            message: last,
            retry_after_ms: None,
        })
    }

    async fn send(&self, provider: &Provider, body: &Value) -> Result<Value, Failure> {
        let started = std::time::Instant::now();
        let sent = self
            .http
            .post(format!(
                "{}/chat/completions",
                provider.base_url.trim_end_matches('/')
            ))
            .bearer_auth(&provider.api_key)
            .timeout(provider.timeout)
            .json(body)
            .send()
            .await;
        let (status, timed_out) = match &sent {
            Ok(r) => (Some(r.status().as_u16()), false),
            Err(e) => (None, e.is_timeout()),
        };
        raccordo_core::calls::record(
            &format!("ai:{}", provider.name),
            "POST /chat/completions".into(),
            status,
            started.elapsed(),
            raccordo_core::calls::reason(status, timed_out),
        );
        let response = sent.map_err(|e| {
            Failure::Retry(
                if e.is_timeout() {
                    "timed out".into()
                } else {
                    "could not connect".into()
                },
                None,
            )
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| (s * 1000.0) as u64);
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let message = format!(
            "HTTP {}: {}",
            status.as_u16(),
            value["error"]["message"].as_str().unwrap_or("no message")
        );
        if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408 {
            Err(Failure::Retry(message, retry_after))
        } else {
            Err(Failure::Refused(message))
        }
    }

    /// Waits for the provider's request and token budgets.
    async fn take(&self, provider: &Provider, tokens: f64) -> Result<(), AiError> {
        let requests = BucketSpec::per_interval(provider.requests_per_minute.max(1), 60_000);
        let token_spec = BucketSpec::per_interval(provider.tokens_per_minute.max(1), 60_000);
        for (bucket, spec, cost) in [
            (format!("ai:{}:requests", provider.name), requests, 1.0),
            (
                format!("ai:{}:tokens", provider.name),
                token_spec,
                tokens.min(token_spec.capacity),
            ),
        ] {
            loop {
                let admission = self
                    .limits
                    .take(&bucket, spec, cost, self.clock.now_ms())
                    .await
                    .map_err(|e| AiError::Unavailable {
                        provider: provider.name.clone(),
                        message: format!("rate-limit store: {e}"),
                        retry_after_ms: Some(1_000),
                    })?;
                match admission {
                    Admission::Allowed { .. } => break,
                    Admission::Limited { retry_after_ms } => {
                        let wait = Duration::from_millis(retry_after_ms.max(1) as u64);
                        if wait > MAX_WAIT {
                            return Err(AiError::Unavailable {
                                provider: provider.name.clone(),
                                message: "the provider's rate limit is used up".into(),
                                retry_after_ms: Some(retry_after_ms as u64),
                            });
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Ok(())
    }
}
