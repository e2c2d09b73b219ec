//! The windows of one partition of the conversion stream (a cluster node owning it): reading
//! the partition with the stream's time before each message, saving a last checkpoint when
//! the partition is handed over, publishing the windows for the other nodes
//! ([`PartitionView`], merged by [`super::ClusterWindows`]) and carrying out the commands
//! queued for the partition.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use raccordo_core::{ConversionStream, EventId, KeyValueStore, StreamItem, WindowStore};
use raccordo_stream::{ConversionStats, Window};

use super::{DimKey, Dimension, LateFilter, LiveMetrics, PreparedEvent, PreparedPage};
use crate::supervisor::TaskContext;

impl LiveMetrics {
    /// [`Self::prepare`] for messages of one stream partition: events and ticks, each with
    /// the stream's time before it.
    pub fn prepare_items(&self, items: &[StreamItem]) -> PreparedPage {
        let PreparedPage {
            events: prepared,
            keys,
            oldest_received_ms,
        } = self.prepare(items.iter().filter_map(|i| i.event.as_ref()));
        let mut prepared = prepared.into_iter();
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
            keys,
            oldest_received_ms,
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
            crate::spawn_background(move || {
                let page = metrics.prepare_items(&items);
                metrics.ingest_prepared(&page);
            })
            .await?;
        }
    }

    /// Saves what is queued and a checkpoint now, once the persister has stopped (a
    /// partition handed to another node goes on from exactly here).
    pub async fn save_final(self: &Arc<Self>, store: &dyn WindowStore) -> anyhow::Result<()> {
        let mut rx = self.persist_rx.lock().await;
        self.save_checkpoint(store, &mut rx).await
    }
}

/// How long a partition's owner keeps publishing an emitted final result: far longer than
/// the nodes take to read the views (every [`super::cluster::POLL_EVERY`]).
const EMISSIONS_KEPT_MS: i64 = 15_000;
/// At most this many emitted results are published (a replay firing windows by the
/// thousand); the nodes read the rest from the window store.
const EMISSIONS_KEPT: usize = 20_000;

/// The final and late-update results a partition emitted lately, numbered.
#[derive(Debug)]
pub(super) struct Emissions {
    /// Tells this owner's numbering from an earlier owner's.
    incarnation: u64,
    next: u64,
    /// (number, when, window, key, result), oldest first.
    recent: std::collections::VecDeque<(u64, i64, Window, DimKey, ConversionStats)>,
}

/// How often a partition's owner publishes its windows while events come (coalescing the
/// pages counted meanwhile), and the longest it waits to look for commands.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);
const COMMANDS_EVERY: Duration = Duration::from_millis(500);

/// The key-value entry where a partition's owner publishes its windows ([`PartitionView`]).
pub fn view_key(partition: u32) -> String {
    format!("windows:view:p{partition}")
}

/// The key-value entry where a partition's owner publishes its late table ([`LateView`]),
/// rewritten only when it changes.
pub fn late_key(partition: u32) -> String {
    format!("windows:late:p{partition}")
}

/// The key-value entry listing commands for a partition's owner ([`QueuedCommand`]).
pub fn commands_key(partition: u32) -> String {
    format!("windows:commands:p{partition}")
}

/// Where a partition's owner says what a command did.
pub fn done_key(command: &str, partition: u32) -> String {
    format!("windows:done:{command}:p{partition}")
}

/// How long an answer to a command stays readable.
const DONE_TTL_MS: i64 = 600_000;

/// A partition's windows as its owner last published them: what any node merges into the
/// cluster's live view (`view=partitions`). Results only — the distinct sets stay with the
/// owner; partitions hold disjoint customers, so the counts add up.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PartitionView {
    pub owner: String,
    /// Messages of the partition counted (its stream positions' total).
    pub counted: i64,
    pub watermark_ms: i64,
    /// The windows still open, and those fired within two window sizes of the watermark
    /// (older final results are in the window store): `(window, key, result, final)`.
    pub windows: Vec<(Window, DimKey, ConversionStats, bool)>,
    /// Changes whenever the late table does ([`LateView`] is then rewritten).
    pub late_fingerprint: u64,
    /// How long an event currently takes from its acknowledgement to these windows.
    #[serde(default)]
    pub lag_ms: i64,
    /// Messages its last checkpoint covers, and where it was restored from when its owner
    /// took it (0: from the start).
    #[serde(default)]
    pub checkpointed: i64,
    #[serde(default)]
    pub restored_from: i64,
    /// Tells this owner's numbering of `emitted` from a predecessor's.
    #[serde(default)]
    pub incarnation: u64,
    /// Final and late-update results as they were emitted lately, numbered: how the nodes
    /// learn of every window that closes or changes, however far behind the watermark.
    #[serde(default)]
    pub emitted: Vec<(u64, Window, DimKey, ConversionStats)>,
}

/// A partition's late table as its owner last published it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LateView {
    pub late: Vec<((i64, DimKey), u64)>,
    pub(super) late_events: Vec<super::LateEvent>,
}

/// Work for the owner of a partition, asked by any node: what changes a partition's state
/// beyond the stream (an admin's re-aggregation, an erasure, retention).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum WindowCommand {
    Reaggregate(LateFilter),
    RehashLateCustomer { from: Vec<u64>, to: u64 },
    PurgeLateEvents { before_ms: i64 },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QueuedCommand {
    pub id: String,
    pub command: WindowCommand,
}

/// What a command did on one partition.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CommandDone {
    /// Late events re-aggregated, re-hashed or forgotten.
    pub events: u64,
    /// Window rows a re-aggregation updated.
    pub rows: Vec<(Window, DimKey)>,
}

impl LiveMetrics {
    /// Keeps the results these windows emit, numbered, for [`Self::view`] (a partition's).
    pub fn keep_emissions(&self) {
        *self.emissions.lock().unwrap_or_else(|p| p.into_inner()) = Some(Emissions {
            incarnation: rand::random(),
            next: 1,
            recent: Default::default(),
        });
    }

    /// Records emitted results, where they are kept.
    pub(super) fn record_emissions(
        &self,
        emitted: impl Iterator<Item = (Window, DimKey, ConversionStats)>,
    ) {
        let mut emissions = self.emissions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(log) = emissions.as_mut() else {
            return;
        };
        let now = self.clock.now_ms();
        for (window, key, stats) in emitted {
            log.recent
                .push_back((log.next, now, window, key, stats.frozen()));
            log.next += 1;
        }
        while log.recent.len() > EMISSIONS_KEPT
            || log
                .recent
                .front()
                .is_some_and(|e| e.1 < now - EMISSIONS_KEPT_MS)
        {
            log.recent.pop_front();
        }
    }

    /// These windows as published for the other nodes.
    pub fn view(&self, owner: &str) -> PartitionView {
        let lag_ms = self.health().lag_ms;
        let (incarnation, emitted) = {
            let now = self.clock.now_ms();
            let emissions = self.emissions.lock().unwrap_or_else(|p| p.into_inner());
            emissions.as_ref().map_or((0, Vec::new()), |log| {
                let emitted = log
                    .recent
                    .iter()
                    .filter(|e| e.1 >= now - EMISSIONS_KEPT_MS)
                    .map(|(n, _, window, key, stats)| (*n, *window, key.clone(), stats.clone()))
                    .collect();
                (log.incarnation, emitted)
            })
        };
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(operator) = &state.operator else {
            return PartitionView::default();
        };
        let watermark = operator.watermark();
        let recent = watermark.saturating_sub(2 * self.spec.size_ms);
        let mut windows: Vec<(Window, DimKey, ConversionStats, bool)> = state
            .fired
            .range((
                std::ops::Bound::Included((
                    Window {
                        start: recent.saturating_sub(self.spec.size_ms),
                        end: i64::MIN,
                    },
                    (Dimension::All, String::new()),
                )),
                std::ops::Bound::Unbounded,
            ))
            .filter(|((window, _), _)| window.end >= recent)
            .map(|((window, key), stats)| (*window, key.clone(), stats.frozen(), true))
            .collect();
        windows.extend(
            operator
                .open_windows()
                .map(|(window, key, stats)| (window, key.clone(), stats.frozen(), false)),
        );
        PartitionView {
            owner: owner.to_string(),
            counted: state.processed.total(),
            watermark_ms: watermark,
            windows,
            late_fingerprint: late_fingerprint(&state.late, &state.late_events),
            lag_ms,
            checkpointed: self
                .checkpoint_seq
                .load(std::sync::atomic::Ordering::Relaxed),
            restored_from: self
                .restored_from_seq
                .load(std::sync::atomic::Ordering::Relaxed),
            incarnation,
            emitted,
        }
    }

    /// The late table as published for the other nodes.
    pub fn late_view(&self) -> LateView {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        LateView {
            late: state.late.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            late_events: state.late_events.iter().cloned().collect(),
        }
    }

    /// Applies a command to these windows; what it did. A command applied twice does
    /// nothing more the second time (what it matched is gone or already changed), so an
    /// owner that dies between applying and saving it leaves its successor to apply it again.
    pub fn apply(&self, command: &WindowCommand) -> CommandDone {
        match command {
            WindowCommand::Reaggregate(filter) => {
                let (events, rows) = self.reaggregate_rows(filter);
                CommandDone {
                    events: events as u64,
                    rows,
                }
            }
            WindowCommand::RehashLateCustomer { from, to } => CommandDone {
                events: self.rehash_late_customer(from, *to),
                rows: Vec::new(),
            },
            WindowCommand::PurgeLateEvents { before_ms } => CommandDone {
                events: self.purge_late_events(*before_ms),
                rows: Vec::new(),
            },
        }
    }

    /// Publishes these windows (one partition's, owned by `owner`) for the other nodes as
    /// they change, and carries out the commands queued for the partition, until shutdown.
    pub async fn serve_partition(
        self: Arc<Self>,
        kv: Arc<dyn KeyValueStore>,
        partition: u32,
        owner: String,
        ctx: TaskContext,
    ) -> anyhow::Result<()> {
        let mut progress = self.progress();
        let mut published: Option<Vec<u8>> = None;
        let mut late_published: Option<u64> = None;
        loop {
            self.run_commands(kv.as_ref(), partition, &ctx).await?;
            let view = self.view(&owner);
            let now = self.clock.now_ms();
            if late_published != Some(view.late_fingerprint) {
                let late = serde_json::to_vec(&self.late_view())?;
                kv.put(&late_key(partition), late, None, now).await?;
                late_published = Some(view.late_fingerprint);
            }
            let bytes = serde_json::to_vec(&view)?;
            if published.as_ref() != Some(&bytes) {
                kv.put(&view_key(partition), bytes.clone(), None, now)
                    .await?;
                published = Some(bytes);
            }
            tokio::select! {
                changed = progress.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    // Whatever else is counted meanwhile goes out with it.
                    tokio::select! {
                        _ = tokio::time::sleep(PUBLISH_EVERY) => {}
                        _ = ctx.cancelled() => return Ok(()),
                    }
                }
                _ = tokio::time::sleep(COMMANDS_EVERY) => {}
                _ = ctx.cancelled() => return Ok(()),
            }
        }
    }

    /// Applies the partition's queued commands, saves a checkpoint holding their effect,
    /// answers each and takes it off the queue.
    async fn run_commands(
        &self,
        kv: &dyn KeyValueStore,
        partition: u32,
        ctx: &TaskContext,
    ) -> anyhow::Result<()> {
        let key = commands_key(partition);
        let now = self.clock.now_ms();
        let Some(queued) = kv.get(&key, now).await? else {
            return Ok(());
        };
        let commands: Vec<QueuedCommand> =
            serde_json::from_slice(&queued.value).unwrap_or_default();
        if commands.is_empty() {
            return Ok(());
        }
        let mut answers = Vec::with_capacity(commands.len());
        for queued in &commands {
            answers.push((queued.id.clone(), self.apply(&queued.command)));
        }
        // Saved before answering: an answer means the change survives this owner.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.changed_off_log
            .store(true, std::sync::atomic::Ordering::Relaxed);
        anyhow::ensure!(
            self.persist.send(super::PersistJob::Checkpoint(tx)).is_ok(),
            "the partition's checkpoint was not saved"
        );
        tokio::select! {
            saved = rx => anyhow::ensure!(saved.is_ok(), "the partition's checkpoint was not saved"),
            // Handed over meanwhile: the last checkpoint (`save_final`) holds the change, and
            // the commands stay queued for the next owner, who finds nothing more to do.
            _ = ctx.cancelled() => return Ok(()),
        }
        let now = self.clock.now_ms();
        for (id, done) in &answers {
            kv.put(
                &done_key(id, partition),
                serde_json::to_vec(done)?,
                Some(DONE_TTL_MS),
                now,
            )
            .await?;
        }
        // Off the queue: those done, keeping any queued meanwhile.
        let done: HashSet<&str> = answers.iter().map(|(id, _)| id.as_str()).collect();
        let mut expected = Some(queued.version);
        let mut current = commands;
        loop {
            current.retain(|c| !done.contains(c.id.as_str()));
            let value = serde_json::to_vec(&current)?;
            if kv
                .compare_and_swap(&key, expected, value, None, now)
                .await?
                .is_some()
            {
                return Ok(());
            }
            let Some(fresh) = kv.get(&key, now).await? else {
                return Ok(());
            };
            expected = Some(fresh.version);
            current = serde_json::from_slice(&fresh.value).unwrap_or_default();
        }
    }
}

/// Changes whenever the late counts or the late events do.
fn late_fingerprint(
    late: &BTreeMap<(i64, DimKey), u64>,
    events: &std::collections::VecDeque<super::LateEvent>,
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for (key, n) in late {
        (key, n).hash(&mut hasher);
    }
    // Every event, with the customer hash an erasure rewrites (cheap: no allocation).
    for event in events {
        (
            event.event_time_ms,
            event.received_at_ms,
            event.record.customer_hash,
        )
            .hash(&mut hasher);
    }
    hasher.finish()
}
