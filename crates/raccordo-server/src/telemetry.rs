//! Logs (structured JSON by default) and Prometheus metrics.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::settings::{LogConfig, LogFormat};

/// Installs the global log subscriber. `RUST_LOG` overrides the configured level.
pub fn init_logging(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    // A second init (tests embedding the hub twice) is harmless; keep the first.
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// How often the runtime's lateness is sampled.
const LAG_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// A lateness worth a log line: far beyond a tick, and beyond a request's own budget.
const LAG_WORTH_LOGGING: std::time::Duration = std::time::Duration::from_millis(100);

/// Records how late the async runtime runs a task that asks to wake every 10 ms
/// (`raccordo_runtime_lag_seconds`). A request's duration is measured from its handler on;
/// a worker thread held by a long synchronous step, or sockets not polled, delay requests
/// before that, where only this shows it. A machine's own pause shows here too: tell the
/// two apart with the host's view (steal time, `benches/hiccup.py`).
pub async fn watch_runtime_lag() {
    let mut tick = tokio::time::interval(LAG_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lag_seconds = metrics::histogram!("raccordo_runtime_lag_seconds");
    loop {
        let due = tick.tick().await;
        let lag = due.elapsed();
        lag_seconds.record(lag.as_secs_f64());
        if lag >= LAG_WORTH_LOGGING {
            tracing::warn!(
                lag_ms = lag.as_millis() as u64,
                "the async runtime ran a timer late: a worker was held or the machine paused"
            );
        }
    }
}

/// Installs the global metrics recorder once and returns its handle.
pub fn init_metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ];
            let sizes = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1000.0, 4000.0, 16000.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Prefix("raccordo_storage_commit_group".into()),
                        &sizes,
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
