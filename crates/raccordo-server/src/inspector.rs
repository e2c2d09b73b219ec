//! The request inspector: ingest requests the hub refused are kept — credentials redacted,
//! the body up to a limit, the problem answered — so that a 422 from a form tool or a CRM
//! webhook can be read at `GET /api/v1/requests` and replayed once the source is fixed.
//!
//! The request path never waits for the store: a refused request is handed to a bounded
//! queue (dropped and counted when it is full, as under a flood of bad requests) and written
//! by a background task, which also enforces the retention.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use raccordo_core::{Clock, RejectedRequest, RejectedRequests};
use raccordo_ingest::InspectorSettings;
use raccordo_runtime::supervisor::TaskContext;

use crate::problem::Problem;

/// Refused requests waiting to be written; beyond this they are dropped (and counted).
const QUEUE: usize = 1024;
/// How often old requests are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Headers kept as they are; every other header whose name suggests a credential is
/// redacted (see [`redacted_headers`]).
const PLAIN: [&str; 4] = [
    "idempotency-key",
    "webhook-id",
    "webhook-timestamp",
    "x-hubspot-request-timestamp",
];

pub struct Inspector {
    settings: InspectorSettings,
    store: Arc<dyn RejectedRequests>,
    clock: Arc<dyn Clock>,
    queue: tokio::sync::mpsc::Sender<RejectedRequest>,
    queued: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<RejectedRequest>>,
}

/// What the ingest route knows of a refused request.
pub struct Refused<'a> {
    pub source: Option<String>,
    pub target: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub authenticated: bool,
    pub problem: &'a Problem,
}

impl Inspector {
    pub fn new(
        settings: InspectorSettings,
        store: Arc<dyn RejectedRequests>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let (queue, queued) = tokio::sync::mpsc::channel(QUEUE);
        Arc::new(Self {
            settings,
            store,
            clock,
            queue,
            queued: tokio::sync::Mutex::new(queued),
        })
    }

    pub fn store(&self) -> &Arc<dyn RejectedRequests> {
        &self.store
    }

    /// Keeps a refused request (without waiting for the store).
    pub fn record(&self, refused: Refused<'_>) {
        if !self.settings.enabled {
            return;
        }
        let kept = refused.body.len().min(self.settings.max_body_bytes);
        let mut target = refused.target.to_string();
        if let Some(query) = refused.query {
            target.push('?');
            target.push_str(&redacted_query(query));
        }
        let request = RejectedRequest {
            id: format!("req_{}", ulid::Ulid::new()),
            source: refused.source,
            target,
            received_at_ms: self.clock.now_ms(),
            status: refused.problem.status,
            problem: serde_json::to_value(refused.problem).unwrap_or_default(),
            headers: redacted_headers(refused.headers),
            body: refused.body[..kept].to_vec(),
            body_bytes: refused.body.len() as u64,
            authenticated: refused.authenticated,
            replay: None,
        };
        if self.queue.try_send(request).is_err() {
            metrics::counter!("raccordo_inspector_dropped_total").increment(1);
        }
    }

    /// Writes queued requests and purges old ones until shutdown. A failed write ends the
    /// run (the supervisor restarts it); the request being written is lost, and counted.
    pub async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        let mut queued = self.queued.lock().await;
        let mut purge = tokio::time::interval(PURGE_EVERY);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = queued.recv() => {
                    let Some(request) = request else { return Ok(()) };
                    if let Err(e) = self.store.record_rejected(&request).await {
                        metrics::counter!("raccordo_inspector_dropped_total").increment(1);
                        return Err(e.into());
                    }
                    metrics::counter!("raccordo_inspector_requests_total").increment(1);
                }
                _ = purge.tick() => {
                    let before = self.clock.now_ms() - self.settings.retention.as_millis() as i64;
                    let purged = self.store.purge_rejected(before, self.settings.max_requests).await?;
                    if purged > 0 {
                        metrics::counter!("raccordo_inspector_purged_total").increment(purged);
                    }
                }
                _ = ctx.cancelled() => return Ok(()),
            }
        }
    }
}

/// Whether a header (or query parameter) name looks like it carries a credential.
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if PLAIN.contains(&name.as_str()) {
        return false;
    }
    [
        "auth",
        "cookie",
        "key",
        "token",
        "secret",
        "signature",
        "password",
        "session",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// The headers in order, credentials replaced by `[redacted]`.
pub fn redacted_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let text = if is_secret_name(name.as_str()) {
                "[redacted]".to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_string(), text)
        })
        .collect()
}

/// A query string with the values of credential-like parameters (`api_key=…`) redacted.
pub fn redacted_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_name(name) => format!("{name}=[redacted]"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_and_delivery_ids_kept() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer abc"),
            ("x-api-key", "k-123"),
            ("webhook-signature", "v1,xyz"),
            ("x-hubspot-signature-v3", "sig"),
            ("cookie", "session=1"),
            ("x-custom-token", "t"),
            ("webhook-id", "msg_1"),
            ("idempotency-key", "order-7"),
            ("content-type", "application/json"),
        ] {
            headers.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        let kept = redacted_headers(&headers);
        let get = |n: &str| kept.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        for secret in [
            "authorization",
            "x-api-key",
            "webhook-signature",
            "x-hubspot-signature-v3",
            "cookie",
            "x-custom-token",
        ] {
            assert_eq!(get(secret), Some("[redacted]"), "{secret}");
        }
        assert_eq!(get("webhook-id"), Some("msg_1"));
        assert_eq!(get("idempotency-key"), Some("order-7"));
        assert_eq!(get("content-type"), Some("application/json"));
    }

    #[test]
    fn secret_query_values_are_redacted() {
        assert_eq!(
            redacted_query("api_key=abc&lang=it&token=x&flag"),
            "api_key=[redacted]&lang=it&token=[redacted]&flag"
        );
    }
}
