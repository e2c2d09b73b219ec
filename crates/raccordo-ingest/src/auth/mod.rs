//! Source authentication. A source lists one or more methods; a request passes when any
//! of them accepts it. Each method is a config struct (deserialised from TOML) turned into
//! a verifier once at start-up, so the per-request path only checks.

pub mod api_key;
pub mod jwt;
pub mod standard_webhooks;

use http::HeaderMap;
use serde::Deserialize;

use crate::error::IngestError;

pub use api_key::{ApiKeyConfig, ApiKeyVerifier};
pub use jwt::{JwksHandle, JwtConfig, JwtVerifier};
pub use standard_webhooks::{StandardWebhooksConfig, StandardWebhooksVerifier, WebhookSecret};

/// One authentication method of a source, as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    ApiKey(ApiKeyConfig),
    StandardWebhooks(StandardWebhooksConfig),
    Jwt(JwtConfig),
}

/// What a successful verification tells the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// The sender's clock at signing time (webhook-timestamp, JWT `iat`), epoch ms:
    /// the difference to ours is the source's clock skew.
    pub sender_time_ms: Option<i64>,
    /// Delivery id carried by the auth scheme (`webhook-id`).
    pub delivery_id: Option<String>,
}

/// A built verifier.
#[derive(Debug)]
pub enum Verifier {
    ApiKey(ApiKeyVerifier),
    StandardWebhooks(StandardWebhooksVerifier),
    Jwt(JwtVerifier),
}

impl Verifier {
    pub fn build(config: &AuthConfig) -> Result<Self, String> {
        Ok(match config {
            AuthConfig::ApiKey(c) => Verifier::ApiKey(ApiKeyVerifier::new(c)?),
            AuthConfig::StandardWebhooks(c) => {
                Verifier::StandardWebhooks(StandardWebhooksVerifier::new(c)?)
            }
            AuthConfig::Jwt(c) => Verifier::Jwt(JwtVerifier::new(c)?),
        })
    }

    /// `Ok(None)` means "this method's credentials are not in the request" (so another
    /// method may still apply); `Err` means they are there and wrong.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Option<Verified>, IngestError> {
        match self {
            Verifier::ApiKey(v) => v.verify(headers),
            Verifier::StandardWebhooks(v) => v.verify(headers, body, now_ms),
            Verifier::Jwt(v) => v.verify(headers, now_ms),
        }
    }

    /// How a client presents credentials for this method (for the 401 detail).
    pub fn describe(&self) -> &'static str {
        match self {
            Verifier::ApiKey(_) => "an API key in `X-Api-Key` or `Authorization: Bearer`",
            Verifier::StandardWebhooks(_) => {
                "Standard Webhooks headers `webhook-id`, `webhook-timestamp`, `webhook-signature`"
            }
            Verifier::Jwt(_) => "a JWT in `Authorization: Bearer`",
        }
    }

    /// The JWKS handle to refresh in the background, for JWT methods with `jwks_url`.
    pub fn jwks_url(&self) -> Option<(&str, JwksHandle)> {
        match self {
            Verifier::Jwt(v) => v.jwks_url(),
            _ => None,
        }
    }
}

/// The value of `Authorization: Bearer <token>`, if present.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Verifies a request against a list of methods: the first method whose credentials are
/// present decides. With no credentials at all, the error names what would be accepted.
pub fn verify_any(
    methods: &[Verifier],
    headers: &HeaderMap,
    body: &[u8],
    now_ms: i64,
) -> Result<Verified, IngestError> {
    let mut first_error = None;
    for method in methods {
        match method.verify(headers, body, now_ms) {
            Ok(Some(verified)) => return Ok(verified),
            Ok(None) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(
        first_error.unwrap_or_else(|| IngestError::MissingCredentials {
            expected: methods
                .iter()
                .map(Verifier::describe)
                .collect::<Vec<_>>()
                .join(", or "),
        }),
    )
}
