//! The raccordo HTTP server: routers per area, validating extractors, admin auth,
//! problem+json errors and telemetry. It holds no storage or background work of its own:
//! the binary builds the stores and the runtime and hands them over in `AppState`.

// `Problem` (~180 bytes) is the error of request handlers and is only built on the
// rejection path; boxing it would cost an allocation there and buy nothing.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod body;
pub mod connections;
pub mod extract;
pub mod inspector;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod settings;
pub mod state;
pub mod telemetry;
pub mod tls;

pub use app::{AppState, ServeOptions, serve, shutdown_signal};
