//! The work-queue worker loop: claim due items, process them, record each outcome. One loop
//! serves any kind of work (alert deliveries today; sync and flow steps next): a worker is
//! an implementation of [`Worker`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raccordo_core::{Clock, Completion, CompletionOutcome, RetryPolicy, WorkItem, WorkQueue};
use tokio::sync::Notify;

use crate::supervisor::TaskContext;

/// How long an idle worker waits before it looks for retries that came due.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// A claimed item stays leased this long; a worker that dies gives it back when it ends.
const LEASE_MS: i64 = 60_000;
const CLAIM_BATCH: usize = 16;

#[async_trait]
pub trait Worker: Send + Sync + 'static {
    /// The queue this worker takes items from.
    fn queue(&self) -> &'static str;

    fn retry_policy(&self) -> RetryPolicy;

    /// The policy of one item, for workers whose items retry differently (flow steps
    /// each have their own); by default [`Worker::retry_policy`].
    fn retry_policy_for(&self, _item: &WorkItem) -> RetryPolicy {
        self.retry_policy()
    }

    /// One attempt at one item.
    async fn process(&self, item: &WorkItem) -> Completion;

    /// Items claimed per round. A worker that batches its remote calls takes more.
    fn batch_size(&self) -> usize {
        CLAIM_BATCH
    }

    /// One attempt at each item, a completion per item in order; by default one at a time.
    /// Items of one group never come together (the queue hands out one per group).
    async fn process_batch(&self, items: &[WorkItem]) -> Vec<Completion> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(self.process(item).await);
        }
        out
    }

    /// Called once the queue has recorded the attempt's outcome.
    async fn settled(
        &self,
        _item: &WorkItem,
        _completion: &Completion,
        _outcome: CompletionOutcome,
    ) {
    }
}

/// Runs `worker` until shutdown. Store failures end the run with an error, so that the
/// supervisor backs off instead of spinning.
pub async fn run_worker(
    worker: Arc<dyn Worker>,
    queue: Arc<dyn WorkQueue>,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    ctx: TaskContext,
) -> anyhow::Result<()> {
    while !ctx.is_cancelled() {
        let items = queue
            .claim(
                worker.queue(),
                worker.batch_size(),
                LEASE_MS,
                clock.now_ms(),
            )
            .await?;
        let completions = worker.process_batch(&items).await;
        for (item, completion) in items.iter().zip(completions) {
            let outcome = queue
                .complete(
                    item,
                    completion.clone(),
                    &worker.retry_policy_for(item),
                    rand::random(),
                    clock.now_ms(),
                )
                .await?;
            worker.settled(item, &completion, outcome).await;
        }
        if items.is_empty() {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = ctx.cancelled() => {}
            }
        }
    }
    Ok(())
}
