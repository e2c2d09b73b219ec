//! The ingestion pipeline of raccordo (DESIGN §3 "Ingestion" and "Dedup"):
//! source auth → content type → JSON → schema → clock skew → dedup keys → durable append.
//!
//! Everything except the final append is pure; the append goes through the
//! [`raccordo_core::EventLog`] trait, so the same pipeline runs on the embedded or a cluster backend.

pub mod auth;
pub mod browser;
pub mod client_cert;
pub mod conversion;
pub mod dedup;
pub mod error;
pub mod guard;
pub mod limits;
pub mod mapping;
pub mod network;
pub mod pipeline;
pub mod privacy;
pub mod schema;
pub mod source;

pub use error::{FieldError, IngestError};
pub use mapping::{ConversionMapping, MappedConversion, MappingConfig};
pub use pipeline::{Caller, DryRunEvent, IngestResponse, Ingestor, Rejection, Target};
pub use schema::{CONVERSION_SCHEMA, EventSchema};
pub use source::{DedupSettings, IngestSettings, InspectorSettings, Source, SourceConfig};
