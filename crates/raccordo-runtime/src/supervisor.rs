//! The supervisor: every background task of the hub runs under it. It restarts a task that
//! fails (or panics) with exponential backoff, shows each task's state for `/readyz` and the
//! health API, and on shutdown cancels every task and waits for them to finish.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Backoff between restarts: doubling from `FIRST_BACKOFF`, at most `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A task that failed this many times in a row makes the hub not ready.
pub const FAILURES_BEFORE_UNREADY: u32 = 3;
/// A run that lasted this long counts as recovered: the backoff starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// What a task is doing, as `GET /api/v1/ingest/health` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Running,
    /// Failed; restarts after the backoff.
    BackingOff,
    /// Ended by itself (work done) or by shutdown.
    Stopped,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TaskHealth {
    pub name: String,
    pub state: TaskState,
    /// Failures since the last run that went well.
    pub consecutive_failures: u32,
    pub restarts: u64,
    pub last_error: Option<String>,
}

/// What a supervised task receives: the token that says "stop now".
#[derive(Clone)]
pub struct TaskContext {
    pub cancel: CancellationToken,
}

impl TaskContext {
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the hub shuts down.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }
}

#[derive(Clone)]
pub struct Supervisor {
    cancel: CancellationToken,
    health: Arc<Mutex<BTreeMap<String, TaskHealth>>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Whether this node runs the singleton tasks (always, on an embedded hub).
    leadership: crate::leader::Leadership,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self::with_leadership(crate::leader::Leadership::always())
    }

    /// A supervisor whose singleton tasks run only while `leadership` says this node leads.
    pub fn with_leadership(leadership: crate::leader::Leadership) -> Self {
        Self {
            cancel: CancellationToken::new(),
            health: Arc::default(),
            tasks: Arc::default(),
            leadership,
        }
    }

    pub fn leadership(&self) -> &crate::leader::Leadership {
        &self.leadership
    }

    /// Starts a task that must run on one node at a time (alert rules, schedules, pollers,
    /// digests): it starts when this node leads, is cancelled when it stops leading, and
    /// waits to lead again. On an embedded hub it simply runs.
    pub fn spawn_singleton<F, Fut>(&self, name: &str, make: F)
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        if self.leadership.is_always() {
            return self.spawn(name, make);
        }
        let make = Arc::new(make);
        let leadership = self.leadership.clone();
        self.spawn(name, move |ctx| {
            let (make, mut leadership) = (make.clone(), leadership.clone());
            async move {
                loop {
                    tokio::select! {
                        _ = leadership.leading() => {}
                        _ = ctx.cancelled() => return Ok(()),
                    }
                    let child = ctx.cancel.child_token();
                    let run = make(TaskContext {
                        cancel: child.clone(),
                    });
                    tokio::pin!(run);
                    tokio::select! {
                        result = &mut run => return result,
                        _ = leadership.lost() => {
                            child.cancel();
                            let _ = tokio::time::timeout(Duration::from_secs(5), run).await;
                        }
                    }
                }
            }
        });
    }

    /// Starts `task` under supervision. `make` builds a fresh run each time: `Ok(())` means the
    /// task is done (it is not restarted); `Err` or a panic restarts it after a backoff, until
    /// shutdown. A task should return promptly once `ctx.cancelled()` resolves.
    pub fn spawn<F, Fut>(&self, name: &str, make: F)
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.to_string();
        let task_name = name.clone();
        let health = self.health.clone();
        let cancel = self.cancel.clone();
        let set = move |update: &dyn Fn(&mut TaskHealth)| {
            let mut all = health.lock().unwrap_or_else(|p| p.into_inner());
            let entry = all.entry(name.clone()).or_insert_with(|| TaskHealth {
                name: name.clone(),
                state: TaskState::Running,
                consecutive_failures: 0,
                restarts: 0,
                last_error: None,
            });
            update(entry);
        };
        set(&|_| {});
        let handle = tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                set(&|h| h.state = TaskState::Running);
                let started = tokio::time::Instant::now();
                let run = std::panic::AssertUnwindSafe(make(TaskContext {
                    cancel: cancel.clone(),
                }))
                .catch_unwind();
                let outcome = tokio::select! {
                    outcome = run => outcome,
                    // A task that ignores the token is dropped at its next await point.
                    _ = async { cancel.cancelled().await; tokio::time::sleep(Duration::from_secs(5)).await } => Ok(Ok(())),
                };
                let error = match outcome {
                    Ok(Ok(())) => {
                        set(&|h| h.state = TaskState::Stopped);
                        return;
                    }
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(panic) => panic_message(&panic),
                };
                if cancel.is_cancelled() {
                    set(&|h| h.state = TaskState::Stopped);
                    return;
                }
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = FIRST_BACKOFF;
                    set(&|h| h.consecutive_failures = 0);
                }
                set(&|h| {
                    h.state = TaskState::BackingOff;
                    h.consecutive_failures += 1;
                    h.last_error = Some(error.clone());
                });
                tracing::warn!(task = %task_name, error = %error, backoff_ms = backoff.as_millis() as u64, "background task failed; restarting after a pause");
                metrics::counter!("raccordo_task_failures_total", "task" => task_name.clone())
                    .increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => {
                        set(&|h| h.state = TaskState::Stopped);
                        return;
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                set(&|h| h.restarts += 1);
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    /// Every task's state, by name.
    pub fn health(&self) -> Vec<TaskHealth> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Tasks failing persistently (for `/readyz`).
    pub fn failing(&self) -> Vec<TaskHealth> {
        self.health()
            .into_iter()
            .filter(|h| {
                h.state == TaskState::BackingOff
                    && h.consecutive_failures >= FAILURES_BEFORE_UNREADY
            })
            .collect()
    }

    /// A token that is cancelled at shutdown (for work that is not a supervised task).
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Cancels every task and waits up to `grace` for them to finish.
    pub async fn shutdown(&self, grace: Duration) {
        self.cancel.cancel();
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("background tasks did not stop within the grace period");
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_is_restarted_with_backoff_and_shows_as_failing() {
        let supervisor = Supervisor::new();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        supervisor.spawn("flaky", move |_ctx| {
            let runs = counted.clone();
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= 4 {
                    anyhow::bail!("attempt {n} failed")
                }
                Ok(())
            }
        });
        // Runs at 0, 200, 600 and 1 400 ms (backoffs 200, 400, 800): four by 1.5 s.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        let failing = supervisor.failing();
        assert_eq!(failing.len(), 1, "{failing:?}");
        assert_eq!(failing[0].last_error.as_deref(), Some("attempt 4 failed"));
        // The fifth at 1 400 + 1 600 = 3 000 ms.
        tokio::time::sleep(Duration::from_millis(1_600)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 5, "the fifth run succeeds");
        assert_eq!(supervisor.health()[0].state, TaskState::Stopped);
        assert!(supervisor.failing().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_is_a_failure_and_shutdown_cancels_everything() {
        let supervisor = Supervisor::new();
        supervisor.spawn("panics", |_ctx| async { panic!("boom") });
        supervisor.spawn("loops", |ctx| async move {
            ctx.cancelled().await;
            Ok(())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let health = supervisor.health();
        let panics = health.iter().find(|h| h.name == "panics").unwrap();
        assert_eq!(panics.last_error.as_deref(), Some("panicked: boom"));
        supervisor.shutdown(Duration::from_secs(1)).await;
        assert!(
            supervisor
                .health()
                .iter()
                .all(|h| h.state == TaskState::Stopped),
            "{:?}",
            supervisor.health()
        );
    }
}
