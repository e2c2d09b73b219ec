//! Authenticity of CRM change notifications.
//!
//! **HubSpot** signs with the app's client secret. v3 (`X-HubSpot-Signature-v3`): base64
//! HMAC-SHA256 over method + URI + body + `X-HubSpot-Request-Timestamp` (epoch ms), refused
//! when the timestamp is more than 5 minutes old. v2: hex SHA-256 of secret + method + URI +
//! body. v1: hex SHA-256 of secret + body (no timestamp: accepted only when the app sends
//! no v3 signature, as older apps do). The URI is the full URL HubSpot called, scheme and
//! query included, with the percent-escapes HubSpot decodes before signing decoded.
//!
//! **Zoho** sends no signature: the channel `token` set when raccordo registered the channel
//! comes back in every notification, and is compared in constant time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::IngestError;

/// How old a v3 timestamp may be.
pub const HUBSPOT_TOLERANCE_MS: i64 = 5 * 60_000;

/// Checks HubSpot webhook signatures for one app.
#[derive(Clone)]
pub struct HubSpotSignature {
    client_secret: String,
}

impl std::fmt::Debug for HubSpotSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubSpotSignature(<secret>)")
    }
}

fn invalid(reason: &str) -> IngestError {
    IngestError::InvalidCredentials {
        reason: reason.into(),
    }
}

/// HubSpot decodes these escapes in the URI before signing.
fn hubspot_uri(uri: &str) -> String {
    const DECODED: [(&str, &str); 12] = [
        ("%3A", ":"),
        ("%2F", "/"),
        ("%3F", "?"),
        ("%40", "@"),
        ("%21", "!"),
        ("%24", "$"),
        ("%27", "'"),
        ("%28", "("),
        ("%29", ")"),
        ("%2A", "*"),
        ("%2C", ","),
        ("%3B", ";"),
    ];
    let mut out = uri.to_string();
    for (escaped, plain) in DECODED {
        out = out
            .replace(escaped, plain)
            .replace(&escaped.to_lowercase(), plain);
    }
    out
}

fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl HubSpotSignature {
    pub fn new(client_secret: &str) -> Result<Self, String> {
        if client_secret.trim().is_empty() {
            return Err("the HubSpot app's client secret cannot be empty".into());
        }
        Ok(Self {
            client_secret: client_secret.to_string(),
        })
    }

    /// The v3 signature of a request (also what the HubSpot sandbox sends).
    pub fn sign_v3(&self, method: &str, uri: &str, body: &[u8], timestamp_ms: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.client_secret.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(method.as_bytes());
        mac.update(hubspot_uri(uri).as_bytes());
        mac.update(body);
        mac.update(timestamp_ms.to_string().as_bytes());
        STANDARD.encode(mac.finalize().into_bytes())
    }

    /// Verifies a request; `uri` is the full URL HubSpot called. Returns the signing time
    /// for v3 (the sender's clock).
    pub fn verify(
        &self,
        method: &str,
        uri: &str,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Option<i64>, IngestError> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(signature) = get("x-hubspot-signature-v3") {
            let timestamp: i64 = get("x-hubspot-request-timestamp")
                .ok_or_else(|| invalid("`X-HubSpot-Request-Timestamp` is missing"))?
                .trim()
                .parse()
                .map_err(|_| invalid("`X-HubSpot-Request-Timestamp` is not an integer"))?;
            // Older than the tolerance is a replay; HubSpot's clients check only that side,
            // we also refuse timestamps from the future beyond the same margin.
            if now_ms.abs_diff(timestamp) > HUBSPOT_TOLERANCE_MS.unsigned_abs() {
                return Err(IngestError::TimestampOutsideTolerance {
                    tolerance_s: (HUBSPOT_TOLERANCE_MS / 1000) as u64,
                });
            }
            let expected = self.sign_v3(method, uri, body, timestamp);
            return if bool::from(expected.as_bytes().ct_eq(signature.trim().as_bytes())) {
                Ok(Some(timestamp))
            } else {
                Err(invalid("`X-HubSpot-Signature-v3` does not match"))
            };
        }
        let Some(signature) = get("x-hubspot-signature") else {
            return Err(IngestError::MissingCredentials {
                expected: "HubSpot signature headers `X-HubSpot-Signature-v3` and `X-HubSpot-Request-Timestamp`".into(),
            });
        };
        let expected = match get("x-hubspot-signature-version").unwrap_or("v1") {
            "v1" => hex_sha256(&[self.client_secret.as_bytes(), body]),
            "v2" => hex_sha256(&[
                self.client_secret.as_bytes(),
                method.as_bytes(),
                uri.as_bytes(),
                body,
            ]),
            _ => return Err(invalid("unknown `X-HubSpot-Signature-Version`")),
        };
        if bool::from(
            expected
                .as_bytes()
                .ct_eq(signature.trim().to_ascii_lowercase().as_bytes()),
        ) {
            Ok(None)
        } else {
            Err(invalid("`X-HubSpot-Signature` does not match"))
        }
    }
}

/// Checks the channel token Zoho echoes in each notification.
#[derive(Clone)]
pub struct ZohoChannelToken {
    token: String,
}

impl std::fmt::Debug for ZohoChannelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZohoChannelToken(<secret>)")
    }
}

impl ZohoChannelToken {
    /// Zoho takes tokens of at most 50 characters.
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.len() < 16 || token.len() > 50 {
            return Err("the Zoho channel token must be 16 to 50 characters".into());
        }
        Ok(Self {
            token: token.to_string(),
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// `received` is the notification's `token` field (`null` when the channel has none).
    pub fn verify(&self, received: Option<&str>) -> Result<(), IngestError> {
        let Some(received) = received else {
            return Err(IngestError::MissingCredentials {
                expected: "the channel `token` in the notification body".into(),
            });
        };
        if bool::from(self.token.as_bytes().ct_eq(received.as_bytes())) {
            Ok(())
        } else {
            Err(invalid("the channel `token` does not match"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hubspots_published_v1_and_v2_examples_verify() {
        // The worked examples on HubSpot's v1 and v2 request-validation pages.
        let s = HubSpotSignature::new("yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy").unwrap();
        let body = br#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#;
        let v1 = "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de";
        let h = headers(&[
            ("x-hubspot-signature", v1.into()),
            ("x-hubspot-signature-version", "v1".into()),
        ]);
        assert_eq!(
            s.verify("POST", "https://x/y", &h, body, 0).ok(),
            Some(None)
        );
        assert!(s.verify("POST", "https://x/y", &h, b"[]", 0).is_err());
        let v2 = "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e";
        let h = headers(&[
            ("x-hubspot-signature", v2.into()),
            ("x-hubspot-signature-version", "v2".into()),
        ]);
        assert_eq!(
            s.verify("GET", "https://www.example.com/webhook_uri", &h, b"", 0)
                .ok(),
            Some(None)
        );
        assert!(
            s.verify("GET", "https://www.example.com/other", &h, b"", 0)
                .is_err()
        );
    }

    #[test]
    fn v3_checks_the_signature_and_the_timestamp_window() {
        let s = HubSpotSignature::new("client-secret").unwrap();
        let uri = "https://hub.example.it/webhooks/hubspot?portal=1";
        let body = br#"[{"objectId":1}]"#;
        let now = 1_700_000_000_000;
        let sig = s.sign_v3("POST", uri, body, now - 1000);
        let h = headers(&[
            ("x-hubspot-signature-v3", sig.clone()),
            ("x-hubspot-request-timestamp", (now - 1000).to_string()),
        ]);
        assert_eq!(
            s.verify("POST", uri, &h, body, now).ok(),
            Some(Some(now - 1000))
        );
        // Escaped characters HubSpot decodes sign the same.
        let escaped = "https://hub.example.it/webhooks/hubspot%3Fportal=1";
        assert_eq!(
            s.sign_v3("POST", escaped, body, now - 1000),
            sig,
            "%3F is decoded before signing"
        );
        assert!(
            s.verify("POST", uri, &h, b"[{\"objectId\":2}]", now)
                .is_err()
        );
        assert!(s.verify("PUT", uri, &h, body, now).is_err());
        assert!(matches!(
            s.verify("POST", uri, &h, body, now + HUBSPOT_TOLERANCE_MS + 1001),
            Err(IngestError::TimestampOutsideTolerance { .. })
        ));
        let hostile = headers(&[
            ("x-hubspot-signature-v3", sig),
            ("x-hubspot-request-timestamp", i64::MIN.to_string()),
        ]);
        assert!(s.verify("POST", uri, &hostile, body, now).is_err());
        assert!(matches!(
            s.verify("POST", uri, &HeaderMap::new(), body, now),
            Err(IngestError::MissingCredentials { .. })
        ));
    }

    #[test]
    fn the_zoho_token_must_match_exactly() {
        let t = ZohoChannelToken::new("raccordo-zoho-channel-0123").unwrap();
        assert!(t.verify(Some("raccordo-zoho-channel-0123")).is_ok());
        assert!(t.verify(Some("raccordo-zoho-channel-0124")).is_err());
        assert!(t.verify(None).is_err());
        assert!(ZohoChannelToken::new("short").is_err());
    }
}
