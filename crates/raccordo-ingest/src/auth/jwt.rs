//! JWT bearer tokens: HS256 with a shared secret, RS256/ES256 with a PEM public key or a
//! JWKS (file or URL). `iss` and `aud` are checked by jsonwebtoken; `exp` and `nbf` here,
//! against our `Clock` with the configured leeway, so that tests can move time.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
pub use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use super::{Verified, bearer};
use crate::error::IngestError;

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted algorithms: `HS256`, `RS256`, `ES256`. Default: inferred from the key.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Shared secret for HS256.
    #[serde(serialize_with = "raccordo_core::redacted_option")]
    pub secret: Option<String>,
    /// PEM public key (RSA or EC), inline.
    pub public_key_pem: Option<String>,
    /// PEM public key file.
    #[schema(value_type = Option<String>)]
    pub public_key_file: Option<PathBuf>,
    /// JWKS JSON file.
    #[schema(value_type = Option<String>)]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL, fetched at start and refreshed every `jwks_refresh`.
    pub jwks_url: Option<String>,
    /// How often `jwks_url` is fetched again.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub jwks_refresh: Duration,
    /// Required issuer(s).
    #[serde(default)]
    pub issuer: Vec<String>,
    /// Required audience(s); a token passes if its `aud` contains one of them.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Clock tolerance for `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub leeway: Duration,
    /// Reject tokens without `exp` (default true: a token that never expires is a liability).
    #[serde(default = "yes")]
    pub require_exp: bool,
}

fn default_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn yes() -> bool {
    true
}

/// A JWKS shared with the background refresher.
pub type JwksHandle = Arc<RwLock<JwkSet>>;

enum Keys {
    Static(DecodingKey),
    Jwks(JwksHandle),
}

pub struct JwtVerifier {
    keys: Keys,
    /// One validation per key family: jsonwebtoken refuses a validation whose algorithms
    /// span families (RS256 + ES256) for a single key, and a JWKS may hold both.
    validations: Vec<(AlgorithmFamily, Validation)>,
    leeway_s: i64,
    require_exp: bool,
    jwks_url: Option<String>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("families", &self.validations.len())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TimeClaims {
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
}

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(format!(
            "algorithm {other:?} is not supported; use HS256, RS256 or ES256"
        )),
    }
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig) -> Result<Self, String> {
        let sources = [
            config.secret.is_some(),
            config.public_key_pem.is_some(),
            config.public_key_file.is_some(),
            config.jwks_file.is_some(),
            config.jwks_url.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err("give exactly one of `secret`, `public_key_pem`, `public_key_file`, `jwks_file`, `jwks_url`".into());
        }
        let mut algorithms = config
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<Result<Vec<_>, _>>()?;
        let pem = match (&config.public_key_pem, &config.public_key_file) {
            (Some(pem), _) => Some(pem.clone().into_bytes()),
            (_, Some(path)) => Some(
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            ),
            _ => None,
        };
        let keys = if let Some(secret) = &config.secret {
            if secret.len() < 32 {
                return Err("HS256 secrets must be at least 32 characters".into());
            }
            default_algorithms(&mut algorithms, &[Algorithm::HS256]);
            Keys::Static(DecodingKey::from_secret(secret.as_bytes()))
        } else if let Some(pem) = pem {
            let text = String::from_utf8_lossy(&pem);
            if text.contains("BEGIN EC") || algorithms.contains(&Algorithm::ES256) {
                default_algorithms(&mut algorithms, &[Algorithm::ES256]);
                Keys::Static(
                    DecodingKey::from_ec_pem(&pem)
                        .map_err(|e| format!("not an EC public key: {e}"))?,
                )
            } else {
                default_algorithms(&mut algorithms, &[Algorithm::RS256]);
                Keys::Static(
                    DecodingKey::from_rsa_pem(&pem)
                        .map_err(|e| format!("not an RSA public key: {e}"))?,
                )
            }
        } else if let Some(path) = &config.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| format!("{} is not a JWKS: {e}", path.display()))?;
            default_algorithms(&mut algorithms, &[Algorithm::RS256, Algorithm::ES256]);
            Keys::Jwks(Arc::new(RwLock::new(set)))
        } else {
            default_algorithms(&mut algorithms, &[Algorithm::RS256, Algorithm::ES256]);
            Keys::Jwks(Arc::new(RwLock::new(JwkSet { keys: Vec::new() })))
        };
        if config.secret.is_some() && algorithms.iter().any(|a| *a != Algorithm::HS256) {
            return Err("a `secret` only verifies HS256".into());
        }
        if config.secret.is_none() && algorithms.contains(&Algorithm::HS256) {
            return Err("HS256 needs a `secret`".into());
        }
        let mut validations: Vec<(AlgorithmFamily, Validation)> = Vec::new();
        for algorithm in algorithms {
            let family = algorithm.family();
            if let Some((_, v)) = validations.iter_mut().find(|(f, _)| *f == family) {
                v.algorithms.push(algorithm);
                continue;
            }
            let mut validation = Validation::new(algorithm);
            validation.validate_exp = false; // checked against our Clock below
            validation.validate_nbf = false;
            validation.required_spec_claims.clear();
            validation.validate_aud = !config.audience.is_empty();
            if !config.audience.is_empty() {
                validation.set_audience(&config.audience);
            }
            if !config.issuer.is_empty() {
                validation.set_issuer(&config.issuer);
            }
            validations.push((family, validation));
        }
        Ok(Self {
            keys,
            validations,
            leeway_s: config.leeway.as_secs() as i64,
            require_exp: config.require_exp,
            jwks_url: config.jwks_url.clone(),
        })
    }

    pub fn jwks_url(&self) -> Option<(&str, JwksHandle)> {
        match (&self.jwks_url, &self.keys) {
            (Some(url), Keys::Jwks(handle)) => Some((url.as_str(), handle.clone())),
            _ => None,
        }
    }

    pub fn verify(
        &self,
        headers: &HeaderMap,
        now_ms: i64,
    ) -> Result<Option<Verified>, IngestError> {
        let Some(token) = bearer(headers) else {
            return Ok(None);
        };
        if token.matches('.').count() != 2 {
            return Ok(None); // not a JWT: maybe an API key for another method
        }
        let invalid = |reason: &str| IngestError::InvalidCredentials {
            reason: reason.into(),
        };
        let validation_for = |key: &DecodingKey| {
            self.validations
                .iter()
                .find(|(family, _)| *family == key.family())
                .map(|(_, v)| v)
                .ok_or_else(|| invalid("JWT algorithm is not accepted for this source"))
        };
        let claims = match &self.keys {
            Keys::Static(key) => {
                jsonwebtoken::decode::<TimeClaims>(token, key, validation_for(key)?)
            }
            Keys::Jwks(set) => {
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|_| invalid("malformed JWT header"))?;
                let set = set.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                let jwk = match header.kid.as_deref() {
                    Some(kid) => set.find(kid),
                    None if set.keys.len() == 1 => set.keys.first(),
                    None => None,
                }
                .ok_or_else(|| invalid("no key in the JWKS matches the token's `kid`"))?;
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|_| invalid("the JWKS key cannot verify this token"))?;
                jsonwebtoken::decode::<TimeClaims>(token, &key, validation_for(&key)?)
            }
        }
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => invalid("JWT signature does not verify"),
            ErrorKind::InvalidIssuer => invalid("JWT `iss` is not an accepted issuer"),
            ErrorKind::InvalidAudience => invalid("JWT `aud` does not name this service"),
            ErrorKind::InvalidAlgorithm => invalid("JWT algorithm is not accepted for this source"),
            ErrorKind::MissingRequiredClaim(c) => IngestError::InvalidCredentials {
                reason: format!("JWT lacks `{c}`"),
            },
            _ => invalid("malformed JWT"),
        })?
        .claims;
        let now_s = now_ms.div_euclid(1000);
        match claims.exp {
            Some(exp) if (exp as i64).saturating_add(self.leeway_s) < now_s => {
                return Err(IngestError::TokenExpired);
            }
            None if self.require_exp => return Err(invalid("JWT lacks `exp`")),
            _ => {}
        }
        if let Some(nbf) = claims.nbf
            && (nbf as i64).saturating_sub(self.leeway_s) > now_s
        {
            return Err(invalid("JWT is not valid yet (`nbf`)"));
        }
        Ok(Some(Verified {
            sender_time_ms: claims.iat.map(|iat| (iat * 1000.0) as i64),
            delivery_id: None,
        }))
    }
}

fn default_algorithms(algorithms: &mut Vec<Algorithm>, defaults: &[Algorithm]) {
    if algorithms.is_empty() {
        algorithms.extend_from_slice(defaults);
    }
}

impl super::AuthMethod for JwtVerifier {
    fn verify(
        &self,
        headers: &HeaderMap,
        _body: &[u8],
        now_ms: i64,
    ) -> Result<Option<Verified>, IngestError> {
        JwtVerifier::verify(self, headers, now_ms)
    }

    fn describe(&self) -> &'static str {
        "a JWT in `Authorization: Bearer`"
    }

    fn jwks_url(&self) -> Option<(&str, JwksHandle)> {
        JwtVerifier::jwks_url(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "unit-test-secret-0123456789abcdef0123";

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&serde_json::from_value::<JwtConfig>(json!({ "secret": SECRET })).unwrap())
            .unwrap()
    }

    fn bearer(claims: serde_json::Value) -> HeaderMap {
        let token = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn extreme_claim_values_decide_without_overflow() {
        let v = verifier();
        let now = 1_800_000_000_000;
        assert!(
            v.verify(&bearer(json!({ "exp": i64::MAX })), now)
                .unwrap()
                .is_some()
        );
        assert!(
            v.verify(&bearer(json!({ "exp": 1e300 })), now)
                .unwrap()
                .is_some()
        );
        assert!(matches!(
            v.verify(&bearer(json!({ "exp": i64::MIN })), now),
            Err(IngestError::TokenExpired)
        ));
        assert!(matches!(
            v.verify(&bearer(json!({ "exp": -1e300 })), now),
            Err(IngestError::TokenExpired)
        ));
        let early = v.verify(&bearer(json!({ "exp": i64::MAX, "nbf": i64::MAX })), now);
        assert!(matches!(early, Err(IngestError::InvalidCredentials { .. })));
        assert!(
            v.verify(&bearer(json!({ "exp": i64::MAX, "nbf": i64::MIN })), now)
                .unwrap()
                .is_some()
        );
    }
}
