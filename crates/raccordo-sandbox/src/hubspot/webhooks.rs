//! Webhooks: creation, property-change and deletion events, batched, signed (v3 and v1) and retried.

use super::*;

/// The v3 signature: base64 HMAC-SHA256, keyed by the app's client secret, over
/// method + URI + body + timestamp (ms).
pub fn signature_v3(
    secret: &str,
    method: &str,
    uri: &str,
    body: &[u8],
    timestamp_ms: i64,
) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(method.as_bytes());
    mac.update(uri.as_bytes());
    mac.update(body);
    mac.update(timestamp_ms.to_string().as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// v1: hex SHA-256 of client secret + body.
pub fn signature_v1(secret: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(secret.as_bytes());
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends pending events in batches of up to 100, like HubSpot; a failed batch is retried
/// with growing delays, up to 10 attempts, with `attemptNumber` counting up.
pub(super) async fn deliver_webhooks(hs: Arc<HubSpot>) {
    let Some(url) = hs.options.webhook_url.clone() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client");
            return;
        }
    };
    loop {
        let batch: Vec<Value> = {
            let mut q = hs.webhooks.lock().unwrap_or_else(|p| p.into_inner());
            let n = q.len().min(100);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), hs.wake.notified()).await;
            continue;
        }
        // Let a burst of changes gather into one request.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut batch = batch;
        for attempt in 0..10u32 {
            for e in &mut batch {
                e["attemptNumber"] = json!(attempt);
            }
            let body = Value::Array(batch.clone()).to_string();
            let ts = now_ms();
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header(
                    "x-hubspot-signature-v3",
                    signature_v3(&hs.options.client_secret, "POST", &url, body.as_bytes(), ts),
                )
                .header("x-hubspot-request-timestamp", ts.to_string())
                .header(
                    "x-hubspot-signature",
                    signature_v1(&hs.options.client_secret, body.as_bytes()),
                )
                .header("x-hubspot-signature-version", "v1")
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => break,
                outcome => {
                    let why = match outcome {
                        Ok(r) => format!("HTTP {}", r.status()),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(attempt, %why, "webhook delivery failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt.min(6)))).await;
                }
            }
        }
    }
}
