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
pub mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use raccordo_ingest::auth::WebhookSecret;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;

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
    /// The most requests outstanding at once (the closed loop: its concurrency). In the
    /// open loop, when this reached `max_in_flight`, requests waited for a free slot.
    pub peak_in_flight: usize,
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
    /// `options.urls`, parsed.
    targets: Vec<transport::Target>,
    counters: Counters,
    secret: Option<WebhookSecret>,
    sequence: AtomicU64,
    /// Makes delivery ids unique across runs (a reused `webhook-id` with another body is
    /// rightly answered 409 by the hub).
    run_nonce: u64,
    delivery: AtomicU64,
    /// Recent signed deliveries (`webhook-id`, body), for `retries`.
    sent: Mutex<std::collections::VecDeque<(String, Bytes)>>,
    insight: Option<Arc<insight::Recorder>>,
    /// The target of the next request (round robin over `options.urls`).
    next_target: AtomicU64,
}

/// The slowest latency (µs) of each second of the run, by when the request was due.
#[derive(Default)]
struct SlowestPerSecond(Vec<u64>);

impl SlowestPerSecond {
    fn record(&mut self, due_after: Duration, took: Duration) {
        let micros = took.as_micros().max(1) as u64;
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
    body: Bytes,
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
    let tls = if options.urls.iter().any(|u| u.starts_with("https://")) {
        Some(transport::tls_config(options.ca_pem.as_deref())?)
    } else {
        None
    };
    let targets = options
        .urls
        .iter()
        .map(|url| transport::Target::parse(url, tls.as_ref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
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
        targets,
        counters: Counters::default(),
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
    // Connections are opened before the clock starts, as a sender that has been sending for
    // a while has them: the first second then measures the hub, not a burst of handshakes.
    let warm = connected_workers(
        &shared,
        match options.mode {
            Mode::Closed { concurrency } => concurrency.max(1),
            Mode::Open {
                rate,
                max_in_flight,
            } => warm_connections(rate, max_in_flight),
        },
    )
    .await?;
    let started = Instant::now();
    let deadline = started + options.duration;
    let run = match options.mode {
        Mode::Closed { concurrency } => {
            let mut running = Vec::new();
            for (index, mut worker) in warm.into_iter().enumerate() {
                running.push(tokio::spawn(async move {
                    let options = &worker.shared.options;
                    let mut traffic = Traffic::new(
                        SmallRng::seed_from_u64(options.seed ^ index as u64),
                        options.duplicates,
                        options.invalid,
                    )
                    .with_timeline(options.timeline.clone());
                    while Instant::now() < deadline && worker.shared.claim_request() {
                        let begun = Instant::now();
                        let request = worker.shared.prepare(&mut traffic);
                        worker.execute(&request).await;
                        worker.record(begun - started, begun.elapsed());
                    }
                    worker
                }));
            }
            let mut workers = Vec::with_capacity(running.len());
            for worker in running {
                workers.push(worker.await?);
            }
            OpenLoop {
                workers,
                send_lag: SlowestPerSecond::default(),
                peak_in_flight: concurrency.max(1),
            }
        }
        Mode::Open {
            rate,
            max_in_flight,
        } => open_loop(&shared, rate, max_in_flight, warm, started, deadline).await?,
    };
    let OpenLoop {
        workers,
        send_lag,
        peak_in_flight,
    } = run;
    let mut latency = new_histogram();
    let mut slowest = SlowestPerSecond::default();
    for worker in &workers {
        let _ = latency.add(&worker.latency);
        slowest.merge(&worker.slowest);
    }
    drop(workers);
    let elapsed = started.elapsed().as_secs_f64();
    let insight = match listener {
        Some(l) => Some(l.finish(started_wall_ms).await?),
        None => None,
    };
    let c = &shared.counters;
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
        peak_in_flight,
    })
}

/// Open loop: how many connections to open before the first request — enough for the rate
/// at 10 ms per answer (a hub meeting its targets needs far fewer), at least one. More are
/// opened during the run if the hub gets slower, up to `max_in_flight`.
fn warm_connections(rate: f64, max_in_flight: usize) -> usize {
    ((rate * 0.010).ceil() as usize).clamp(1, max_in_flight.max(1))
}

/// `n` workers, each with its connection to every target open (a target that cannot be
/// reached now is tried again, and counted, by the first request sent to it).
async fn connected_workers(shared: &Arc<Shared>, n: usize) -> anyhow::Result<Vec<Worker>> {
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut worker = Worker::new(shared.clone());
        connecting.spawn(async move {
            for (slot, target) in worker.connections.iter_mut().zip(&worker.shared.targets) {
                *slot = transport::Connection::open(target).await.ok();
            }
            worker
        });
    }
    let mut workers = Vec::with_capacity(n);
    while let Some(worker) = connecting.join_next().await {
        workers.push(worker?);
    }
    Ok(workers)
}

/// A request due at a time, handed to an idle worker.
struct Job {
    scheduled: Instant,
    request: Prepared,
}

/// The open loop: one dispatcher starts each request at its scheduled time on an idle
/// worker; when none is idle it starts another, up to `max_in_flight`, and beyond that the
/// request waits for the first worker to finish. Latency is measured from the schedule, so
/// that wait counts as the hub's. Idle workers are reused last-in first-out, so the loop
/// keeps as few connections busy as the hub's latency needs. `warm` workers, connected
/// already, are idle from the start.
async fn open_loop(
    shared: &Arc<Shared>,
    rate: f64,
    max_in_flight: usize,
    warm: Vec<Worker>,
    started: Instant,
    deadline: Instant,
) -> anyhow::Result<OpenLoop> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let options = &shared.options;
    let mut traffic = Traffic::new(
        SmallRng::seed_from_u64(options.seed),
        options.duplicates,
        options.invalid,
    )
    .with_timeline(options.timeline.clone());
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut idle: Vec<usize> = Vec::new();
    let mut inboxes: Vec<tokio::sync::mpsc::Sender<Job>> = Vec::new();
    let mut running = Vec::new();
    // How late the dispatcher itself got to each second's requests.
    let mut send_lag = SlowestPerSecond::default();
    let mut free_since = started;
    let mut peak_in_flight = 0;
    let spawn =
        |index: usize, mut worker: Worker, done: tokio::sync::mpsc::UnboundedSender<usize>| {
            let (inbox, mut jobs) = tokio::sync::mpsc::channel::<Job>(1);
            let running = tokio::spawn(async move {
                while let Some(job) = jobs.recv().await {
                    worker.execute(&job.request).await;
                    worker.record(job.scheduled - started, job.scheduled.elapsed());
                    if done.send(index).is_err() {
                        break;
                    }
                }
                worker
            });
            (inbox, running)
        };
    for worker in warm {
        let index = inboxes.len();
        let (inbox, task) = spawn(index, worker, done.clone());
        inboxes.push(inbox);
        running.push(task);
        idle.push(index);
    }
    let mut i: u32 = 0;
    loop {
        let scheduled = started + interval * i;
        i = i.saturating_add(1);
        if scheduled >= deadline || !shared.claim_request() {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        // Lateness after the last wait for a free worker: that wait was the hub's.
        send_lag.record(scheduled - started, scheduled.max(free_since).elapsed());
        let request = shared.prepare(&mut traffic);
        while let Ok(worker) = finished.try_recv() {
            idle.push(worker);
        }
        let worker = match idle.pop() {
            Some(worker) => worker,
            None if inboxes.len() < max_in_flight.max(1) => {
                let index = inboxes.len();
                let (inbox, task) = spawn(index, Worker::new(shared.clone()), done.clone());
                inboxes.push(inbox);
                running.push(task);
                index
            }
            None => {
                let worker = finished.recv().await.unwrap_or_default();
                free_since = Instant::now();
                worker
            }
        };
        peak_in_flight = peak_in_flight.max(inboxes.len() - idle.len());
        // The worker is idle, so its one-job inbox is empty.
        inboxes[worker]
            .send(Job { scheduled, request })
            .await
            .map_err(|_| anyhow::anyhow!("a load generator worker stopped"))?;
    }
    drop(inboxes);
    let mut workers = Vec::with_capacity(running.len());
    for worker in running {
        workers.push(worker.await?);
    }
    Ok(OpenLoop {
        workers,
        send_lag,
        peak_in_flight,
    })
}

/// What the open loop leaves for the report.
struct OpenLoop {
    workers: Vec<Worker>,
    send_lag: SlowestPerSecond,
    peak_in_flight: usize,
}

/// Sends requests on connections of its own (one per target, opened when first needed)
/// and keeps its own latency records, merged when the run ends.
struct Worker {
    shared: Arc<Shared>,
    connections: Vec<Option<transport::Connection>>,
    latency: Histogram<u64>,
    slowest: SlowestPerSecond,
}

impl Worker {
    fn new(shared: Arc<Shared>) -> Worker {
        let connections = shared.targets.iter().map(|_| None).collect();
        Worker {
            shared,
            connections,
            latency: new_histogram(),
            slowest: SlowestPerSecond::default(),
        }
    }

    /// A request due `due_after` into the run took `took`.
    fn record(&mut self, due_after: Duration, took: Duration) {
        let micros = took.as_micros().max(1) as u64;
        let _ = self.latency.record(micros);
        self.slowest.record(due_after, took);
    }

    /// Sends the request to its first target, and on no answer to each other target in
    /// turn; counts the outcome.
    async fn execute(&mut self, prepared: &Prepared) {
        let shared = self.shared.clone();
        let c = &shared.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.events
            .fetch_add(shared.options.batch_size.max(1) as u64, Ordering::Relaxed);
        let targets = shared.targets.len();
        for attempt in 0..targets {
            let target = (prepared.first + attempt) % targets;
            let Ok((status, text)) = self.send(target, prepared).await else {
                continue;
            };
            if attempt > 0 {
                c.failed_over.fetch_add(1, Ordering::Relaxed);
            }
            if status == http::StatusCode::ACCEPTED {
                if let Some(recorder) = &shared.insight {
                    recorder.ack(&text);
                }
                c.accepted
                    .fetch_add(count(&text, b"\"accepted\""), Ordering::Relaxed);
                c.duplicate
                    .fetch_add(count(&text, b"\"duplicate\""), Ordering::Relaxed);
            } else {
                *c.rejected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(status.as_u16())
                    .or_default() += 1;
            }
            return;
        }
        c.transport_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// One request to one target. A kept-alive connection that the server has closed in
    /// the meantime fails before any answer: that is tried once more on a new connection
    /// before the target counts as giving no answer.
    async fn send(
        &mut self,
        target: usize,
        prepared: &Prepared,
    ) -> anyhow::Result<(http::StatusCode, Bytes)> {
        if let Some(mut connection) = self.connections[target].take()
            && let Ok(answer) = connection.send(self.shared.request(target, prepared)).await
        {
            self.connections[target] = Some(connection);
            return Ok(answer);
        }
        let mut connection = transport::Connection::open(&self.shared.targets[target]).await?;
        let answer = connection
            .send(self.shared.request(target, prepared))
            .await?;
        self.connections[target] = Some(connection);
        Ok(answer)
    }
}

impl Shared {
    fn claim_request(&self) -> bool {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        self.options.max_requests.is_none_or(|max| n < max)
    }

    /// Builds one request (body generation happens here, serially).
    fn prepare(&self, traffic: &mut Traffic) -> Prepared {
        let first =
            (self.next_target.fetch_add(1, Ordering::Relaxed) % self.targets.len() as u64) as usize;
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
        let body = Bytes::from(body);
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
    fn earlier_delivery(&self, traffic: &mut Traffic) -> Option<(String, Bytes)> {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent.is_empty() {
            return None;
        }
        let pick = (traffic.roll() * sent.len() as f64) as usize;
        sent.get(pick.min(sent.len() - 1)).cloned()
    }

    /// The request to `target`: signed (Standard Webhooks, a fresh timestamp), with the
    /// API key, or bare.
    fn request(&self, target: usize, prepared: &Prepared) -> http::Request<Full<Bytes>> {
        let mut request = self.targets[target].post(prepared.body.clone());
        let headers = request.headers_mut();
        let value = |text: &str| http::HeaderValue::from_str(text).ok();
        match (&self.options.auth, &self.secret, &prepared.delivery) {
            (Auth::StandardWebhooks(_), Some(secret), Some(id)) => {
                let ts = time::OffsetDateTime::now_utc().unix_timestamp();
                let signature = secret.sign(id, ts, &prepared.body);
                for (name, text) in [
                    ("webhook-timestamp", ts.to_string().as_str()),
                    ("webhook-signature", signature.as_str()),
                    ("webhook-id", id.as_str()),
                ] {
                    if let Some(v) = value(text) {
                        headers.insert(name, v);
                    }
                }
            }
            (Auth::ApiKey(key), _, _) => {
                if let Some(v) = value(key) {
                    headers.insert("x-api-key", v);
                }
            }
            _ => {}
        }
        request
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
            format!("generator  up to {ms:.2} ms behind its schedule (the requests due {second}–{} s into the run); at most {} requests in flight\n", second + 1, self.peak_in_flight)
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
    fn the_open_loop_opens_connections_for_ten_milliseconds_of_its_rate() {
        assert_eq!(
            warm_connections(16_000.0, 128),
            128,
            "capped by the in-flight limit"
        );
        assert_eq!(warm_connections(7_000.0, 512), 70);
        assert_eq!(warm_connections(5.0, 512), 1, "at least one");
        assert_eq!(warm_connections(1_000.0, 0), 1);
    }

    #[test]
    fn each_second_keeps_its_slowest_request() {
        let mut a = SlowestPerSecond::default();
        a.record(Duration::from_millis(200), Duration::from_micros(5));
        a.record(Duration::from_millis(900), Duration::from_micros(9));
        a.record(Duration::from_millis(2_100), Duration::from_micros(4));
        assert_eq!(a.0, vec![9, 0, 4]);
        let mut b = SlowestPerSecond::default();
        b.record(Duration::from_millis(1_500), Duration::from_micros(7));
        b.record(Duration::from_millis(3_000), Duration::from_micros(1));
        a.merge(&b);
        assert_eq!(a.0, vec![9, 7, 4, 1]);
    }
}
