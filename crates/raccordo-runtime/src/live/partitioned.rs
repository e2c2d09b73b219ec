//! The windows of one partition of the conversion stream (a cluster node owning it): reading
//! the partition with the stream's time before each message, saving a last checkpoint when
//! the partition is handed over, and the merged view of every partition's windows.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use raccordo_core::{ConversionStream, EventId, RawEvent, StreamItem, WindowStore};
use raccordo_stream::{ConversionStats, Window};

use super::{
    Checkpoint, DimKey, Dimension, LiveMetrics, MetricRow, PreparedEvent, PreparedPage, metric_row,
    partition_scope,
};
use crate::supervisor::TaskContext;

impl LiveMetrics {
    /// [`Self::prepare`] for messages of one stream partition: events and ticks, each with
    /// the stream's time before it.
    pub fn prepare_items(&self, items: &[StreamItem]) -> PreparedPage {
        let events: Vec<RawEvent> = items.iter().filter_map(|i| i.event.clone()).collect();
        let mut prepared = self.prepare(&events).events.into_iter();
        let events = items
            .iter()
            .map(|item| {
                let mut event = match &item.event {
                    Some(_) => prepared.next().expect("one prepared event per event"),
                    None => PreparedEvent {
                        position: item.position,
                        id: EventId::from_u128(0),
                        received_at_ms: 0,
                        event_time_ms: item.stream_time_ms.unwrap_or(i64::MIN),
                        duplicate: false,
                        record: None,
                        stream_time: None,
                    },
                };
                event.stream_time = item.stream_time_ms;
                event
            })
            .collect();
        PreparedPage {
            events,
            oldest_received_ms: items
                .iter()
                .filter_map(|i| i.event.as_ref().map(|e| e.received_at_ms))
                .min(),
        }
    }

    /// Reads one partition of the conversion stream into these windows until shutdown, from
    /// where they are (their positions are that partition's). A read failure ends the run;
    /// the caller starts it again.
    pub async fn run_stream_tailer(
        self: Arc<Self>,
        stream: Arc<dyn ConversionStream>,
        partition: u32,
        ctx: TaskContext,
    ) -> anyhow::Result<()> {
        let mut after = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .processed
            .clone();
        let only = [partition];
        loop {
            let items = tokio::select! {
                items = stream.read(&after, 1_000, Some(&only)) => items?,
                _ = ctx.cancelled() => return Ok(()),
            };
            if items.is_empty() {
                // The stream has no push signal common to both engines: poll an idle partition.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = ctx.cancelled() => return Ok(()),
                }
                continue;
            }
            for item in &items {
                after.advance(item.position);
            }
            let metrics = self.clone();
            tokio::task::spawn_blocking(move || {
                crate::background_priority();
                let page = metrics.prepare_items(&items);
                metrics.ingest_prepared(&page);
            })
            .await?;
        }
    }

    /// Saves what is queued and a checkpoint now, once the persister has stopped (a
    /// partition handed to another node goes on from exactly here).
    pub async fn save_final(&self, store: &dyn WindowStore) -> anyhow::Result<()> {
        let mut rx = self.persist_rx.lock().await;
        self.save_checkpoint(store, &mut rx).await
    }

    /// The windows of a cluster whose windows are kept per stream partition, merged: each
    /// partition's final results (saved as they fire) and its open windows and late counts
    /// (from its latest checkpoint), summed per window and key — partitions hold disjoint
    /// customers, so distinct counts add. A window is final once it is final in every
    /// partition that has it. Spend and CPA come from this hub's costs. Also the events
    /// counted, over the partitions' checkpoints.
    pub async fn partitioned_query(
        &self,
        store: &dyn WindowStore,
        partitions: u32,
        from_ms: i64,
        to_ms: i64,
        dimension: Option<&Dimension>,
        value: Option<&str>,
    ) -> Result<(Vec<MetricRow>, i64), raccordo_core::StoreError> {
        #[derive(Default)]
        struct Merged {
            stats: ConversionStats,
            open: bool,
            late: u64,
        }
        let wanted = |window: &Window, key: &DimKey| {
            window.end > from_ms
                && window.start < to_ms
                && dimension.is_none_or(|d| *d == key.0)
                && value.is_none_or(|v| v == key.1)
        };
        let mut merged: BTreeMap<(Window, DimKey), Merged> = BTreeMap::new();
        let mut counted = 0;
        for partition in 0..partitions {
            let scope = partition_scope(partition);
            let mut finals = HashSet::new();
            for r in store
                .results_between(&scope, from_ms.saturating_sub(self.spec.size_ms), to_ms)
                .await?
            {
                let window = Window {
                    start: r.window_start_ms,
                    end: r.window_end_ms,
                };
                let key = (Dimension::parse(&r.dimension), r.value);
                let Ok(stats) = serde_json::from_str::<ConversionStats>(&r.stats) else {
                    continue;
                };
                if !wanted(&window, &key) {
                    continue;
                }
                finals.insert((window, key.clone()));
                merged
                    .entry((window, key))
                    .or_default()
                    .stats
                    .merge_disjoint(&stats);
            }
            let Some(saved) = store.checkpoint(&scope).await? else {
                continue;
            };
            counted += saved.positions.total();
            let Ok(checkpoint) = serde_json::from_str::<Checkpoint>(&saved.state) else {
                continue;
            };
            let fired: HashSet<Window> = checkpoint.operator.fired.iter().copied().collect();
            for (window, keys) in checkpoint.operator.windows {
                if fired.contains(&window) {
                    continue;
                }
                for (key, stats) in keys {
                    // Fired since the checkpoint: the saved result is newer.
                    if !wanted(&window, &key) || finals.contains(&(window, key.clone())) {
                        continue;
                    }
                    let cell = merged.entry((window, key)).or_default();
                    cell.stats.merge_disjoint(&stats);
                    cell.open = true;
                }
            }
            for ((start, key), n) in checkpoint.late_by_key {
                let window = Window {
                    start,
                    end: start + self.spec.size_ms,
                };
                if let Some(cell) = merged.get_mut(&(window, key)) {
                    cell.late += n;
                }
            }
        }
        let rows = merged
            .into_iter()
            .map(|((window, key), cell)| {
                let status = if cell.open { "provisional" } else { "final" };
                self.with_cpa(
                    metric_row(window, &key, &cell.stats, status, cell.late),
                    cell.stats.conversions,
                )
            })
            .collect();
        Ok((rows, counted))
    }
}
