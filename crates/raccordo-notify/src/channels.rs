use std::sync::Arc;

use async_trait::async_trait;
use raccordo_core::{Clock, Completion};
use serde::{Deserialize, Serialize};

mod email;
mod slack;
mod webhook;

pub use email::{EmailChannel, EmailConfig, SmtpTls};
pub use slack::{SlackChannel, SlackConfig};
pub use webhook::{WebhookChannel, WebhookConfig};

/// What a channel delivers: one alert, already worded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// `alt_<ULID>`.
    pub id: String,
    /// Which of the configured channels this copy goes to (index in `[alerts] channels`);
    /// `{id}-{channel}` is the delivery's idempotency key.
    pub channel: usize,
    /// The rule that fired (`duplicate_burst`, …).
    pub kind: String,
    /// What it is about (a source, a channel, `live`).
    pub subject: String,
    pub message: String,
    pub at_ms: i64,
}

impl Notification {
    /// The idempotency key of this delivery (`webhook-id`): the same on every retry.
    pub fn delivery_id(&self) -> String {
        format!("{}-{}", self.id, self.channel)
    }
}

/// One way of telling people.
#[async_trait]
pub trait Channel: Send + Sync {
    /// The channel's kind as written in the config (`slack`, …).
    fn kind(&self) -> &'static str;

    /// One delivery attempt. `Retryable` for failures that may pass later (timeouts,
    /// connection errors, 5xx, 408, 429 with its `Retry-After`); `Permanent` otherwise.
    async fn send(&self, notification: &Notification) -> Completion;
}

/// `[[alerts.channels]]`: the registry of channel kinds. Adding a channel is a module with its
/// config and `Channel` impl, and one variant here with one arm in [`ChannelConfig::build`].
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelConfig {
    /// A Slack incoming webhook; the message uses Block Kit.
    Slack(SlackConfig),
    /// Any HTTP endpoint; requests are signed like Standard Webhooks with `secret`.
    Webhook(WebhookConfig),
    /// E-mail over SMTP.
    Email(EmailConfig),
}

/// What channels share: one HTTP client (connection pool, built on the outbound policy and
/// following no redirects: a signed body goes only where it was addressed), the policy its
/// URLs are checked against, and the hub's clock.
#[derive(Clone)]
pub struct ChannelContext {
    pub http: reqwest::Client,
    pub outbound: raccordo_outbound::Outbound,
    pub clock: Arc<dyn Clock>,
}

impl ChannelContext {
    pub fn new(
        outbound: &raccordo_outbound::Outbound,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: raccordo_outbound::client_builder(outbound, raccordo_outbound::Redirects::Never)
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
            outbound: outbound.clone(),
            clock,
        })
    }
}

impl ChannelConfig {
    /// Checks the config as `raccordo check` does, without sending anything.
    pub fn validate(&self, outbound: &raccordo_outbound::Outbound) -> Result<(), String> {
        self.build(&ChannelContext {
            http: reqwest::Client::new(),
            outbound: outbound.clone(),
            clock: Arc::new(raccordo_core::SystemClock),
        })
        .map(|_| ())
    }

    pub fn build(&self, context: &ChannelContext) -> Result<Box<dyn Channel>, String> {
        Ok(match self {
            ChannelConfig::Slack(c) => Box::new(SlackChannel::new(c, context)?),
            ChannelConfig::Webhook(c) => Box::new(WebhookChannel::new(c, context)?),
            ChannelConfig::Email(c) => Box::new(EmailChannel::new(c)?),
        })
    }

    /// Makes relative file paths in the config relative to `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        if let ChannelConfig::Email(email) = self
            && let Some(path) = &email.ca_file
            && path.is_relative()
        {
            email.ca_file = Some(base.join(path));
        }
    }
}

/// A URL the outbound policy lets the hub call, or why not (never echoing the URL: a Slack
/// webhook's path is its secret).
fn check_url(url: &str, context: &ChannelContext) -> Result<(), String> {
    context
        .outbound
        .check_url_text(url)
        .map(|_| ())
        .map_err(|e| format!("`url`: {e}"))
}

/// Reads an HTTP answer the way every HTTP channel does, and records the call (by host
/// only: a Slack webhook's path is its secret).
async fn completion_of(
    kind: &str,
    url: &str,
    started: std::time::Instant,
    result: Result<reqwest::Response, reqwest::Error>,
) -> Completion {
    let (status, timed_out) = match &result {
        Ok(r) => (Some(r.status().as_u16()), false),
        Err(e) => (None, e.is_timeout()),
    };
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    raccordo_core::calls::record(
        &format!("notify:{kind}"),
        format!("POST {host}"),
        status,
        started.elapsed(),
        raccordo_core::calls::reason(status, timed_out),
    );
    match result {
        Ok(r) if r.status().is_success() => Completion::Done,
        Ok(r)
            if r.status().as_u16() == 429
                || r.status().is_server_error()
                || r.status().as_u16() == 408 =>
        {
            let retry_after_ms = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
                .map(|s| s.saturating_mul(1000));
            Completion::Retryable {
                error: format!("HTTP {}", r.status().as_u16()),
                retry_after_ms,
            }
        }
        Ok(r) => Completion::Permanent {
            error: format!("HTTP {}", r.status().as_u16()),
        },
        Err(e) => Completion::Retryable {
            error: format!("connection: {e}"),
            retry_after_ms: None,
        },
    }
}
