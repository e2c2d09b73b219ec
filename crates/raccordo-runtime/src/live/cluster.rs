//! The cluster's windows as any node serves them (`view=partitions`): every stream
//! partition's windows, as their owners publish them ([`PartitionView`], [`LateView`]),
//! merged. Partitions hold disjoint customers, so results add up, distinct counts included.
//!
//! A node polls the published views (every [`POLL_EVERY`]) and from them serves the
//! dashboard's live stream (open windows as they move, final rows as windows close and late
//! events update them), the late table and the metric rows; re-aggregation, erasure and
//! retention reach each partition's owner as commands queued in the shared key-value store.
//! A window is final once every partition's watermark has passed its end: partitions read
//! the stream's time from the relay's stamps, so they close the same windows, but one may
//! read a little behind another.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raccordo_core::{Clock, KeyValueStore, StoreError, WindowStore};
use raccordo_stream::{ConversionStats, Window};

use super::partitioned::{
    CommandDone, LateView, PartitionView, QueuedCommand, WindowCommand, commands_key, done_key,
    late_key, view_key,
};
use super::{
    Checkpoint, DimKey, Dimension, LateFilter, LateTable, LiveMetrics, MetricRow, Reaggregated,
    metric_row, partition_scope,
};
use crate::supervisor::TaskContext;

/// How often a node reads the partitions' published windows.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// What a node last read of the partitions.
#[derive(Default)]
struct Read {
    views: Vec<Option<PartitionView>>,
    /// Each partition's late table, with the fingerprint it was read at.
    lates: Vec<Option<(u64, LateView)>>,
    /// Per partition: the owner's incarnation and the last emitted result taken in.
    taken: Vec<(u64, u64)>,
    /// Each partition's final results per window, as far as known (from its emissions, its
    /// view, or the window store).
    known: HashMap<(u32, Window), Known>,
    /// Results emitted by some partition, to stream once every partition is past them.
    pending: std::collections::BTreeSet<(Window, DimKey)>,
    /// The final rows last streamed, to stream only what changed.
    streamed: HashMap<(Window, DimKey), ConversionStats>,
    /// Whether the views were read once (what was emitted before this node started is not
    /// streamed again).
    primed: bool,
}

/// A partition's final results for one window.
#[derive(Default)]
struct Known {
    results: HashMap<DimKey, ConversionStats>,
    /// Every key of the window is here (read from the view's finals or the store), not only
    /// those a late update emitted.
    complete: bool,
}

/// One cell of the merged windows.
#[derive(Default, Clone)]
pub(super) struct Cell {
    pub(super) stats: ConversionStats,
    pub(super) open: bool,
}

/// The cluster's windows on this node.
pub struct ClusterWindows {
    /// The window settings, spend per campaign and dimensions of this hub.
    live: Arc<LiveMetrics>,
    kv: Arc<dyn KeyValueStore>,
    store: Arc<dyn WindowStore>,
    clock: Arc<dyn Clock>,
    partitions: u32,
    read: Mutex<Read>,
    /// One refresh at a time (the poller's and a query's): views read later are taken in
    /// later.
    refreshing: tokio::sync::Mutex<()>,
    fired: tokio::sync::broadcast::Sender<Vec<MetricRow>>,
    progress: tokio::sync::watch::Sender<i64>,
}

impl ClusterWindows {
    pub fn new(
        live: Arc<LiveMetrics>,
        kv: Arc<dyn KeyValueStore>,
        store: Arc<dyn WindowStore>,
        clock: Arc<dyn Clock>,
        partitions: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            live,
            kv,
            store,
            clock,
            partitions,
            read: Mutex::new(Read {
                views: vec![None; partitions as usize],
                lates: vec![None; partitions as usize],
                taken: vec![(0, 0); partitions as usize],
                ..Read::default()
            }),
            refreshing: tokio::sync::Mutex::new(()),
            fired: tokio::sync::broadcast::channel(1024).0,
            progress: tokio::sync::watch::channel(0).0,
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn window_size_ms(&self) -> i64 {
        self.live.spec.size_ms
    }

    /// Reads the partitions' views until shutdown.
    pub async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        loop {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "reading the partitions' windows failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = ctx.cancelled() => return Ok(()),
            }
        }
    }

    /// Reads every partition's view (and late table, when it changed), and streams the
    /// final rows that are new or changed.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let _one = self.refreshing.lock().await;
        let now = self.clock.now_ms();
        let mut views = Vec::with_capacity(self.partitions as usize);
        for partition in 0..self.partitions {
            let view = self.kv.get(&view_key(partition), now).await?;
            views.push(view.and_then(|v| serde_json::from_slice::<PartitionView>(&v.value).ok()));
        }
        let known: Vec<Option<u64>> = {
            let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
            read.lates
                .iter()
                .map(|l| l.as_ref().map(|(f, _)| *f))
                .collect()
        };
        let mut lates: Vec<Option<(u64, LateView)>> = vec![None; self.partitions as usize];
        for (partition, view) in views.iter().enumerate() {
            let Some(view) = view else { continue };
            if known[partition] == Some(view.late_fingerprint) {
                continue;
            }
            if let Some(late) = self.kv.get(&late_key(partition as u32), now).await?
                && let Ok(late) = serde_json::from_slice::<LateView>(&late.value)
            {
                lates[partition] = Some((view.late_fingerprint, late));
            }
        }
        let counted: i64 = views.iter().flatten().map(|v| v.counted).sum();
        let missing = {
            let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
            for (partition, late) in lates.into_iter().enumerate() {
                if late.is_some() {
                    read.lates[partition] = late;
                }
            }
            read.views = views;
            self.take_in_emissions(&mut read)
        };
        // Partitions whose results for a window about to be streamed are not known here:
        // read from the window store (the owner saved them when they were emitted, long
        // enough ago to be out of its published emissions), or none at all.
        let mut loaded = Vec::with_capacity(missing.len());
        for (partition, window) in missing {
            let mut results = HashMap::new();
            for r in self
                .store
                .results_between(&partition_scope(partition), window.start, window.end)
                .await?
            {
                if r.window_start_ms != window.start || r.window_end_ms != window.end {
                    continue;
                }
                if let Ok(stats) = serde_json::from_str::<ConversionStats>(&r.stats) {
                    results.insert((Dimension::parse(&r.dimension), r.value), stats);
                }
            }
            loaded.push(((partition, window), results));
        }
        {
            let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
            for (at, mut results) in loaded {
                // What was emitted since is newer than what the store had.
                let known = read.known.entry(at).or_default();
                results.extend(known.results.drain());
                *known = Known {
                    results,
                    complete: true,
                };
            }
            self.stream_ready(&mut read);
        }
        self.progress.send_if_modified(|seen| {
            let moved = *seen != counted;
            *seen = counted;
            moved
        });
        Ok(())
    }

    /// Takes in what the views say of final results: every partition's emissions since last
    /// read (pending, to stream) and its recent finals (known). Returns the partitions whose
    /// results are needed for a window ready to stream but not known here.
    fn take_in_emissions(&self, read: &mut Read) -> Vec<(u32, Window)> {
        let Read {
            views,
            taken,
            known,
            pending,
            primed,
            ..
        } = read;
        for (partition, view) in views.iter().enumerate() {
            let Some(view) = view else { continue };
            let p = partition as u32;
            let mut finals: HashMap<Window, HashMap<DimKey, ConversionStats>> = HashMap::new();
            for (window, key, stats, fired) in &view.windows {
                if *fired {
                    finals
                        .entry(*window)
                        .or_default()
                        .insert(key.clone(), stats.clone());
                }
            }
            for (window, results) in finals {
                known.insert(
                    (p, window),
                    Known {
                        results,
                        complete: true,
                    },
                );
            }
            let (incarnation, last) = taken[partition];
            let after = if incarnation == view.incarnation {
                last
            } else {
                0
            };
            for (n, window, key, stats) in &view.emitted {
                if *n <= after {
                    continue;
                }
                known
                    .entry((p, *window))
                    .or_default()
                    .results
                    .insert(key.clone(), stats.clone());
                if *primed {
                    pending.insert((*window, key.clone()));
                }
            }
            let newest = view.emitted.iter().map(|e| e.0).max().unwrap_or(after);
            taken[partition] = (view.incarnation, newest.max(after));
        }
        *primed = true;
        let Some(slowest) = slowest_of(views) else {
            return Vec::new();
        };
        let windows: std::collections::BTreeSet<Window> = pending
            .iter()
            .filter(|(w, _)| w.end <= slowest)
            .map(|(w, _)| *w)
            .collect();
        let mut missing = Vec::new();
        for window in windows {
            for p in 0..self.partitions {
                if !known.get(&(p, window)).is_some_and(|k| k.complete) {
                    missing.push((p, window));
                }
            }
        }
        missing
    }

    /// Streams the pending results every partition is past, merged, where they changed;
    /// forgets what can no longer change.
    fn stream_ready(&self, read: &mut Read) {
        let Some(slowest) = slowest_of(&read.views) else {
            return;
        };
        let ready: Vec<(Window, DimKey)> = read
            .pending
            .iter()
            .filter(|(w, _)| w.end <= slowest)
            .cloned()
            .collect();
        let late = late_counts(&read.lates);
        let mut rows = Vec::new();
        for (window, key) in ready {
            read.pending.remove(&(window, key.clone()));
            let mut merged = ConversionStats::default();
            for p in 0..self.partitions {
                if let Some(stats) = read
                    .known
                    .get(&(p, window))
                    .and_then(|k| k.results.get(&key))
                {
                    merged.merge_disjoint(stats);
                }
            }
            if read.streamed.get(&(window, key.clone())) == Some(&merged) {
                continue;
            }
            rows.push(self.row(window, &key, &merged, "final", &late));
            read.streamed.insert((window, key), merged);
        }
        if !rows.is_empty() {
            let _ = self.fired.send(rows);
        }
        // A window past the allowed lateness cannot change any more.
        let spec = &self.live.spec;
        let gone = slowest
            .saturating_sub(spec.allowed_lateness_ms)
            .saturating_sub(spec.size_ms);
        read.known.retain(|(_, w), _| w.end >= gone);
        read.streamed.retain(|(w, _), _| w.end >= gone);
    }

    fn row(
        &self,
        window: Window,
        key: &DimKey,
        stats: &ConversionStats,
        status: &'static str,
        late: &HashMap<(i64, DimKey), u64>,
    ) -> MetricRow {
        let n = late.get(&(window.start, key.clone())).copied().unwrap_or(0);
        self.live
            .with_cpa(metric_row(window, key, stats, status, n), stats.conversions)
    }

    /// Final and late-update rows as windows close (for the live stream and alerts).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Vec<MetricRow>> {
        self.fired.subscribe()
    }

    /// Wakes when the partitions counted more (the value: messages counted in all).
    pub fn progress(&self) -> tokio::sync::watch::Receiver<i64> {
        self.progress.subscribe()
    }

    /// The open windows, merged, and the messages counted.
    pub fn provisional(
        &self,
        dimension: Option<&Dimension>,
        value: Option<&str>,
    ) -> (Vec<MetricRow>, i64) {
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let late = late_counts(&read.lates);
        let counted = read.views.iter().flatten().map(|v| v.counted).sum();
        let rows = merge_views(&read.views, self.live.spec.size_ms)
            .into_iter()
            .filter(|((_, key), cell)| {
                cell.open
                    && dimension.is_none_or(|d| *d == key.0)
                    && value.is_none_or(|v| v == key.1)
            })
            .map(|((window, key), cell)| self.row(window, &key, &cell.stats, "provisional", &late))
            .collect();
        (rows, counted)
    }

    /// How long acknowledged events take to reach the partitions' windows: the slowest
    /// partition's, as its owner last said.
    pub fn lag_ms(&self) -> i64 {
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        read.views
            .iter()
            .flatten()
            .map(|v| v.lag_ms)
            .max()
            .unwrap_or(0)
    }

    /// The watermark every partition has passed (`None` until each has published).
    fn slowest_watermark(&self) -> Option<i64> {
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        slowest_of(&read.views)
    }

    /// Whether an event at `event_time_ms` is too late for every window holding it in
    /// every partition (as the owners last published).
    pub fn is_too_late(&self, event_time_ms: i64) -> bool {
        self.slowest_watermark()
            .is_some_and(|w| self.live.spec.is_too_late(event_time_ms, w))
    }

    /// The partitions' windows' health: stream messages counted (the partitions' positions
    /// stand in for log positions), the slowest lag and watermark.
    pub fn health(&self) -> super::LiveHealth {
        let counted = *self.progress.borrow();
        let (checkpointed, restored_from) = {
            let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
            let views = read.views.iter().flatten();
            views.fold((0, 0), |(c, r), v| {
                (c + v.checkpointed, r + v.restored_from)
            })
        };
        super::LiveHealth {
            processed_seq: counted,
            committed_seq: counted,
            lag_ms: self.lag_ms(),
            watermark_ms: self.slowest_watermark().filter(|w| *w > i64::MIN / 2),
            checkpoint_seq: checkpointed,
            restored_from_seq: restored_from,
        }
    }

    /// The late table of every partition, merged.
    pub fn late(&self, filter: &LateFilter, limit: usize) -> LateTable {
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let late = late_counts(&read.lates)
            .into_iter()
            .collect::<BTreeMap<_, _>>();
        let mut events: Vec<&super::LateEvent> = read
            .lates
            .iter()
            .flatten()
            .flat_map(|(_, view)| view.late_events.iter())
            .collect();
        // Oldest first, as one partition keeps them.
        events.sort_by_key(|e| (e.received_at_ms, e.id));
        self.live
            .late_table(&late, events.into_iter(), filter, limit)
    }

    /// The metric rows between `from_ms` and `to_ms`: each partition's final results from
    /// the window store, overlaid with what its owner publishes (newer: open windows and late
    /// updates), or with its last checkpoint while no owner has published. Also the messages
    /// counted.
    pub async fn query(
        &self,
        from_ms: i64,
        to_ms: i64,
        dimension: Option<&Dimension>,
        value: Option<&str>,
    ) -> Result<(Vec<MetricRow>, i64), StoreError> {
        // Read the views now: an answer never older than what this node last said (the
        // ingest answer's `late` reads the same views).
        self.refresh().await?;
        let size = self.live.spec.size_ms;
        let wanted = |window: &Window, key: &DimKey| {
            window.end > from_ms
                && window.start < to_ms
                && dimension.is_none_or(|d| *d == key.0)
                && value.is_none_or(|v| v == key.1)
        };
        let (views, lates) = {
            let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
            (read.views.clone(), read.lates.clone())
        };
        let mut merged: BTreeMap<(Window, DimKey), Cell> = BTreeMap::new();
        let mut late: HashMap<(i64, DimKey), u64> = late_counts(&lates);
        let mut counted = 0;
        let mut slowest = i64::MAX;
        for partition in 0..self.partitions {
            let scope = partition_scope(partition);
            let mut cells: BTreeMap<(Window, DimKey), Cell> = BTreeMap::new();
            for r in self
                .store
                .results_between(&scope, from_ms.saturating_sub(size), to_ms)
                .await?
            {
                let window = Window {
                    start: r.window_start_ms,
                    end: r.window_end_ms,
                };
                let key = (Dimension::parse(&r.dimension), r.value);
                if let Ok(stats) = serde_json::from_str::<ConversionStats>(&r.stats) {
                    cells.insert((window, key), Cell { stats, open: false });
                }
            }
            match &views[partition as usize] {
                Some(view) => {
                    counted += view.counted;
                    slowest = slowest.min(view.watermark_ms);
                    for (window, key, stats, fired) in &view.windows {
                        cells.insert(
                            (*window, key.clone()),
                            Cell {
                                stats: stats.clone(),
                                open: !fired,
                            },
                        );
                    }
                }
                // Not published yet (no owner since the nodes started): the checkpoint's open
                // windows, and nothing final until the owner says how far it is.
                None => {
                    slowest = i64::MIN;
                    let Some(saved) = self.store.checkpoint(&scope).await? else {
                        continue;
                    };
                    counted += saved.positions.total();
                    let Ok(checkpoint) = serde_json::from_str::<Checkpoint>(&saved.state) else {
                        continue;
                    };
                    let fired: HashSet<Window> =
                        checkpoint.operator.fired.iter().copied().collect();
                    for (window, keys) in checkpoint.operator.windows {
                        if fired.contains(&window) {
                            continue;
                        }
                        for (key, stats) in keys {
                            // Fired since the checkpoint: the saved result is newer.
                            cells
                                .entry((window, key))
                                .or_insert(Cell { stats, open: true });
                        }
                    }
                    if lates[partition as usize].is_none() {
                        for (slot, n) in checkpoint.late_by_key {
                            *late.entry(slot).or_default() += n;
                        }
                    }
                }
            }
            for ((window, key), cell) in cells {
                if !wanted(&window, &key) {
                    continue;
                }
                let into = merged.entry((window, key)).or_default();
                into.stats.merge_disjoint(&cell.stats);
                into.open |= cell.open;
            }
        }
        let rows = merged
            .into_iter()
            .map(|((window, key), cell)| {
                // Final once every partition is past it.
                let status = if cell.open || window.end > slowest {
                    "provisional"
                } else {
                    "final"
                };
                self.row(window, &key, &cell.stats, status, &late)
            })
            .collect();
        Ok((rows, counted))
    }

    /// Re-aggregates the matching late events on every partition's owner; answered once
    /// each owner saved the change, or after `wait` with what was done by then (the rest
    /// stays queued and is done when the owner gets to it).
    pub async fn reaggregate(&self, filter: &LateFilter, wait: Duration) -> Reaggregated {
        let done = self
            .command(WindowCommand::Reaggregate(filter.clone()), wait)
            .await;
        let rows: HashSet<&(Window, DimKey)> = done.iter().flat_map(|d| d.rows.iter()).collect();
        Reaggregated {
            events: done.iter().map(|d| d.events as usize).sum(),
            rows: rows.len(),
        }
    }

    /// Queues `command` for every partition's owner and waits up to `wait` for their
    /// answers.
    pub async fn command(&self, command: WindowCommand, wait: Duration) -> Vec<CommandDone> {
        let id = ulid::Ulid::new().to_string();
        let queued = QueuedCommand {
            id: id.clone(),
            command,
        };
        let mut pending: Vec<u32> = Vec::new();
        for partition in 0..self.partitions {
            match self.enqueue(partition, &queued).await {
                Ok(()) => pending.push(partition),
                Err(e) => {
                    tracing::warn!(partition, error = %e, "a command for a partition's owner was not queued")
                }
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut done = Vec::new();
        while !pending.is_empty() {
            let now = self.clock.now_ms();
            let mut still = Vec::new();
            for partition in pending {
                match self.kv.get(&done_key(&id, partition), now).await {
                    Ok(Some(answer)) => {
                        done.extend(serde_json::from_slice::<CommandDone>(&answer.value).ok())
                    }
                    _ => still.push(partition),
                }
            }
            pending = still;
            if pending.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !pending.is_empty() {
            tracing::warn!(partitions = ?pending, "partition owners did not answer in time; their commands stay queued");
        }
        done
    }

    async fn enqueue(&self, partition: u32, command: &QueuedCommand) -> Result<(), StoreError> {
        let key = commands_key(partition);
        loop {
            let now = self.clock.now_ms();
            let current = self.kv.get(&key, now).await?;
            let mut commands: Vec<QueuedCommand> = current
                .as_ref()
                .and_then(|v| serde_json::from_slice(&v.value).ok())
                .unwrap_or_default();
            commands.push(command.clone());
            let value =
                serde_json::to_vec(&commands).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if self
                .kv
                .compare_and_swap(&key, current.map(|v| v.version), value, None, now)
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
    }
}

/// The windows of every published view, merged per window and key: open where any
/// partition has it open, or where a partition's watermark has not passed its end yet;
/// final rows only as far back as every partition publishes them (two window sizes behind
/// the most advanced watermark), older ones are in the window store.
pub(super) fn merge_views(
    views: &[Option<PartitionView>],
    size_ms: i64,
) -> BTreeMap<(Window, DimKey), Cell> {
    let mut merged: BTreeMap<(Window, DimKey), Cell> = BTreeMap::new();
    // Until every partition has published, nothing is final.
    let slowest = if views.iter().all(Option::is_some) {
        views
            .iter()
            .flatten()
            .map(|v| v.watermark_ms)
            .min()
            .unwrap_or(i64::MIN)
    } else {
        i64::MIN
    };
    let newest = views
        .iter()
        .flatten()
        .map(|v| v.watermark_ms)
        .max()
        .unwrap_or(i64::MIN);
    let horizon = newest.saturating_sub(2 * size_ms);
    for view in views.iter().flatten() {
        for (window, key, stats, fired) in &view.windows {
            if *fired && window.end < horizon {
                continue;
            }
            let cell = merged.entry((*window, key.clone())).or_default();
            cell.stats.merge_disjoint(stats);
            cell.open |= !fired;
        }
    }
    for ((window, _), cell) in merged.iter_mut() {
        cell.open |= window.end > slowest;
    }
    merged
}

/// The watermark every partition has passed (`None` until each has published).
fn slowest_of(views: &[Option<PartitionView>]) -> Option<i64> {
    if views.iter().any(Option::is_none) {
        return None;
    }
    views.iter().flatten().map(|v| v.watermark_ms).min()
}

/// Late counts per window start and key, summed over the partitions' late tables.
fn late_counts(lates: &[Option<(u64, LateView)>]) -> HashMap<(i64, DimKey), u64> {
    let mut out: HashMap<(i64, DimKey), u64> = HashMap::new();
    for (_, view) in lates.iter().flatten() {
        for (slot, n) in &view.late {
            *out.entry(slot.clone()).or_default() += n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use raccordo_core::{LogPosition, ManualClock, RawEvent, StreamItem};
    use raccordo_stream::WindowSpec;
    use tokio_util::sync::CancellationToken;

    const SIZE: i64 = 300_000;

    fn view(watermark_ms: i64, windows: Vec<(i64, u64, bool)>) -> Option<PartitionView> {
        Some(PartitionView {
            watermark_ms,
            windows: windows
                .into_iter()
                .map(|(start, events, fired)| {
                    let stats = ConversionStats {
                        events,
                        ..ConversionStats::default()
                    };
                    let window = Window {
                        start,
                        end: start + SIZE,
                    };
                    (window, (Dimension::All, String::new()), stats, fired)
                })
                .collect(),
            ..PartitionView::default()
        })
    }

    #[test]
    fn a_window_is_final_once_every_partition_is_past_it() {
        let ahead = view(SIZE + 1, vec![(0, 2, true)]);
        let behind = view(SIZE - 1, vec![(0, 3, false)]);
        let merged = merge_views(&[ahead.clone(), behind], SIZE);
        let cell = &merged.values().next().unwrap();
        assert_eq!((cell.stats.events, cell.open), (5, true), "one still open");

        // The other partition has no event there, but has not passed it either.
        let idle_behind = view(SIZE - 1, vec![]);
        let merged = merge_views(&[ahead.clone(), idle_behind], SIZE);
        assert!(merged.values().next().unwrap().open);

        let idle_past = view(SIZE, vec![]);
        let merged = merge_views(&[ahead.clone(), idle_past], SIZE);
        let cell = &merged.values().next().unwrap();
        assert_eq!((cell.stats.events, cell.open), (2, false));

        // A partition that never published holds every window open.
        let merged = merge_views(&[ahead, None], SIZE);
        assert!(merged.values().next().unwrap().open);
    }

    #[test]
    fn finals_older_than_every_partition_publishes_are_left_to_the_store() {
        // Partition 0 is far ahead and no longer publishes the window partition 1 still
        // does: merged, it would be partition 1's part alone.
        let ahead = view(10 * SIZE, vec![(9 * SIZE, 1, false)]);
        let behind = view(8 * SIZE, vec![(0, 4, true), (6 * SIZE, 1, true)]);
        let merged = merge_views(&[ahead, behind], SIZE);
        let starts: Vec<i64> = merged.keys().map(|(w, _)| w.start).collect();
        assert_eq!(starts, vec![9 * SIZE], "{starts:?}");
    }

    fn event(offset: i64, partition: u32, customer: &str, at_ms: i64) -> StreamItem {
        let position = LogPosition { partition, offset };
        StreamItem {
            position,
            stream_time_ms: None,
            event: Some(RawEvent {
                position,
                id: raccordo_core::EventId::from_u128((partition as u128) << 64 | offset as u128),
                source: raccordo_core::SourceName::new("web").unwrap(),
                event_time_ms: at_ms,
                received_at_ms: at_ms,
                payload: format!(
                    r#"{{"id_cliente":"{customer}","evento":"acquisto_concluso","stato":"completato","canale":"email","valore":10.0}}"#
                ),
                duplicate: false,
            }),
        }
    }

    fn tick(offset: i64, partition: u32, stream_time_ms: i64) -> StreamItem {
        StreamItem {
            position: LogPosition { partition, offset },
            stream_time_ms: Some(stream_time_ms),
            event: None,
        }
    }

    fn feed(part: &LiveMetrics, items: &[StreamItem]) {
        part.ingest_prepared(&part.prepare_items(items));
    }

    /// Refreshes until `done` holds (the owners publish on their own schedule).
    async fn until(cluster: &ClusterWindows, done: impl Fn(&ClusterWindows) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            cluster.refresh().await.unwrap();
            if done(cluster) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "not reached in 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn all_rows(rows: &[MetricRow]) -> Vec<(i64, &'static str, u64, u64)> {
        rows.iter()
            .filter(|r| r.dimension == Dimension::All)
            .map(|r| (r.window_start_ms, r.status, r.events, r.active_customers))
            .collect()
    }

    /// Two partitions' owners publish; a node merges their windows (finals once both are
    /// past, distinct customers added), streams a late update, lists the late events of
    /// both and has the owners re-aggregate them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn owners_publish_and_any_node_merges_streams_and_reaggregates() {
        let dir = tempfile::tempdir().unwrap();
        let store = raccordo_storage_sqlite::SqliteStore::open(
            raccordo_storage_sqlite::SqliteOptions::new(dir.path().join("r.db")),
        )
        .unwrap();
        let stores = store.stores();
        let spec = WindowSpec::tumbling(SIZE);
        let goals = ["acquisto_concluso".to_string()];
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(20_000_000));
        let cancel = CancellationToken::new();
        let ctx = TaskContext {
            cancel: cancel.clone(),
        };
        let parts: Vec<Arc<LiveMetrics>> = (0..2)
            .map(|p| LiveMetrics::in_scope(spec, goals.clone(), clock.clone(), partition_scope(p)))
            .collect();
        for part in &parts {
            part.keep_emissions();
        }
        // W1 = [10.2 M, 10.5 M): a customer in each partition; the stream's time passes it;
        // partition 0 has an open window after; partition 1 a late event far back.
        let w1 = 34 * SIZE;
        feed(
            &parts[0],
            &[
                event(1, 0, "C0", w1 + 1_000),
                tick(2, 0, w1 + SIZE + 90_000),
            ],
        );
        feed(
            &parts[1],
            &[
                event(1, 1, "C1", w1 + 2_000),
                tick(2, 1, w1 + SIZE + 90_000),
            ],
        );
        feed(&parts[0], &[event(3, 0, "C0", w1 + SIZE + 80_000)]);
        feed(&parts[1], &[event(3, 1, "C9", 1_000)]);
        for (p, part) in parts.iter().enumerate() {
            let (store, kv) = (stores.windows.clone(), stores.kv.clone());
            tokio::spawn(
                part.clone()
                    .run_persister(store, Duration::from_secs(60), ctx.clone()),
            );
            tokio::spawn(part.clone().serve_partition(
                kv,
                p as u32,
                format!("node-{p}"),
                ctx.clone(),
            ));
        }
        let live = LiveMetrics::new(spec, goals.clone(), clock.clone());
        let cluster =
            ClusterWindows::new(live, stores.kv.clone(), stores.windows.clone(), clock, 2);
        let mut fired = cluster.subscribe();
        until(&cluster, |c| c.provisional(None, None).1 == 6).await;

        let (open, counted) = cluster.provisional(Some(&Dimension::All), None);
        assert_eq!(counted, 6, "messages counted over both partitions");
        assert_eq!(all_rows(&open), vec![(w1 + SIZE, "provisional", 1, 1)]);
        let (rows, _) = cluster
            .query(w1, w1 + 2 * SIZE, Some(&Dimension::All), None)
            .await
            .unwrap();
        assert_eq!(
            all_rows(&rows),
            vec![(w1, "final", 2, 2), (w1 + SIZE, "provisional", 1, 1)],
            "W1 final in both partitions, customers of both"
        );
        // W1 turned final as the second view came in; streamed then.
        while fired.try_recv().is_ok() {}
        let late = cluster.late(&LateFilter::default(), 10);
        assert_eq!(late.total_events, 1, "{late:?}");

        // A late update to W1 (within the allowed lateness) in partition 1: streamed as final.
        feed(&parts[1], &[event(4, 1, "C2", w1 + 3_000)]);
        until(&cluster, |c| c.provisional(None, None).1 == 7).await;
        let update = fired.try_recv().expect("the late update is streamed");
        assert_eq!(all_rows(&update), vec![(w1, "final", 3, 3)]);

        // Re-aggregation, asked of this node, done by both partitions' owners.
        let done = cluster
            .reaggregate(&LateFilter::default(), Duration::from_secs(10))
            .await;
        assert_eq!((done.events, done.rows > 0), (1, true));
        until(&cluster, |c| {
            c.late(&LateFilter::default(), 10).total_events == 0
        })
        .await;
        let (rows, _) = cluster
            .query(0, SIZE, Some(&Dimension::All), None)
            .await
            .unwrap();
        assert_eq!(
            all_rows(&rows),
            vec![(0, "final", 1, 1)],
            "counted in its window"
        );
        assert_eq!(
            cluster
                .reaggregate(&LateFilter::default(), Duration::from_secs(10))
                .await
                .events,
            0,
            "nothing left to re-aggregate"
        );

        // Event time jumps ahead: a window closing far behind the new watermark (beyond what
        // the views list as recent finals) is streamed too, from the owner's emissions.
        while fired.try_recv().is_ok() {}
        let w3 = w1 + 3 * SIZE;
        feed(
            &parts[0],
            &[event(4, 0, "C3", w3 + 1_000), tick(5, 0, w1 + 20 * SIZE)],
        );
        feed(&parts[1], &[tick(5, 1, w1 + 20 * SIZE)]);
        until(&cluster, |c| c.provisional(None, None).1 == 10).await;
        let mut streamed = Vec::new();
        while let Ok(rows) = fired.try_recv() {
            streamed.extend(all_rows(&rows));
        }
        assert_eq!(
            streamed,
            vec![(w1 + SIZE, "final", 1, 1), (w3, "final", 1, 1)],
            "the window left open before, and the one far behind"
        );
        cancel.cancel();
    }
}
