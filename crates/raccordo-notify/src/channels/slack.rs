//! Slack incoming webhooks, with a Block Kit message and a plain-text fallback.

use async_trait::async_trait;
use raccordo_core::Completion;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Channel, ChannelContext, Notification, check_url, completion_of};

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The incoming-webhook URL Slack gave (`https://hooks.slack.com/services/…`).
    pub url: String,
}

pub struct SlackChannel {
    url: String,
    http: reqwest::Client,
}

impl SlackChannel {
    pub fn new(config: &SlackConfig, context: &ChannelContext) -> Result<Self, String> {
        check_url(&config.url, context)?;
        Ok(Self {
            url: config.url.clone(),
            http: context.http.clone(),
        })
    }
}

#[async_trait]
impl Channel for SlackChannel {
    fn kind(&self) -> &'static str {
        "slack"
    }

    async fn send(&self, n: &Notification) -> Completion {
        let body = json!({
            "text": format!("raccordo: {}", n.message),
            "blocks": [
                { "type": "header", "text": { "type": "plain_text", "text": "raccordo alert" } },
                { "type": "section", "text": { "type": "mrkdwn", "text": format!("*{}*\n{}", n.kind, n.message) } },
                { "type": "context", "elements": [ { "type": "mrkdwn", "text": format!("source `{}`", n.subject) } ] }
            ]
        });
        let started = std::time::Instant::now();
        let sent = self.http.post(&self.url).json(&body).send().await;
        completion_of("slack", &self.url, started, sent).await
    }
}
