//! Tailing the event log. A consumer reads every committed event once, in log order per
//! partition, and waits on the log's commit signal instead of polling. Where it resumes is
//! either its own business (the live windows keep their position inside their checkpoint)
//! or a stored consumer offset ([`run_consumer`]).

use std::sync::Arc;

use async_trait::async_trait;
use raccordo_core::{ConsumerOffsets, EventLog, LogPositions, RawEvent};

use crate::supervisor::TaskContext;

/// Events read per call.
pub const PAGE: usize = 1000;

/// Reads the log after `from`, page by page, handing each page to `handle`, then waits for
/// more; returns at shutdown. A read failure ends the run with the error (the supervisor
/// restarts it after a backoff, from wherever `from` is then).
pub async fn tail_log(
    log: &dyn EventLog,
    mut from: LogPositions,
    ctx: &TaskContext,
    mut handle: impl FnMut(&[RawEvent]) -> anyhow::Result<()> + Send,
) -> anyhow::Result<()> {
    let mut committed = log.committed();
    while !ctx.is_cancelled() {
        let events = log.tail(&from, PAGE).await?;
        for event in &events {
            from.advance(event.position);
        }
        if !events.is_empty() {
            handle(&events)?;
        }
        if events.len() == PAGE {
            continue;
        }
        // Wait for a commit past what we have read.
        let behind = |head: &LogPositions| from.is_behind(head);
        tokio::select! {
            changed = committed.wait_for(behind) => if changed.is_err() { return Ok(()) },
            _ = ctx.cancelled() => return Ok(()),
        }
    }
    Ok(())
}

/// A log consumer whose position is kept in the `ConsumerOffsets` store.
#[async_trait]
pub trait LogConsumer: Send + Sync + 'static {
    /// The name its offsets are stored under.
    fn name(&self) -> &str;

    /// Handles a page of events. An error stops the run before the page's offsets are
    /// committed, so the page is read again after the restart: handlers are idempotent.
    async fn handle(&self, events: &[RawEvent]) -> anyhow::Result<()>;
}

/// Runs `consumer` from its stored offsets, committing them after every handled page.
pub async fn run_consumer(
    consumer: Arc<dyn LogConsumer>,
    log: Arc<dyn EventLog>,
    offsets: Arc<dyn ConsumerOffsets>,
    ctx: TaskContext,
) -> anyhow::Result<()> {
    let mut from = offsets.load(consumer.name()).await?;
    let mut committed = log.committed();
    while !ctx.is_cancelled() {
        let events = log.tail(&from, PAGE).await?;
        if !events.is_empty() {
            consumer.handle(&events).await?;
            for event in &events {
                from.advance(event.position);
            }
            offsets.commit(consumer.name(), &from).await?;
        }
        if events.len() == PAGE {
            continue;
        }
        let behind = |head: &LogPositions| from.is_behind(head);
        tokio::select! {
            changed = committed.wait_for(behind) => if changed.is_err() { return Ok(()) },
            _ = ctx.cancelled() => return Ok(()),
        }
    }
    Ok(())
}
