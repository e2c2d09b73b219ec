//! An OpenAI-compatible chat-completions API: `GET /v1/models`, `POST /v1/chat/completions`.
//!
//! Answers are deterministic functions of the request, so tests and demos repeat: the same
//! messages give the same content. With `response_format` `json_schema` the content is a JSON
//! document built from the schema (required properties, enums, bounds, no extra keys), with
//! values derived from the input — a support ticket full of complaints gets the negative end
//! of a sentiment enum. Requests beyond the per-minute limit get 429 with `Retry-After`.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::knobs::{Controls, FaultStyle, json_response, now_ms};

pub const MODELS: [&str; 2] = ["raccordo-sandbox-1", "gpt-4o-mini"];
const JSON: &str = "application/json";

#[derive(Debug, Clone)]
pub struct AiOptions {
    pub api_key: String,
    /// Requests per minute before 429.
    pub requests_per_minute: u32,
}

struct Ai {
    options: AiOptions,
    recent: Mutex<crate::SlidingLimit>,
}

pub struct AiFaults;

impl FaultStyle for AiFaults {
    fn throttled(&self) -> Response {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit reached for requests. Please try again in 1s.",
            "requests",
            "rate_limit_exceeded",
        );
        r.headers_mut()
            .insert("retry-after", "1".parse().expect("static"));
        r
    }
    fn server_error(&self) -> Response {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            "internal_error",
        )
    }
    fn unavailable(&self) -> Response {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            "service_unavailable",
        )
    }
}

pub fn router(options: AiOptions, controls: Arc<Controls>) -> Router {
    let ai = Arc::new(Ai {
        options,
        recent: Mutex::new(crate::SlidingLimit::default()),
    });
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(completions))
        .with_state(ai)
        .merge(crate::knobs::admin_routes(controls.clone()))
        .layer(axum::middleware::from_fn_with_state(
            controls,
            crate::knobs::inject,
        ))
}

fn error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    json_response(
        status,
        JSON,
        &json!({ "error": { "message": message, "type": kind, "param": null, "code": code } }),
    )
}

fn invalid(message: &str, param: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        JSON,
        &json!({ "error": { "message": message, "type": "invalid_request_error", "param": param, "code": null } }),
    )
}

impl Ai {
    fn authorise(&self, headers: &HeaderMap) -> Result<(), Response> {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(key) if key == self.options.api_key => Ok(()),
            Some(key) => Err(error(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "Incorrect API key provided: {}. You can find your API key in the sandbox's start-up banner.",
                    mask(key)
                ),
                "invalid_request_error",
                "invalid_api_key",
            )),
            None => Err(error(
                StatusCode::UNAUTHORIZED,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                "missing_api_key",
            )),
        }
    }

    /// Sliding one-minute limit; returns the seconds to wait when over it.
    fn admit(&self, now: i64) -> Result<(), u64> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take(now, 60_000, self.options.requests_per_minute)
            .map(|_| ())
            .map_err(|wait_ms| (wait_ms as u64).div_ceil(1000))
    }
}

fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

async fn models(State(ai): State<Arc<Ai>>, headers: HeaderMap) -> Response {
    attempt!(ai.authorise(&headers));
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({ "id": id, "object": "model", "created": 1_767_225_600, "owned_by": "raccordo-sandbox" }))
        .collect();
    json_response(
        StatusCode::OK,
        JSON,
        &json!({ "object": "list", "data": data }),
    )
}

async fn completions(
    State(ai): State<Arc<Ai>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    attempt!(ai.authorise(&headers));
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return invalid(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)",
                "body",
            );
        }
    };
    let answer = match complete(&request) {
        Ok(a) => a,
        Err((message, param)) => return invalid(&message, &param),
    };
    if let Err(wait_s) = ai.admit(now_ms()) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "Rate limit reached for requests per minute (limit {}). Please try again in {wait_s}s.",
                ai.options.requests_per_minute
            ),
            "requests",
            "rate_limit_exceeded",
        );
        let h = r.headers_mut();
        h.insert("retry-after", wait_s.to_string().parse().expect("digits"));
        h.insert(
            "x-ratelimit-limit-requests",
            ai.options.requests_per_minute.into(),
        );
        h.insert("x-ratelimit-remaining-requests", 0.into());
        return r;
    }
    json_response(StatusCode::OK, JSON, &answer).into_response()
}

/// The whole completion for a request, or `(message, param)` for a 400.
pub fn complete(request: &Value) -> Result<Value, (String, String)> {
    let model = request["model"].as_str().ok_or_else(|| {
        (
            "you must provide a model parameter".to_string(),
            "model".to_string(),
        )
    })?;
    if !MODELS.contains(&model) {
        return Err((
            format!("The model `{model}` does not exist or you do not have access to it."),
            "model".into(),
        ));
    }
    let messages = request["messages"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            (
                "messages must be a non-empty array".to_string(),
                "messages".to_string(),
            )
        })?;
    let mut text = String::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
            return Err((
                format!("Invalid value for 'role' at messages[{i}]."),
                format!("messages.[{i}].role"),
            ));
        }
        match &m["content"] {
            Value::String(s) => text.push_str(s),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .for_each(|t| text.push_str(t)),
            Value::Null if role == "assistant" => {}
            _ => {
                return Err((
                    format!(
                        "Invalid content at messages[{i}]: expected a string or content parts."
                    ),
                    format!("messages.[{i}].content"),
                ));
            }
        }
        text.push('\n');
    }
    let user_text: String = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    let content = match request["response_format"]["type"].as_str() {
        Some("json_schema") => {
            let schema = &request["response_format"]["json_schema"]["schema"];
            if !schema.is_object() {
                return Err((
                    "response_format.json_schema.schema must be a JSON Schema object".into(),
                    "response_format".into(),
                ));
            }
            generate(schema, schema, &user_text, &digest, 0, "").to_string()
        }
        Some("json_object") => {
            json!({ "summary": summary(&user_text), "sentiment": sentiment(&user_text) })
                .to_string()
        }
        Some("text") | None => format!(
            "{} (sentiment: {}).",
            summary(&user_text),
            sentiment(&user_text)
        ),
        Some(other) => {
            return Err((
                format!(
                    "Invalid value: '{other}'. Supported values are: 'json_object', 'json_schema', and 'text'."
                ),
                "response_format.type".into(),
            ));
        }
    };
    let prompt_tokens = messages.len() as u64 * 4 + tokens(&text);
    let completion_tokens = tokens(&content);
    let id: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    Ok(json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": now_ms() / 1000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content, "refusal": null },
            "finish_reason": "stop",
            "logprobs": null
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        },
        "system_fingerprint": "fp_raccordo_sandbox"
    }))
}

/// About four characters per token, like the usual English/Italian BPE rule of thumb.
fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

const NEGATIVE: [&str; 14] = [
    "non funziona",
    "problema",
    "errore",
    "rimborso",
    "lento",
    "pessim",
    "bloccat",
    "reclamo",
    "disdett",
    "guasto",
    "ritardo",
    "broken",
    "refund",
    "angry",
];
const POSITIVE: [&str; 8] = [
    "grazie",
    "ottimo",
    "perfett",
    "soddisfatt",
    "eccellente",
    "great",
    "thanks",
    "love",
];

fn sentiment(text: &str) -> &'static str {
    let lower = text.to_lowercase();
    let neg = NEGATIVE.iter().filter(|w| lower.contains(*w)).count();
    let pos = POSITIVE.iter().filter(|w| lower.contains(*w)).count();
    match neg.cmp(&pos) {
        std::cmp::Ordering::Greater => "negative",
        std::cmp::Ordering::Less => "positive",
        std::cmp::Ordering::Equal => "neutral",
    }
}

fn summary(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().take(12).collect();
    if words.is_empty() {
        "Nessun testo da riassumere".into()
    } else {
        format!("Sintesi: {}", words.join(" "))
    }
}

/// Picks the enum value that best matches the input's sentiment, else one by hash.
fn pick_enum<'a>(options: &'a [Value], text: &str, digest: &[u8; 32], salt: usize) -> &'a Value {
    let mood = sentiment(text);
    let wanted: &[&str] = match mood {
        "negative" => &[
            "negative", "negativo", "high", "alta", "urgent", "urgente", "angry",
        ],
        "positive" => &["positive", "positivo", "low", "bassa", "happy"],
        _ => &["neutral", "neutro", "medium", "media", "normal", "normale"],
    };
    options
        .iter()
        .find(|o| {
            o.as_str()
                .is_some_and(|s| wanted.contains(&s.to_lowercase().as_str()))
        })
        .unwrap_or(&options[(digest[salt % 32] as usize) % options.len()])
}

/// A value valid against `schema` (the subset structured outputs allow: objects, arrays,
/// strings, numbers, integers, booleans, null, enum, const, anyOf, $ref to $defs).
fn generate(
    schema: &Value,
    root: &Value,
    text: &str,
    digest: &[u8; 32],
    depth: usize,
    name: &str,
) -> Value {
    if depth > 12 {
        return Value::Null;
    }
    if let Some(reference) = schema["$ref"].as_str() {
        let target = reference
            .strip_prefix("#/")
            .map(|p| p.split('/').fold(root, |v, k| &v[k]))
            .unwrap_or(&Value::Null);
        return generate(target, root, text, digest, depth + 1, name);
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(options) = schema["enum"].as_array().filter(|o| !o.is_empty()) {
        return pick_enum(options, text, digest, depth + name.len()).clone();
    }
    if let Some(first) = schema["anyOf"].as_array().and_then(|a| a.first()) {
        return generate(first, root, text, digest, depth + 1, name);
    }
    let kind = match &schema["type"] {
        Value::String(t) => t.as_str(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema["properties"].is_object() => "object",
        _ => "string",
    };
    let seed = digest[(depth + name.len()) % 32] as i64;
    match kind {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = schema["properties"].as_object() {
                for (key, sub) in props {
                    out.insert(
                        key.clone(),
                        generate(sub, root, text, digest, depth + 1, key),
                    );
                }
            }
            Value::Object(out)
        }
        "array" => {
            let min = schema["minItems"].as_u64().unwrap_or(1);
            let max = schema["maxItems"].as_u64().unwrap_or(min.max(1));
            let n = min.max(1).min(max);
            Value::Array(
                (0..n)
                    .map(|i| {
                        generate(
                            &schema["items"],
                            root,
                            text,
                            digest,
                            depth + 1 + i as usize,
                            name,
                        )
                    })
                    .collect(),
            )
        }
        "integer" | "number" => {
            let min = schema["minimum"].as_f64().unwrap_or(0.0);
            let max = schema["maximum"].as_f64().unwrap_or(min + 100.0).max(min);
            let v = min + (seed as f64 / 255.0) * (max - min);
            if kind == "integer" {
                json!(v.round().clamp(min.ceil(), max.floor()) as i64)
            } else {
                json!((v * 100.0).round() / 100.0)
            }
        }
        "boolean" => json!(sentiment(text) == "negative" || seed % 2 == 0),
        "null" => Value::Null,
        _ => {
            let lower = name.to_lowercase();
            let s = if lower.contains("sentiment") {
                sentiment(text).to_string()
            } else if lower.contains("summary")
                || lower.contains("sintesi")
                || lower.contains("riassunto")
            {
                summary(text)
            } else if lower.contains("email") {
                "info@example.it".to_string()
            } else {
                format!("{name} {seed}").trim().to_string()
            };
            let max = schema["maxLength"]
                .as_u64()
                .map_or(usize::MAX, |m| m as usize);
            let min = schema["minLength"].as_u64().unwrap_or(0) as usize;
            let mut s: String = s.chars().take(max).collect();
            while s.chars().count() < min {
                s.push('x');
            }
            Value::String(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(text: &str, format: Value) -> Value {
        let request = json!({
            "model": "raccordo-sandbox-1",
            "messages": [{"role": "system", "content": "Classifica il ticket."}, {"role": "user", "content": text}],
            "response_format": format
        });
        complete(&request).unwrap()
    }

    #[test]
    fn answers_are_deterministic_and_follow_the_schema() {
        let schema = json!({"type": "json_schema", "json_schema": {"name": "ticket", "strict": true, "schema": {
        "type": "object", "additionalProperties": false,
        "required": ["sentiment", "priority", "summary", "score"],
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
            "priority": {"type": "integer", "minimum": 1, "maximum": 5},
            "summary": {"type": "string", "maxLength": 40},
            "score": {"type": "number", "minimum": 0, "maximum": 1}
        }}}});
        let a = ask(
            "Il prodotto non funziona, voglio un rimborso",
            schema.clone(),
        );
        let b = ask(
            "Il prodotto non funziona, voglio un rimborso",
            schema.clone(),
        );
        assert_eq!(a["choices"], b["choices"], "same input, same answer");
        let content: Value =
            serde_json::from_str(a["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert_eq!(content["sentiment"], "negative");
        let p = content["priority"].as_i64().unwrap();
        assert!((1..=5).contains(&p), "{p}");
        assert!(content["summary"].as_str().unwrap().chars().count() <= 40);
        assert_eq!(content.as_object().unwrap().len(), 4, "no extra keys");
        let happy = ask("Grazie, servizio ottimo!", schema);
        let content: Value =
            serde_json::from_str(happy["choices"][0]["message"]["content"].as_str().unwrap())
                .unwrap();
        assert_eq!(content["sentiment"], "positive");
        let usage = &a["usage"];
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["prompt_tokens"].as_u64().unwrap()
                    + usage["completion_tokens"].as_u64().unwrap()
            )
        );
    }

    #[test]
    fn bad_requests_name_the_parameter() {
        let e = complete(&json!({"messages": []})).unwrap_err();
        assert_eq!(e.1, "model");
        let e = complete(&json!({"model": "raccordo-sandbox-1", "messages": []})).unwrap_err();
        assert_eq!(e.1, "messages");
        let e = complete(&json!({"model": "raccordo-sandbox-1", "messages": [{"role": "robot", "content": "x"}]})).unwrap_err();
        assert_eq!(e.1, "messages.[0].role");
    }
}
