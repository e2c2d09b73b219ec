//! Alerts: rules watch what the hub sees, channels deliver. Deliveries go through the work
//! queue, so they retry with backoff, survive restarts, and land in the dead-letter queue
//! when they keep failing; every outcome is counted and shown in the alert history.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raccordo_core::{Completion, CompletionOutcome, NewWorkItem, RetryPolicy, WorkQueue};
use raccordo_ingest::auth::WebhookSecret;
use raccordo_storage_sqlite::SqliteWorkQueue;
use raccordo_stream::alerts::{
    ConversionDropRule, DuplicateBurst, DuplicateBurstDetector, DuplicateBurstRule,
    ThresholdDetector, ThresholdRule, WindowAlert, WindowAlertEvaluator, WindowOutcome,
};

use crate::live::{Dimension, LiveMetrics};
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
    /// Share of `stato = fallito` events in a final window (overall and per channel).
    pub failure_rate: FailureRateConfig,
    /// Conversion rate of a final window against the windows before it.
    pub conversion_drop: ConversionDropConfig,
    /// Acknowledged events taking too long to reach the live windows.
    pub ingest_lag: LimitConfig,
    /// A source's clock too far from ours.
    pub clock_skew: LimitConfig,
    /// First retry of a failed delivery after this; then doubling, 5 attempts in all.
    #[serde(with = "humantime_serde")]
    pub retry_first_delay: Duration,
    pub channels: Vec<ChannelConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            duplicate_burst: DuplicateBurstConfig::default(),
            failure_rate: FailureRateConfig::default(),
            conversion_drop: ConversionDropConfig::default(),
            ingest_lag: LimitConfig {
                enabled: true,
                threshold: Duration::from_secs(30),
                cooldown: Duration::from_secs(1800),
            },
            clock_skew: LimitConfig {
                enabled: true,
                threshold: Duration::from_secs(120),
                cooldown: Duration::from_secs(1800),
            },
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailureRateConfig {
    pub enabled: bool,
    /// Alert above this share of failed events (0.2 = 20 %).
    pub threshold: f64,
    /// Windows with fewer events are not judged.
    pub min_events: u64,
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
}

impl Default for FailureRateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 0.2,
            min_events: 20,
            cooldown: Duration::from_secs(1800),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversionDropConfig {
    pub enabled: bool,
    /// Alert when the rate is lower than the baseline by more than this (0.5 = half).
    pub threshold: f64,
    /// How many earlier final windows make the baseline (their mean rate).
    pub baseline_windows: usize,
    pub min_events: u64,
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
}

impl Default for ConversionDropConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 0.5,
            baseline_windows: 6,
            min_events: 20,
            cooldown: Duration::from_secs(1800),
        }
    }
}

/// A rule on a duration: alert when it goes over `threshold`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    #[serde(default = "enabled")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub threshold: Duration,
    #[serde(with = "humantime_serde", default = "half_an_hour")]
    pub cooldown: Duration,
}

fn enabled() -> bool {
    true
}

fn half_an_hour() -> Duration {
    Duration::from_secs(1800)
}

impl AlertsConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.failure_rate.threshold) {
            problems.push((
                "failure_rate.threshold".into(),
                "must be between 0 and 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.conversion_drop.threshold) {
            problems.push((
                "conversion_drop.threshold".into(),
                "must be between 0 and 1".into(),
            ));
        }
        if self.conversion_drop.baseline_windows == 0 {
            problems.push((
                "conversion_drop.baseline_windows".into(),
                "must be at least 1".into(),
            ));
        }
        problems
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
    windows: Mutex<WindowAlertEvaluator>,
    /// Cooldowns of the clock-skew and ingest-lag rules.
    limits: Mutex<ThresholdDetector>,
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
        let failure_rate = config.failure_rate.enabled.then_some(ThresholdRule {
            threshold: config.failure_rate.threshold,
            below: false,
            min_samples: config.failure_rate.min_events,
            cooldown_ms: config.failure_rate.cooldown.as_millis() as i64,
        });
        let drop = config
            .conversion_drop
            .enabled
            .then_some(ConversionDropRule {
                threshold: config.conversion_drop.threshold,
                baseline_windows: config.conversion_drop.baseline_windows.max(1),
                min_events: config.conversion_drop.min_events,
                cooldown_ms: config.conversion_drop.cooldown.as_millis() as i64,
            });
        Ok(Arc::new(Self {
            detector: Mutex::new(DuplicateBurstDetector::new(rule)),
            windows: Mutex::new(WindowAlertEvaluator::new(failure_rate, drop)),
            limits: Mutex::new(ThresholdDetector::default()),
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

    /// Called with the clock skew every ingest request showed.
    pub async fn observe_clock_skew(&self, source: &str, skew_ms: i64, now_ms: i64) {
        let rule = &self.config.clock_skew;
        // Called on every ingest request: the common case decides without a lock.
        if skew_ms.unsigned_abs() as u128 <= rule.threshold.as_millis() {
            return;
        }
        if !rule.enabled
            || !self.limit_breached(rule, &format!("skew:{source}"), skew_ms.abs(), now_ms)
        {
            return;
        }
        let message = format!(
            "the clock of source `{source}` is {:.1} s {} ours (limit {} s)",
            skew_ms.abs() as f64 / 1000.0,
            if skew_ms > 0 { "ahead of" } else { "behind" },
            rule.threshold.as_secs()
        );
        self.fire("clock_skew", source, message, now_ms).await;
    }

    fn limit_breached(
        &self,
        rule: &LimitConfig,
        subject: &str,
        value_ms: i64,
        now_ms: i64,
    ) -> bool {
        let threshold = ThresholdRule {
            threshold: rule.threshold.as_millis() as f64,
            below: false,
            min_samples: 0,
            cooldown_ms: rule.cooldown.as_millis() as i64,
        };
        self.limits.lock().unwrap_or_else(|p| p.into_inner()).check(
            &threshold,
            subject,
            value_ms as f64,
            1,
            now_ms,
        )
    }

    /// Watches final windows (failure rate, conversion drop) and the live lag.
    pub fn spawn_watchers(self: &Arc<Self>, live: Arc<LiveMetrics>) {
        let alerts = self.clone();
        let mut fired = live.subscribe();
        let window_ms = live.window_size_ms();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let rows = match fired.recv().await {
                    Ok(rows) => rows,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                };
                let now = alerts.clock.now_ms();
                let found: Vec<WindowAlert> = {
                    let mut evaluator = alerts.windows.lock().unwrap_or_else(|p| p.into_inner());
                    rows.iter()
                        .filter(|r| matches!(r.dimension, Dimension::All | Dimension::Canale))
                        .flat_map(|r| {
                            let subject = match r.dimension {
                                Dimension::All => "all".to_string(),
                                _ => format!("canale={}", r.value),
                            };
                            // Windows rebuilt from the log at start only feed baselines.
                            let recent = r.window_end_ms >= now - 2 * window_ms;
                            evaluator.observe(
                                &WindowOutcome {
                                    subject: &subject,
                                    window_start: r.window_start_ms,
                                    events: r.events,
                                    failures: r.failures,
                                    conversion_rate: r.conversion_rate,
                                },
                                now,
                                recent,
                            )
                        })
                        .collect()
                };
                for alert in found {
                    let (kind, subject, message) = match alert {
                        WindowAlert::FailureRate {
                            subject,
                            window_start,
                            rate,
                            events,
                        } => (
                            "failure_rate",
                            subject,
                            format!(
                                "{:.0} % of {events} events failed in the window starting {}",
                                rate * 100.0,
                                format_ms(window_start)
                            ),
                        ),
                        WindowAlert::ConversionDrop {
                            subject,
                            window_start,
                            current,
                            baseline,
                            drop,
                        } => (
                            "conversion_drop",
                            subject,
                            format!(
                                "conversion rate {:.1} % in the window starting {}, {:.0} % below the previous windows' {:.1} %",
                                current * 100.0,
                                format_ms(window_start),
                                drop * 100.0,
                                baseline * 100.0
                            ),
                        ),
                    };
                    alerts.fire(kind, &subject, message, now).await;
                }
            }
        });
        let alerts = self.clone();
        tokio::spawn(async move {
            let rule = alerts.config.ingest_lag.clone();
            if !rule.enabled {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = alerts.clock.now_ms();
                let lag_ms = live.health().lag_ms;
                if alerts.limit_breached(&rule, "ingest_lag", lag_ms, now) {
                    let message = format!(
                        "acknowledged events take {:.1} s to reach the live metrics (limit {} s)",
                        lag_ms as f64 / 1000.0,
                        rule.threshold.as_secs()
                    );
                    alerts.fire("ingest_lag", "live", message, now).await;
                }
            }
        });
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

fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
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
