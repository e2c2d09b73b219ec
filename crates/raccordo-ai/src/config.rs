//! `[ai]`: the model providers AI steps use, in order of preference.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Provider, ProviderKind};

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AiConfig {
    /// The first is asked; the next ones are the fallbacks when it cannot answer (429, 5xx,
    /// timeouts after its retries).
    pub providers: Vec<ProviderConfig>,
    /// How long an answer stays in the cache (same model, prompt and input: no call).
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub cache_ttl: Duration,
}

impl Default for AiConfig {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            cache_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// One model provider (`[[ai.providers]]`).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Names the provider in metrics and run records.
    pub name: String,
    /// `openai_compatible` (default) or `offline` (the built-in classifier: no URL, no key).
    #[serde(default)]
    pub kind: ProviderKind,
    /// The API root including `/v1`, e.g. `https://api.openai.com/v1`.
    /// Required for `openai_compatible`.
    #[serde(default)]
    pub base_url: String,
    /// Sent as the bearer token; keep it out of the file with `${ENV}`. Not needed for
    /// `offline`.
    #[serde(default, serialize_with = "raccordo_core::redacted")]
    pub api_key: String,
    /// The model name, e.g. `gpt-4o-mini` (required for `openai_compatible`).
    #[serde(default)]
    pub model: String,
    /// How long one call may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub timeout: Duration,
    /// Requests per minute the account allows (the hub stays under it).
    #[serde(default = "default_rpm")]
    pub requests_per_minute: u32,
    /// Tokens per minute the account allows, prompt and completion.
    #[serde(default = "default_tpm")]
    pub tokens_per_minute: u32,
    /// Price per million prompt tokens, for the cost accounting.
    #[serde(default)]
    pub input_price_per_mtok: f64,
    /// Price per million completion tokens.
    #[serde(default)]
    pub output_price_per_mtok: f64,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_rpm() -> u32 {
    500
}
fn default_tpm() -> u32 {
    200_000
}

impl AiConfig {
    /// Problems as `(key, message)`, keys relative to `[ai]`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, p) in self.providers.iter().enumerate() {
            let key = |field: &str| format!("providers[{i}].{field}");
            if p.name.trim().is_empty() {
                out.push((key("name"), "give the provider a name".into()));
            }
            if self.providers[..i].iter().any(|q| q.name == p.name) {
                out.push((key("name"), "another provider has this name".into()));
            }
            if p.kind == ProviderKind::OpenaiCompatible {
                let url = p.base_url.to_ascii_lowercase();
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    out.push((key("base_url"), "must be an http(s) URL".into()));
                }
                if p.model.trim().is_empty() {
                    out.push((key("model"), "name the model".into()));
                }
            }
            if p.timeout.is_zero() {
                out.push((key("timeout"), "must be more than zero".into()));
            }
            if p.input_price_per_mtok < 0.0 || p.output_price_per_mtok < 0.0 {
                out.push((
                    key("input_price_per_mtok"),
                    "prices cannot be negative".into(),
                ));
            }
        }
        out
    }

    pub fn providers(&self) -> Vec<Provider> {
        self.providers
            .iter()
            .map(|p| Provider {
                name: p.name.clone(),
                kind: p.kind,
                base_url: p.base_url.clone(),
                api_key: p.api_key.clone(),
                model: if p.kind == ProviderKind::Offline {
                    "offline-lexicon".into()
                } else {
                    p.model.clone()
                },
                timeout: p.timeout,
                requests_per_minute: p.requests_per_minute.max(1),
                tokens_per_minute: p.tokens_per_minute.max(1),
                input_price_per_mtok: p.input_price_per_mtok,
                output_price_per_mtok: p.output_price_per_mtok,
            })
            .collect()
    }
}
