//! When the writer waits a moment for more appends before it commits.
//!
//! Each commit group costs one `fdatasync`, and a sync costs more than the disk's time: the
//! writer sleeps and is woken, the block layer's completion runs on a kernel thread, and the
//! request workers it preempts are switched out and back. Measured on a 2-core host at 64
//! concurrent senders (docs/benchmarks.md, "Waiting for the group"), that was about 80 µs
//! of the hub's CPU per commit against about 32 µs per request — and 44 % of the groups
//! held a single request. The pattern is a seesaw: a large group is answered, its senders'
//! next requests are still on their way back, the first to arrive is committed alone, and
//! the rest wait a whole sync behind it.
//!
//! So when appends have been arriving together (recent groups large) and the queue holds
//! far fewer than usual, the writer waits — at most about one sync's time, since waiting
//! longer than a commit takes cannot save more than that commit — and then takes what has
//! arrived. A quiet log (groups of one or two) never waits: its latency stays one sync.

use std::time::Duration;

/// Recent groups must average at least this many requests before the writer waits: below
/// it, the senders are few or slow, and a wait would only add latency.
const BUSY_GROUP: f64 = 4.0;

/// The weight of the newest group in the running average of group sizes.
const SMOOTHING: f64 = 0.125;

/// What the writer has seen of recent commits.
#[derive(Debug, Clone)]
pub(crate) struct Linger {
    /// The running average of requests per commit group.
    recent_group: f64,
    /// The last commit's `fdatasync` time (zero with buffered durability: nothing to save).
    last_sync: Duration,
    /// The longest wait, whatever the disk takes (`Duration::ZERO`: never wait).
    max: Duration,
}

impl Linger {
    pub(crate) fn new(max: Duration) -> Self {
        Self {
            recent_group: 1.0,
            last_sync: Duration::ZERO,
            max,
        }
    }

    /// How long to wait for more before committing `queued` requests: `None` to commit now.
    pub(crate) fn wait_before(&self, queued: usize) -> Option<Duration> {
        let wait = self.last_sync.min(self.max);
        let busy = self.recent_group >= BUSY_GROUP;
        // Half the usual group already here: most of those on their way have arrived.
        let thin = (queued as f64) * 2.0 < self.recent_group;
        (busy && thin && !wait.is_zero()).then_some(wait)
    }

    /// A group of `requests` was committed (all of them duplicates, perhaps: then nothing
    /// was synced).
    pub(crate) fn grouped(&mut self, requests: usize) {
        self.recent_group += SMOOTHING * (requests as f64 - self.recent_group);
    }

    /// A commit's `fdatasync` took `sync`.
    pub(crate) fn synced(&mut self, sync: Duration) {
        self.last_sync = sync;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNC: Duration = Duration::from_micros(250);
    const MAX: Duration = Duration::from_millis(1);

    fn after(groups: &[usize], sync: Duration, max: Duration) -> Linger {
        let mut linger = Linger::new(max);
        for &g in groups {
            linger.grouped(g);
            linger.synced(sync);
        }
        linger
    }

    #[test]
    fn a_quiet_log_commits_at_once() {
        let linger = after(&[1, 2, 1, 1, 2, 1, 3, 1], SYNC, MAX);
        assert_eq!(linger.wait_before(1), None);
    }

    #[test]
    fn a_thin_group_after_large_ones_waits_one_sync() {
        let linger = after(&[20; 32], SYNC, MAX);
        assert_eq!(linger.wait_before(1), Some(SYNC));
        assert_eq!(linger.wait_before(9), Some(SYNC));
        // Half the usual group is here: commit.
        assert_eq!(linger.wait_before(10), None);
        assert_eq!(linger.wait_before(40), None);
    }

    #[test]
    fn the_wait_is_bounded_by_the_setting() {
        let slow_disk = Duration::from_millis(30);
        let linger = after(&[20; 32], slow_disk, MAX);
        assert_eq!(linger.wait_before(1), Some(MAX));
        let off = after(&[20; 32], SYNC, Duration::ZERO);
        assert_eq!(off.wait_before(1), None);
    }

    #[test]
    fn groups_of_duplicates_count_without_a_sync() {
        let mut linger = after(&[20; 32], SYNC, MAX);
        linger.grouped(1);
        assert_eq!(linger.wait_before(1), Some(SYNC));
    }

    #[test]
    fn nothing_to_save_without_a_sync() {
        let buffered = after(&[20; 32], Duration::ZERO, MAX);
        assert_eq!(buffered.wait_before(1), None);
    }

    #[test]
    fn the_seesaw_of_large_and_single_groups_waits_on_the_singles() {
        // The pattern measured at 64 senders: large groups alternating with groups of one.
        let linger = after(&[16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1], SYNC, MAX);
        assert_eq!(linger.wait_before(1), Some(SYNC));
    }

    #[test]
    fn the_average_follows_a_change_of_load() {
        // From busy to quiet: after a few dozen small groups, no more waiting.
        let mut groups = vec![30; 16];
        groups.extend([1; 40]);
        let linger = after(&groups, SYNC, MAX);
        assert_eq!(linger.wait_before(1), None);
    }
}
