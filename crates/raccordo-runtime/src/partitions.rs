//! Live windows per partition of the conversion stream, each partition owned by one node at
//! a time.
//!
//! Every node takes part: it says it is alive in a member list (one shared key-value entry,
//! updated by compare-and-swap), works out its fair share of the partitions from how many
//! members are alive, and holds a lease per partition it owns. For each owned partition it
//! runs windows of their own (`LiveMetrics` in the partition's scope) that read that
//! partition of the stream, with the stream's time before each message, and save results
//! and checkpoints under the partition's scope. A node that dies stops renewing its leases;
//! once they run out the others take the partitions over and carry on from their last
//! checkpoints — recounting from there, so nothing is counted twice. A node that holds more
//! than its share (another joined) saves a checkpoint and gives the extra ones up.
//!
//! The decisions — how many to hold, which to give up, which to try — are pure functions
//! ([`fair_share`], [`plan`]), tested without I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use raccordo_core::{Clock, ConversionStream, KeyValueStore, SecretStore, WindowStore};
use tokio_util::sync::CancellationToken;

use crate::live::LiveMetrics;
use crate::supervisor::TaskContext;

/// The key-value entry listing the live members.
const MEMBERS_KEY: &str = "cluster:window-members";

/// How long a partition lease and a membership last without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// How often a node renews, rebalances and takes free partitions.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// The lease of one partition's windows.
pub fn lease_name(partition: u32) -> String {
    format!("windows:partition:{partition}")
}

/// How many partitions each of `members` live nodes should own (the last ones may own
/// fewer).
pub fn fair_share(partitions: u32, members: usize) -> usize {
    (partitions as usize).div_ceil(members.max(1))
}

/// What a node does this round.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Owned partitions to save and give up (more than the share).
    pub release: Vec<u32>,
    /// Free partitions to try, in order, until the share is reached.
    pub try_take: Vec<u32>,
}

/// Which partitions to give up and which to try: gives up the highest-numbered beyond
/// `share`; tries the others starting at `start` (each node starts elsewhere, so that nodes
/// joining together do not all race for partition 0).
pub fn plan(owned: &BTreeSet<u32>, partitions: u32, share: usize, start: u32) -> Plan {
    let release: Vec<u32> = owned
        .iter()
        .rev()
        .take(owned.len().saturating_sub(share))
        .copied()
        .collect();
    let try_take = if owned.len() < share {
        (0..partitions)
            .map(|i| (start + i) % partitions.max(1))
            .filter(|p| !owned.contains(p))
            .collect()
    } else {
        Vec::new()
    };
    Plan { release, try_take }
}

/// The member list: node → until when it counts as alive (epoch ms).
type Members = BTreeMap<String, i64>;

/// Records `node` as alive until `now + ttl`, drops members that expired, and returns how
/// many are alive.
pub fn heartbeat(members: &mut Members, node: &str, now_ms: i64, ttl_ms: i64) -> usize {
    members.retain(|_, until| *until > now_ms);
    members.insert(node.to_string(), now_ms + ttl_ms);
    members.len()
}

/// Runs `task` until `cancel`, again a second after each failure (a store or stream that
/// was unreachable).
fn keep_running<F, Fut>(
    what: &'static str,
    partition: u32,
    cancel: &CancellationToken,
    task: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(TaskContext) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let ctx = TaskContext {
        cancel: cancel.clone(),
    };
    tokio::spawn(async move {
        while !ctx.is_cancelled() {
            if let Err(e) = task(ctx.clone()).await {
                tracing::warn!(partition, error = %e, "{what} a partition's windows failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = ctx.cancelled() => {}
                }
            }
        }
    })
}

/// One owned partition's windows and the tasks that feed and save them.
struct Owned {
    metrics: Arc<LiveMetrics>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The partitioned windows of one node.
pub struct PartitionedWindows {
    pub stream: Arc<dyn ConversionStream>,
    pub store: Arc<dyn WindowStore>,
    /// Where the partition leases are (the secret store's leases).
    pub leases: Arc<dyn SecretStore>,
    /// Where the member list is, and where owners publish their partitions' windows and
    /// find commands for them.
    pub kv: Arc<dyn KeyValueStore>,
    pub clock: Arc<dyn Clock>,
    pub node: String,
    /// Makes the windows of a partition (spec, goals, mappings of the hub).
    pub make: Arc<dyn Fn(u32) -> Arc<LiveMetrics> + Send + Sync>,
    pub checkpoint_every: Duration,
}

impl PartitionedWindows {
    /// Takes part until shutdown, then saves and gives up every partition it holds.
    pub async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        let partitions = self.stream.partitions();
        let start = raccordo_core::partition_of(self.node.as_bytes(), partitions);
        let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
        let result = loop {
            if let Err(e) = self.round(&mut owned, partitions, start).await {
                // Unsure of the store: keep what runs; leases not renewed run out on their own.
                tracing::warn!(error = %e, "partitioned windows: a round failed");
            }
            metrics::gauge!("raccordo_window_partitions_owned").set(owned.len() as f64);
            tokio::select! {
                _ = tokio::time::sleep(RENEW_EVERY) => {}
                _ = ctx.cancelled() => break Ok(()),
            }
        };
        for (partition, held) in std::mem::take(&mut owned) {
            self.give_up(partition, held, true).await;
        }
        self.leave().await;
        result
    }

    async fn round(
        &self,
        owned: &mut BTreeMap<u32, Owned>,
        partitions: u32,
        start: u32,
    ) -> anyhow::Result<()> {
        let alive = self.heartbeat().await?;
        let share = fair_share(partitions, alive);
        let now = self.clock.now_ms();
        let ttl = LEASE_TTL.as_millis() as i64;
        // Renew; a lease found taken (this node was too slow) means another owner now.
        let held: Vec<u32> = owned.keys().copied().collect();
        for partition in held {
            let renewed = self
                .leases
                .try_lease(&lease_name(partition), &self.node, ttl, now)
                .await?;
            if !renewed && let Some(lost) = owned.remove(&partition) {
                tracing::warn!(partition, "partition lease lost to another node");
                self.give_up(partition, lost, false).await;
            }
        }
        let keys: BTreeSet<u32> = owned.keys().copied().collect();
        let plan = plan(&keys, partitions, share, start);
        for partition in plan.release {
            if let Some(held) = owned.remove(&partition) {
                self.give_up(partition, held, true).await;
            }
        }
        for partition in plan.try_take {
            if owned.len() >= share {
                break;
            }
            if self
                .leases
                .try_lease(&lease_name(partition), &self.node, ttl, now)
                .await?
            {
                match self.take(partition).await {
                    Ok(held) => {
                        owned.insert(partition, held);
                    }
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "cannot restore a partition's windows");
                        let _ = self
                            .leases
                            .release_lease(&lease_name(partition), &self.node)
                            .await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts a partition's windows from its checkpoint: the persister and the stream reader.
    async fn take(&self, partition: u32) -> anyhow::Result<Owned> {
        let metrics = (self.make)(partition);
        // Published for the other nodes, which stream every window that closes.
        metrics.keep_emissions();
        metrics.restore(self.store.as_ref()).await?;
        let cancel = CancellationToken::new();
        let persister = {
            let (metrics, store, every) =
                (metrics.clone(), self.store.clone(), self.checkpoint_every);
            keep_running("saving", partition, &cancel, move |ctx| {
                metrics.clone().run_persister(store.clone(), every, ctx)
            })
        };
        let reader = {
            let (metrics, stream) = (metrics.clone(), self.stream.clone());
            keep_running("reading", partition, &cancel, move |ctx| {
                metrics
                    .clone()
                    .run_stream_tailer(stream.clone(), partition, ctx)
            })
        };
        let server = {
            let (metrics, kv, node) = (metrics.clone(), self.kv.clone(), self.node.clone());
            keep_running("publishing", partition, &cancel, move |ctx| {
                metrics
                    .clone()
                    .serve_partition(kv.clone(), partition, node.clone(), ctx)
            })
        };
        tracing::info!(partition, node = %self.node, "partition windows taken");
        metrics::counter!("raccordo_window_partition_takeovers_total").increment(1);
        Ok(Owned {
            metrics,
            cancel,
            tasks: vec![persister, reader, server],
        })
    }

    /// Stops a partition's windows; when it still holds the lease (`release`), saves a
    /// checkpoint first and gives the lease up, so the next owner starts from here.
    async fn give_up(&self, partition: u32, held: Owned, release: bool) {
        held.cancel.cancel();
        for task in held.tasks {
            let _ = task.await;
        }
        if release {
            if let Err(e) = held.metrics.save_final(self.store.as_ref()).await {
                tracing::warn!(partition, error = %e, "the last checkpoint of a partition was not saved");
            }
            let _ = self
                .leases
                .release_lease(&lease_name(partition), &self.node)
                .await;
        }
        tracing::info!(partition, node = %self.node, "partition windows given up");
    }

    /// Says this node is alive; how many members are.
    async fn heartbeat(&self) -> anyhow::Result<usize> {
        let ttl = LEASE_TTL.as_millis() as i64;
        loop {
            let now = self.clock.now_ms();
            let current = self.kv.get(MEMBERS_KEY, now).await?;
            let mut members: Members = current
                .as_ref()
                .and_then(|v| serde_json::from_slice(&v.value).ok())
                .unwrap_or_default();
            let alive = heartbeat(&mut members, &self.node, now, ttl);
            let written = self
                .kv
                .compare_and_swap(
                    MEMBERS_KEY,
                    current.map(|v| v.version),
                    serde_json::to_vec(&members)?,
                    Some(ttl),
                    now,
                )
                .await?;
            if written.is_some() {
                return Ok(alive);
            }
        }
    }

    /// Takes this node off the member list (the others rebalance at once).
    async fn leave(&self) {
        for _ in 0..5 {
            let now = self.clock.now_ms();
            let Ok(Some(current)) = self.kv.get(MEMBERS_KEY, now).await else {
                return;
            };
            let mut members: Members = serde_json::from_slice(&current.value).unwrap_or_default();
            members.remove(&self.node);
            let Ok(value) = serde_json::to_vec(&members) else {
                return;
            };
            if let Ok(Some(_)) = self
                .kv
                .compare_and_swap(
                    MEMBERS_KEY,
                    Some(current.version),
                    value,
                    Some(LEASE_TTL.as_millis() as i64),
                    now,
                )
                .await
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_share_covers_every_partition() {
        assert_eq!(fair_share(8, 1), 8);
        assert_eq!(fair_share(8, 2), 4);
        assert_eq!(fair_share(8, 3), 3);
        assert_eq!(fair_share(8, 0), 8, "no member known: all");
        assert_eq!(fair_share(2, 5), 1);
    }

    #[test]
    fn a_node_over_its_share_gives_up_its_highest_partitions() {
        let owned: BTreeSet<u32> = (0..8).collect();
        assert_eq!(
            plan(&owned, 8, 3, 0),
            Plan {
                release: vec![7, 6, 5, 4, 3],
                try_take: vec![],
            }
        );
        let owned: BTreeSet<u32> = [1, 5].into();
        assert_eq!(
            plan(&owned, 8, 3, 6),
            Plan {
                release: vec![],
                try_take: vec![6, 7, 0, 2, 3, 4],
            },
            "tries the others, from its own starting point"
        );
    }

    #[test]
    fn expired_members_are_dropped_at_each_heartbeat() {
        let mut members = Members::new();
        assert_eq!(heartbeat(&mut members, "a", 1_000, 15_000), 1);
        assert_eq!(heartbeat(&mut members, "b", 2_000, 15_000), 2);
        // a stopped at 1 000: gone after 16 000.
        assert_eq!(heartbeat(&mut members, "b", 16_001, 15_000), 1);
        assert!(!members.contains_key("a"));
    }

    proptest! {
        /// Nodes planning in turn from any starting ownership, each taking only free
        /// partitions and releasing down to its share, end with every partition owned once
        /// and no node over its share.
        #[test]
        fn rounds_of_plans_cover_every_partition_once(
            partitions in 1u32..16,
            nodes in 1usize..5,
            starts in proptest::collection::vec(0u32..16, 5),
            initial in proptest::collection::vec(proptest::option::of(0usize..5), 16),
        ) {
            let mut owner: Vec<Option<usize>> = (0..partitions as usize)
                .map(|p| initial[p].filter(|n| *n < nodes))
                .collect();
            let share = fair_share(partitions, nodes);
            for _round in 0..3 {
                for (node, start) in starts.iter().enumerate().take(nodes) {
                    let owned: BTreeSet<u32> = (0..partitions)
                        .filter(|p| owner[*p as usize] == Some(node))
                        .collect();
                    let plan = plan(&owned, partitions, share, start % partitions);
                    for p in &plan.release {
                        owner[*p as usize] = None;
                    }
                    let mut held = owned.len() - plan.release.len();
                    for p in plan.try_take {
                        if held >= share {
                            break;
                        }
                        if owner[p as usize].is_none() {
                            owner[p as usize] = Some(node);
                            held += 1;
                        }
                    }
                }
            }
            prop_assert!(owner.iter().all(Option::is_some), "{owner:?}");
            for node in 0..nodes {
                prop_assert!(owner.iter().filter(|o| **o == Some(node)).count() <= share);
            }
        }
    }
}
