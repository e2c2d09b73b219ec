//! The work queue behind CRM sync, AI steps, notifications and outbound calls
//! (DESIGN §3 "Work queue"): per-key FIFO, coalescing, leases, retries with backoff, and a
//! dead-letter queue. The retry schedule is a pure function; storage is a trait.

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

/// Something to do, e.g. "sync HubSpot contact 123 to Zoho".
#[derive(Debug, Clone)]
pub struct NewWorkItem {
    /// Which workers take it (`sync`, `ai`, `notify`, …).
    pub queue: String,
    /// Items with the same key run one at a time, in order (e.g. `hubspot:contact:123`).
    pub group_key: String,
    pub operation: String,
    pub payload: serde_json::Value,
    /// Fold into a pending, not-yet-started item with the same key and operation: workers
    /// read the record's current state, so one run covers every pending change.
    pub coalesce: bool,
}

/// A claimed item. Only the holder of `lease` may complete it, until `lease_until_ms`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkItem {
    pub id: i64,
    pub queue: String,
    pub group_key: String,
    pub operation: String,
    pub payload: serde_json::Value,
    /// Including this one.
    pub attempts: u32,
    pub enqueued_at_ms: i64,
    pub lease: i64,
    pub lease_until_ms: i64,
}

/// A kind of work with a typed payload: the queue it goes to, its operation name, and the
/// group key that orders it. Workers read the payload back with [`WorkItem::payload_as`].
pub trait Job: Serialize + DeserializeOwned {
    const QUEUE: &'static str;
    const OPERATION: &'static str;
    /// Items with the same key run one at a time, in order.
    fn group_key(&self) -> String;
}

impl NewWorkItem {
    /// A work item carrying `job` as its payload.
    pub fn job<J: Job>(job: &J, coalesce: bool) -> Result<Self, serde_json::Error> {
        Ok(Self {
            queue: J::QUEUE.into(),
            group_key: job.group_key(),
            operation: J::OPERATION.into(),
            payload: serde_json::to_value(job)?,
            coalesce,
        })
    }
}

impl WorkItem {
    /// The payload as the job type that enqueued it; an error means the item cannot be
    /// processed (a permanent failure: it goes to the dead-letter queue).
    pub fn payload_as<J: Job>(&self) -> Result<J, String> {
        if self.operation != J::OPERATION {
            return Err(format!(
                "operation `{}` is not `{}`",
                self.operation,
                J::OPERATION
            ));
        }
        serde_json::from_value(self.payload.clone()).map_err(|e| format!("payload: {e}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    New(i64),
    /// Folded into this pending item.
    Coalesced(i64),
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Done,
    /// Timeouts, connection errors, 5xx, 429: try again later (`retry_after_ms` from the
    /// remote's `Retry-After`, if it sent one).
    Retryable {
        error: String,
        retry_after_ms: Option<i64>,
    },
    /// Validation errors, missing or malformed fields: retrying cannot help.
    Permanent {
        error: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionOutcome {
    Completed,
    RetryAt(i64),
    DeadLettered(i64),
    /// The lease expired and the item was handed to someone else; nothing was changed.
    LeaseLost,
}

/// A failed operation, kept for inspection and replay.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub queue: String,
    pub group_key: String,
    pub operation: String,
    pub payload: serde_json::Value,
    pub attempts: u32,
    pub last_error: String,
    pub first_enqueued_at_ms: i64,
    pub failed_at_ms: i64,
}

/// Exponential backoff with jitter; the defaults follow the seed: first retry after 30 s,
/// 5 attempts in all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub first_delay_ms: i64,
    pub factor: f64,
    pub max_delay_ms: i64,
    pub max_attempts: u32,
    /// Fraction of the delay drawn at random, both ways (0.2 = ±20 %), so that items that
    /// failed together do not retry together.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_delay_ms: 30_000,
            factor: 2.0,
            max_delay_ms: 3_600_000,
            max_attempts: 5,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Delay before the next attempt after `attempts` failed ones, or `None` when the item
    /// has had all its attempts. `random` is uniform in [0, 1). A `Retry-After` longer than
    /// the backoff wins; a shorter one does not make us retry sooner.
    pub fn next_delay_ms(
        &self,
        attempts: u32,
        retry_after_ms: Option<i64>,
        random: f64,
    ) -> Option<i64> {
        if attempts >= self.max_attempts {
            return None;
        }
        let exponent = attempts.saturating_sub(1).min(62) as i32;
        let base =
            (self.first_delay_ms as f64 * self.factor.powi(exponent)).min(self.max_delay_ms as f64);
        let spread = base * self.jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        let delay = (base + spread).max(0.0) as i64;
        Some(delay.max(retry_after_ms.unwrap_or(0)))
    }
}

#[async_trait]
pub trait WorkQueue: Send + Sync + 'static {
    async fn enqueue(&self, item: NewWorkItem, now_ms: i64) -> Result<Enqueued, StoreError>;

    /// Up to `limit` due items of `queue`, each the oldest of its group with no other item
    /// of the group in flight; each is leased for `lease_ms`.
    async fn claim(
        &self,
        queue: &str,
        limit: usize,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<WorkItem>, StoreError>;

    async fn complete(
        &self,
        item: &WorkItem,
        completion: Completion,
        policy: &RetryPolicy,
        random: f64,
        now_ms: i64,
    ) -> Result<CompletionOutcome, StoreError>;

    /// Dead letters in id order, after `after_id`.
    async fn dead_letters(
        &self,
        queue: Option<&str>,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// Removes the pending items and dead letters whose payload holds `needle` (a data
    /// subject's id as stored JSON writes it, for an erasure); how many of each went. A
    /// leased item goes too: its worker's completion then finds nothing to complete.
    async fn erase_holding(&self, needle: &str) -> Result<(u64, u64), StoreError>;

    /// Puts a dead letter back on its queue as a new item; returns the new item's id.
    async fn replay(&self, dead_letter_id: i64, now_ms: i64) -> Result<Option<i64>, StoreError>;

    /// What `queue` holds now.
    async fn depth(&self, queue: &str, now_ms: i64) -> Result<QueueDepth, StoreError>;

    /// Ends every lease at once; how many items were leased. Only for a caller that knows
    /// no other worker is alive (an embedded hub at start, holding the data lock): the items
    /// a crashed run was working on are taken again at once instead of when their leases
    /// run out.
    async fn release_all_leases(&self) -> Result<u64, StoreError>;
}

/// What a queue holds: items waiting (due now or later), items being worked on, and dead
/// letters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueDepth {
    /// Not leased: due now, or waiting for a retry.
    pub waiting: u64,
    /// Leased by a worker.
    pub in_flight: u64,
    /// Of the waiting ones, those that wait for a retry.
    pub retrying: u64,
    pub dead_letters: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_is_30s_doubling_for_5_attempts() {
        let p = RetryPolicy::default();
        let middle = 0.5; // no jitter at the midpoint
        assert_eq!(p.next_delay_ms(1, None, middle), Some(30_000));
        assert_eq!(p.next_delay_ms(2, None, middle), Some(60_000));
        assert_eq!(p.next_delay_ms(4, None, middle), Some(240_000));
        assert_eq!(
            p.next_delay_ms(5, None, middle),
            None,
            "five attempts in all"
        );
    }

    #[test]
    fn jitter_stays_within_bounds_and_retry_after_wins_when_longer() {
        let p = RetryPolicy::default();
        for i in 0..=100 {
            let d = p.next_delay_ms(1, None, i as f64 / 100.0).unwrap();
            assert!((24_000..=36_000).contains(&d), "{d}");
        }
        assert_eq!(p.next_delay_ms(1, Some(90_000), 0.5), Some(90_000));
        assert_eq!(p.next_delay_ms(1, Some(1_000), 0.5), Some(30_000));
    }

    #[test]
    fn delays_are_capped() {
        let p = RetryPolicy {
            max_attempts: 100,
            ..RetryPolicy::default()
        };
        assert_eq!(p.next_delay_ms(60, None, 0.5), Some(3_600_000));
    }
}
