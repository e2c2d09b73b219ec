//! Clients for the CRMs raccordo syncs: HubSpot CRM v3 and Zoho CRM v8.
//!
//! - Batch endpoints wherever the API has them, 100 records per call.
//! - [`limits`]: each client stays under its CRM's documented limits, with buckets shared
//!   through the [`raccordo_core::RateLimitStore`] by every worker (and node).
//! - [`error::CrmError`] tells retryable failures (with the wait the CRM asked for) from
//!   permanent ones (with the field the CRM blamed) and from refused credentials.
//! - [`tokens`]: the OAuth token manager (refresh tokens sealed at rest by [`seal`], access
//!   tokens refreshed ahead of expiry by one caller at a time).

pub mod config;
pub mod connect;
pub mod error;
pub mod hubspot;
pub mod limits;
pub mod seal;
pub mod stats;
pub mod tokens;
mod transport;
pub mod zoho;

pub use config::{CrmConfig, HubSpotConfig, ZohoConfig};
pub use connect::Connector;
pub use error::CrmError;
pub use hubspot::{HubSpotClient, HubSpotSettings};
pub use seal::Sealer;
pub use stats::{CallCounts, CallStats};
pub use tokens::{OAuthGrant, OAuthTokens, StaticToken, TokenSource};
pub use zoho::{ZohoClient, ZohoSettings};
