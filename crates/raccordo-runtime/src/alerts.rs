//! The alert engine: rules watch what the hub sees, channels deliver.
//!
//! Rules are fed from the log's consumers and the health counters, never from the request
//! path: final windows (failure rate, conversion drop) come from the live metrics, the lag
//! from their health, duplicate bursts and clock skew from each source's counters. A fired
//! alert is recorded in the durable alert history and one delivery per channel goes on the
//! work queue, so deliveries retry with backoff, survive restarts and end in the dead-letter
//! queue when they keep failing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use raccordo_core::{
    AlertHistory, AlertRecord, Clock, Completion, CompletionOutcome, DeliveryRecord,
    DeliveryStatus, Job, NewWorkItem, RetryPolicy, WorkItem, WorkQueue,
};
use raccordo_ingest::Source;
use raccordo_notify::{Channel, ChannelConfig, ChannelContext, Notification};
use raccordo_stream::alerts::{
    ConversionDropRule, DuplicateBurst, DuplicateBurstDetector, DuplicateBurstRule,
    ThresholdDetector, ThresholdRule, WindowAlert, WindowAlertEvaluator, WindowOutcome,
};
use serde::{Deserialize, Serialize};

use crate::live::{Dimension, WindowFeed};
use crate::supervisor::TaskContext;
use crate::worker::Worker;

/// How many alerts `GET /api/v1/alerts` lists.
const HISTORY: usize = 200;
/// How often the source counters are read for duplicate bursts and clock skew.
const SOURCE_POLL: Duration = Duration::from_millis(200);

/// `[alerts]` in the config file.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
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
    #[schema(value_type = String, format = Duration)]
    pub retry_first_delay: Duration,
    /// Where alerts go (`[[alerts.channels]]`); every alert goes to every channel.
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

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DuplicateBurstConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Alert when a source sends more duplicates than this within `window`.
    pub threshold: u32,
    /// The sliding interval duplicates are counted in.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub window: Duration,
    /// After an alert, the same source stays quiet this long.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
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

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FailureRateConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Alert above this share of failed events (0.2 = 20 %).
    pub threshold: f64,
    /// Windows with fewer events are not judged.
    pub min_events: u64,
    /// After an alert, the same subject stays quiet this long.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
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

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConversionDropConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Alert when the rate is lower than the baseline by more than this (0.5 = half).
    pub threshold: f64,
    /// How many earlier final windows make the baseline (their mean rate).
    pub baseline_windows: usize,
    /// Windows with fewer events are not judged.
    pub min_events: u64,
    /// After an alert, the same subject stays quiet this long.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
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
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Whether the rule runs.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Alert when the measured duration goes over this.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub threshold: Duration,
    /// After an alert, the same rule and subject stay quiet this long.
    #[serde(with = "humantime_serde", default = "half_an_hour")]
    #[schema(value_type = String, format = Duration)]
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

impl AlertsConfig {
    /// Makes relative paths in channel configs relative to the config file's folder.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        for channel in &mut self.channels {
            channel.resolve_paths(base);
        }
    }
}

/// One alert delivery to one channel: the work item's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertDelivery(pub Notification);

impl Job for AlertDelivery {
    const QUEUE: &'static str = "alerts";
    const OPERATION: &'static str = "deliver";
    fn group_key(&self) -> String {
        format!("alert-channel:{}", self.0.channel)
    }
}

pub struct AlertEngine {
    config: AlertsConfig,
    detector: Mutex<DuplicateBurstDetector>,
    windows: Mutex<WindowAlertEvaluator>,
    /// Cooldowns of the clock-skew and ingest-lag rules.
    limits: Mutex<ThresholdDetector>,
    queue: Arc<dyn WorkQueue>,
    history: Arc<dyn AlertHistory>,
    channels: Vec<Box<dyn Channel>>,
    /// Wakes the delivery worker when an alert was queued.
    pub wake: Arc<tokio::sync::Notify>,
    clock: Arc<dyn Clock>,
}

impl AlertEngine {
    pub fn new(
        config: AlertsConfig,
        queue: Arc<dyn WorkQueue>,
        history: Arc<dyn AlertHistory>,
        clock: Arc<dyn Clock>,
        outbound: &raccordo_outbound::Outbound,
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
        let context = ChannelContext::new(outbound, clock.clone())?;
        let channels = config
            .channels
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.build(&context)
                    .map_err(|e| anyhow::anyhow!("alerts.channels[{i}]: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Arc::new(Self {
            detector: Mutex::new(DuplicateBurstDetector::new(rule)),
            windows: Mutex::new(WindowAlertEvaluator::new(failure_rate, drop)),
            limits: Mutex::new(ThresholdDetector::default()),
            config,
            queue,
            history,
            channels,
            wake: Arc::new(tokio::sync::Notify::new()),
            clock,
        }))
    }

    /// Raises an alert that another part of the hub detected (a CRM grant refused, …), at
    /// most once per `cooldown` for the same kind and subject.
    pub async fn raise(
        &self,
        kind: &str,
        subject: &str,
        message: String,
        cooldown: Duration,
    ) -> anyhow::Result<bool> {
        let now = self.clock.now_ms();
        let rule = ThresholdRule {
            threshold: 0.0,
            below: false,
            min_samples: 0,
            cooldown_ms: cooldown.as_millis() as i64,
        };
        let due = self.limits.lock().unwrap_or_else(|p| p.into_inner()).check(
            &rule,
            &format!("{kind}:{subject}"),
            1.0,
            1,
            now,
        );
        if due {
            self.fire(kind, subject, message, now).await?;
        }
        Ok(due)
    }

    /// The latest alerts and their deliveries, newest first.
    pub async fn history(&self) -> Result<Vec<AlertRecord>, raccordo_core::StoreError> {
        self.history.recent_alerts(HISTORY).await
    }

    /// Counts `count` duplicates from `source` seen now; fires on a burst.
    async fn observe_duplicates(
        &self,
        source: &str,
        count: u64,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        if !self.config.duplicate_burst.enabled || count == 0 {
            return Ok(());
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
                .await?;
        }
        Ok(())
    }

    async fn observe_clock_skew(
        &self,
        source: &str,
        skew_ms: i64,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        let rule = &self.config.clock_skew;
        if !rule.enabled
            || skew_ms.unsigned_abs() as u128 <= rule.threshold.as_millis()
            || !self.limit_breached(rule, &format!("skew:{source}"), skew_ms.abs(), now_ms)
        {
            return Ok(());
        }
        let message = format!(
            "the clock of source `{source}` is {:.1} s {} ours (limit {} s)",
            skew_ms.abs() as f64 / 1000.0,
            if skew_ms > 0 { "ahead of" } else { "behind" },
            rule.threshold.as_secs()
        );
        self.fire("clock_skew", source, message, now_ms).await
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

    /// Reads every source's counters until shutdown: duplicates since the last look feed the
    /// burst rule, the largest clock skew since the last look feeds the skew rule.
    pub async fn watch_sources(
        self: Arc<Self>,
        sources: Vec<Arc<Source>>,
        guard: Arc<raccordo_ingest::guard::AuthGuard>,
        ctx: TaskContext,
    ) -> anyhow::Result<()> {
        let mut seen: HashMap<String, u64> = sources
            .iter()
            .map(|s| (s.name.to_string(), s.health.duplicates()))
            .collect();
        // Duplicates answered before this run started were judged by the previous run (or
        // belong to another process life); only new ones count.
        while !ctx.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(SOURCE_POLL) => {}
                _ = ctx.cancelled() => return Ok(()),
            }
            let now = self.clock.now_ms();
            // An address blocked after a burst of failed authentication: one alert per
            // address and block.
            for block in guard.take_new_blocks() {
                let until =
                    time::OffsetDateTime::from_unix_timestamp(block.blocked_until_ms / 1000)
                        .ok()
                        .and_then(|t| {
                            t.format(&time::format_description::well_known::Rfc3339)
                                .ok()
                        })
                        .unwrap_or_default();
                self.raise(
                    "auth-failures",
                    &block.address.to_string(),
                    format!(
                        "{} failed authentication repeatedly (last against `{}`) and is blocked until {until}",
                        block.address, block.source
                    ),
                    Duration::from_millis(0),
                )
                .await?;
            }
            for source in &sources {
                let name = source.name.as_str();
                let total = source.health.duplicates();
                let last = seen.insert(name.to_string(), total).unwrap_or(0);
                self.observe_duplicates(name, total.saturating_sub(last), now)
                    .await?;
                let skew = source.health.take_clock_skew_peak();
                if skew != 0 {
                    self.observe_clock_skew(name, skew, now).await?;
                }
            }
        }
        Ok(())
    }

    /// Watches final windows (failure rate, conversion drop) until shutdown.
    pub async fn watch_windows(
        self: Arc<Self>,
        live: Arc<dyn WindowFeed>,
        ctx: TaskContext,
    ) -> anyhow::Result<()> {
        use tokio::sync::broadcast::error::RecvError;
        let mut fired = live.subscribe();
        let window_ms = live.window_size_ms();
        loop {
            let rows = tokio::select! {
                received = fired.recv() => match received {
                    Ok(rows) => rows,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return Ok(()),
                },
                _ = ctx.cancelled() => return Ok(()),
            };
            let now = self.clock.now_ms();
            let found: Vec<WindowAlert> = {
                let mut evaluator = self.windows.lock().unwrap_or_else(|p| p.into_inner());
                // A source that sent all of a window's events is that window's overall row:
                // its own alert would only repeat the overall one.
                let overall: std::collections::HashMap<i64, u64> = rows
                    .iter()
                    .filter(|r| r.dimension == Dimension::All)
                    .map(|r| (r.window_start_ms, r.events))
                    .collect();
                rows.iter()
                    .filter(|r| match r.dimension {
                        Dimension::All | Dimension::Canale => true,
                        Dimension::Source => overall.get(&r.window_start_ms) != Some(&r.events),
                        _ => false,
                    })
                    .flat_map(|r| {
                        let subject = match r.dimension {
                            Dimension::All => "all".to_string(),
                            _ => format!("{}={}", r.dimension.as_str(), r.value),
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
                let (kind, subject, message) = describe(alert);
                self.fire(kind, &subject, message, now).await?;
            }
        }
    }

    /// Watches how far the live windows trail the log, once a second, until shutdown.
    pub async fn watch_lag(
        self: Arc<Self>,
        live: Arc<dyn WindowFeed>,
        ctx: TaskContext,
    ) -> anyhow::Result<()> {
        let rule = self.config.ingest_lag.clone();
        if !rule.enabled {
            return Ok(());
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ctx.cancelled() => return Ok(()),
            }
            let now = self.clock.now_ms();
            let lag_ms = live.lag_ms();
            if self.limit_breached(&rule, "ingest_lag", lag_ms, now) {
                let message = format!(
                    "acknowledged events take {:.1} s to reach the live metrics (limit {} s)",
                    lag_ms as f64 / 1000.0,
                    rule.threshold.as_secs()
                );
                self.fire("ingest_lag", "live", message, now).await?;
            }
        }
    }

    /// Records the alert, then queues one delivery per channel (in that order, so that the
    /// worker always finds the record it updates).
    async fn fire(
        &self,
        kind: &str,
        subject: &str,
        message: String,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        let id = format!("alt_{}", ulid::Ulid::new());
        tracing::warn!(alert = kind, source = %subject, %message, "alert");
        metrics::counter!("raccordo_alerts_total", "kind" => kind.to_string()).increment(1);
        let deliveries = self
            .channels
            .iter()
            .enumerate()
            .map(|(channel, sender)| DeliveryRecord {
                channel,
                kind: sender.kind().into(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                last_error: None,
            })
            .collect();
        self.history
            .record_alert(&AlertRecord {
                id: id.clone(),
                kind: kind.into(),
                source: subject.into(),
                message: message.clone(),
                at_ms: now_ms,
                deliveries,
            })
            .await?;
        for channel in 0..self.channels.len() {
            let notification = Notification {
                id: id.clone(),
                channel,
                kind: kind.into(),
                subject: subject.into(),
                message: message.clone(),
                at_ms: now_ms,
            };
            let item = NewWorkItem::job(&AlertDelivery(notification), false)?;
            if let Err(e) = self.queue.enqueue(item, now_ms).await {
                tracing::error!(error = %e, alert = %id, channel, "could not queue an alert delivery");
                self.history
                    .update_delivery(
                        &id,
                        channel,
                        DeliveryStatus::Failed,
                        0,
                        Some(format!("not queued: {e}")),
                    )
                    .await?;
            }
        }
        self.wake.notify_one();
        Ok(())
    }
}

fn describe(alert: WindowAlert) -> (&'static str, String, String) {
    match alert {
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
    }
}

/// Delivers queued alerts: the `alerts` queue's worker.
#[async_trait]
impl Worker for AlertEngine {
    fn queue(&self) -> &'static str {
        AlertDelivery::QUEUE
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            first_delay_ms: self.config.retry_first_delay.as_millis() as i64,
            ..RetryPolicy::default()
        }
    }

    async fn process(&self, item: &WorkItem) -> Completion {
        let delivery = match item.payload_as::<AlertDelivery>() {
            Ok(d) => d,
            Err(error) => return Completion::Permanent { error },
        };
        match self.channels.get(delivery.0.channel) {
            Some(channel) => channel.send(&delivery.0).await,
            None => Completion::Permanent {
                error: "the channel is no longer configured".into(),
            },
        }
    }

    async fn settled(&self, item: &WorkItem, completion: &Completion, outcome: CompletionOutcome) {
        let status = match outcome {
            CompletionOutcome::Completed => DeliveryStatus::Delivered,
            CompletionOutcome::RetryAt(_) => DeliveryStatus::Retrying,
            CompletionOutcome::DeadLettered(_) => DeliveryStatus::Failed,
            CompletionOutcome::LeaseLost => return,
        };
        let label = match status {
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Retrying => "retrying",
            _ => "failed",
        };
        metrics::counter!("raccordo_alert_deliveries_total", "outcome" => label).increment(1);
        let error = match completion {
            Completion::Retryable { error, .. } | Completion::Permanent { error } => {
                Some(error.clone())
            }
            Completion::Done => None,
        };
        let Ok(AlertDelivery(n)) = item.payload_as::<AlertDelivery>() else {
            return;
        };
        if let Err(e) = self
            .history
            .update_delivery(&n.id, n.channel, status, item.attempts, error)
            .await
        {
            tracing::warn!(error = %e, alert = %n.id, "could not record a delivery's outcome");
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
