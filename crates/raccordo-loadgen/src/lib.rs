//! `raccordo loadgen`: sends realistic, correctly signed conversion traffic and reports
//! throughput, latency percentiles and outcomes.
//!
//! Two modes. *Closed loop* (`concurrency`): N workers each send, wait for the answer, send
//! again; it finds the maximum rate. *Open loop* (`rate`): requests are started on a fixed
//! schedule whether or not earlier ones finished, and latency is measured from the
//! *scheduled* start, so a stalled server shows up in the percentiles instead of silently
//! slowing the generator down (no coordinated omission).
//!
//! Several target URLs (the nodes of a cluster) share the load: each request goes to the
//! next one in turn, and a request that gets no answer (a node down) is sent again, as it
//! was, to the next — what a webhook sender behind a load balancer sees. The hub answers
//! such a resend as a duplicate when the first node had stored it.

pub mod insight;
pub mod traffic;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use raccordo_ingest::auth::WebhookSecret;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use tokio::sync::Semaphore;

pub use traffic::{Expect, Timeline, Traffic};

#[derive(Debug, Clone)]
pub enum Auth {
    /// Standard Webhooks signature with this `whsec_` secret.
    StandardWebhooks(String),
    ApiKey(String),
    None,
}

#[derive(Debug, Clone)]
pub enum Mode {
    /// N requests in flight at all times.
    Closed { concurrency: usize },
    /// A fixed number of requests per second, at most `max_in_flight` outstanding.
    Open { rate: f64, max_in_flight: usize },
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Full URL of the route, e.g. `http://127.0.0.1:8080/api/v1/eventi/conversione`; several
    /// (one per node) take requests in turn and stand in for each other.
    pub urls: Vec<String>,
    pub auth: Auth,
    pub mode: Mode,
    pub duration: Duration,
    /// Stop after this many requests (whichever comes first with `duration`).
    pub max_requests: Option<u64>,
    /// Events per request; 1 sends a bare object, more send a JSON array.
    pub batch_size: usize,
    pub duplicates: f64,
    /// Fraction of requests that resend an earlier request whole — same `webhook-id`, same
    /// body — as a sender does after a timeout (Standard Webhooks signing only).
    pub retries: f64,
    pub invalid: f64,
    pub seed: u64,
    /// Also measure time to insight through the live metrics stream.
    pub insight: Option<insight::InsightOptions>,
    /// Event times from a timeline instead of the clock.
    pub timeline: Option<traffic::Timeline>,
    /// PEM CA certificate(s) to trust for `https://` instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct Report {
    pub elapsed_s: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub events: u64,
    pub events_per_s: f64,
    pub latency_ms: Percentiles,
    pub accepted: u64,
    pub duplicate: u64,
    /// Answers by HTTP status other than 202.
    pub rejected: std::collections::BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer from any target (connection errors, timeouts).
    pub transport_errors: u64,
    /// Requests answered by another target after one gave no answer.
    pub failed_over: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insight: Option<insight::InsightReport>,
    /// The slowest answer among the requests (scheduled, in the open loop; sent, in the
    /// closed loop) in each second of the run, in ms: when a stall happened, to line up
    /// with the hub's log.
    pub max_latency_ms_per_second: Vec<f64>,
    /// Open loop only: how late the generator itself got to each second's requests against
    /// their schedule (its worst in each second, in ms; waiting for a free in-flight slot
    /// is not counted here, that wait is the hub's). The generator shares the machine
    /// with the hub; where this is near a second's slowest answer, the stall was the
    /// generator's (or the machine's), not the hub's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub max_send_lag_ms_per_second: Vec<f64>,
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    events: AtomicU64,
    accepted: AtomicU64,
    duplicate: AtomicU64,
    transport_errors: AtomicU64,
    failed_over: AtomicU64,
    rejected: Mutex<std::collections::BTreeMap<u16, u64>>,
}

struct Shared {
    options: Options,
    client: reqwest::Client,
    counters: Counters,
    latency: Mutex<Histogram<u64>>,
    slowest: Mutex<SlowestPerSecond>,
    secret: Option<WebhookSecret>,
    sequence: AtomicU64,
    /// Makes delivery ids unique across runs (a reused `webhook-id` with another body is
    /// rightly answered 409 by the hub).
    run_nonce: u64,
    delivery: AtomicU64,
    /// Recent signed deliveries (`webhook-id`, body), for `retries`.
    sent: Mutex<std::collections::VecDeque<(String, Vec<u8>)>>,
    insight: Option<Arc<insight::Recorder>>,
    /// The target of the next request (round robin over `options.urls`).
    next_target: AtomicU64,
}

/// The slowest latency (µs) of each second of the run, by when the request was due.
#[derive(Default)]
struct SlowestPerSecond(Vec<u64>);

impl SlowestPerSecond {
    fn record(&mut self, due_after: Duration, micros: u64) {
        let second = due_after.as_secs() as usize;
        if self.0.len() <= second {
            self.0.resize(second + 1, 0);
        }
        self.0[second] = self.0[second].max(micros);
    }

    fn merge(&mut self, other: &SlowestPerSecond) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine = (*mine).max(*theirs);
        }
    }
}

/// One request, ready to send to any of the targets.
struct Prepared {
    body: Vec<u8>,
    /// `webhook-id` of a signed delivery (signed again with a fresh timestamp per attempt).
    delivery: Option<String>,
    /// The target tried first.
    first: usize,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s with 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    anyhow::ensure!(!options.urls.is_empty(), "no target URL");
    let secret = match &options.auth {
        Auth::StandardWebhooks(s) => {
            Some(WebhookSecret::parse(s).map_err(|e| anyhow::anyhow!("webhook secret: {e}"))?)
        }
        _ => None,
    };
    let connections = match options.mode {
        Mode::Closed { concurrency } => concurrency,
        Mode::Open { max_in_flight, .. } => max_in_flight,
    };
    let mut client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true);
    if let Some(pem) = &options.ca_pem {
        client = client.tls_certs_only(reqwest::Certificate::from_pem_bundle(pem)?);
    }
    let client = client.build()?;
    let listener = match &options.insight {
        Some(o) => Some(insight::Listener::start(o.clone(), Instant::now()).await?),
        None => None,
    };
    let started_wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let shared = Arc::new(Shared {
        insight: listener.as_ref().map(|l| l.recorder.clone()),
        options: options.clone(),
        client,
        counters: Counters::default(),
        latency: Mutex::new(new_histogram()),
        slowest: Mutex::default(),
        secret,
        sequence: AtomicU64::new(0),
        run_nonce: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
            ^ options.seed.rotate_left(32),
        delivery: AtomicU64::new(0),
        sent: Mutex::new(std::collections::VecDeque::new()),
        next_target: AtomicU64::new(0),
    });
    let started = Instant::now();
    let deadline = started + options.duration;
    // Open loop: how late the one dispatcher got to each second's requests.
    let send_lag = match options.mode {
        Mode::Closed { concurrency } => {
            let mut workers = Vec::new();
            for worker in 0..concurrency.max(1) {
                let shared = shared.clone();
                workers.push(tokio::spawn(async move {
                    let mut traffic = Traffic::new(
                        SmallRng::seed_from_u64(shared.options.seed ^ worker as u64),
                        shared.options.duplicates,
                        shared.options.invalid,
                    )
                    .with_timeline(shared.options.timeline.clone());
                    let mut local = new_histogram();
                    let mut slowest = SlowestPerSecond::default();
                    while Instant::now() < deadline && shared.claim_request() {
                        let begun = Instant::now();
                        shared.send(&mut traffic).await;
                        let micros = begun.elapsed().as_micros().max(1) as u64;
                        let _ = local.record(micros);
                        slowest.record(begun - started, micros);
                    }
                    let _ = shared
                        .latency
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add(&local);
                    shared
                        .slowest
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .merge(&slowest);
                }));
            }
            for w in workers {
                w.await?;
            }
            SlowestPerSecond::default()
        }
        Mode::Open {
            rate,
            max_in_flight,
        } => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
            let mut traffic = Traffic::new(
                SmallRng::seed_from_u64(options.seed),
                options.duplicates,
                options.invalid,
            )
            .with_timeline(options.timeline.clone());
            let mut tasks = tokio::task::JoinSet::new();
            let mut send_lag = SlowestPerSecond::default();
            let mut i: u32 = 0;
            loop {
                let scheduled = started + interval * i;
                i = i.saturating_add(1);
                if scheduled >= deadline || !shared.claim_request() {
                    break;
                }
                tokio::time::sleep_until(scheduled.into()).await;
                // The generator's own lateness: waiting for a slot below is the hub's.
                send_lag.record(
                    scheduled - started,
                    scheduled.elapsed().as_micros().max(1) as u64,
                );
                let permit = permits.clone().acquire_owned().await?;
                let request = shared.prepare(&mut traffic);
                let shared = shared.clone();
                tasks.spawn(async move {
                    shared.execute(request).await;
                    // From the scheduled start: waiting for a permit counts as latency.
                    let micros = scheduled.elapsed().as_micros().max(1) as u64;
                    let _ = shared
                        .latency
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(micros);
                    shared
                        .slowest
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(scheduled - started, micros);
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
            send_lag
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let insight = match listener {
        Some(l) => Some(l.finish(started_wall_ms).await?),
        None => None,
    };
    let c = &shared.counters;
    let latency = shared.latency.lock().unwrap_or_else(|p| p.into_inner());
    let slowest = shared.slowest.lock().unwrap_or_else(|p| p.into_inner());
    let ms = |v: u64| v as f64 / 1000.0;
    let requests = c.requests.load(Ordering::Relaxed);
    let events = c.events.load(Ordering::Relaxed);
    Ok(Report {
        elapsed_s: elapsed,
        requests,
        requests_per_s: requests as f64 / elapsed,
        events,
        events_per_s: events as f64 / elapsed,
        latency_ms: Percentiles {
            p50: ms(latency.value_at_quantile(0.50)),
            p95: ms(latency.value_at_quantile(0.95)),
            p99: ms(latency.value_at_quantile(0.99)),
            p999: ms(latency.value_at_quantile(0.999)),
            max: ms(latency.max()),
            mean: latency.mean() / 1000.0,
        },
        accepted: c.accepted.load(Ordering::Relaxed),
        duplicate: c.duplicate.load(Ordering::Relaxed),
        rejected: c.rejected.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        transport_errors: c.transport_errors.load(Ordering::Relaxed),
        failed_over: c.failed_over.load(Ordering::Relaxed),
        insight,
        max_latency_ms_per_second: slowest.0.iter().map(|&v| ms(v)).collect(),
        max_send_lag_ms_per_second: send_lag.0.iter().map(|&v| ms(v)).collect(),
    })
}

impl Shared {
    fn claim_request(&self) -> bool {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        self.options.max_requests.is_none_or(|max| n < max)
    }

    async fn send(&self, traffic: &mut Traffic) {
        let request = self.prepare(traffic);
        self.execute(request).await;
    }

    /// Builds one request (body generation happens here, serially).
    fn prepare(&self, traffic: &mut Traffic) -> Prepared {
        let first = (self.next_target.fetch_add(1, Ordering::Relaxed)
            % self.options.urls.len() as u64) as usize;
        if self.options.retries > 0.0
            && traffic.roll() < self.options.retries
            && let Some((id, body)) = self.earlier_delivery(traffic)
        {
            return Prepared {
                body,
                delivery: Some(id),
                first,
            };
        }
        let batch = self.options.batch_size.max(1);
        let body = if batch == 1 {
            traffic.next_event().json.into_bytes()
        } else {
            let mut body = Vec::with_capacity(batch * 330 + 2);
            body.push(b'[');
            for i in 0..batch {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(traffic.next_event().json.as_bytes());
            }
            body.push(b']');
            body
        };
        let delivery = self.secret.as_ref().map(|_| {
            let id = format!(
                "msg_{:016x}_{}",
                self.run_nonce,
                self.delivery.fetch_add(1, Ordering::Relaxed)
            );
            if self.options.retries > 0.0 {
                let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
                if sent.len() == 1024 {
                    sent.pop_front();
                }
                sent.push_back((id.clone(), body.clone()));
            }
            id
        });
        Prepared {
            body,
            delivery,
            first,
        }
    }

    /// A delivery sent before, to send again as it was.
    fn earlier_delivery(&self, traffic: &mut Traffic) -> Option<(String, Vec<u8>)> {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent.is_empty() {
            return None;
        }
        let pick = (traffic.roll() * sent.len() as f64) as usize;
        sent.get(pick.min(sent.len() - 1)).cloned()
    }

    /// The request to `url`: signed (Standard Webhooks, a fresh timestamp), with the API
    /// key, or bare.
    fn request(&self, url: &str, prepared: &Prepared) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json");
        match (&self.options.auth, &self.secret, &prepared.delivery) {
            (Auth::StandardWebhooks(_), Some(secret), Some(id)) => {
                let ts = time::OffsetDateTime::now_utc().unix_timestamp();
                request = request
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", secret.sign(id, ts, &prepared.body))
                    .header("webhook-id", id);
            }
            (Auth::ApiKey(key), _, _) => request = request.header("x-api-key", key),
            _ => {}
        }
        request.body(prepared.body.clone())
    }

    /// Sends the request to its first target, and on no answer to each other target in
    /// turn; counts the outcome.
    async fn execute(&self, prepared: Prepared) {
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.events
            .fetch_add(self.options.batch_size.max(1) as u64, Ordering::Relaxed);
        let targets = self.options.urls.len();
        for attempt in 0..targets {
            let url = &self.options.urls[(prepared.first + attempt) % targets];
            let Ok(response) = self.request(url, &prepared).send().await else {
                continue;
            };
            if attempt > 0 {
                c.failed_over.fetch_add(1, Ordering::Relaxed);
            }
            let status = response.status().as_u16();
            let text = response.bytes().await.unwrap_or_default();
            if status == 202 {
                if let Some(recorder) = &self.insight {
                    recorder.ack(&text);
                }
                let accepted = count(&text, b"\"accepted\"");
                c.accepted.fetch_add(accepted, Ordering::Relaxed);
                c.duplicate
                    .fetch_add(count(&text, b"\"duplicate\""), Ordering::Relaxed);
            } else {
                *c.rejected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(status)
                    .or_default() += 1;
            }
            return;
        }
        c.transport_errors.fetch_add(1, Ordering::Relaxed);
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}

impl Report {
    /// The second of the run whose requests waited longest, and that wait in ms.
    pub fn slowest_second(&self) -> Option<(usize, f64)> {
        self.max_latency_ms_per_second
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Open loop: the second whose requests the generator sent latest, and how late (ms).
    pub fn slowest_send(&self) -> Option<(usize, f64)> {
        self.max_send_lag_ms_per_second
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The human summary printed by `raccordo loadgen`.
    pub fn render(&self) -> String {
        let rejected = if self.rejected.is_empty() {
            "none".to_string()
        } else {
            self.rejected
                .iter()
                .map(|(s, n)| format!("{s}×{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "duration   {:.1} s\nrequests   {} ({:.0} req/s)\nevents     {} ({:.0} events/s)\nlatency    p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms\noutcomes   accepted {}  duplicate {}  rejected {}  transport errors {}  failed over {}\n",
            self.elapsed_s,
            self.requests,
            self.requests_per_s,
            self.events,
            self.events_per_s,
            self.latency_ms.p50,
            self.latency_ms.p95,
            self.latency_ms.p99,
            self.latency_ms.max,
            self.accepted,
            self.duplicate,
            rejected,
            self.transport_errors,
            self.failed_over
        ) + &self.slowest_second().map_or(String::new(), |(second, ms)| {
            format!("slowest    the requests due {second}–{} s into the run: max {ms:.2} ms\n", second + 1)
        }) + &self.slowest_send().map_or(String::new(), |(second, ms)| {
            format!("generator  up to {ms:.2} ms behind its schedule (the requests due {second}–{} s into the run)\n", second + 1)
        }) + &self.insight.as_ref().map_or(String::new(), |i| {
            format!(
                "insight    202 → provisional: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms ({} requests, {} unmatched)\n           final after window end: p50 {:.0} ms  max {:.0} ms over {} windows (out-of-orderness {} ms)\n",
                i.to_provisional_ms.p50,
                i.to_provisional_ms.p99,
                i.to_provisional_ms.max,
                i.measured_requests,
                i.unmatched_requests,
                i.final_after_window_end_ms.p50,
                i.final_after_window_end_ms.max,
                i.final_windows,
                i.out_of_orderness_ms
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_second_keeps_its_slowest_request() {
        let mut a = SlowestPerSecond::default();
        a.record(Duration::from_millis(200), 5);
        a.record(Duration::from_millis(900), 9);
        a.record(Duration::from_millis(2_100), 4);
        assert_eq!(a.0, vec![9, 0, 4]);
        let mut b = SlowestPerSecond::default();
        b.record(Duration::from_millis(1_500), 7);
        b.record(Duration::from_millis(3_000), 1);
        a.merge(&b);
        assert_eq!(a.0, vec![9, 7, 4, 1]);
    }
}
