//! Which node runs the hub's singleton tasks — alert rules, retention, schedules, the
//! sync's pollers, digests and reconciliation — when several nodes share a database: the
//! holder of the `leader` lease in the shared store, renewed while the node lives. Queue
//! workers run on every node; a singleton task on one at a time, so an alert, a digest
//! e-mail or a scheduled flow run happens once. An embedded hub is always its own leader.
//!
//! A leader that cannot renew (its database is gone) steps down before its lease runs out,
//! so two nodes never both believe they lead: it gives up after `RENEW_EVERY * 2` without
//! a renewal, and the lease lasts `TTL`, longer than that.

use std::sync::Arc;
use std::time::Duration;

use raccordo_core::{Clock, SecretStore};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a lease lasts without renewal.
pub const TTL: Duration = Duration::from_secs(15);
/// How often the holder renews it and the others try to take it.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);
const LEASE: &str = "leader";

#[derive(Clone)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    /// The node's name in the lease (`host:pid:random`).
    pub node: Arc<str>,
    /// An embedded hub's: it leads for good (the sender is kept so the value stays).
    always: Option<Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// The one node of an embedded hub: always the leader.
    pub fn always() -> Self {
        let (sender, leading) = watch::channel(true);
        Self {
            leading,
            node: Arc::from("embedded"),
            always: Some(Arc::new(sender)),
        }
    }

    /// Whether this node leads for good (an embedded hub: no election).
    pub fn is_always(&self) -> bool {
        self.always.is_some()
    }

    /// Takes part in the election through `secrets`' leases; `Election::run` keeps it going
    /// (spawn it as a supervised task).
    pub fn elect(node: String) -> (Self, Election) {
        let (tx, leading) = watch::channel(false);
        let node: Arc<str> = Arc::from(node);
        (
            Self {
                leading,
                node: node.clone(),
                always: None,
            },
            Election { node, leading: tx },
        )
    }

    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Resolves once this node leads.
    pub async fn leading(&mut self) {
        let _ = self.leading.wait_for(|l| *l).await;
    }

    /// Resolves once this node no longer leads (or the election stopped).
    pub async fn lost(&mut self) {
        let _ = self.leading.wait_for(|l| !*l).await;
    }
}

#[cfg(test)]
mod always_tests {
    use super::*;

    #[tokio::test]
    async fn an_embedded_hub_leads_for_good() {
        let mut leadership = Leadership::always();
        assert!(leadership.is_leader() && leadership.is_always());
        leadership.leading().await;
        let lost = tokio::time::timeout(Duration::from_millis(50), leadership.lost()).await;
        assert!(lost.is_err(), "it never stops leading");
    }
}

/// The election's side that renews and takes the lease.
pub struct Election {
    node: Arc<str>,
    leading: watch::Sender<bool>,
}

impl Election {
    pub async fn run(
        &self,
        secrets: Arc<dyn SecretStore>,
        clock: Arc<dyn Clock>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            let held = secrets
                .try_lease(LEASE, &self.node, TTL.as_millis() as i64, clock.now_ms())
                .await;
            let leading = match held {
                Ok(true) => {
                    last_renewal = Some(tokio::time::Instant::now());
                    true
                }
                Ok(false) => {
                    last_renewal = None;
                    false
                }
                // Unsure: keep leading only while the last renewal is recent enough.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leader lease");
                    last_renewal.is_some_and(|at| at.elapsed() < RENEW_EVERY * 2)
                }
            };
            self.leading.send_if_modified(|was| {
                let changed = *was != leading;
                if changed {
                    tracing::info!(node = %self.node, leading, "leadership changed");
                    metrics::gauge!("raccordo_leader").set(if leading { 1.0 } else { 0.0 });
                }
                *was = leading;
                changed
            });
            tokio::select! {
                _ = tokio::time::sleep(RENEW_EVERY) => {}
                _ = stop.cancelled() => {
                    if *self.leading.borrow() {
                        let _ = secrets.release_lease(LEASE, &self.node).await;
                    }
                    self.leading.send_replace(false);
                    return Ok(());
                }
            }
        }
    }
}

/// A node name that is unique enough: host, process id and random bits.
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into());
    format!("{host}:{}:{:08x}", std::process::id(), rand_u32())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use raccordo_core::ManualClock;

    #[tokio::test(start_paused = true)]
    async fn one_of_two_nodes_leads_and_the_other_takes_over_when_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        let store = raccordo_storage_sqlite::SqliteStore::open(
            raccordo_storage_sqlite::SqliteOptions::new(dir.path().join("r.db")),
        )
        .unwrap();
        let secrets = store.stores().secrets.clone();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let (mut a, election_a) = Leadership::elect("a".into());
        let (mut b, election_b) = Leadership::elect("b".into());
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let run_a = {
            let (secrets, clock, stop) = (secrets.clone(), clock.clone(), stop_a.clone());
            tokio::spawn(async move { election_a.run(secrets, clock, stop).await })
        };
        a.leading().await;
        let run_b = {
            let (secrets, clock, stop) = (secrets.clone(), clock.clone(), stop_b.clone());
            tokio::spawn(async move { election_b.run(secrets, clock, stop).await })
        };
        tokio::time::sleep(RENEW_EVERY * 3).await;
        assert!(a.is_leader() && !b.is_leader(), "one leader at a time");
        // A stops (and gives the lease up): B leads at its next try.
        stop_a.cancel();
        run_a.await.unwrap().unwrap();
        a.lost().await;
        b.leading().await;
        assert!(b.is_leader());
        stop_b.cancel();
        run_b.await.unwrap().unwrap();
        store.stores().log.close().await;
    }
}
