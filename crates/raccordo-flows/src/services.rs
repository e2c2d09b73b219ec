//! What steps use from the hub: the AI client, the CRM clients, one HTTP client, the notify
//! channels' context and the clock.

use std::collections::HashMap;
use std::sync::Arc;

use raccordo_ai::AiClient;
use raccordo_core::{Clock, KeyValueStore};
use raccordo_notify::ChannelContext;
use tokio::sync::Mutex;

use crate::error::StepError;
use crate::gateway::CrmGateway;

/// Token URL, client id, and a hash of the secret and scope.
type TokenKey = (String, String, u64);

pub struct Services {
    /// `None` when `[ai]` configures no provider: an `ai` step then fails with that reason.
    pub ai: Option<Arc<AiClient>>,
    pub crm: Arc<dyn CrmGateway>,
    pub http: reqwest::Client,
    pub channels: ChannelContext,
    /// Which addresses steps may call; URLs made at run time are checked against it
    /// before the call (names are checked again after resolution by the client).
    pub outbound: raccordo_outbound::Outbound,
    pub clock: Arc<dyn Clock>,
    /// Marks the records flows wrote (see [`echo_key`]).
    pub kv: Arc<dyn KeyValueStore>,
    /// OAuth2 client-credentials tokens by token URL, client, secret (hashed) and scope, with
    /// their expiry: a step with other credentials never borrows another's token.
    tokens: Mutex<HashMap<TokenKey, (String, i64)>>,
}

impl Services {
    pub fn new(
        ai: Option<Arc<AiClient>>,
        crm: Arc<dyn CrmGateway>,
        outbound: &raccordo_outbound::Outbound,
        clock: Arc<dyn Clock>,
        kv: Arc<dyn KeyValueStore>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            ai,
            crm,
            kv,
            channels: ChannelContext::new(outbound, clock.clone())?,
            http: raccordo_outbound::client_builder(outbound, raccordo_outbound::Redirects::Follow)
                .timeout(std::time::Duration::from_secs(45))
                .build()?,
            outbound: outbound.clone(),
            clock,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Whether a URL made at run time may be called.
    pub fn check_url(&self, url: &reqwest::Url, field: &str) -> Result<(), StepError> {
        self.outbound.check_url(url).map_err(|refusal| {
            metrics::counter!("raccordo_outbound_refused_total", "reason" => refusal.label())
                .increment(1);
            StepError::at(field, refusal.to_string())
        })
    }

    /// A client-credentials access token, fetched once and reused until a minute before
    /// it expires.
    pub async fn client_credentials_token(
        &self,
        token_url: &str,
        client_id: &str,
        client_secret: &str,
        scope: Option<&str>,
    ) -> Result<String, StepError> {
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (client_secret, scope).hash(&mut h);
            (token_url.to_string(), client_id.to_string(), h.finish())
        };
        let mut tokens = self.tokens.lock().await;
        let now = self.clock.now_ms();
        if let Some((token, until)) = tokens.get(&key)
            && *until > now
        {
            return Ok(token.clone());
        }
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", client_secret),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        let token_url = reqwest::Url::parse(token_url)
            .map_err(|_| StepError::at("auth.token_url", "not a URL"))?;
        self.check_url(&token_url, "auth.token_url")?;
        let response = self
            .http
            .post(token_url)
            .form(&form)
            .send()
            .await
            .map_err(|_| StepError::retryable("the OAuth2 token endpoint could not be reached"))?;
        let status = response.status();
        let retry_after_ms = retry_after_ms(response.headers());
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            let message = format!(
                "the OAuth2 token endpoint answered HTTP {}",
                status.as_u16()
            );
            return Err(if status.as_u16() == 429 || status.is_server_error() {
                StepError::Retryable {
                    message,
                    retry_after_ms,
                }
            } else {
                StepError::at("auth", message)
            });
        }
        let token = body["access_token"]
            .as_str()
            .ok_or_else(|| StepError::at("auth", "the token endpoint sent no access_token"))?
            .to_string();
        let expires_in_s = body["expires_in"].as_i64().unwrap_or(3600);
        tokens.insert(
            key,
            (token.clone(), now + (expires_in_s - 60).max(0) * 1000),
        );
        Ok(token)
    }
}

/// How long a record a flow wrote is marked: a CRM notification of it within this time is
/// the echo of the flow's own write and starts no `crm_change` flow (which could loop).
pub const ECHO_MS: i64 = 60_000;

/// The mark of a record a flow wrote.
pub fn echo_key(
    system: raccordo_core::crm::System,
    object: raccordo_core::crm::ObjectKind,
    id: &str,
) -> String {
    format!("flows:echo:{}:{}:{id}", system.as_str(), object.as_str())
}

/// `Retry-After` in seconds (the form APIs use), as milliseconds.
pub fn retry_after_ms(headers: &reqwest::header::HeaderMap) -> Option<i64> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .map(|s| (s * 1000.0) as i64)
}
