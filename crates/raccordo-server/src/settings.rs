//! The server's own settings: `[server]`, `[admin]` and `[log]` in the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on; `--listen` overrides it.
    #[schema(value_type = String)]
    pub listen: SocketAddr,
    /// Where the embedded database and generated credentials live.
    #[schema(value_type = String)]
    pub data_dir: PathBuf,
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
    /// Requests taking longer are answered 503.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub request_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub shutdown_grace: Duration,
    /// Expose `POST /_bench/noop` (a do-nothing route used as a benchmark baseline).
    pub bench_routes: bool,
    /// How long a client may take to send a request's headers; an idle keep-alive
    /// connection is closed after the same time.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub header_read_timeout: Duration,
    /// Most connections open at once; past it a connection is answered `503` and closed
    /// (0: the process's file limit minus a reserve for the store and outbound calls).
    pub max_connections: usize,
    /// Most connections open at once from one client address (0: a quarter of the global
    /// cap, at least 64).
    pub max_connections_per_address: usize,
    /// Proxies (load balancers) whose `Forwarded` / `X-Forwarded-For` headers are believed,
    /// as addresses or networks; empty (the default): those headers are never read.
    pub trusted_proxies: Vec<String>,
    /// HTTPS on `listen` (`[server.tls]`): certificate and key files, reloaded on change
    /// or `SIGHUP`, and an optional plain-HTTP listener that only redirects. Default: plain
    /// HTTP, for use behind a proxy that terminates TLS or on loopback.
    pub tls: Option<crate::tls::TlsConfig>,
}

impl ServerConfig {
    pub fn connection_limits(&self) -> crate::connections::ConnectionLimits {
        crate::connections::ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("raccordo-data"),
            max_body_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
            bench_routes: false,
            header_read_timeout: crate::connections::ConnectionLimits::default()
                .header_read_timeout,
            max_connections: 0,
            trusted_proxies: Vec::new(),
            tls: None,
            max_connections_per_address: crate::connections::ConnectionLimits::default()
                .max_connections_per_address,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer tokens for the admin and read APIs and the dashboard.
    pub tokens: Vec<AdminTokenConfig>,
    /// Rate limits of the admin and read APIs (requests in all, per client address), each
    /// with a burst of twice its rate; past them `429 rate-limited` with `Retry-After`.
    /// Default: 50 requests per second per address.
    #[serde(default = "default_admin_limits")]
    pub limits: raccordo_ingest::limits::LimitsConfig,
}

fn default_admin_limits() -> raccordo_ingest::limits::LimitsConfig {
    raccordo_ingest::limits::LimitsConfig {
        per_address_per_second: Some(50),
        ..Default::default()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            limits: default_admin_limits(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenConfig {
    /// Who holds the token (appears in logs, never the token itself).
    pub name: String,
    /// The token itself (at least 16 characters); use `${ENV}` to keep it out of the file.
    #[serde(serialize_with = "raccordo_core::redacted")]
    pub token: String,
    /// `read` (read APIs) and/or `admin` (everything, implies `read`).
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Admin,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (one object per line, for log shippers) or `pretty` (for a terminal).
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `raccordo_server=debug,info`. `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}
