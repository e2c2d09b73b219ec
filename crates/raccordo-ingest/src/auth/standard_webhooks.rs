//! Standard Webhooks (<https://www.standardwebhooks.com>): HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, base64, prefixed `v1,`. The signature header
//! may carry several space-separated signatures (key rotation); any valid one passes.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
pub use raccordo_notify::signer::WebhookSecret;
use serde::{Deserialize, Serialize};

use super::Verified;
use crate::error::IngestError;

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StandardWebhooksConfig {
    /// `whsec_` + base64 secrets; several allow rotation.
    #[serde(serialize_with = "raccordo_core::redacted")]
    pub secrets: Vec<String>,
    /// How far `webhook-timestamp` may be from our clock, either way.
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub tolerance: Duration,
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug)]
pub struct StandardWebhooksVerifier {
    secrets: Vec<WebhookSecret>,
    tolerance_ms: i64,
}

impl StandardWebhooksVerifier {
    pub fn new(config: &StandardWebhooksConfig) -> Result<Self, String> {
        if config.secrets.is_empty() {
            return Err("`secrets` must list at least one `whsec_` secret".into());
        }
        let secrets = config
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| WebhookSecret::parse(s).map_err(|e| format!("secrets[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            secrets,
            tolerance_ms: config.tolerance.as_millis() as i64,
        })
    }

    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Option<Verified>, IngestError> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(id), Some(timestamp), Some(signatures)) = (
            get("webhook-id"),
            get("webhook-timestamp"),
            get("webhook-signature"),
        ) else {
            return Ok(None);
        };
        let invalid = |reason: &str| IngestError::InvalidCredentials {
            reason: reason.into(),
        };
        if id.is_empty() || id.len() > 256 {
            return Err(invalid("`webhook-id` must be 1-256 characters"));
        }
        let seconds: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| invalid("`webhook-timestamp` is not an integer"))?;
        let sent_ms = seconds.saturating_mul(1000);
        // abs_diff: a hostile timestamp near i64::MIN must not overflow (found by fuzzing).
        if now_ms.abs_diff(sent_ms) > self.tolerance_ms.unsigned_abs() {
            return Err(IngestError::TimestampOutsideTolerance {
                tolerance_s: (self.tolerance_ms / 1000) as u64,
            });
        }
        for candidate in signatures.split(' ') {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue;
            };
            let Ok(tag) = STANDARD.decode(encoded) else {
                continue;
            };
            if self
                .secrets
                .iter()
                .any(|secret| secret.verify(id, timestamp, body, &tag))
            {
                return Ok(Some(Verified {
                    sender_time_ms: Some(sent_ms),
                    delivery_id: Some(id.to_string()),
                }));
            }
        }
        Err(invalid("no `v1` signature in `webhook-signature` matches"))
    }
}

impl super::AuthMethod for StandardWebhooksVerifier {
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Option<Verified>, IngestError> {
        StandardWebhooksVerifier::verify(self, headers, body, now_ms)
    }

    fn describe(&self) -> &'static str {
        "Standard Webhooks headers `webhook-id`, `webhook-timestamp`, `webhook-signature`"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector published with the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn verifier() -> StandardWebhooksVerifier {
        StandardWebhooksVerifier::new(&StandardWebhooksConfig {
            secrets: vec![SECRET.into()],
            tolerance: default_tolerance(),
        })
        .unwrap()
    }

    fn headers(sig: &str, ts: i64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", ID.parse().unwrap());
        h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        h.insert("webhook-signature", sig.parse().unwrap());
        h
    }

    #[test]
    fn spec_test_vector_signs_and_verifies() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TS, BODY), SIG);
        let ok = verifier()
            .verify(&headers(SIG, TS), BODY, TS * 1000)
            .unwrap()
            .unwrap();
        assert_eq!(ok.delivery_id.as_deref(), Some(ID));
        assert_eq!(ok.sender_time_ms, Some(TS * 1000));
    }

    #[test]
    fn any_of_several_signatures_passes() {
        let rotated = format!("v1,AAAA v2,zzz {SIG}");
        assert!(
            verifier()
                .verify(&headers(&rotated, TS), BODY, TS * 1000)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn tampering_and_stale_timestamps_fail() {
        let v = verifier();
        assert!(matches!(
            v.verify(&headers(SIG, TS), b"{\"test\": 2432232315}", TS * 1000),
            Err(IngestError::InvalidCredentials { .. })
        ));
        assert!(matches!(
            v.verify(&headers(SIG, TS), BODY, (TS + 301) * 1000),
            Err(IngestError::TimestampOutsideTolerance { .. })
        ));
        assert!(matches!(
            v.verify(&headers(SIG, TS), BODY, (TS - 301) * 1000),
            Err(IngestError::TimestampOutsideTolerance { .. })
        ));
        assert!(v.verify(&HeaderMap::new(), BODY, 0).unwrap().is_none());
    }

    #[test]
    fn extreme_timestamps_are_out_of_tolerance_not_overflows() {
        let v = verifier();
        for ts in [i64::MIN, i64::MIN / 1000, -1, i64::MAX / 1000, i64::MAX] {
            let mut h = headers(SIG, 0);
            h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
            assert!(
                matches!(
                    v.verify(&h, BODY, TS * 1000),
                    Err(IngestError::TimestampOutsideTolerance { .. })
                ),
                "{ts}"
            );
        }
    }

    #[test]
    fn bad_secrets_are_config_errors() {
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookSecret::parse("whsec_!!!").is_err());
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err());
    }
}
