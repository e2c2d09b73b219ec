//! `http`: any REST call, with API-key, bearer, basic or OAuth2 client-credentials auth. The
//! credentials stay in the config: they are never part of the recorded input.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    BuildContext, BuildError, Step, StepEnv, StepError, StepOutput, eval_field, read_input,
    render_field, template, template_value,
};
use crate::template::{Template, TemplateValue};

/// How the call authenticates.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HttpAuth {
    Bearer {
        token: String,
    },
    /// A key in a header (`X-API-Key` by default).
    ApiKey {
        #[serde(default = "api_key_header")]
        header: String,
        key: String,
    },
    Basic {
        username: String,
        password: String,
    },
    /// OAuth 2.0 client credentials: a token from `token_url`, cached until it expires.
    Oauth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        scope: Option<String>,
    },
}

fn api_key_header() -> String {
    "X-API-Key".into()
}

fn get() -> String {
    "GET".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A JSON body (templates in its strings).
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    auth: Option<HttpAuth>,
}

pub struct HttpStep {
    method: reqwest::Method,
    url: Template,
    headers: Vec<(String, Template)>,
    body: Option<TemplateValue>,
    auth: Option<HttpAuth>,
}

#[derive(Serialize, Deserialize)]
struct HttpInput {
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
}

impl HttpStep {
    pub fn build(s: HttpSettings, cx: &BuildContext<'_>) -> Result<Self, BuildError> {
        let scope = cx.scope(false);
        let method = s
            .method
            .to_ascii_uppercase()
            .parse::<reqwest::Method>()
            .ok()
            .filter(|m| ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&m.as_str()))
            .ok_or_else(|| {
                (
                    "method".to_string(),
                    "one of GET, POST, PUT, PATCH, DELETE".to_string(),
                )
            })?;
        let lower = s.url.trim_start().to_ascii_lowercase();
        if !(lower.starts_with("https://")
            || lower.starts_with("http://")
            || lower.starts_with("{{"))
        {
            return Err(("url".into(), "must be an http(s) URL".into()));
        }
        // A URL without templates is known now: the outbound policy judges it at build time
        // (`raccordo check` reports it); a templated one is judged when it is rendered.
        if !s.url.contains("{{") {
            cx.outbound
                .check_url_text(&s.url)
                .map_err(|e| ("url".to_string(), e.to_string()))?;
        }
        if let Some(HttpAuth::Oauth2ClientCredentials { token_url, .. }) = &s.auth {
            cx.outbound
                .check_url_text(token_url)
                .map_err(|e| ("auth.token_url".to_string(), e.to_string()))?;
        }
        Ok(Self {
            method,
            url: template("url", &s.url, &scope)?,
            headers: s
                .headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), template(&format!("headers.{k}"), v, &scope)?)))
                .collect::<Result<_, BuildError>>()?,
            body: s
                .body
                .as_ref()
                .map(|b| template_value("body", b, &scope))
                .transpose()?,
            auth: s.auth,
        })
    }

    async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        env: &StepEnv<'_>,
    ) -> Result<reqwest::RequestBuilder, StepError> {
        Ok(match &self.auth {
            None => request,
            Some(HttpAuth::Bearer { token }) => request.bearer_auth(token),
            Some(HttpAuth::ApiKey { header, key }) => request.header(header, key),
            Some(HttpAuth::Basic { username, password }) => {
                request.basic_auth(username, Some(password))
            }
            Some(HttpAuth::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            }) => {
                let token = env
                    .services
                    .client_credentials_token(token_url, client_id, client_secret, scope.as_deref())
                    .await?;
                request.bearer_auth(token)
            }
        })
    }
}

#[async_trait]
impl Step for HttpStep {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn input(&self, context: &minijinja::Value) -> Result<Value, StepError> {
        let headers: BTreeMap<String, String> = self
            .headers
            .iter()
            .map(|(k, t)| {
                Ok((
                    k.clone(),
                    render_field(&format!("headers.{k}"), t, context)?,
                ))
            })
            .collect::<Result<_, StepError>>()?;
        Ok(json!(HttpInput {
            method: self.method.to_string(),
            url: render_field("url", &self.url, context)?,
            headers,
            body: self
                .body
                .as_ref()
                .map(|b| eval_field("body", b, context))
                .transpose()?,
        }))
    }

    async fn run(&self, input: &Value, env: &StepEnv<'_>) -> Result<StepOutput, StepError> {
        let input: HttpInput = read_input(input)?;
        let method = input
            .method
            .parse::<reqwest::Method>()
            .map_err(|_| StepError::at("method", "not an HTTP method"))?;
        let url = reqwest::Url::parse(&input.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| StepError::at("url", "not an http(s) URL"))?;
        env.services.check_url(&url, "url")?;
        let mut request = env
            .services
            .http
            .request(method.clone(), url.clone())
            .header("Idempotency-Key", env.idempotency_key());
        for (k, v) in &input.headers {
            request = request.header(k, v);
        }
        if let Some(body) = &input.body {
            request = request.json(body);
        }
        let request = self.authorize(request, env).await?;
        let service = format!("http:{}", url.host_str().unwrap_or_default());
        let endpoint = raccordo_core::calls::endpoint(method.as_str(), url.path());
        let started = std::time::Instant::now();
        let sent = request.send().await;
        let (status, timed_out) = match &sent {
            Ok(r) => (Some(r.status().as_u16()), false),
            Err(e) => (None, e.is_timeout()),
        };
        raccordo_core::calls::record(
            &service,
            endpoint,
            status,
            started.elapsed(),
            raccordo_core::calls::reason(status, timed_out),
        );
        let response = sent.map_err(|e| {
            StepError::retryable(if e.is_timeout() {
                "the call timed out"
            } else {
                "could not connect"
            })
        })?;
        let status = response.status();
        let retry_after_ms = crate::services::retry_after_ms(response.headers());
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(StepOutput::of(
                json!({ "status": status.as_u16(), "body": body }),
            ));
        }
        let message = format!("HTTP {} from the remote", status.as_u16());
        if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
            Err(StepError::Retryable {
                message,
                retry_after_ms,
            })
        } else {
            Err(StepError::permanent(message))
        }
    }
}
