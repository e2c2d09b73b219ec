//! The call log: every outbound call the hub makes — to a CRM, a model, an `http` flow step,
//! a notification channel — with its service, endpoint, status, latency, attempt and error.
//! Never a body, a query string or a header: endpoints are templates (`/contacts/{id}`), so
//! ids and tokens in paths stay out too.
//!
//! One log per process, like the `metrics` facade: the clients that make calls record here
//! without each being handed a handle. It keeps the last [`RECENT`] calls of each service for
//! the API and the dashboard (error rate and latency percentiles over that window) and counts
//! every call in Prometheus (`raccordo_outbound_calls_total`, `raccordo_outbound_call_seconds`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

/// Calls kept per service.
pub const RECENT: usize = 1000;

/// One HTTP exchange (or SMTP session) with a remote.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OutboundCall {
    /// `hubspot`, `zoho`, `ai:<provider>`, `http:<host>`, `notify:<kind>`.
    pub service: String,
    /// Method and path template: `POST /crm/v3/objects/contacts/batch/update`.
    pub endpoint: String,
    /// The answer's status; none when no answer came (timeout, connection refused).
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// Which attempt of the operation this was (1 = the first).
    pub attempt: u32,
    /// Why it failed, in a few words (`HTTP 429`, `timed out`); never a body.
    pub error: Option<String>,
    pub at_ms: i64,
}

impl OutboundCall {
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.status.is_some_and(|s| s >= 400)
    }
}

/// What the recent calls of one service look like.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ServiceCalls {
    pub service: String,
    /// Calls since the hub started.
    pub calls_total: u64,
    pub failures_total: u64,
    /// Over the last calls (up to 1000):
    pub recent: usize,
    pub error_rate: f64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Service {
    recent: VecDeque<OutboundCall>,
    calls_total: u64,
    failures_total: u64,
}

#[derive(Default)]
pub struct CallLog {
    services: Mutex<BTreeMap<String, Service>>,
}

tokio::task_local! {
    static ATTEMPT: u32;
}

/// Runs `f` with calls inside it recorded as attempt `attempt` of their operation.
pub async fn attempt_scope<F: std::future::Future>(attempt: u32, f: F) -> F::Output {
    ATTEMPT.scope(attempt, f).await
}

/// The process's call log.
pub fn global() -> &'static CallLog {
    static LOG: OnceLock<CallLog> = OnceLock::new();
    LOG.get_or_init(CallLog::default)
}

/// Records a call (as of now, wall-clock) in the process's log and in Prometheus.
pub fn record(
    service: &str,
    endpoint: String,
    status: Option<u16>,
    latency: Duration,
    error: Option<String>,
) {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let call = OutboundCall {
        service: service.to_string(),
        endpoint,
        status,
        latency_ms: latency.as_millis() as u64,
        attempt: ATTEMPT.try_with(|a| *a).unwrap_or(1),
        error,
        at_ms,
    };
    let outcome = if call.failed() { "failure" } else { "success" };
    metrics::counter!("raccordo_outbound_calls_total", "service" => call.service.clone(), "outcome" => outcome).increment(1);
    metrics::histogram!("raccordo_outbound_call_seconds", "service" => call.service.clone())
        .record(latency.as_secs_f64());
    global().push(call);
}

impl CallLog {
    pub fn push(&self, call: OutboundCall) {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let s = services.entry(call.service.clone()).or_default();
        s.calls_total += 1;
        s.failures_total += call.failed() as u64;
        if s.recent.len() == RECENT {
            s.recent.pop_front();
        }
        s.recent.push_back(call);
    }

    /// Per service, by name.
    pub fn summary(&self) -> Vec<ServiceCalls> {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services
            .iter()
            .map(|(name, s)| {
                let mut latencies: Vec<u64> = s.recent.iter().map(|c| c.latency_ms).collect();
                latencies.sort_unstable();
                let at = |q: f64| {
                    if latencies.is_empty() {
                        0
                    } else {
                        latencies[((latencies.len() - 1) as f64 * q).round() as usize]
                    }
                };
                let failures = s.recent.iter().filter(|c| c.failed()).count();
                ServiceCalls {
                    service: name.clone(),
                    calls_total: s.calls_total,
                    failures_total: s.failures_total,
                    recent: s.recent.len(),
                    error_rate: if s.recent.is_empty() {
                        0.0
                    } else {
                        failures as f64 / s.recent.len() as f64
                    },
                    p50_ms: at(0.5),
                    p95_ms: at(0.95),
                    p99_ms: at(0.99),
                    max_ms: latencies.last().copied().unwrap_or(0),
                    last_error: s.recent.iter().rev().find(|c| c.failed()).map(|c| {
                        c.error
                            .clone()
                            .unwrap_or_else(|| format!("HTTP {}", c.status.unwrap_or(0)))
                    }),
                }
            })
            .collect()
    }

    /// The newest calls first, of one service or all.
    pub fn recent(&self, service: Option<&str>, limit: usize) -> Vec<OutboundCall> {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<OutboundCall> = services
            .iter()
            .filter(|(name, _)| service.is_none_or(|s| s == name.as_str()))
            .flat_map(|(_, s)| s.recent.iter().cloned())
            .collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.at_ms));
        out.truncate(limit);
        out
    }
}

/// `METHOD /path` with the query dropped and every segment that looks like an id or a token
/// (holds a digit, or is long; `v3` aside) replaced by `{id}`.
pub fn endpoint(method: &str, path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let template: Vec<&str> = path
        .split('/')
        .map(|segment| {
            // API versions (`v3`) stay; ids and tokens go.
            let version = segment.len() <= 3
                && segment.starts_with('v')
                && segment[1..].chars().all(|c| c.is_ascii_digit());
            if !version && (segment.chars().any(|c| c.is_ascii_digit()) || segment.len() > 24) {
                "{id}"
            } else {
                segment
            }
        })
        .collect();
    format!("{method} {}", template.join("/"))
}

/// A short reason for a failed exchange, from the status or the transport error's kind.
pub fn reason(status: Option<u16>, timed_out: bool) -> Option<String> {
    match status {
        Some(s) if s < 400 => None,
        Some(s) => Some(format!("HTTP {s}")),
        None if timed_out => Some("timed out".into()),
        None => Some("could not connect".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_no_ids_tokens_or_queries() {
        assert_eq!(
            endpoint(
                "GET",
                "/crm/v3/objects/contacts/123?archived=false&hapikey=x"
            ),
            "GET /crm/v3/objects/contacts/{id}"
        );
        assert_eq!(
            endpoint("POST", "/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXXXXX"),
            "POST /services/{id}/{id}/{id}"
        );
        assert_eq!(endpoint("PUT", "/crm/v8/Contacts"), "PUT /crm/v8/Contacts");
    }

    #[test]
    fn summaries_give_error_rates_and_percentiles_over_the_recent_window() {
        let log = CallLog::default();
        for i in 0..(RECENT as u64 + 100) {
            log.push(OutboundCall {
                service: "hubspot".into(),
                endpoint: "GET /x".into(),
                status: Some(if i % 10 == 0 { 429 } else { 200 }),
                latency_ms: i % 100,
                attempt: 1,
                error: None,
                at_ms: i as i64,
            });
        }
        let s = &log.summary()[0];
        assert_eq!(s.calls_total, RECENT as u64 + 100);
        assert_eq!(s.failures_total, (RECENT as u64 + 100) / 10);
        assert_eq!(s.recent, RECENT);
        assert!((s.error_rate - 0.1).abs() < 1e-9, "{}", s.error_rate);
        assert_eq!(s.max_ms, 99);
        assert!((45..=55).contains(&s.p50_ms), "{}", s.p50_ms);
        assert_eq!(s.last_error.as_deref(), Some("HTTP 429"));
        assert_eq!(log.recent(Some("hubspot"), 3)[0].at_ms, RECENT as i64 + 99);
    }
}
