//! Any HTTP endpoint, signed like Standard Webhooks so that the receiver can verify it.

use std::sync::Arc;

use async_trait::async_trait;
use raccordo_core::{Clock, Completion};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Channel, ChannelContext, Notification, check_url, completion_of};
use crate::signer::WebhookSecret;

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint that receives alerts as signed JSON `POST`s.
    pub url: String,
    /// `whsec_` + base64: the receiver verifies `webhook-signature` with it.
    #[serde(serialize_with = "raccordo_core::redacted")]
    pub secret: String,
}

pub struct WebhookChannel {
    url: String,
    secret: WebhookSecret,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
}

impl WebhookChannel {
    pub fn new(config: &WebhookConfig, context: &ChannelContext) -> Result<Self, String> {
        check_url(&config.url, context)?;
        let secret = WebhookSecret::parse(&config.secret).map_err(|e| format!("`secret`: {e}"))?;
        Ok(Self {
            url: config.url.clone(),
            secret,
            http: context.http.clone(),
            clock: context.clock.clone(),
        })
    }
}

#[async_trait]
impl Channel for WebhookChannel {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    async fn send(&self, n: &Notification) -> Completion {
        let data = json!({
            "alert": n.id, "channel": n.channel, "kind": n.kind, "source": n.subject, "message": n.message, "at_ms": n.at_ms,
        });
        let body =
            serde_json::to_vec(&json!({ "type": "alert", "data": data })).unwrap_or_default();
        let ts = self.clock.now_ms() / 1000;
        let id = n.delivery_id();
        let request = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", self.secret.sign(&id, ts, &body))
            .body(body);
        let started = std::time::Instant::now();
        let sent = request.send().await;
        completion_of("webhook", &self.url, started, sent).await
    }
}
