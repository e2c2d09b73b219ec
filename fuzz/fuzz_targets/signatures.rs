//! Arbitrary credentials and bodies through every verifier: never a panic, never a pass
//! without the secret.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use raccordo_ingest::auth::{ApiKeyConfig, AuthConfig, JwtConfig, StandardWebhooksConfig, Verifier, verify_any};

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static VERIFIERS: Vec<Verifier> = vec![
            AuthConfig::StandardWebhooks(StandardWebhooksConfig {
                secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
                tolerance: std::time::Duration::from_secs(300),
            }).build().unwrap(),
            AuthConfig::ApiKey(ApiKeyConfig { keys: vec!["fuzz-api-key-0123456789".into()] }).build().unwrap(),
            AuthConfig::Jwt(serde_json::from_str::<JwtConfig>(
                r#"{"secret":"fuzz-hs256-secret-0123456789abcdef0123"}"#).unwrap()).build().unwrap(),
        ];
    }
    // Split the input into header values and a body at 0xFF bytes.
    let mut parts = data.split(|b| *b == 0xFF);
    let mut headers = HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature", "authorization", "x-api-key"] {
        if let Some(value) = parts.next()
            && let Ok(value) = HeaderValue::from_bytes(value)
        {
            headers.insert(name, value);
        }
    }
    let body = parts.next().unwrap_or_default();
    VERIFIERS.with(|verifiers| {
        if let Ok(verified) = verify_any(verifiers, &headers, body, 1_614_265_330_000) {
            // Only the published Standard Webhooks test vector can pass here by chance.
            assert!(verified.delivery_id.is_some(), "a fuzzed credential passed");
        }
    });
});
