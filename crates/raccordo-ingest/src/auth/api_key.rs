//! Plain API keys, in `X-Api-Key` or `Authorization: Bearer`.

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Verified, bearer};
use crate::error::IngestError;

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Accepted keys (several allow rotation). Use `${ENV}` to keep them out of the file.
    #[serde(serialize_with = "raccordo_core::redacted")]
    pub keys: Vec<String>,
}

/// Keys are kept only as SHA-256 digests and compared in constant time, so neither memory
/// dumps nor timing reveal them.
#[derive(Debug)]
pub struct ApiKeyVerifier {
    digests: Vec<[u8; 32]>,
}

/// Shortest key accepted: shorter keys are guessable.
pub const MIN_KEY_LEN: usize = 16;

impl ApiKeyVerifier {
    pub fn new(config: &ApiKeyConfig) -> Result<Self, String> {
        if config.keys.is_empty() {
            return Err("`keys` must list at least one key".into());
        }
        if let Some(i) = config.keys.iter().position(|k| k.len() < MIN_KEY_LEN) {
            return Err(format!(
                "keys[{i}] is shorter than {MIN_KEY_LEN} characters"
            ));
        }
        Ok(Self {
            digests: config
                .keys
                .iter()
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
        })
    }

    pub fn verify(&self, headers: &HeaderMap) -> Result<Option<Verified>, IngestError> {
        let presented = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| bearer(headers).filter(|t| t.matches('.').count() != 2)); // a JWT is not a key
        let Some(presented) = presented else {
            return Ok(None);
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut matched = subtle::Choice::from(0);
        for known in &self.digests {
            matched |= known.ct_eq(&digest);
        }
        if bool::from(matched) {
            Ok(Some(Verified::default()))
        } else {
            Err(IngestError::InvalidCredentials {
                reason: "unknown API key".into(),
            })
        }
    }
}

impl super::AuthMethod for ApiKeyVerifier {
    fn verify(
        &self,
        headers: &HeaderMap,
        _body: &[u8],
        _now_ms: i64,
    ) -> Result<Option<Verified>, IngestError> {
        ApiKeyVerifier::verify(self, headers)
    }

    fn describe(&self) -> &'static str {
        "an API key in `X-Api-Key` or `Authorization: Bearer`"
    }
}
