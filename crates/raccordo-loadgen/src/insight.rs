//! Time to insight: how long an acknowledged event takes to show in the live metrics.
//!
//! While the load runs, a listener reads `GET /api/v1/metrics/stream?dimension=all` and
//! notes when each `provisional` message arrived and the log position it includes
//! (`through_seq`), and when each window first arrived `final`. Each `202` is noted with the
//! first event id it acknowledged (a batch commits as one, so its events become visible
//! together). Afterwards the ids are mapped to log positions through `GET /api/v1/events`,
//! and each request's delay is the time from its `202` to the first provisional message whose
//! `through_seq` covers it (0 when that message came first).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::Percentiles;

#[derive(Debug, Clone)]
pub struct InsightOptions {
    /// Base URL of the hub, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// A token with the `read` scope (for the stream and the event log).
    pub read_token: String,
    /// The hub's `metrics.out_of_orderness`, to compare final results against.
    pub out_of_orderness: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct InsightReport {
    /// Acknowledged requests whose events were matched to a provisional message.
    pub measured_requests: u64,
    /// Acknowledged requests never covered by a provisional message before the end.
    pub unmatched_requests: u64,
    pub provisional_messages: u64,
    /// From a `202` to the first provisional message including its events.
    pub to_provisional_ms: Percentiles,
    /// For windows that became final during the run: wall-clock time of the final message
    /// after the window's end.
    pub final_windows: u64,
    pub final_after_window_end_ms: Percentiles,
    pub out_of_orderness_ms: u64,
}

pub(crate) struct Recorder {
    started: Instant,
    /// (time of the 202 since start, first event id of the request)
    acks: Mutex<Vec<(Duration, String)>>,
}

#[derive(Default)]
struct Seen {
    /// (arrival since start, through_seq), in arrival order
    provisional: Vec<(Duration, i64)>,
    /// window end → wall-clock ms when it first arrived final
    finals: BTreeMap<i64, i64>,
}

pub(crate) struct Listener {
    seen: std::sync::Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
    options: InsightOptions,
    client: reqwest::Client,
    pub(crate) recorder: std::sync::Arc<Recorder>,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Recorder {
    pub(crate) fn ack(&self, response_body: &[u8]) {
        // The first `"id":"evt_…"` of the answer; cheaper than parsing the whole array.
        let Some(at) = find(response_body, b"\"evt_") else {
            return;
        };
        let rest = &response_body[at + 1..];
        let Some(end) = rest.iter().position(|b| *b == b'"') else {
            return;
        };
        let id = String::from_utf8_lossy(&rest[..end]).into_owned();
        let elapsed = self.started.elapsed();
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((elapsed, id));
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Listener {
    /// Connects to the stream; returns once the first message arrived.
    pub(crate) async fn start(options: InsightOptions, started: Instant) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().build()?;
        let url = format!(
            "{}/api/v1/metrics/stream?dimension=all",
            options.base_url.trim_end_matches('/')
        );
        let mut response = client
            .get(&url)
            .bearer_auth(&options.read_token)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {url}: HTTP {}",
            response.status()
        );
        let seen = std::sync::Arc::new(Mutex::new(Seen::default()));
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut first = Some(first_tx);
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                let arrived = started.elapsed();
                let wall = wall_ms();
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let (mut kind, mut data) = ("", String::new());
                    for line in block.lines() {
                        if let Some(k) = line.strip_prefix("event: ") {
                            kind = k;
                        } else if let Some(d) = line.strip_prefix("data: ") {
                            data.push_str(d);
                        }
                    }
                    let Ok(message) = serde_json::from_str::<Value>(&data) else {
                        continue;
                    };
                    let mut seen = record.lock().unwrap_or_else(|p| p.into_inner());
                    match kind {
                        "provisional" => {
                            if let Some(seq) = message["through_seq"].as_i64() {
                                seen.provisional.push((arrived, seq));
                            }
                            if let Some(tx) = first.take() {
                                let _ = tx.send(());
                            }
                        }
                        "final" => {
                            for row in message["rows"].as_array().into_iter().flatten() {
                                if let Some(end) = row["window_end_ms"].as_i64() {
                                    seen.finals.entry(end).or_insert(wall);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), first_rx)
            .await
            .map_err(|_| anyhow::anyhow!("no provisional message on {url} within 10 s"))?
            .map_err(|_| anyhow::anyhow!("the metrics stream closed"))?;
        Ok(Self {
            seen,
            task,
            options,
            client,
            recorder: std::sync::Arc::new(Recorder {
                started,
                acks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Maps acknowledged ids to log positions, waits until the stream covered them (at most
    /// 30 s), and computes the report.
    pub(crate) async fn finish(self, run_started_wall_ms: i64) -> anyhow::Result<InsightReport> {
        let acks =
            std::mem::take(&mut *self.recorder.acks.lock().unwrap_or_else(|p| p.into_inner()));
        let wanted: HashMap<&str, usize> = acks
            .iter()
            .enumerate()
            .map(|(i, (_, id))| (id.as_str(), i))
            .collect();
        let mut seq_of: Vec<Option<i64>> = vec![None; acks.len()];
        let from = time::OffsetDateTime::from_unix_timestamp_nanos(
            (run_started_wall_ms as i128 - 3_600_000) * 1_000_000,
        )?
        .format(&time::format_description::well_known::Rfc3339)?;
        let base = self.options.base_url.trim_end_matches('/');
        let mut cursor: Option<String> = None;
        loop {
            let mut request = self
                .client
                .get(format!("{base}/api/v1/events"))
                .bearer_auth(&self.options.read_token)
                .query(&[("limit", "1000"), ("from", from.as_str())]);
            if let Some(c) = &cursor {
                request = request.query(&[("cursor", c.as_str())]);
            }
            let page: Value = request.send().await?.error_for_status()?.json().await?;
            for event in page["events"].as_array().into_iter().flatten() {
                if let (Some(id), Some(seq)) = (event["id"].as_str(), event["seq"].as_i64())
                    && let Some(i) = wanted.get(id)
                {
                    seq_of[*i] = Some(seq);
                }
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        let newest = seq_of.iter().flatten().copied().max().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let covered = {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.provisional.last().is_some_and(|(_, s)| *s >= newest)
            };
            if covered {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.task.abort();
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());

        let mut to_provisional = new_histogram();
        let mut unmatched = 0;
        for ((acked, _), seq) in acks.iter().zip(&seq_of) {
            let Some(seq) = seq else {
                unmatched += 1;
                continue;
            };
            // through_seq only grows: the first message covering `seq`.
            let first = seen.provisional.partition_point(|(_, s)| s < seq);
            match seen.provisional.get(first) {
                Some((arrived, _)) => {
                    let delay = arrived.saturating_sub(*acked);
                    let _ = to_provisional.record(delay.as_micros().max(1) as u64);
                }
                None => unmatched += 1,
            }
        }
        let mut after_end = new_histogram();
        let mut final_windows = 0;
        for (end, at) in &seen.finals {
            // Only windows that ended while the load ran (older ones were replayed history).
            if *end >= run_started_wall_ms {
                final_windows += 1;
                let _ = after_end.record(((at - end).max(0) as u64 * 1000).max(1));
            }
        }
        Ok(InsightReport {
            measured_requests: to_provisional.len(),
            unmatched_requests: unmatched,
            provisional_messages: seen.provisional.len() as u64,
            to_provisional_ms: percentiles(&to_provisional),
            final_windows,
            final_after_window_end_ms: percentiles(&after_end),
            out_of_orderness_ms: self.options.out_of_orderness.as_millis() as u64,
        })
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 1 h with 3 significant digits; constant bounds, so this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |v: u64| v as f64 / 1000.0;
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        p50: ms(h.value_at_quantile(0.50)),
        p95: ms(h.value_at_quantile(0.95)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}
