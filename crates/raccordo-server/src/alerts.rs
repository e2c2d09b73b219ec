//! Alerts: rules watch what the hub sees, channels deliver. Deliveries go through the work
//! queue, so they retry with backoff, survive restarts, and land in the dead-letter queue
//! when they keep failing; every outcome is counted and shown in the alert history.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raccordo_core::{Completion, CompletionOutcome, NewWorkItem, RetryPolicy, WorkQueue};
use raccordo_ingest::auth::WebhookSecret;
use raccordo_storage_sqlite::SqliteWorkQueue;
use raccordo_stream::alerts::{DuplicateBurst, DuplicateBurstDetector, DuplicateBurstRule};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const QUEUE: &str = "alerts";
const HISTORY: usize = 200;

/// `[alerts]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// More than `threshold` duplicates from one source within `window` (the seed's rule).
    pub duplicate_burst: DuplicateBurstConfig,
    /// First retry of a failed delivery after this; then doubling, 5 attempts in all.
    #[serde(with = "humantime_serde")]
    pub retry_first_delay: Duration,
    pub channels: Vec<ChannelConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            duplicate_burst: DuplicateBurstConfig::default(),
            retry_first_delay: Duration::from_secs(30),
            channels: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DuplicateBurstConfig {
    pub enabled: bool,
    pub threshold: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
}

impl Default for DuplicateBurstConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 3,
            window: Duration::from_secs(600),
            cooldown: Duration::from_secs(1800),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelConfig {
    /// A Slack incoming webhook; the message uses Block Kit.
    Slack { url: String },
    /// Any HTTP endpoint; requests are signed like Standard Webhooks with `secret`.
    Webhook { url: String, secret: String },
    /// E-mail over SMTP.
    Email(EmailConfig),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub host: String,
    /// Default: 587 for `starttls`, 465 for `tls`, 25 for `none`.
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    pub username: Option<String>,
    #[serde(skip_serializing)]
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    /// Extra trusted root certificate (PEM), for servers with a private CA.
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No encryption: only for a relay on the same host or network you trust.
    None,
}

impl ChannelConfig {
    fn name(&self) -> &'static str {
        match self {
            ChannelConfig::Slack { .. } => "slack",
            ChannelConfig::Webhook { .. } => "webhook",
            ChannelConfig::Email(_) => "email",
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let url = match self {
            ChannelConfig::Slack { url } | ChannelConfig::Webhook { url, .. } => url,
            ChannelConfig::Email(email) => return email.transport().map(|_| ()),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err("`url` must be an http(s) URL".into());
        }
        if let ChannelConfig::Webhook { secret, .. } = self {
            WebhookSecret::parse(secret).map_err(|e| format!("`secret`: {e}"))?;
        }
        Ok(())
    }
}

impl EmailConfig {
    fn transport(&self) -> Result<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>, String> {
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        type Transport = lettre::AsyncSmtpTransport<lettre::Tokio1Executor>;
        for (i, address) in std::iter::once(&self.from).chain(&self.to).enumerate() {
            address.parse::<lettre::message::Mailbox>().map_err(|e| {
                let field = if i == 0 {
                    "from".to_string()
                } else {
                    format!("to[{}]", i - 1)
                };
                format!("`{field}` is not an e-mail address: {e}")
            })?;
        }
        if self.to.is_empty() {
            return Err("`to` needs at least one address".into());
        }
        let mut tls = TlsParameters::builder(self.host.clone());
        if let Some(path) = &self.ca_file {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            tls = tls.add_root_certificate(
                Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?,
            );
        }
        let tls = tls.build_rustls().map_err(|e| format!("TLS set-up: {e}"))?;
        let (tls, port) = match self.tls {
            SmtpTls::Starttls => (Tls::Required(tls), 587),
            SmtpTls::Tls => (Tls::Wrapper(tls), 465),
            SmtpTls::None => (Tls::None, 25),
        };
        let mut builder = Transport::builder_dangerous(&self.host)
            .port(self.port.unwrap_or(port))
            .tls(tls)
            .timeout(Some(Duration::from_secs(20)));
        if let (Some(user), Some(password)) = (&self.username, &self.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(builder.build())
    }
}

/// One fired alert and what became of its deliveries.
#[derive(Debug, Clone, Serialize)]
pub struct AlertRecord {
    pub id: String,
    pub kind: &'static str,
    pub source: String,
    pub message: String,
    pub at_ms: i64,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub channel: usize,
    pub kind: &'static str,
    /// `pending`, `delivered`, `retrying` or `failed` (then in the dead-letter queue).
    pub status: &'static str,
    pub attempts: u32,
    pub last_error: Option<String>,
}

pub struct Alerts {
    config: AlertsConfig,
    detector: Mutex<DuplicateBurstDetector>,
    queue: Arc<SqliteWorkQueue>,
    history: Mutex<VecDeque<AlertRecord>>,
    wake: tokio::sync::Notify,
    client: reqwest::Client,
    clock: Arc<dyn raccordo_core::Clock>,
}

impl Alerts {
    pub fn new(
        config: AlertsConfig,
        queue: Arc<SqliteWorkQueue>,
        clock: Arc<dyn raccordo_core::Clock>,
    ) -> anyhow::Result<Arc<Self>> {
        let rule = DuplicateBurstRule {
            threshold: config.duplicate_burst.threshold,
            window_ms: config.duplicate_burst.window.as_millis() as i64,
            cooldown_ms: config.duplicate_burst.cooldown.as_millis() as i64,
        };
        Ok(Arc::new(Self {
            detector: Mutex::new(DuplicateBurstDetector::new(rule)),
            config,
            queue,
            history: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            clock,
        }))
    }

    /// Called with every ingest answer that held duplicates.
    pub async fn observe_duplicates(&self, source: &str, count: usize, now_ms: i64) {
        if !self.config.duplicate_burst.enabled {
            return;
        }
        let fired: Vec<DuplicateBurst> = {
            let mut detector = self.detector.lock().unwrap_or_else(|p| p.into_inner());
            (0..count)
                .filter_map(|_| detector.observe(source, now_ms))
                .collect()
        };
        for burst in fired {
            let message = format!(
                "{} duplicates from source `{}` within {} minutes",
                burst.count,
                burst.source,
                self.config.duplicate_burst.window.as_secs() / 60
            );
            self.fire("duplicate_burst", &burst.source, message, now_ms)
                .await;
        }
    }

    async fn fire(&self, kind: &'static str, source: &str, message: String, now_ms: i64) {
        let id = format!("alt_{}", ulid::Ulid::new());
        tracing::warn!(alert = kind, %source, %message, "alert");
        metrics::counter!("raccordo_alerts_total", "kind" => kind).increment(1);
        let mut deliveries = Vec::new();
        for (channel, config) in self.config.channels.iter().enumerate() {
            let item = NewWorkItem {
                queue: QUEUE.into(),
                group_key: format!("alert-channel:{channel}"),
                operation: "deliver".into(),
                payload: json!({ "alert": id, "channel": channel, "kind": kind, "source": source, "message": message, "at_ms": now_ms }),
                coalesce: false,
            };
            match self.queue.enqueue(item, now_ms).await {
                Ok(_) => deliveries.push(Delivery {
                    channel,
                    kind: config.name(),
                    status: "pending",
                    attempts: 0,
                    last_error: None,
                }),
                Err(e) => tracing::error!(error = %e, "could not queue an alert delivery"),
            }
        }
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.push_front(AlertRecord {
            id,
            kind,
            source: source.into(),
            message,
            at_ms: now_ms,
            deliveries,
        });
        history.truncate(HISTORY);
        drop(history);
        self.wake.notify_one();
    }

    pub fn history(&self) -> Vec<AlertRecord> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn record(
        &self,
        alert: &str,
        channel: usize,
        status: &'static str,
        attempts: u32,
        error: Option<String>,
    ) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(record) = history.iter_mut().find(|r| r.id == alert)
            && let Some(d) = record.deliveries.iter_mut().find(|d| d.channel == channel)
        {
            d.status = status;
            d.attempts = attempts;
            d.last_error = error;
        }
    }

    /// Delivers queued alerts until the process ends.
    pub fn spawn_worker(self: &Arc<Self>) {
        let alerts = self.clone();
        tokio::spawn(async move {
            let policy = RetryPolicy {
                first_delay_ms: alerts.config.retry_first_delay.as_millis() as i64,
                ..RetryPolicy::default()
            };
            loop {
                let now = alerts.clock.now_ms();
                let items = alerts
                    .queue
                    .claim(QUEUE, 16, 60_000, now)
                    .await
                    .unwrap_or_default();
                for item in &items {
                    let completion = alerts.deliver(&item.payload).await;
                    let channel = item.payload["channel"].as_u64().unwrap_or(0) as usize;
                    let alert = item.payload["alert"].as_str().unwrap_or("").to_string();
                    let error = match &completion {
                        Completion::Retryable { error, .. } | Completion::Permanent { error } => {
                            Some(error.clone())
                        }
                        Completion::Done => None,
                    };
                    let outcome = alerts
                        .queue
                        .complete(
                            item,
                            completion,
                            &policy,
                            rand::random(),
                            alerts.clock.now_ms(),
                        )
                        .await;
                    let status = match outcome {
                        Ok(CompletionOutcome::Completed) => "delivered",
                        Ok(CompletionOutcome::RetryAt(_)) => "retrying",
                        Ok(CompletionOutcome::DeadLettered(_)) => "failed",
                        Ok(CompletionOutcome::LeaseLost) | Err(_) => continue,
                    };
                    metrics::counter!("raccordo_alert_deliveries_total", "outcome" => status)
                        .increment(1);
                    alerts.record(&alert, channel, status, item.attempts, error);
                }
                if items.is_empty() {
                    // Idle: wake on a new alert, or look again for retries coming due.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(250), alerts.wake.notified())
                            .await;
                }
            }
        });
    }

    async fn deliver(&self, payload: &Value) -> Completion {
        let channel = payload["channel"].as_u64().unwrap_or(u64::MAX) as usize;
        let Some(config) = self.config.channels.get(channel) else {
            return Completion::Permanent {
                error: "the channel is no longer configured".into(),
            };
        };
        let message = payload["message"].as_str().unwrap_or("");
        if let ChannelConfig::Email(email) = config {
            return send_email(email, payload, message).await;
        }
        let request = match config {
            ChannelConfig::Slack { url } => self.client.post(url).json(&json!({
                "text": format!("raccordo: {message}"),
                "blocks": [
                    { "type": "header", "text": { "type": "plain_text", "text": "raccordo alert" } },
                    { "type": "section", "text": { "type": "mrkdwn", "text": format!("*{}*\n{message}", payload["kind"].as_str().unwrap_or("")) } },
                    { "type": "context", "elements": [ { "type": "mrkdwn", "text": format!("source `{}`", payload["source"].as_str().unwrap_or("")) } ] }
                ]
            })),
            ChannelConfig::Webhook { url, secret } => {
                let Ok(secret) = WebhookSecret::parse(secret) else {
                    return Completion::Permanent { error: "invalid webhook secret".into() };
                };
                let body = serde_json::to_vec(&json!({ "type": "alert", "data": payload })).unwrap_or_default();
                let id = format!("{}-{channel}", payload["alert"].as_str().unwrap_or(""));
                let ts = self.clock.now_ms() / 1000;
                self.client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", secret.sign(&id, ts, &body))
                    .body(body)
            }
            ChannelConfig::Email(_) => unreachable!("handled above"),
        };
        match request.send().await {
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
                    .and_then(|v| v.parse::<i64>().ok())
                    .map(|s| s * 1000);
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
}

async fn send_email(config: &EmailConfig, payload: &Value, message: &str) -> Completion {
    use lettre::AsyncTransport;
    let transport = match config.transport() {
        Ok(t) => t,
        Err(e) => return Completion::Permanent { error: e },
    };
    let kind = payload["kind"].as_str().unwrap_or("alert");
    let mut builder = lettre::Message::builder()
        .subject(format!("[raccordo] {kind}: {message}"))
        .header(lettre::message::header::ContentType::TEXT_PLAIN);
    // Addresses were checked when the config was loaded.
    if let Ok(from) = config.from.parse() {
        builder = builder.from(from);
    }
    for to in &config.to {
        if let Ok(to) = to.parse() {
            builder = builder.to(to);
        }
    }
    let body = format!(
        "{message}\n\nkind: {kind}\nsource: {}\nalert: {}\n",
        payload["source"].as_str().unwrap_or(""),
        payload["alert"].as_str().unwrap_or("")
    );
    let email = match builder.body(body) {
        Ok(email) => email,
        Err(e) => {
            return Completion::Permanent {
                error: format!("building the message: {e}"),
            };
        }
    };
    match transport.send(email).await {
        Ok(_) => Completion::Done,
        Err(e) if e.is_permanent() => Completion::Permanent {
            error: format!("SMTP: {e}"),
        },
        Err(e) => Completion::Retryable {
            error: format!("SMTP: {e}"),
            retry_after_ms: None,
        },
    }
}
