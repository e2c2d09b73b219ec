//! Tailing the event log. A consumer reads every committed event once, in log order per
//! partition, and waits on the log's commit signal instead of polling. Where it resumes is
//! either its own business (the live windows keep their position inside their checkpoint,
//! [`tail_log`]) or a stored consumer offset ([`run_consumer`]).

use std::sync::Arc;

use async_trait::async_trait;
use raccordo_core::{ConsumerOffsets, EventLog, LogPositions, RawEvent};
use tokio::sync::watch;

use crate::supervisor::TaskContext;

/// Events read per call.
pub const PAGE: usize = 1000;

/// How long the live windows' reader, once caught up, lets commits gather after the one that
/// woke it. Under steady single-event load the log commits a few requests at a time, a
/// thousand or more times a second; reading each commit alone cost three blocking-pool
/// hand-offs and their thread wake-ups per commit, CPU taken from the request path. 5 ms
/// bounds that to 200 reads a second and adds at most 5 ms to the time to insight, which the
/// SSE stream's own coalescing (`metrics.provisional_coalesce`, 25 ms) already exceeds.
pub const LIVE_READ_COALESCE: std::time::Duration = std::time::Duration::from_millis(5);

/// Hands out the log page by page after a reader's positions, waiting for a commit only when
/// the last page came back short (the reader is caught up).
struct Pages {
    committed: watch::Receiver<LogPositions>,
    caught_up: bool,
    /// Pause after a commit wakes a caught-up reader, so one read takes the commits that
    /// follow it closely (zero: read at once).
    coalesce: std::time::Duration,
}

impl Pages {
    fn new(log: &dyn EventLog) -> Self {
        Self {
            committed: log.committed(),
            caught_up: false,
            coalesce: std::time::Duration::ZERO,
        }
    }

    fn coalescing(mut self, pause: std::time::Duration) -> Self {
        self.coalesce = pause;
        self
    }

    /// The next non-empty page after `from`, or `None` at shutdown or when the log closed.
    async fn next(
        &mut self,
        log: &dyn EventLog,
        from: &LogPositions,
        ctx: &TaskContext,
    ) -> anyhow::Result<Option<Vec<RawEvent>>> {
        loop {
            if ctx.is_cancelled() {
                return Ok(None);
            }
            if self.caught_up {
                let behind = |head: &LogPositions| from.is_behind(head);
                tokio::select! {
                    changed = self.committed.wait_for(behind) => if changed.is_err() { return Ok(None) },
                    _ = ctx.cancelled() => return Ok(None),
                }
                if !self.coalesce.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(self.coalesce) => {}
                        _ = ctx.cancelled() => return Ok(None),
                    }
                }
            }
            let events = log.tail(from, PAGE).await?;
            self.caught_up = events.len() < PAGE;
            if !events.is_empty() {
                return Ok(Some(events));
            }
        }
    }
}

/// Reads the log after `from`, handing each page to `handle`, until shutdown. A read failure
/// ends the run with the error (the supervisor restarts it after a backoff, from wherever
/// the caller's own position is then).
pub async fn tail_log(
    log: &dyn EventLog,
    mut from: LogPositions,
    ctx: &TaskContext,
    mut handle: impl FnMut(&[RawEvent]) -> anyhow::Result<()> + Send,
) -> anyhow::Result<()> {
    let mut pages = Pages::new(log);
    while let Some(events) = pages.next(log, &from, ctx).await? {
        handle(&events)?;
        for event in &events {
            from.advance(event.position);
        }
    }
    Ok(())
}

/// Like [`tail_log`], but pages are read ahead and each is `prepare`d on the blocking pool
/// as soon as it is read, while earlier pages are still being prepared or in `handle`:
/// reading, preparing and handling overlap, so a consumer that is behind (a rebuild after a
/// restart) keeps every core busy. Pages reach `handle` in log order; at most
/// `READ_AHEAD` pages are in the pipeline. Once caught up, each read waits
/// [`LIVE_READ_COALESCE`] after the commit that woke it.
///
/// `prepare` and `handle` run on threads of their own at background priority
/// ([`crate::spawn_background`]): a consumer catching up after a burst must not take the
/// CPU from the request path (the async workers and the log writer), whose latency is what
/// senders wait for.
pub async fn tail_log_pipelined<T: Send + 'static>(
    log: Arc<dyn EventLog>,
    from: LogPositions,
    ctx: &TaskContext,
    prepare: Arc<dyn Fn(Vec<RawEvent>) -> T + Send + Sync>,
    handle: Arc<dyn Fn(T) -> anyhow::Result<()> + Send + Sync>,
) -> anyhow::Result<()> {
    const READ_AHEAD: usize = 4;
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<anyhow::Result<tokio::task::JoinHandle<T>>>(READ_AHEAD);
    let reader_ctx = ctx.clone();
    let reader = tokio::spawn(async move {
        let mut from = from;
        let mut pages = Pages::new(log.as_ref()).coalescing(LIVE_READ_COALESCE);
        loop {
            let item = match pages.next(log.as_ref(), &from, &reader_ctx).await {
                Ok(Some(events)) => {
                    for event in &events {
                        from.advance(event.position);
                    }
                    let prepare = prepare.clone();
                    Ok(crate::spawn_background(move || prepare(events)))
                }
                Ok(None) => return,
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    // The reader stops with this consumer, however it ends.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _reader = AbortOnDrop(reader);
    while let Some(item) = rx.recv().await {
        let page = item?.await?;
        let handle = handle.clone();
        crate::spawn_background(move || handle(page)).await??;
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
    let mut pages = Pages::new(log.as_ref());
    while let Some(events) = pages.next(log.as_ref(), &from, &ctx).await? {
        consumer.handle(&events).await?;
        for event in &events {
            from.advance(event.position);
        }
        offsets.commit(consumer.name(), &from).await?;
    }
    Ok(())
}
