//! Source authentication. A source lists one or more methods; a request passes when any
//! of them accepts it. Each method is a config struct (deserialised from TOML) turned into
//! a verifier once at start-up, so the per-request path only checks.

pub mod api_key;
pub mod crm;
pub mod jwt;
pub mod standard_webhooks;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::error::IngestError;

pub use api_key::{ApiKeyConfig, ApiKeyVerifier};
pub use crm::{HubSpotSignature, ZohoChannelToken};
pub use jwt::{JwksHandle, JwtConfig, JwtVerifier};
pub use standard_webhooks::{StandardWebhooksConfig, StandardWebhooksVerifier, WebhookSecret};

/// One authentication method of a source, as written in the config file.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
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

/// One way a source proves who it is, built once from its config; the request path only
/// checks. Adding a method is a module with its config struct and this impl, plus one
/// variant of `AuthConfig` and one arm in `AuthConfig::build`.
pub trait AuthMethod: Send + Sync + std::fmt::Debug {
    /// `Ok(None)` means "this method's credentials are not in the request" (so another
    /// method may still apply); `Err` means they are there and wrong.
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Option<Verified>, IngestError>;

    /// How a client presents credentials for this method (for the 401 detail).
    fn describe(&self) -> &'static str;

    /// The JWKS handle to refresh in the background, for methods with a JWKS URL.
    fn jwks_url(&self) -> Option<(&str, JwksHandle)> {
        None
    }
}

/// A built auth method.
pub type Verifier = Box<dyn AuthMethod>;

impl AuthConfig {
    /// The registry of auth methods: config to verifier.
    pub fn build(&self) -> Result<Verifier, String> {
        Ok(match self {
            AuthConfig::ApiKey(c) => Box::new(ApiKeyVerifier::new(c)?),
            AuthConfig::StandardWebhooks(c) => Box::new(StandardWebhooksVerifier::new(c)?),
            AuthConfig::Jwt(c) => Box::new(JwtVerifier::new(c)?),
        })
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
                .map(|m| m.describe())
                .collect::<Vec<_>>()
                .join(", or "),
        }),
    )
}
