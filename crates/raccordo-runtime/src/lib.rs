//! The hub's background work, under one supervisor: log consumers, the live metrics
//! pipeline, the alert engine and the work-queue workers. Nothing here names a storage
//! backend: every store comes in as a trait object from `raccordo_core::Stores`.

pub mod alerts;
pub mod consumer;
pub mod jwks;
pub mod leader;
pub mod live;
pub mod partitions;
pub mod privacy;
pub mod retention;
pub mod supervisor;
pub mod worker;

pub use alerts::{AlertEngine, AlertsConfig};
pub use live::{LiveMetrics, MetricsConfig};
pub use supervisor::{Supervisor, TaskContext, TaskHealth, TaskState};
pub use worker::{Worker, run_worker};

/// Runs `work` on the threads kept for the live windows' stages (reading a page's fields,
/// windowing it): one more than the cores, at background priority, so that they yield to
/// the request path.
///
/// Why not tokio's shared blocking pool: there each page went to whichever of its threads
/// was idle, thirty and more of them under load, and every thread's allocator heap kept
/// what it had freed resident — rebuilding the windows of a 5-million-event log peaked at
/// 140–170 MiB against about 100 MiB on eight threads (`benches/rebuild.sh`). And a pool
/// thread whose priority was lowered kept it for whatever the pool ran next, API reads
/// and store calls included.
pub fn spawn_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    static POOL: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
        // A runtime without a driver or workers of its own: only its blocking pool is used.
        tokio::runtime::Builder::new_current_thread()
            .thread_name("raccordo-windows")
            .max_blocking_threads(threads)
            .on_thread_start(background_priority)
            .build()
            .map_err(|e| tracing::warn!(error = %e, "no threads of their own for the live windows; they share the blocking pool"))
            .ok()
    });
    match pool {
        Some(pool) => pool.handle().spawn_blocking(work),
        None => tokio::task::spawn_blocking(move || {
            background_priority();
            work()
        }),
    }
}

/// Lowers the calling thread's CPU priority (Linux: per-thread nice 10), once per thread:
/// for work that must yield to the request path under load (catching up the live windows,
/// background maintenance).
pub fn background_priority() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if LOWERED.with(|l| l.replace(true)) {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority only reads its arguments.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 10) != 0 {
            tracing::debug!("could not lower a background thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    /// The live windows' stages run on their own few threads, at background priority, however
    /// many are handed over at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_work_runs_on_a_few_threads_of_its_own() {
        let handles: Vec<_> = (0..64)
            .map(|_| {
                super::spawn_background(move || {
                    // Long enough that the pool would grow if it could.
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    let name = std::thread::current().name().map(str::to_owned);
                    #[cfg(target_os = "linux")]
                    // SAFETY: getpriority only reads its arguments.
                    let nice = unsafe {
                        libc::getpriority(
                            libc::PRIO_PROCESS,
                            libc::syscall(libc::SYS_gettid) as libc::id_t,
                        )
                    };
                    #[cfg(not(target_os = "linux"))]
                    let nice = 10;
                    (std::thread::current().id(), name, nice)
                })
            })
            .collect();
        let mut threads = std::collections::HashSet::new();
        for handle in handles {
            let (id, name, nice) = handle.await.unwrap();
            assert_eq!(name.as_deref(), Some("raccordo-windows"));
            assert!(nice >= 10, "background priority, got nice {nice}");
            threads.insert(id);
        }
        let most = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
        assert!(
            threads.len() <= most,
            "{} threads ran the work, at most {most} expected",
            threads.len()
        );
    }
}
