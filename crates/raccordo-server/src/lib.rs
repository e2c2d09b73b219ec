//! The raccordo server: configuration, HTTP routes, admin auth, telemetry and the
//! embedded runtime that wires storage and the ingest pipeline together.

// `Problem` (~180 bytes) is the error of request handlers and is only built on the
// rejection path; boxing it would cost an allocation there and buy nothing.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod alerts;
pub mod app;
pub mod config;
pub mod credentials;
pub mod extract;
pub mod live;
pub mod problem;
pub mod routes;
pub mod telemetry;

pub use app::{Hub, shutdown_signal};
pub use config::{Built, Config, ConfigProblem};
pub use credentials::Credentials;
