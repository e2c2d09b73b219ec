//! The hub's background work, under one supervisor: log consumers, the live metrics
//! pipeline, the alert engine and the work-queue workers. Nothing here names a storage
//! backend: every store comes in as a trait object from `raccordo_core::Stores`.

pub mod alerts;
pub mod consumer;
pub mod jwks;
pub mod live;
pub mod supervisor;
pub mod worker;

pub use alerts::{AlertEngine, AlertsConfig};
pub use live::{LiveMetrics, MetricsConfig};
pub use supervisor::{Supervisor, TaskContext, TaskHealth, TaskState};
pub use worker::{Worker, run_worker};
