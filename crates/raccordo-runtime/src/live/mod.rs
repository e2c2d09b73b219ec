//! Live conversion metrics: a task tails the durable event log into the window operator.
//!
//! At start it resumes from the saved checkpoint (or replays the log from the beginning), so
//! windows are rebuilt from durable data after any restart (including `kill -9`) and nothing
//! is counted twice: the log is the only input, read once, in order. Afterwards it wakes on
//! every commit (`EventLog::committed`). Results of windows that fired are kept in memory for
//! `RESULT_RETENTION_MS` and saved to the `WindowStore` as they fire.

use std::collections::{BTreeMap, HashMap, HashSet};

use raccordo_ingest::{ConversionMapping, MappedConversion};
use std::sync::{Arc, Mutex};

use std::borrow::Cow;

use raccordo_core::{
    Clock, EventId, EventLog, LogPositions, RawEvent, WindowCheckpoint, WindowResult, WindowStore,
};
use raccordo_stream::{
    ConversionRecord, ConversionStats, DailySpend, Emission, Firing, OperatorState, Placement,
    Window, WindowOperator, WindowSpec,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The fields of a stored event the windows read; anything else is skipped unparsed.
#[derive(serde::Deserialize)]
struct LiveFields<'a> {
    #[serde(borrow)]
    id_cliente: Option<Cow<'a, str>>,
    #[serde(borrow)]
    evento: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stato: Option<Cow<'a, str>>,
    #[serde(borrow)]
    canale: Option<Cow<'a, str>>,
    valore: Option<f64>,
    #[serde(borrow)]
    metadati: Option<LiveMetadata<'a>>,
}

#[derive(serde::Deserialize)]
struct LiveMetadata<'a> {
    #[serde(borrow)]
    campagna: Option<Cow<'a, str>>,
}

use crate::supervisor::TaskContext;

pub mod cluster;
mod partitioned;

pub use cluster::ClusterWindows;
pub use partitioned::{CommandDone, WindowCommand};

/// What the live stream (SSE), the alerts and the ingest answer read from windows: this
/// node's over the whole log ([`LiveMetrics`]) or the cluster's per partition
/// ([`ClusterWindows`]).
pub trait WindowFeed: Send + Sync {
    /// Final and late-update rows as windows close or late events update them.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Vec<MetricRow>>;
    /// Wakes when more was counted.
    fn progress(&self) -> tokio::sync::watch::Receiver<i64>;
    /// The open windows' rows, and how far they count.
    fn provisional(
        &self,
        dimension: Option<&Dimension>,
        value: Option<&str>,
    ) -> (Vec<MetricRow>, i64);
    fn window_size_ms(&self) -> i64;
    /// How long an acknowledged event currently takes to reach the windows.
    fn lag_ms(&self) -> i64;
    /// Whether an event at `event_time_ms` is already too late for every window holding it.
    fn is_too_late(&self, event_time_ms: i64) -> bool;
    /// The windows' health (`GET /api/v1/ingest/health`).
    fn health(&self) -> LiveHealth;
}

impl WindowFeed for LiveMetrics {
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Vec<MetricRow>> {
        LiveMetrics::subscribe(self)
    }
    fn progress(&self) -> tokio::sync::watch::Receiver<i64> {
        LiveMetrics::progress(self)
    }
    fn provisional(
        &self,
        dimension: Option<&Dimension>,
        value: Option<&str>,
    ) -> (Vec<MetricRow>, i64) {
        LiveMetrics::provisional(self, dimension, value)
    }
    fn window_size_ms(&self) -> i64 {
        LiveMetrics::window_size_ms(self)
    }
    fn lag_ms(&self) -> i64 {
        LiveMetrics::health(self).lag_ms
    }
    fn is_too_late(&self, event_time_ms: i64) -> bool {
        LiveMetrics::is_too_late(self, event_time_ms)
    }
    fn health(&self) -> LiveHealth {
        LiveMetrics::health(self)
    }
}

impl WindowFeed for ClusterWindows {
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Vec<MetricRow>> {
        ClusterWindows::subscribe(self)
    }
    fn progress(&self) -> tokio::sync::watch::Receiver<i64> {
        ClusterWindows::progress(self)
    }
    fn provisional(
        &self,
        dimension: Option<&Dimension>,
        value: Option<&str>,
    ) -> (Vec<MetricRow>, i64) {
        ClusterWindows::provisional(self, dimension, value)
    }
    fn window_size_ms(&self) -> i64 {
        ClusterWindows::window_size_ms(self)
    }
    fn lag_ms(&self) -> i64 {
        ClusterWindows::lag_ms(self)
    }
    fn is_too_late(&self, event_time_ms: i64) -> bool {
        ClusterWindows::is_too_late(self, event_time_ms)
    }
    fn health(&self) -> LiveHealth {
        ClusterWindows::health(self)
    }
}

/// Where the late events are kept, for retention and erasure: this node's windows, or every
/// partition's owner (through commands).
#[async_trait::async_trait]
pub trait LateEventKeeper: Send + Sync {
    /// Forgets late events received before `before_ms`; how many went.
    async fn purge_late_events(&self, before_ms: i64) -> u64;
    /// Late events of customer hash `from` count as `to` instead; how many changed.
    async fn rehash_late_customer(&self, from: &[u64], to: u64) -> u64;
}

#[async_trait::async_trait]
impl LateEventKeeper for LiveMetrics {
    async fn purge_late_events(&self, before_ms: i64) -> u64 {
        LiveMetrics::purge_late_events(self, before_ms)
    }
    async fn rehash_late_customer(&self, from: &[u64], to: u64) -> u64 {
        LiveMetrics::rehash_late_customer(self, from, to)
    }
}

#[async_trait::async_trait]
impl LateEventKeeper for ClusterWindows {
    async fn purge_late_events(&self, before_ms: i64) -> u64 {
        let command = WindowCommand::PurgeLateEvents { before_ms };
        self.command(command, Duration::from_secs(10))
            .await
            .iter()
            .map(|d| d.events)
            .sum()
    }
    async fn rehash_late_customer(&self, from: &[u64], to: u64) -> u64 {
        let command = WindowCommand::RehashLateCustomer {
            from: from.to_vec(),
            to,
        };
        self.command(command, Duration::from_secs(10))
            .await
            .iter()
            .map(|d| d.events)
            .sum()
    }
}

/// A page of events ready for the windows.
pub struct PreparedPage {
    events: Vec<PreparedEvent>,
    keys: PageKeys,
    oldest_received_ms: Option<i64>,
}

/// The dimension keys a page's events are counted under, each held once: a thousand events
/// fall under a few dozen keys, and naming them by index spares the four or five strings
/// per event a rebuild would otherwise allocate on one thread and free on another (at
/// several hundred thousand events a second, churn the allocator keeps resident).
#[derive(Default)]
struct PageKeys {
    keys: Vec<DimKey>,
    /// Indexes into `keys`, found by the hash of the key.
    index: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Every event's keys, as indexes into `keys`, one run after another.
    runs: Vec<u32>,
}

impl PageKeys {
    /// Adds `dimension = value` to the run being built.
    fn push(&mut self, dimension: &Dimension, value: &str) {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one((dimension, value));
        let keys = &mut self.keys;
        let found = self.index.find(hash, |&i| {
            let (d, v) = &keys[i as usize];
            d == dimension && v == value
        });
        let at = match found {
            Some(&i) => i,
            None => {
                let i = keys.len() as u32;
                keys.push((dimension.clone(), value.to_string()));
                let hasher = &self.hasher;
                self.index.insert_unique(hash, i, |&j| {
                    let (d, v) = &keys[j as usize];
                    hasher.hash_one((d, v.as_str()))
                });
                i
            }
        };
        self.runs.push(at);
    }

    /// Where the next run starts.
    fn mark(&self) -> u32 {
        self.runs.len() as u32
    }

    fn run(&self, run: &std::ops::Range<u32>) -> impl Iterator<Item = &DimKey> {
        self.runs[run.start as usize..run.end as usize]
            .iter()
            .map(|&i| &self.keys[i as usize])
    }
}

struct PreparedEvent {
    position: raccordo_core::LogPosition,
    id: EventId,
    received_at_ms: i64,
    event_time_ms: i64,
    duplicate: bool,
    /// What the windows count, and under which dimension keys (a run of the page's
    /// [`PageKeys`]); `None` for an event without the fields (it still advances the
    /// position), or a tick.
    record: Option<(ConversionRecord, std::ops::Range<u32>)>,
    /// For a partition of the stream: the newest event time of the whole stream before this
    /// event (or tick), taken in before it so that windows close as over the whole stream.
    stream_time: Option<i64>,
}

/// Most late events listed by id (the newest are kept); their counts stay exact beyond it.
const MAX_LATE_EVENTS: usize = 10_000;

/// An accepted event that came too late for every window holding it: counted in the late
/// table, not in a window, until an admin re-aggregates it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct LateEvent {
    id: EventId,
    event_time_ms: i64,
    received_at_ms: i64,
    record: ConversionRecord,
    keys: Vec<DimKey>,
}

impl LateEvent {
    fn source(&self) -> &str {
        self.keys
            .iter()
            .find(|(d, _)| *d == Dimension::Source)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// `GET /api/v1/metrics/late`: late counts per window and dimension, and the late events.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LateTable {
    /// Late events per window and dimension row (what the metric rows' `late` says).
    pub counts: Vec<LateCount>,
    /// The late events (newest first), with the original event ids.
    pub events: Vec<LateEventRow>,
    /// Late events matching the filter; `events` lists at most `limit` of them.
    pub total_events: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LateCount {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub dimension: Dimension,
    pub value: String,
    pub late: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LateEventRow {
    /// The stored event (`GET /api/v1/events?…` has its payload).
    #[schema(value_type = String)]
    pub id: EventId,
    pub source: String,
    pub event_time_ms: i64,
    pub received_at_ms: i64,
    /// Start of each window it would have counted in.
    pub windows: Vec<i64>,
    /// Its dimension values (`canale`, `evento`, `campagna`, extra dimensions).
    pub dimensions: BTreeMap<String, String>,
}

/// What to list or re-aggregate from the late table.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct LateFilter {
    pub source: Option<String>,
    pub key: Option<DimKey>,
    /// Only these events (re-aggregation of chosen events).
    pub ids: Option<HashSet<EventId>>,
}

impl LateFilter {
    fn matches(&self, event: &LateEvent) -> bool {
        self.source.as_deref().is_none_or(|s| event.source() == s)
            && self.key.as_ref().is_none_or(|k| event.keys.contains(k))
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&event.id))
    }
}

/// What a re-aggregation changed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reaggregated {
    /// Late events now counted in their windows (and gone from the late table).
    pub events: usize,
    /// Window rows updated (each window × dimension value).
    pub rows: usize,
}

/// Fired windows older than this (by window end) are forgotten.
const RESULT_RETENTION_MS: i64 = 48 * 3_600_000;
/// The window store scope of the live conversion windows.
/// The scope of the windows over the whole log (`WindowStore`); a partition's are
/// `live/p<partition>` ([`partition_scope`]).
pub const SCOPE: &str = "live";

/// The scope of one stream partition's windows.
pub fn partition_scope(partition: u32) -> String {
    format!("{SCOPE}/p{partition}")
}

/// What a metric row is broken down by: the overall row, the conversion model's channel,
/// event type and campaign, the source, or an extra dimension a source's mapping names.
/// Written as its name (`all`, `canale`, …, `source`, or the extra dimension's name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    All,
    Canale,
    Evento,
    Campagna,
    Source,
    /// An extra dimension from `[sources.<name>.mapping.dimensions]`.
    Field(Arc<str>),
}

impl Dimension {
    pub fn parse(name: &str) -> Self {
        match name {
            "all" => Dimension::All,
            "canale" => Dimension::Canale,
            "evento" => Dimension::Evento,
            "campagna" => Dimension::Campagna,
            "source" => Dimension::Source,
            other => Dimension::Field(Arc::from(other)),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Dimension::All => "all",
            Dimension::Canale => "canale",
            Dimension::Evento => "evento",
            Dimension::Campagna => "campagna",
            Dimension::Source => "source",
            Dimension::Field(name) => name,
        }
    }
}

impl Serialize for Dimension {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Dimension {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Dimension::parse(&Cow::<'de, str>::deserialize(d)?))
    }
}

impl utoipa::PartialSchema for Dimension {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "`all`, `canale`, `evento`, `campagna`, `source`, or an extra dimension named by a source's mapping",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Dimension {}

pub type DimKey = (Dimension, String);

impl State {
    fn row(
        &self,
        window: Window,
        key: &DimKey,
        stats: &ConversionStats,
        status: &'static str,
    ) -> MetricRow {
        let late = self
            .late
            .get(&(window.start, key.clone()))
            .copied()
            .unwrap_or(0);
        metric_row(window, key, stats, status, late)
    }
}

/// A row of `GET /api/v1/metrics` (without spend and CPA).
fn metric_row(
    window: Window,
    key: &DimKey,
    stats: &ConversionStats,
    status: &'static str,
    late: u64,
) -> MetricRow {
    {
        MetricRow {
            window_start_ms: window.start,
            window_end_ms: window.end,
            dimension: key.0.clone(),
            value: key.1.clone(),
            status,
            events: stats.events,
            conversions: stats.conversions,
            active_customers: stats.active_customers.count(),
            conversion_rate: stats.conversion_rate(),
            total_value: stats.total_value_cents as f64 / 100.0,
            average_conversion_value: stats.average_conversion_value_cents().map(|c| c / 100.0),
            failures: stats.failures,
            duplicates: stats.duplicates,
            late,
            exact_distinct: stats.active_customers.is_exact(),
            spend: None,
            cpa: None,
        }
    }
}

#[derive(Default)]
struct State {
    operator: Option<WindowOperator<DimKey, ConversionStats>>,
    /// Last emitted value of every fired window and key.
    fired: BTreeMap<(Window, DimKey), ConversionStats>,
    /// Events too late for their window, per window start and dimension key (the overall row
    /// and each channel, campaign, … the event belongs to).
    late: BTreeMap<(i64, DimKey), u64>,
    /// The late events themselves, oldest first (at most `MAX_LATE_EVENTS`).
    late_events: std::collections::VecDeque<LateEvent>,
    processed: LogPositions,
}

pub struct LiveMetrics {
    spec: WindowSpec,
    /// Where its results and checkpoints are kept (`live`, or a partition's scope).
    scope: String,
    /// How long the store keeps fired results (`metrics.history`).
    history_ms: std::sync::atomic::AtomicI64,
    /// Sources whose payloads are read through a mapping (the others use the built-in
    /// conversion fields).
    mappings: std::sync::RwLock<Arc<HashMap<String, Arc<ConversionMapping>>>>,
    /// The operator's watermark after the last page, readable without the state lock: the
    /// ingest answer says whether an event is already too late for its windows.
    watermark: std::sync::atomic::AtomicI64,
    goals: HashSet<String>,
    state: Mutex<State>,
    /// Final and late-update rows, as the operator emits them (for the SSE stream).
    fired_rows: tokio::sync::broadcast::Sender<Vec<MetricRow>>,
    /// Events counted so far (the log positions' total), bumped after every page: the SSE
    /// stream publishes provisional results when it moves instead of on a fixed tick.
    progress: tokio::sync::watch::Sender<i64>,
    /// Daily spend per campaign, for CPA.
    costs: std::sync::RwLock<std::collections::HashMap<String, DailySpend>>,
    clock: Arc<dyn Clock>,
    lag: Mutex<Lag>,
    committed: std::sync::OnceLock<tokio::sync::watch::Receiver<LogPositions>>,
    persist: tokio::sync::mpsc::UnboundedSender<PersistJob>,
    /// The persister's end of `persist`, taken by each run of the persister task in turn.
    persist_rx: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<PersistJob>>>,
    /// Log position of the last saved checkpoint (0: none yet).
    checkpoint_seq: std::sync::atomic::AtomicI64,
    /// The state changed without the log moving (a re-aggregation): the next checkpoint is
    /// due even at the same position.
    changed_off_log: std::sync::atomic::AtomicBool,
    /// Log position the windows were restored from at start (0: replayed from the start).
    restored_from_seq: std::sync::atomic::AtomicI64,
    /// See [`Self::set_reports_process_metrics`].
    process_metrics: std::sync::atomic::AtomicBool,
    /// The final and late-update results emitted lately, for a partition's owner to publish
    /// (kept only where [`Self::keep_emissions`] was called).
    emissions: Mutex<Option<partitioned::Emissions>>,
}

/// Work for the task that saves results and checkpoints, in order.
enum PersistJob {
    Results(Vec<WindowResult>),
    /// Save a checkpoint now (after the results queued before it) and say when it is done.
    Checkpoint(tokio::sync::oneshot::Sender<()>),
}

/// What a checkpoint holds besides the log position.
#[derive(Serialize, serde::Deserialize)]
struct Checkpoint {
    operator: OperatorState<DimKey, ConversionStats>,
    /// Late counts of the overall row only (checkpoints written before `late_by_key`).
    #[serde(default)]
    late: Vec<(i64, u64)>,
    #[serde(default)]
    late_by_key: Vec<((i64, DimKey), u64)>,
    #[serde(default)]
    late_events: Vec<LateEvent>,
}

/// How far the windows trail the log.
struct Lag {
    /// When the consumer last read new events.
    last_progress_ms: i64,
    /// Age of the oldest event of the last page when it was counted.
    last_delay_ms: i64,
}

/// Ingest health as the windows see it (`GET /api/v1/ingest/health`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LiveHealth {
    /// Newest event counted in the windows.
    pub processed_seq: i64,
    /// Newest event committed to the log.
    pub committed_seq: i64,
    /// How long an acknowledged event currently takes to reach the windows.
    pub lag_ms: i64,
    /// Event-time watermark (newest event time − allowed out-of-orderness).
    pub watermark_ms: Option<i64>,
    /// Log position of the last saved checkpoint (0: none yet).
    pub checkpoint_seq: i64,
    /// Where the windows resumed at start (0: rebuilt from the whole log).
    pub restored_from_seq: i64,
}

/// One row of `GET /api/v1/metrics`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MetricRow {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub dimension: Dimension,
    pub value: String,
    /// `provisional` while the window is open, `final` once the watermark passed it.
    pub status: &'static str,
    pub events: u64,
    pub conversions: u64,
    pub active_customers: u64,
    pub conversion_rate: Option<f64>,
    pub total_value: f64,
    pub average_conversion_value: Option<f64>,
    pub failures: u64,
    /// Business-key duplicates of earlier events (not counted in `events`).
    pub duplicates: u64,
    pub late: u64,
    pub exact_distinct: bool,
    /// Campaign spend attributed to the window (campaign and overall rows, when known).
    pub spend: Option<f64>,
    /// Cost per acquisition: spend / conversions.
    pub cpa: Option<f64>,
}

impl LiveMetrics {
    pub fn new(
        spec: WindowSpec,
        goals: impl IntoIterator<Item = String>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Self::in_scope(spec, goals, clock, SCOPE.to_string())
    }

    /// Windows kept under `scope` in the `WindowStore` (one stream partition's).
    pub fn in_scope(
        spec: WindowSpec,
        goals: impl IntoIterator<Item = String>,
        clock: Arc<dyn Clock>,
        scope: String,
    ) -> Arc<Self> {
        let (persist, persist_rx) = tokio::sync::mpsc::unbounded_channel();
        // Until the first page is counted, events behind have waited at least since now (not
        // since 1970: a restart that is still rebuilding reported its lag as the epoch).
        let lag = Lag {
            last_progress_ms: clock.now_ms(),
            last_delay_ms: 0,
        };
        Arc::new(Self {
            spec,
            scope,
            history_ms: std::sync::atomic::AtomicI64::new(RESULT_RETENTION_MS),
            mappings: Default::default(),
            watermark: std::sync::atomic::AtomicI64::new(i64::MIN),
            goals: goals.into_iter().collect(),
            state: Mutex::new(State {
                operator: Some(WindowOperator::new(spec)),
                ..State::default()
            }),
            fired_rows: tokio::sync::broadcast::channel(1024).0,
            progress: tokio::sync::watch::channel(0).0,
            costs: Default::default(),
            clock,
            lag: Mutex::new(lag),
            committed: std::sync::OnceLock::new(),
            persist,
            persist_rx: Arc::new(tokio::sync::Mutex::new(persist_rx)),
            checkpoint_seq: Default::default(),
            changed_off_log: Default::default(),
            restored_from_seq: Default::default(),
            process_metrics: Default::default(),
            emissions: Mutex::new(None),
        })
    }

    /// How long the store keeps fired results; never less than what memory keeps.
    pub fn set_history(&self, history: Duration) {
        self.history_ms.store(
            (history.as_millis() as i64).max(RESULT_RETENTION_MS),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Windows ending before this are no longer in memory: `GET /api/v1/metrics` reads them
    /// from the store.
    pub fn memory_horizon_ms(&self) -> i64 {
        self.watermark
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(RESULT_RETENTION_MS)
    }

    /// Metric rows of stored results (older windows, read back from the `WindowStore`).
    pub fn rows_from_results(
        &self,
        results: Vec<WindowResult>,
        dimension: Option<&Dimension>,
        value: Option<&str>,
    ) -> Vec<MetricRow> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        results
            .into_iter()
            .filter_map(|r| {
                let key = (Dimension::parse(&r.dimension), r.value);
                if dimension.is_some_and(|d| *d != key.0) || value.is_some_and(|v| v != key.1) {
                    return None;
                }
                let stats: ConversionStats = serde_json::from_str(&r.stats).ok()?;
                let window = Window {
                    start: r.window_start_ms,
                    end: r.window_end_ms,
                };
                Some(self.with_cpa(state.row(window, &key, &stats, "final"), stats.conversions))
            })
            .collect()
    }

    /// Reads the named sources' events through their mappings (set before the tailer starts).
    pub fn set_mappings(&self, mappings: HashMap<String, Arc<ConversionMapping>>) {
        *self.mappings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(mappings);
    }

    /// Every dimension the rows can have: the built-in ones and the mappings' extras.
    pub fn dimensions(&self) -> Vec<Dimension> {
        let mut out = vec![
            Dimension::All,
            Dimension::Canale,
            Dimension::Evento,
            Dimension::Campagna,
            Dimension::Source,
        ];
        let mappings = self
            .mappings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut extra: Vec<Dimension> = mappings
            .values()
            .flat_map(|m| m.dimension_names().map(|n| Dimension::Field(n.clone())))
            .collect();
        extra.sort();
        extra.dedup();
        out.extend(extra);
        out
    }

    /// Whether an event at `event_time_ms` is already too late for every window holding it
    /// (it will be counted as late, not in a window), as of the windows' last page.
    pub fn is_too_late(&self, event_time_ms: i64) -> bool {
        self.spec.is_too_late(
            event_time_ms,
            self.watermark.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Continues from the saved checkpoint and results, if they were taken with the same
    /// window settings; otherwise clears them, and the windows are rebuilt from the log.
    pub async fn restore(&self, store: &dyn WindowStore) -> anyhow::Result<()> {
        let saved = store.checkpoint(&self.scope).await?;
        let restored = saved.and_then(|saved| {
            let checkpoint: Checkpoint = serde_json::from_str(&saved.state).ok()?;
            let operator = WindowOperator::restore(self.spec, checkpoint.operator)?;
            let mut late = checkpoint.late_by_key;
            late.extend(
                checkpoint
                    .late
                    .into_iter()
                    .map(|(start, n)| ((start, (Dimension::All, String::new())), n)),
            );
            Some((saved.positions, operator, late, checkpoint.late_events))
        });
        let Some((positions, operator, late, late_events)) = restored else {
            store.clear(&self.scope).await?;
            return Ok(());
        };
        let seq = positions.total();
        // Memory holds the last 48 h; older results stay in the store for range queries.
        let since = operator
            .watermark()
            .saturating_sub(RESULT_RETENTION_MS + self.spec.size_ms);
        let mut fired = BTreeMap::new();
        for row in store.results_between(&self.scope, since, i64::MAX).await? {
            let (Ok(dimension), Ok(stats)) = (
                serde_json::from_value::<Dimension>(serde_json::Value::String(row.dimension)),
                serde_json::from_str::<ConversionStats>(&row.stats),
            ) else {
                continue;
            };
            let window = Window {
                start: row.window_start_ms,
                end: row.window_end_ms,
            };
            fired.insert((window, (dimension, row.value)), stats);
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.operator = Some(operator);
        state.fired = fired;
        state.late = late.into_iter().collect();
        state.late_events = late_events.into();
        if let Some(operator) = &state.operator {
            self.watermark
                .store(operator.watermark(), std::sync::atomic::Ordering::Relaxed);
        }
        state.processed = positions;
        self.progress.send_replace(seq);
        self.restored_from_seq
            .store(seq, std::sync::atomic::Ordering::Relaxed);
        self.checkpoint_seq
            .store(seq, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            seq,
            windows = state.fired.len(),
            "live metrics restored from a checkpoint"
        );
        Ok(())
    }

    /// Saves fired results as they fire and a checkpoint every `every`, until shutdown. A
    /// checkpoint is written only after every result it covers (they are queued first), so a
    /// restart from it never misses a window that fired. A failed save ends the run (the
    /// supervisor restarts it after a backoff); results not yet saved stay queued.
    pub async fn run_persister(
        self: Arc<Self>,
        store: Arc<dyn WindowStore>,
        every: std::time::Duration,
        ctx: TaskContext,
    ) -> anyhow::Result<()> {
        let mut rx = self.persist_rx.lock().await;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                job = rx.recv() => match job {
                    Some(PersistJob::Results(rows)) => store.put_results(&self.scope, rows).await?,
                    Some(PersistJob::Checkpoint(done)) => {
                        self.save_checkpoint(store.as_ref(), &mut rx).await?;
                        let _ = done.send(());
                    }
                    None => return Ok(()),
                },
                _ = tick.tick() => self.save_checkpoint(store.as_ref(), &mut rx).await?,
                _ = ctx.cancelled() => return Ok(()),
            }
        }
    }

    /// Saves a checkpoint if anything changed, after every result queued before it (they
    /// cover at least this snapshot). A checkpoint request met in the queue is answered
    /// by this same save.
    async fn save_checkpoint(
        self: &Arc<Self>,
        store: &dyn WindowStore,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<PersistJob>,
    ) -> anyhow::Result<()> {
        // Off the async workers: the snapshot waits for the windows' lock, which a stage
        // thread at background priority may hold while the request path keeps the cores
        // busy, and then serializes the whole state (about 500 KB in `benches/longrun.sh`).
        // Blocking work on a worker holds up every request queued on it.
        let live = self.clone();
        let snapshot = tokio::task::spawn_blocking(move || live.snapshot()).await?;
        let mut answered = Vec::new();
        while let Ok(job) = rx.try_recv() {
            match job {
                PersistJob::Results(rows) => store.put_results(&self.scope, rows).await?,
                PersistJob::Checkpoint(done) => answered.push(done),
            }
        }
        if let Some((positions, text, horizon)) = snapshot {
            let seq = positions.total();
            store
                .put_checkpoint(
                    &self.scope,
                    WindowCheckpoint {
                        positions,
                        state: text,
                    },
                    horizon,
                )
                .await?;
            self.checkpoint_seq
                .store(seq, std::sync::atomic::Ordering::Relaxed);
        }
        for done in answered {
            let _ = done.send(());
        }
        Ok(())
    }

    /// [`Self::reaggregate`], answered once the change is durable (saved in a checkpoint),
    /// or after `wait` at most.
    pub async fn reaggregate_durably(&self, filter: &LateFilter, wait: Duration) -> Reaggregated {
        let done = self.reaggregate(filter);
        if done.events > 0 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if self.persist.send(PersistJob::Checkpoint(tx)).is_ok() {
                let _ = tokio::time::timeout(wait, rx).await;
            }
        }
        done
    }

    /// The state to save, if anything changed since the last checkpoint: (seq, JSON,
    /// results older than this may be forgotten).
    fn snapshot(&self) -> Option<(LogPositions, String, i64)> {
        let (positions, checkpoint, horizon) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let changed_off_log = self
                .changed_off_log
                .swap(false, std::sync::atomic::Ordering::Relaxed);
            if !changed_off_log
                && state.processed.total()
                    == self
                        .checkpoint_seq
                        .load(std::sync::atomic::Ordering::Relaxed)
            {
                return None;
            }
            let operator = state.operator.as_ref()?;
            let checkpoint = Checkpoint {
                operator: operator.checkpoint(),
                late: Vec::new(),
                late_by_key: state.late.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                late_events: state.late_events.iter().cloned().collect(),
            };
            let history = self.history_ms.load(std::sync::atomic::Ordering::Relaxed);
            let horizon = operator.watermark().saturating_sub(history);
            (state.processed.clone(), checkpoint, horizon)
        };
        let text = serde_json::to_string(&checkpoint).ok()?;
        Some((positions, text, horizon))
    }

    /// Tails `log` into the windows until shutdown, from where the windows are. A read
    /// failure ends the run with the error; the supervisor restarts it after a backoff.
    pub async fn run_tailer(
        self: Arc<Self>,
        log: Arc<dyn EventLog>,
        ctx: TaskContext,
    ) -> anyhow::Result<()> {
        let _ = self.committed.set(log.committed());
        let from = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .processed
            .clone();
        let preparer = self.clone();
        crate::consumer::tail_log_pipelined(
            log,
            from,
            &ctx,
            Arc::new(move |events: Vec<RawEvent>| preparer.prepare(&events)),
            Arc::new(move |page| {
                self.ingest_prepared(&page);
                Ok(())
            }),
        )
        .await
    }

    /// Only the windows over the whole log feed the process's metrics (lag, late events): a
    /// cluster node's partition windows count the same events again.
    fn reports_process_metrics(&self) -> bool {
        self.scope == SCOPE
            || self
                .process_metrics
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A partition's windows report the process's lag and late events too: where the node
    /// keeps no windows of its own, nothing else counts them.
    pub fn set_reports_process_metrics(&self, on: bool) {
        self.process_metrics
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn window_size_ms(&self) -> i64 {
        self.spec.size_ms
    }

    /// Takes every campaign's spend from the store: at start, and on the nodes of a shared
    /// database every few seconds, since another node may have been given new figures.
    pub async fn load_costs(&self, store: &dyn raccordo_core::CampaignCosts) -> anyhow::Result<()> {
        for (campaign, day, cents) in store.all_costs().await? {
            self.set_costs(&campaign, &[(day, cents)]);
        }
        Ok(())
    }

    /// Sets a campaign's spend for some days (already stored durably by the caller).
    pub fn set_costs(&self, campaign: &str, days: &[(i64, i64)]) {
        let mut costs = self.costs.write().unwrap_or_else(|p| p.into_inner());
        let spend = costs.entry(campaign.to_string()).or_default();
        for (day, cents) in days {
            spend.set(*day, *cents);
        }
    }

    /// Spend attributed to `window` for a row: its campaign's for `campagna` rows, every
    /// campaign's for the overall row; other dimensions have no attributable spend.
    fn spend_for(&self, window: Window, key: &DimKey) -> Option<f64> {
        let costs = self.costs.read().unwrap_or_else(|p| p.into_inner());
        match key.0 {
            Dimension::Campagna => costs
                .get(&key.1)
                .map(|s| s.for_window(window.start, window.end)),
            Dimension::All if !costs.is_empty() => Some(
                costs
                    .values()
                    .map(|s| s.for_window(window.start, window.end))
                    .sum(),
            ),
            _ => None,
        }
    }

    fn with_cpa(&self, mut row: MetricRow, conversions: u64) -> MetricRow {
        let window = Window {
            start: row.window_start_ms,
            end: row.window_end_ms,
        };
        if let Some(cents) = self.spend_for(window, &(row.dimension.clone(), row.value.clone())) {
            row.spend = Some(cents / 100.0);
            row.cpa = (conversions > 0).then(|| cents / 100.0 / conversions as f64);
        }
        row
    }

    /// Final and late-update rows as they happen.
    /// Wakes when new events have been counted (the value is how many in all).
    pub fn progress(&self) -> tokio::sync::watch::Receiver<i64> {
        self.progress.subscribe()
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Vec<MetricRow>> {
        self.fired_rows.subscribe()
    }

    /// Counts a page of events (parse, then window); the tailer does the two on different
    /// threads ([`Self::prepare`] while the previous page is windowed).
    #[cfg(test)]
    fn ingest(&self, events: &[RawEvent]) {
        let prepared = self.prepare(events);
        self.ingest_prepared(&prepared);
    }

    /// The part of counting that needs no state: each event's fields, its record and its
    /// dimension keys. Runs beside the windowing of the previous page.
    pub fn prepare<'a>(&self, events: impl IntoIterator<Item = &'a RawEvent>) -> PreparedPage {
        let mut oldest_received_ms: Option<i64> = None;
        let mappings = self
            .mappings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut keys = PageKeys::default();
        let events = events
            .into_iter()
            .map(|event| {
                oldest_received_ms = Some(
                    oldest_received_ms
                        .map_or(event.received_at_ms, |o| o.min(event.received_at_ms)),
                );
                let from = keys.mark();
                let mut key = |d: &Dimension, v: &str| keys.push(d, v);
                let record = match mappings.get(event.source.as_str()) {
                    Some(mapping) => self.mapped_record(mapping, event, &mut key),
                    None => self.builtin_record(event, &mut key),
                };
                let record = record.map(|r| (r, from..keys.mark()));
                PreparedEvent {
                    position: event.position,
                    id: event.id,
                    received_at_ms: event.received_at_ms,
                    event_time_ms: event.event_time_ms,
                    duplicate: event.duplicate,
                    record,
                    stream_time: None,
                }
            })
            .collect();
        PreparedPage {
            events,
            keys,
            oldest_received_ms,
        }
    }

    /// Windows a prepared page: the operator, fired results, late counts, and the messages
    /// to the persister and the live stream.
    pub fn ingest_prepared(&self, page: &PreparedPage) {
        if let Some(oldest) = page.oldest_received_ms {
            let now = self.clock.now_ms();
            let mut lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
            lag.last_progress_ms = now;
            lag.last_delay_ms = (now - oldest).max(0);
            if self.reports_process_metrics() {
                metrics::gauge!("raccordo_live_lag_seconds").set(lag.last_delay_ms as f64 / 1000.0);
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed: Vec<(Window, DimKey)> = Vec::new();
        let State {
            operator,
            fired,
            late,
            late_events,
            processed,
        } = &mut *state;
        let Some(operator) = operator.as_mut() else {
            return;
        };
        let mut on_emission = |emission: Emission<DimKey, ConversionStats>| {
            debug_assert!(matches!(
                emission.firing,
                Firing::Final | Firing::LateUpdate
            ));
            changed.push((emission.window, emission.key.clone()));
            // Emissions carry numbers, not the distinct sets (`Aggregate::emitted`): the
            // operator holds the live state while late updates can still come.
            fired.insert((emission.window, emission.key), emission.value);
        };
        for event in &page.events {
            processed.advance(event.position);
            if let Some(time) = event.stream_time {
                operator.observe(time, &mut on_emission);
            }
            let Some((record, run)) = &event.record else {
                continue;
            };
            let mut placement = Placement::OnTime;
            for key in page.keys.run(run) {
                placement = operator.process(event.event_time_ms, key, record, &mut on_emission);
            }
            if placement == Placement::Late && !event.duplicate {
                let keys: Vec<DimKey> = page.keys.run(run).cloned().collect();
                let late_event = LateEvent {
                    id: event.id,
                    event_time_ms: event.event_time_ms,
                    received_at_ms: event.received_at_ms,
                    record: *record,
                    keys,
                };
                if self.reports_process_metrics() {
                    metrics::counter!("raccordo_live_late_events_total", "source" => late_event.source().to_string())
                    .increment(1);
                }
                for window in self.spec.windows_for(event.event_time_ms) {
                    for key in &late_event.keys {
                        *late.entry((window.start, key.clone())).or_default() += 1;
                    }
                }
                if late_events.len() == MAX_LATE_EVENTS {
                    late_events.pop_front();
                }
                late_events.push_back(late_event);
            }
        }
        self.watermark
            .store(operator.watermark(), std::sync::atomic::Ordering::Relaxed);
        if !changed.is_empty() {
            changed.sort();
            changed.dedup();
        }
        if !changed.is_empty() {
            self.record_emissions(changed.iter().filter_map(|(w, k)| {
                Some((*w, k.clone(), state.fired.get(&(*w, k.clone()))?.clone()))
            }));
        }
        // Sent under the state lock, so a checkpoint taken later is always queued after the
        // results it covers (see `spawn_persister`).
        if !changed.is_empty() {
            let rows = changed
                .iter()
                .filter_map(|(w, k)| {
                    let stats = serde_json::to_string(state.fired.get(&(*w, k.clone()))?).ok()?;
                    let dimension = serde_json::to_value(&k.0).ok()?.as_str()?.to_string();
                    Some(WindowResult {
                        window_start_ms: w.start,
                        window_end_ms: w.end,
                        dimension,
                        value: k.1.clone(),
                        stats,
                    })
                })
                .collect();
            let _ = self.persist.send(PersistJob::Results(rows));
        }
        if !changed.is_empty() && self.fired_rows.receiver_count() > 0 {
            let rows = changed
                .into_iter()
                .filter_map(|(w, k)| {
                    state
                        .fired
                        .get(&(w, k.clone()))
                        .map(|s| self.with_cpa(state.row(w, &k, s, "final"), s.conversions))
                })
                .collect();
            let _ = self.fired_rows.send(rows);
        }
        // Only now, after what fired was handed to the persister and the stream: a window
        // that fires already older than the horizon is still saved.
        {
            let State {
                fired,
                late,
                late_events,
                ..
            } = &mut *state;
            // Forget results older than the horizon: every window has the same size, so "ends
            // at or after the horizon" is "starts at or after horizon − size", a split point of
            // maps ordered by window start.
            let horizon = self
                .watermark
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(RESULT_RETENTION_MS);
            let first_kept = horizon.saturating_sub(self.spec.size_ms);
            if fired
                .first_key_value()
                .is_some_and(|((w, _), _)| w.start < first_kept)
            {
                let min_key = (Dimension::All, String::new());
                *fired = fired.split_off(&(
                    Window {
                        start: first_kept,
                        end: i64::MIN,
                    },
                    min_key,
                ));
            }
            if late
                .first_key_value()
                .is_some_and(|((start, _), _)| *start < first_kept)
            {
                *late = late.split_off(&(first_kept, (Dimension::All, String::new())));
                // Log order is not event-time order: keep the events whose windows are kept.
                let spec = self.spec;
                late_events.retain(|e| {
                    spec.windows_for(e.event_time_ms)
                        .any(|w| w.start >= first_kept)
                });
            }
        }
        let counted = state.processed.total();
        drop(state);
        self.progress.send_if_modified(|seen| {
            let moved = *seen != counted;
            *seen = counted;
            moved
        });
    }

    /// An event of the built-in conversion schema: only the fields the windows need,
    /// borrowed from the stored text. Its dimension keys go to `key`, once the event is known
    /// to have a record.
    fn builtin_record(
        &self,
        event: &RawEvent,
        key: &mut impl FnMut(&Dimension, &str),
    ) -> Option<ConversionRecord> {
        let fields = serde_json::from_str::<LiveFields<'_>>(&event.payload).ok()?;
        let record = self.record_of(
            fields.id_cliente.as_deref()?,
            fields.evento.as_deref()?,
            fields.stato.as_deref().unwrap_or(""),
            fields.valore.map_or(0, |v| (v * 100.0).round() as i64),
            event.duplicate,
        );
        key(&Dimension::All, "");
        key(&Dimension::Source, event.source.as_str());
        for (dimension, value) in [
            (Dimension::Canale, fields.canale.as_deref()),
            (Dimension::Evento, fields.evento.as_deref()),
            (
                Dimension::Campagna,
                fields.metadati.as_ref().and_then(|m| m.campagna.as_deref()),
            ),
        ] {
            if let Some(v) = value {
                key(&dimension, v);
            }
        }
        Some(record)
    }

    /// An event of a mapped source, read through its mapping (the same function that let
    /// it in, so every accepted event yields a record).
    fn mapped_record(
        &self,
        mapping: &ConversionMapping,
        event: &RawEvent,
        key: &mut impl FnMut(&Dimension, &str),
    ) -> Option<ConversionRecord> {
        let payload: serde_json::Value = serde_json::from_str(&event.payload).ok()?;
        let MappedConversion {
            customer,
            event: evento,
            value_cents,
            channel,
            status,
            campaign,
            dimensions,
            ..
        } = mapping.apply(&payload).ok()?;
        let record = self.record_of(&customer, &evento, &status, value_cents, event.duplicate);
        key(&Dimension::All, "");
        key(&Dimension::Source, event.source.as_str());
        if let Some(channel) = &channel {
            key(&Dimension::Canale, channel);
        }
        key(&Dimension::Evento, &evento);
        if let Some(campaign) = &campaign {
            key(&Dimension::Campagna, campaign);
        }
        for (name, value) in dimensions {
            key(&Dimension::Field(Arc::from(name)), &value);
        }
        Some(record)
    }

    /// The customer of an event as these windows count it (its distinct-count hash, through
    /// the source's mapping), if the event is one they count: the stream places events by
    /// it, so that a partition's windows hold every event of their customers.
    pub fn customer_hash(&self, event: &RawEvent) -> Option<u64> {
        let mappings = self
            .mappings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let record = match mappings.get(event.source.as_str()) {
            Some(mapping) => self.mapped_record(mapping, event, &mut |_, _| {}),
            None => self.builtin_record(event, &mut |_, _| {}),
        };
        record.map(|record| record.customer_hash)
    }

    fn record_of(
        &self,
        customer: &str,
        evento: &str,
        stato: &str,
        value_cents: i64,
        duplicate: bool,
    ) -> ConversionRecord {
        ConversionRecord {
            customer_hash: raccordo_stream::distinct::hash_of(customer),
            is_conversion: self.goals.contains(evento) && stato == "completato",
            is_failure: stato == "fallito",
            value_cents,
            is_duplicate: duplicate,
        }
    }

    /// The late table: counts per window and dimension row, and the newest `limit` late
    /// events matching the filter.
    pub fn late(&self, filter: &LateFilter, limit: usize) -> LateTable {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.late_table(&state.late, state.late_events.iter(), filter, limit)
    }

    /// The late table of these counts and late events (oldest first).
    fn late_table<'a>(
        &self,
        late: &BTreeMap<(i64, DimKey), u64>,
        late_events: impl DoubleEndedIterator<Item = &'a LateEvent>,
        filter: &LateFilter,
        limit: usize,
    ) -> LateTable {
        let counts = late
            .iter()
            .filter(|((_, key), _)| {
                filter.key.as_ref().is_none_or(|k| k == key)
                    && filter
                        .source
                        .as_deref()
                        .is_none_or(|s| key.0 == Dimension::Source && key.1 == s)
            })
            .map(|((start, key), late)| LateCount {
                window_start_ms: *start,
                window_end_ms: start + self.spec.size_ms,
                dimension: key.0.clone(),
                value: key.1.clone(),
                late: *late,
            })
            .collect();
        let matching: Vec<&LateEvent> = late_events.rev().filter(|e| filter.matches(e)).collect();
        let events = matching
            .iter()
            .take(limit)
            .map(|e| LateEventRow {
                id: e.id,
                source: e.source().to_string(),
                event_time_ms: e.event_time_ms,
                received_at_ms: e.received_at_ms,
                windows: self
                    .spec
                    .windows_for(e.event_time_ms)
                    .map(|w| w.start)
                    .collect(),
                dimensions: e
                    .keys
                    .iter()
                    .filter(|(d, _)| !matches!(d, Dimension::All | Dimension::Source))
                    .map(|(d, v)| (d.as_str().to_string(), v.clone()))
                    .collect(),
            })
            .collect();
        LateTable {
            counts,
            events,
            total_events: matching.len(),
        }
    }

    /// Forgets late events received before `before_ms` (retention): their ids, times and
    /// dimensions go, the late counts per window stay. How many went.
    pub fn purge_late_events(&self, before_ms: i64) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = state.late_events.len();
        state.late_events.retain(|e| e.received_at_ms >= before_ms);
        (before - state.late_events.len()) as u64
    }

    /// Late events of the customer counted as `from` (distinct-count hashes) count as `to`
    /// instead: an erased customer's pseudonym, so that a later re-aggregation counts them
    /// as the rewritten log does. How many changed; the next checkpoint keeps it.
    pub fn rehash_late_customer(&self, from: &[u64], to: u64) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = 0;
        for event in state.late_events.iter_mut() {
            if from.contains(&event.record.customer_hash) {
                event.record.customer_hash = to;
                changed += 1;
            }
        }
        changed
    }

    /// Counts the matching late events into the windows they were late for (an admin's
    /// decision: the final results change), and removes them from the late table. The
    /// changed rows are saved and streamed like late updates; the next checkpoint keeps the
    /// change. Windows older than the results' retention are gone and cannot take them.
    pub fn reaggregate(&self, filter: &LateFilter) -> Reaggregated {
        let (events, rows) = self.reaggregate_rows(filter);
        Reaggregated {
            events,
            rows: rows.len(),
        }
    }

    /// [`Self::reaggregate`]: how many events, and which window rows changed.
    fn reaggregate_rows(&self, filter: &LateFilter) -> (usize, Vec<(Window, DimKey)>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (taken, kept): (Vec<LateEvent>, Vec<LateEvent>) =
            std::mem::take(&mut state.late_events)
                .into_iter()
                .partition(|e| filter.matches(e));
        state.late_events = kept.into();
        let mut groups: BTreeMap<(Window, DimKey), Vec<ConversionRecord>> = BTreeMap::new();
        for event in &taken {
            for window in self.spec.windows_for(event.event_time_ms) {
                for key in &event.keys {
                    groups
                        .entry((window, key.clone()))
                        .or_default()
                        .push(event.record);
                    let slot = (window.start, key.clone());
                    if let Some(n) = state.late.get_mut(&slot) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            state.late.remove(&slot);
                        }
                    }
                }
            }
        }
        let rows: Vec<(Window, DimKey)> = groups.keys().cloned().collect();
        let mut results = Vec::with_capacity(rows.len());
        let mut streamed = Vec::with_capacity(rows.len());
        for ((window, key), records) in groups {
            let stats = state
                .fired
                .entry((window, key.clone()))
                .or_insert_with(|| ConversionStats::default().frozen());
            stats.absorb_late(&records);
            let stats = stats.clone();
            self.record_emissions(std::iter::once((window, key.clone(), stats.clone())));
            if let Ok(text) = serde_json::to_string(&stats) {
                results.push(WindowResult {
                    window_start_ms: window.start,
                    window_end_ms: window.end,
                    dimension: key.0.as_str().to_string(),
                    value: key.1.clone(),
                    stats: text,
                });
            }
            streamed
                .push(self.with_cpa(state.row(window, &key, &stats, "final"), stats.conversions));
        }
        if !results.is_empty() {
            let _ = self.persist.send(PersistJob::Results(results));
            // The log did not move, but the state did: make the next checkpoint save it.
            self.changed_off_log
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        drop(state);
        if !streamed.is_empty() {
            let _ = self.fired_rows.send(streamed);
        }
        metrics::counter!("raccordo_live_late_reaggregated_total").increment(taken.len() as u64);
        (taken.len(), rows)
    }

    /// Rows of the windows that are still open (provisional results), and the `seq` of the
    /// newest event they include.
    pub fn provisional(
        &self,
        dimension: Option<&Dimension>,
        value: Option<&str>,
    ) -> (Vec<MetricRow>, i64) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(operator) = &state.operator else {
            return (Vec::new(), state.processed.total());
        };
        let rows = operator
            .open_windows()
            .filter(|(_, k, _)| {
                dimension.is_none_or(|d| *d == k.0) && value.is_none_or(|v| v == k.1)
            })
            .map(|(w, k, s)| self.with_cpa(state.row(w, k, s, "provisional"), s.conversions))
            .collect();
        (rows, state.processed.total())
    }

    pub fn health(&self) -> LiveHealth {
        let (processed_seq, watermark_ms) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let watermark = state
                .operator
                .as_ref()
                .map(|o| o.watermark())
                .filter(|w| *w > i64::MIN / 2);
            (state.processed.total(), watermark)
        };
        let committed_seq = self
            .committed
            .get()
            .map_or(processed_seq, |c| c.borrow().total());
        let now = self.clock.now_ms();
        let lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        let lag_ms = if committed_seq > processed_seq {
            // Behind: at least as old as the last progress.
            lag.last_delay_ms.max(now - lag.last_progress_ms)
        } else if now - lag.last_progress_ms < 5_000 {
            lag.last_delay_ms
        } else {
            0 // caught up and idle
        };
        LiveHealth {
            processed_seq,
            committed_seq,
            lag_ms,
            watermark_ms,
            checkpoint_seq: self
                .checkpoint_seq
                .load(std::sync::atomic::Ordering::Relaxed),
            restored_from_seq: self
                .restored_from_seq
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Rows for windows overlapping `[from, to)`, filtered by dimension.
    pub fn query(
        &self,
        from_ms: i64,
        to_ms: i64,
        dimension: Option<&Dimension>,
        value: Option<&str>,
    ) -> (Vec<MetricRow>, i64) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = |window: &Window, key: &DimKey| {
            window.end > from_ms
                && window.start < to_ms
                && dimension.is_none_or(|d| *d == key.0)
                && value.is_none_or(|v| v == key.1)
        };
        let row = |window: Window, key: &DimKey, stats: &ConversionStats, status| {
            self.with_cpa(state.row(window, key, stats, status), stats.conversions)
        };
        let mut rows: Vec<MetricRow> = state
            .fired
            .iter()
            .filter(|((w, k), _)| wanted(w, k))
            .map(|((w, k), s)| row(*w, k, s, "final"))
            .collect();
        if let Some(operator) = &state.operator {
            rows.extend(
                operator
                    .open_windows()
                    .filter(|(w, k, _)| wanted(w, k))
                    .map(|(w, k, s)| row(w, k, s, "provisional")),
            );
        }
        rows.sort_by(|a, b| {
            (a.window_start_ms, &a.dimension, &a.value).cmp(&(
                b.window_start_ms,
                &b.dimension,
                &b.value,
            ))
        });
        (rows, state.processed.total())
    }
}

/// `[metrics]`: the live event-time windows.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Window size (tumbling unless `slide` is set).
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub window: Duration,
    /// Sliding windows: how far each window starts after the previous one.
    #[serde(with = "humantime_serde::option")]
    #[schema(value_type = Option<String>, format = Duration)]
    pub slide: Option<Duration>,
    /// Watermark = newest event time minus this.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub out_of_orderness: Duration,
    /// How long after a window fired late events still update it.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub allowed_lateness: Duration,
    /// Event types (`evento`, or a mapping's `event`) that count as conversions when their
    /// status is `completato`.
    pub goals: Vec<String>,
    /// How often the SSE stream publishes provisional results of open windows when nothing
    /// new was counted (a heartbeat); new events are published sooner (`provisional_coalesce`).
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub provisional_every: Duration,
    /// New events are published this long after they were counted, so that one message
    /// carries everything counted meanwhile (0: at once).
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub provisional_coalesce: Duration,
    /// How often the window state is saved, so a restart resumes there instead of
    /// replaying the whole log.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub checkpoint_every: Duration,
    /// How long fired windows' results are kept in the store, for the dashboard's time
    /// ranges and `GET /api/v1/metrics?from=…` (the last 48 h are also kept in memory).
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub history: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            slide: None,
            out_of_orderness: Duration::from_secs(15),
            allowed_lateness: Duration::from_secs(3600),
            goals: vec!["acquisto_concluso".into()],
            provisional_every: Duration::from_millis(500),
            provisional_coalesce: Duration::from_millis(25),
            checkpoint_every: Duration::from_secs(10),
            history: Duration::from_secs(8 * 24 * 3600),
        }
    }
}

impl MetricsConfig {
    pub fn window_spec(&self) -> WindowSpec {
        let size = self.window.as_millis() as i64;
        WindowSpec {
            size_ms: size,
            slide_ms: self.slide.map_or(size, |s| s.as_millis() as i64),
            out_of_orderness_ms: self.out_of_orderness.as_millis() as i64,
            allowed_lateness_ms: self.allowed_lateness.as_millis() as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raccordo_core::{ManualClock, StreamItem};

    /// The default five-minute windows, counting `acquisto_concluso` as the conversion.
    fn five_minute_windows(clock: &ManualClock) -> Arc<LiveMetrics> {
        LiveMetrics::new(
            WindowSpec::tumbling(300_000),
            ["acquisto_concluso".to_string()],
            Arc::new(clock.clone()),
        )
    }

    fn raw(seq: i64, received_at_ms: i64, duplicate: bool) -> RawEvent {
        RawEvent {
            position: raccordo_core::LogPosition {
                partition: 0,
                offset: seq,
            },
            id: raccordo_core::EventId::from_u128(seq as u128),
            source: raccordo_core::SourceName::new("web").unwrap(),
            event_time_ms: received_at_ms - 1000,
            received_at_ms,
            payload: r#"{"id_cliente":"C1","evento":"acquisto_concluso","stato":"completato","canale":"email","valore":10.0}"#.into(),
            duplicate,
        }
    }

    type Fired = BTreeMap<(Window, DimKey), ConversionStats>;
    type Late = BTreeMap<(i64, DimKey), u64>;

    /// Every fired result and late count, summed over partitions of customers.
    fn merged(parts: &[Arc<LiveMetrics>]) -> (Fired, Late) {
        let mut fired: BTreeMap<(Window, DimKey), ConversionStats> = BTreeMap::new();
        let mut late: BTreeMap<(i64, DimKey), u64> = BTreeMap::new();
        for part in parts {
            let state = part.state.lock().unwrap();
            for (key, stats) in &state.fired {
                fired.entry(key.clone()).or_default().merge_disjoint(stats);
            }
            for (key, n) in &state.late {
                *late.entry(key.clone()).or_default() += n;
            }
        }
        (fired, late)
    }

    /// Random events (time, customer, channel, converts) into one reader of the whole log and
    /// into the windows of each partition of a stream partitioned by customer, read with the
    /// stream's time before each message and a last tick.
    fn whole_and_partitions(
        events: &[(i64, u8, u8, bool)],
        partitions: u32,
    ) -> (Arc<LiveMetrics>, Vec<Arc<LiveMetrics>>) {
        let spec = WindowSpec::tumbling(300_000);
        let goals = ["acquisto_concluso".to_string()];
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        let whole = LiveMetrics::new(spec, goals.clone(), clock.clone());
        let parts: Vec<Arc<LiveMetrics>> = (0..partitions)
            .map(|p| LiveMetrics::in_scope(spec, goals.clone(), clock.clone(), partition_scope(p)))
            .collect();
        let channels = ["email", "social", "ricerca"];
        let mut raws = Vec::new();
        let mut items: Vec<Vec<StreamItem>> = vec![Vec::new(); partitions as usize];
        let mut newest: Option<i64> = None;
        for (n, (time, customer, channel, converts)) in events.iter().enumerate() {
            let mut event = raw(n as i64 + 1, 10_000_000, false);
            event.event_time_ms = *time;
            event.payload = format!(
                r#"{{"id_cliente":"C{customer}","evento":"{}","stato":"completato","canale":"{}","valore":1.5}}"#,
                if *converts {
                    "acquisto_concluso"
                } else {
                    "visita"
                },
                channels[*channel as usize],
            );
            let partition =
                raccordo_core::partition_of(format!("C{customer}").as_bytes(), partitions);
            let mut in_stream = event.clone();
            in_stream.position = raccordo_core::LogPosition {
                partition,
                offset: items[partition as usize].len() as i64 + 1,
            };
            items[partition as usize].push(StreamItem {
                position: in_stream.position,
                stream_time_ms: newest,
                event: Some(in_stream),
            });
            newest = Some(newest.map_or(*time, |t| t.max(*time)));
            raws.push(event);
        }
        whole.ingest(&raws);
        for (p, part) in parts.iter().enumerate() {
            let mut mine = items[p].clone();
            // The relay's tick: every partition ends knowing the stream's newest time.
            mine.push(StreamItem {
                position: raccordo_core::LogPosition {
                    partition: p as u32,
                    offset: mine.len() as i64 + 1,
                },
                stream_time_ms: newest,
                event: None,
            });
            part.ingest_prepared(&part.prepare_items(&mine));
        }
        (whole, parts)
    }

    proptest::proptest! {
        /// A page's keys, held once and named by index, give every event back exactly the
        /// keys it was counted under, in order; equal keys are stored once.
        #[test]
        fn page_keys_give_back_each_events_keys(
            events in proptest::collection::vec(
                proptest::collection::vec((0u8..4, "[ab]{0,2}"), 0..6), 0..40),
        ) {
            let dimension = |d: u8| match d {
                0 => Dimension::All,
                1 => Dimension::Canale,
                2 => Dimension::Campagna,
                _ => Dimension::Field(Arc::from("regione")),
            };
            let mut keys = PageKeys::default();
            let runs: Vec<_> = events.iter().map(|event| {
                let from = keys.mark();
                for (d, v) in event {
                    keys.push(&dimension(*d), v);
                }
                from..keys.mark()
            }).collect();
            for (event, run) in events.iter().zip(&runs) {
                let expected: Vec<DimKey> = event.iter().map(|(d, v)| (dimension(*d), v.clone())).collect();
                let got: Vec<DimKey> = keys.run(run).cloned().collect();
                proptest::prop_assert_eq!(got, expected);
            }
            let distinct: HashSet<&DimKey> = keys.keys.iter().collect();
            proptest::prop_assert_eq!(distinct.len(), keys.keys.len());
        }

        /// The windows of each partition of a stream partitioned by customer, read with the
        /// stream's time before each message (and ticks), merged per window and key, equal the
        /// windows over the whole log: the same final values, the same late counts.
        #[test]
        fn partition_windows_merged_equal_the_whole_log(
            events in proptest::collection::vec((0i64..4_000_000, 0u8..12, 0u8..3, proptest::bool::ANY), 1..250),
            partitions in 1u32..5,
        ) {
            let (whole, parts) = whole_and_partitions(&events, partitions);
            let (fired, late) = merged(&parts);
            let whole_state = whole.state.lock().unwrap();
            let expected: BTreeMap<_, _> = whole_state.fired.iter().map(|(k, v)| (k.clone(), v.frozen())).collect();
            let got: BTreeMap<_, _> = fired.into_iter().map(|(k, v)| (k, v.frozen())).collect();
            proptest::prop_assert_eq!(got, expected);
            proptest::prop_assert_eq!(late, whole_state.late.clone());
        }

        /// What the partitions' owners publish, merged as any node merges it, is what one
        /// reader of the whole log would publish: the same open windows and recent finals,
        /// with the same results (distinct customers added across partitions).
        #[test]
        fn published_views_merged_equal_the_whole_log(
            events in proptest::collection::vec((0i64..4_000_000, 0u8..12, 0u8..3, proptest::bool::ANY), 1..250),
            partitions in 1u32..5,
        ) {
            let (whole, parts) = whole_and_partitions(&events, partitions);
            let views: Vec<_> = parts.iter().map(|p| Some(p.view("node"))).collect();
            let got: BTreeMap<_, _> = cluster::merge_views(&views, 300_000)
                .into_iter()
                .map(|(key, cell)| (key, (cell.stats, cell.open)))
                .collect();
            let expected: BTreeMap<_, _> = whole
                .view("node")
                .windows
                .into_iter()
                .map(|(window, key, stats, fired)| ((window, key), (stats, !fired)))
                .collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn late_events_move_to_a_pseudonym_and_expire_while_their_counts_stay() {
        let clock = ManualClock::new(100_000_000);
        let live = five_minute_windows(&clock);
        live.ingest(&[raw(1, 100_000_000, false)]);
        // Far behind the watermark: late for every window that would hold it.
        let mut late = raw(2, 100_000_500, false);
        late.event_time_ms = 1_000;
        live.ingest(&[late]);
        let table = live.late(&LateFilter::default(), 10);
        assert_eq!(table.total_events, 1, "{table:?}");
        let counted: u64 = table.counts.iter().map(|c| c.late).sum();
        assert!(counted > 0);

        let c1 = raccordo_stream::distinct::hash_of("C1");
        let pseudonym = raccordo_stream::distinct::hash_of("zz");
        assert_eq!(live.rehash_late_customer(&[c1], pseudonym), 1);
        assert_eq!(
            live.rehash_late_customer(&[c1], pseudonym),
            0,
            "already moved"
        );

        assert_eq!(
            live.purge_late_events(100_000_500),
            0,
            "not older than that"
        );
        assert_eq!(live.purge_late_events(100_000_501), 1);
        let table = live.late(&LateFilter::default(), 10);
        assert_eq!(table.total_events, 0);
        assert_eq!(
            table.counts.iter().map(|c| c.late).sum::<u64>(),
            counted,
            "the counts stay"
        );
    }

    #[test]
    fn behind_before_the_first_page_the_lag_counts_from_the_start() {
        let clock = ManualClock::new(1_764_000_000_000);
        let live = five_minute_windows(&clock);
        let (_head, committed) = tokio::sync::watch::channel(LogPositions::single(5));
        live.committed.set(committed).unwrap();
        clock.advance(3_000);
        let health = live.health();
        assert_eq!((health.processed_seq, health.committed_seq), (0, 5));
        assert_eq!(health.lag_ms, 3_000, "waiting since the windows started");
    }

    #[test]
    fn lag_is_the_age_of_what_was_just_counted_and_zero_when_idle() {
        let clock = ManualClock::new(1_000_000);
        let live = five_minute_windows(&clock);
        assert_eq!(live.health().lag_ms, 0, "nothing read yet");
        let mut progress = live.progress();
        assert!(!progress.has_changed().unwrap());
        live.ingest(&[raw(1, 999_400, false), raw(2, 999_900, true)]);
        let health = live.health();
        assert_eq!(
            (health.lag_ms, health.processed_seq),
            (600, 2),
            "the oldest event of the page was 600 ms old"
        );
        assert!(
            progress.has_changed().unwrap(),
            "counting wakes the stream's publisher"
        );
        assert_eq!(*progress.borrow_and_update(), 2);
        live.ingest(&[]);
        assert!(!progress.has_changed().unwrap(), "nothing new, no wake-up");
        clock.advance(10_000);
        assert_eq!(live.health().lag_ms, 0, "caught up and idle");
        let (rows, through) = live.provisional(Some(&Dimension::All), None);
        assert_eq!(through, 2);
        assert_eq!(
            (rows[0].events, rows[0].duplicates),
            (1, 1),
            "the duplicate is counted apart"
        );
    }
}
