//! The raccordo server: configuration, HTTP routes, admin auth, telemetry and the
//! embedded runtime that wires storage and the ingest pipeline together.

pub mod admin;
pub mod app;
pub mod config;
pub mod credentials;
pub mod problem;
pub mod routes;
pub mod telemetry;

pub use app::{Hub, shutdown_signal};
pub use config::{Built, Config, ConfigProblem};
pub use credentials::Credentials;
