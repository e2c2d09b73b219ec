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
