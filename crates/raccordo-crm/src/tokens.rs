//! Access tokens for the CRM clients.
//!
//! [`OAuthTokens`] keeps one OAuth grant: the refresh token sealed in the [`SecretStore`],
//! the current access token sealed beside it with its expiry, and refreshes ahead of expiry
//! (HubSpot's tokens last 30 minutes, Zoho's 60). A refresh is single-flight: one caller in
//! the process (a mutex) and one node in a cluster (a lease in the store) refreshes; the
//! others use the token it stores. Zoho allows 10 refreshes per refresh token per 10
//! minutes, so refreshes also draw from a rate-limit bucket. A refused refresh marks the
//! grant as refused for a while: calls fail at once as `Unauthorized` (and an alert says a
//! person must reconnect) instead of retrying the refresh in a storm.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raccordo_core::{Admission, BucketSpec};
use raccordo_core::{Clock, RateLimitStore, SecretStore};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::error::CrmError;
use crate::seal::Sealer;

#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// A token valid for at least a little while.
    async fn access_token(&self) -> Result<String, CrmError>;
    /// The CRM answered 401 to `token`: forget it, so the next call refreshes.
    async fn rejected(&self, token: &str);
}

/// A token that does not expire (a HubSpot private-app token).
pub struct StaticToken(pub String);

#[async_trait]
impl TokenSource for StaticToken {
    async fn access_token(&self) -> Result<String, CrmError> {
        Ok(self.0.clone())
    }
    async fn rejected(&self, _: &str) {}
}

/// Where and how one grant is refreshed.
#[derive(Clone)]
pub struct OAuthGrant {
    /// `hubspot` or `zoho`: names the stored secrets, lease and bucket.
    pub system: &'static str,
    /// The token endpoint (HubSpot `…/oauth/v1/token`, Zoho `https://accounts.zoho.eu/oauth/v2/token`).
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Refresh this long before the access token expires.
    pub refresh_ahead_ms: i64,
    /// At most this many refreshes per window (Zoho: 10 per 10 minutes).
    pub refresh_budget: BucketSpec,
}

impl OAuthGrant {
    fn refresh_name(&self) -> String {
        format!("oauth:{}:refresh", self.system)
    }
    fn access_name(&self) -> String {
        format!("oauth:{}:access", self.system)
    }
}

struct Cached {
    token: String,
    expires_at_ms: i64,
}

pub struct OAuthTokens {
    grant: OAuthGrant,
    http: reqwest::Client,
    secrets: Arc<dyn SecretStore>,
    buckets: Arc<dyn RateLimitStore>,
    sealer: Arc<Sealer>,
    clock: Arc<dyn Clock>,
    /// This process, as a lease holder.
    holder: String,
    cached: Mutex<Option<Cached>>,
    refused_until_ms: std::sync::atomic::AtomicI64,
    refreshes: std::sync::atomic::AtomicU64,
}

/// How long a refused grant is not retried.
const REFUSED_FOR_MS: i64 = 10 * 60_000;
const LEASE_MS: i64 = 30_000;

impl OAuthTokens {
    pub fn new(
        grant: OAuthGrant,
        http: reqwest::Client,
        secrets: Arc<dyn SecretStore>,
        buckets: Arc<dyn RateLimitStore>,
        sealer: Arc<Sealer>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            grant,
            http,
            secrets,
            buckets,
            sealer,
            clock,
            holder: holder_id(),
            cached: Mutex::new(None),
            refused_until_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            refreshes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Stores a refresh token (from `raccordo connect`, or the config on first start).
    pub async fn store_refresh_token(&self, refresh_token: &str) -> Result<(), CrmError> {
        let name = self.grant.refresh_name();
        let sealed = self
            .sealer
            .seal(&name, refresh_token.as_bytes())
            .map_err(|e| CrmError::permanent(self.grant.system, e.to_string()))?;
        self.secrets
            .put_secret(&name, sealed, None)
            .await
            .map_err(|e| store_error(self.grant.system, &e))?;
        self.refused_until_ms
            .store(i64::MIN, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Exchanges an authorization code (from `raccordo connect`) for a grant and stores it:
    /// the refresh token sealed, the access token beside it. `code_verifier` is the PKCE
    /// secret, for providers that take it.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        code_verifier: Option<&str>,
    ) -> Result<(), CrmError> {
        let system = self.grant.system;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", self.grant.client_id.as_str()),
            ("client_secret", self.grant.client_secret.as_str()),
        ];
        if let Some(verifier) = code_verifier {
            form.push(("code_verifier", verifier));
        }
        let response = self
            .http
            .post(&self.grant.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| CrmError::transport(system, &e))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let (Some(refresh), Some(access)) = (
            body["refresh_token"].as_str(),
            body["access_token"].as_str(),
        ) else {
            let reason = body["error"]
                .as_str()
                .or(body["status"].as_str())
                .unwrap_or("no refresh token in the answer");
            return Err(CrmError::Permanent {
                system,
                status: Some(status.as_u16()),
                message: format!("the authorization code was refused ({reason})"),
                field: None,
            });
        };
        self.store_refresh_token(refresh).await?;
        let expires_in_s = body["expires_in_sec"]
            .as_i64()
            .or_else(|| body["expires_in"].as_i64())
            .unwrap_or(1800);
        let name = self.grant.access_name();
        let sealed = self
            .sealer
            .seal(&name, access.as_bytes())
            .map_err(|e| CrmError::permanent(system, e.to_string()))?;
        self.secrets
            .put_secret(
                &name,
                sealed,
                Some(self.clock.now_ms() + expires_in_s * 1000),
            )
            .await
            .map_err(|e| store_error(system, &e))?;
        *self.cached.lock().await = None;
        tracing::info!(system, "new grant stored");
        Ok(())
    }

    /// Whether a refresh token is stored that this key opens (one sealed under a lost
    /// key counts as none, so a configured refresh token can take its place).
    pub async fn has_grant(&self) -> Result<bool, CrmError> {
        let name = self.grant.refresh_name();
        Ok(self
            .secrets
            .get_secret(&name)
            .await
            .map_err(|e| store_error(self.grant.system, &e))?
            .is_some_and(|s| self.sealer.open(&name, &s.value).is_ok()))
    }

    /// Whether the last refresh was refused and no new grant came since: a person must
    /// reconnect (`raccordo connect`).
    pub fn refused(&self) -> bool {
        self.clock.now_ms()
            < self
                .refused_until_ms
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn system(&self) -> &'static str {
        self.grant.system
    }

    /// Refreshes done by this process.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn fresh(&self, expires_at_ms: i64) -> bool {
        self.clock.now_ms() < expires_at_ms.saturating_sub(self.grant.refresh_ahead_ms)
    }

    async fn stored_access(&self) -> Result<Option<Cached>, CrmError> {
        let name = self.grant.access_name();
        let Some(stored) = self
            .secrets
            .get_secret(&name)
            .await
            .map_err(|e| store_error(self.grant.system, &e))?
        else {
            return Ok(None);
        };
        let Ok(token) = self.sealer.open(&name, &stored.value) else {
            return Ok(None);
        };
        Ok(Some(Cached {
            token: String::from_utf8_lossy(&token).into_owned(),
            expires_at_ms: stored.expires_at_ms.unwrap_or(i64::MIN),
        }))
    }

    async fn refresh(&self) -> Result<Cached, CrmError> {
        let system = self.grant.system;
        let now = self.clock.now_ms();
        match self
            .buckets
            .take(
                &format!("oauth:{system}:refreshes"),
                self.grant.refresh_budget,
                1.0,
                now,
            )
            .await
            .map_err(|e| store_error(system, &e))?
        {
            Admission::Allowed { .. } => {}
            Admission::Limited { retry_after_ms } => {
                return Err(CrmError::Retryable {
                    system,
                    status: None,
                    message: "token refresh budget used up".into(),
                    retry_after_ms: Some(retry_after_ms),
                });
            }
        }
        let name = self.grant.refresh_name();
        let stored = self
            .secrets
            .get_secret(&name)
            .await
            .map_err(|e| store_error(system, &e))?
            .ok_or_else(|| CrmError::Unauthorized {
                system,
                message: "no grant stored: run `raccordo connect`".into(),
            })?;
        let refresh_token =
            self.sealer
                .open(&name, &stored.value)
                .map_err(|e| CrmError::Unauthorized {
                    system,
                    message: e.to_string(),
                })?;
        let refresh_token = String::from_utf8_lossy(&refresh_token).into_owned();
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
            ("client_id", self.grant.client_id.as_str()),
            ("client_secret", self.grant.client_secret.as_str()),
        ];
        let response = self
            .http
            .post(&self.grant.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| CrmError::transport(system, &e))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        // Zoho answers refusals with 200 and no `access_token`; HubSpot with 400.
        let Some(token) = body["access_token"]
            .as_str()
            .filter(|_| status.is_success())
        else {
            if status.is_server_error() || status.as_u16() == 429 {
                return Err(CrmError::Retryable {
                    system,
                    status: Some(status.as_u16()),
                    message: format!("token refresh: HTTP {status}"),
                    retry_after_ms: None,
                });
            }
            let reason = body["error"]
                .as_str()
                .or(body["status"].as_str())
                .unwrap_or("refused");
            self.refused_until_ms
                .store(now + REFUSED_FOR_MS, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                system,
                reason,
                "token refresh refused; reconnect with `raccordo connect`"
            );
            return Err(CrmError::Unauthorized {
                system,
                message: format!("token refresh refused ({reason})"),
            });
        };
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Zoho's answer may give `expires_in` in ms alongside `expires_in_sec`.
        let expires_in_s = body["expires_in_sec"]
            .as_i64()
            .or_else(|| body["expires_in"].as_i64())
            .unwrap_or(1800);
        let expires_at_ms = now + expires_in_s * 1000;
        let access_name = self.grant.access_name();
        let sealed = self
            .sealer
            .seal(&access_name, token.as_bytes())
            .map_err(|e| CrmError::permanent(system, e.to_string()))?;
        self.secrets
            .put_secret(&access_name, sealed, Some(expires_at_ms))
            .await
            .map_err(|e| store_error(system, &e))?;
        if let Some(rotated) = body["refresh_token"].as_str()
            && rotated != refresh_token
        {
            self.store_refresh_token(rotated).await?;
        }
        Ok(Cached {
            token: token.to_string(),
            expires_at_ms,
        })
    }
}

#[async_trait]
impl TokenSource for OAuthTokens {
    async fn access_token(&self) -> Result<String, CrmError> {
        let system = self.grant.system;
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && self.fresh(c.expires_at_ms)
        {
            return Ok(c.token.clone());
        }
        // Another node (or an earlier run) may have refreshed already.
        for _ in 0..50 {
            if let Some(stored) = self.stored_access().await?
                && self.fresh(stored.expires_at_ms)
            {
                let token = stored.token.clone();
                *cached = Some(stored);
                return Ok(token);
            }
            if self.clock.now_ms()
                < self
                    .refused_until_ms
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                return Err(CrmError::Unauthorized {
                    system,
                    message:
                        "the last token refresh was refused; reconnect with `raccordo connect`"
                            .into(),
                });
            }
            let lease = format!("oauth:{system}:refreshing");
            let now = self.clock.now_ms();
            if self
                .secrets
                .try_lease(&lease, &self.holder, LEASE_MS, now)
                .await
                .map_err(|e| store_error(system, &e))?
            {
                let refreshed = self.refresh().await;
                let _ = self.secrets.release_lease(&lease, &self.holder).await;
                let refreshed = refreshed?;
                let token = refreshed.token.clone();
                *cached = Some(refreshed);
                return Ok(token);
            }
            // Another node is refreshing: its token will be in the store shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(CrmError::Retryable {
            system,
            status: None,
            message: "waited too long for another node's token refresh".into(),
            retry_after_ms: Some(1_000),
        })
    }

    async fn rejected(&self, token: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.token == token) {
            *cached = None;
        }
        // Expire the stored copy too, unless someone already replaced it.
        if let Ok(Some(stored)) = self.stored_access().await
            && stored.token == token
        {
            let name = self.grant.access_name();
            if let Ok(sealed) = self.sealer.seal(&name, token.as_bytes()) {
                let _ = self.secrets.put_secret(&name, sealed, Some(i64::MIN)).await;
            }
        }
    }
}

/// This process, told apart from other nodes and from earlier runs.
fn holder_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    format!("{}-{:016x}", std::process::id(), u64::from_le_bytes(bytes))
}

fn store_error(system: &'static str, e: &raccordo_core::StoreError) -> CrmError {
    CrmError::Retryable {
        system,
        status: None,
        message: format!("state store: {e}"),
        retry_after_ms: e.retry_after_ms().map(|ms| ms as i64),
    }
}
