//! Sandboxes: emulators of the HubSpot CRM API, the Zoho CRM API and an OpenAI-compatible
//! chat API, faithful enough that the official SDKs work against them unchanged. They are
//! part of the product: `raccordo sandbox hubspot|zoho|ai` and `raccordo demo` run them, and
//! the tests use them in place of the real services.
//!
//! Each sandbox is an axum router over its own state, wrapped in the shared fault-injection
//! layer ([`knobs`]). State lives in memory, or in a JSON file when one is given.

// Handlers return finished HTTP answers as their error values (`Result<_, Response>`):
// errors are the cold path and boxing them would only add noise.
#![allow(clippy::result_large_err)]

/// `attempt!(expr)`: the value of an `Ok`, or return the `Err`'s ready-made answer.
macro_rules! attempt {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(answer) => return answer,
        }
    };
}

/// A named path segment (`{kind}`, `{module}`), for the extractors that open every CRM
/// handler; an unmatched route gives `""`, which the product's own check then refuses.
pub(crate) async fn path_segment<S: Send + Sync>(
    parts: &mut axum::http::request::Parts,
    state: &S,
    name: &str,
) -> Result<String, axum::response::Response> {
    use axum::extract::FromRequestParts;
    use axum::response::IntoResponse;
    let params = axum::extract::RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(params
        .iter()
        .find(|(key, _)| *key == name)
        .map_or(String::new(), |(_, value)| value.to_string()))
}

/// A list parameter given repeated or comma-separated (`properties=a&properties=b`,
/// `properties=a,b`, `ids=1,2`) alike; `None` when absent or empty.
pub(crate) fn list_param(pairs: &[(String, String)], key: &str) -> Option<Vec<String>> {
    let values: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect();
    (!values.is_empty()).then_some(values)
}

pub mod ai;
pub mod hubspot;
pub mod knobs;
pub mod seed;
pub mod zoho;

use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where a sandbox keeps its records: nowhere (memory only) or a JSON file rewritten
/// atomically after every change.
#[derive(Debug, Clone, Default)]
pub struct Persist {
    pub path: Option<PathBuf>,
}

impl Persist {
    pub fn memory() -> Self {
        Self { path: None }
    }

    pub fn file(path: PathBuf) -> Self {
        Self { path: Some(path) }
    }

    pub fn load<T: DeserializeOwned>(&self) -> anyhow::Result<Option<T>> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("{}: not a sandbox state file: {e}", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn save<T: Serialize>(&self, state: &T) {
        let Some(path) = &self.path else { return };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not save the sandbox state");
        }
    }
}

/// `2026-11-22T18:51:00.123Z`, HubSpot's form.
pub fn iso_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Decoded query pairs, repeated keys kept in order.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A random token with a recognisable prefix.
pub fn random_token(prefix: &str) -> String {
    let a: u128 = rand::random();
    format!("{prefix}{a:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_limits_free_slots_as_calls_age() {
        let mut l = SlidingLimit::default();
        assert_eq!(l.try_take(0, 1000, 2), Ok(1));
        assert_eq!(l.try_take(400, 1000, 2), Ok(2));
        assert_eq!(
            l.try_take(900, 1000, 2),
            Err(100),
            "full until the first call is 1 s old"
        );
        assert_eq!(
            l.try_take(1000, 1000, 2),
            Ok(2),
            "the refused call was not counted"
        );
    }

    #[test]
    fn times_and_queries() {
        assert_eq!(iso_ms(1_795_379_460_123), "2026-11-22T20:31:00.123Z");
        assert_eq!(
            query_pairs(Some("properties=email&properties=firstname&q=a%40b.it")),
            vec![
                ("properties".to_string(), "email".to_string()),
                ("properties".to_string(), "firstname".to_string()),
                ("q".to_string(), "a@b.it".to_string())
            ]
        );
    }
}

/// A rolling-window limit ("at most `limit` calls in any `window_ms`"), the shape of every
/// rate limit the emulated APIs have.
#[derive(Debug, Default)]
pub struct SlidingLimit {
    times: std::collections::VecDeque<i64>,
}

impl SlidingLimit {
    /// Counts a call at `now` if the window has room: `Ok(calls in the window)`, else
    /// `Err(milliseconds until a slot frees)` and nothing is counted.
    pub fn try_take(&mut self, now: i64, window_ms: i64, limit: u32) -> Result<u32, i64> {
        while self.times.front().is_some_and(|t| *t <= now - window_ms) {
            self.times.pop_front();
        }
        if self.times.len() as u32 >= limit {
            let oldest = self.times.front().copied().unwrap_or(now);
            return Err((oldest + window_ms - now).max(1));
        }
        self.times.push_back(now);
        Ok(self.times.len() as u32)
    }
}

/// Which API a sandbox emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    HubSpot,
    Zoho,
    Ai,
}

impl Product {
    pub fn name(self) -> &'static str {
        match self {
            Product::HubSpot => "hubspot",
            Product::Zoho => "zoho",
            Product::Ai => "ai",
        }
    }

    /// The port each sandbox listens on unless told otherwise.
    pub fn default_port(self) -> u16 {
        match self {
            Product::HubSpot => 8481,
            Product::Zoho => 8482,
            Product::Ai => 8483,
        }
    }
}

/// Everything a sandbox can be started with; `None` fields take the product's default.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub product: Product,
    pub listen: std::net::SocketAddr,
    /// HubSpot: private-app token; AI: API key. Generated when not given.
    pub token: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// Zoho: the refresh token the OAuth endpoint accepts.
    pub refresh_token: Option<String>,
    pub access_token_ttl: Option<std::time::Duration>,
    /// HubSpot: calls per 10 s; AI: requests per minute; Zoho: concurrent calls.
    pub rate_limit: Option<u32>,
    pub webhook_url: Option<String>,
    pub seed: u64,
    /// Seeded companies (accounts) and contacts.
    pub seed_size: (usize, usize),
    pub knobs: knobs::Knobs,
    pub state_file: Option<PathBuf>,
}

impl SandboxConfig {
    pub fn new(product: Product, listen: std::net::SocketAddr) -> Self {
        Self {
            product,
            listen,
            token: None,
            client_id: None,
            client_secret: None,
            refresh_token: None,
            access_token_ttl: None,
            rate_limit: None,
            webhook_url: None,
            seed: 1,
            seed_size: (20, 100),
            knobs: knobs::Knobs::default(),
            state_file: None,
        }
    }
}

/// A sandbox serving on its socket until `stop` (or the process ends).
pub struct Running {
    pub product: Product,
    pub addr: std::net::SocketAddr,
    pub base_url: String,
    /// The credentials a client needs, one `name = value` per line.
    pub credentials: Vec<(&'static str, String)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets requests in progress finish, and waits.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }

    /// What to print at start: where it is and how to reach it with the official clients.
    pub fn banner(&self) -> String {
        let mut out = format!("{} sandbox on {}\n", self.product.name(), self.base_url);
        for (k, v) in &self.credentials {
            out.push_str(&format!("  {k:<14} {v}\n"));
        }
        let hint = match self.product {
            Product::HubSpot => format!(
                "  python:        HubSpot(access_token=TOKEN, host=\"{}\")",
                self.base_url
            ),
            Product::Zoho => format!(
                "  python:        DataCenter.Environment(\"{0}\", \"{0}/oauth/v2/token\", \"{0}\") with OAuthToken(client_id, client_secret, refresh_token)",
                self.base_url
            ),
            Product::Ai => format!(
                "  python:        OpenAI(base_url=\"{}/v1\", api_key=API_KEY)",
                self.base_url
            ),
        };
        out.push_str(&hint);
        out.push_str(&format!(
            "\n  admin:         {0}/_sandbox/knobs (GET, PATCH), {0}/_sandbox/calls\n",
            self.base_url
        ));
        out
    }
}

/// Binds and starts a sandbox.
pub async fn start(config: SandboxConfig) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let base_url = format!("http://{addr}");
    config.knobs.validate().map_err(|e| anyhow::anyhow!(e))?;
    let persist = config
        .state_file
        .clone()
        .map_or_else(Persist::memory, Persist::file);
    let secs = |d: Option<std::time::Duration>, default: u64| {
        d.unwrap_or(std::time::Duration::from_secs(default))
    };
    let (router, credentials) = match config.product {
        Product::HubSpot => {
            let options = hubspot::HubSpotOptions {
                token: config
                    .token
                    .clone()
                    .unwrap_or_else(|| random_token("pat-eu1-")),
                client_id: config
                    .client_id
                    .clone()
                    .unwrap_or_else(|| "raccordo-sandbox-app".into()),
                client_secret: config
                    .client_secret
                    .clone()
                    .unwrap_or_else(|| random_token("")),
                access_token_ttl: secs(config.access_token_ttl, 1800),
                burst_limit: config.rate_limit.unwrap_or(190),
                daily_limit: 1_000_000,
                search_per_second: 5,
                webhook_url: config.webhook_url.clone(),
                seed: config.seed,
                seed_companies: config.seed_size.0,
                seed_contacts: config.seed_size.1,
                portal_id: 62_515,
                app_id: 1_160_452,
            };
            let credentials = vec![
                ("token", options.token.clone()),
                ("client_id", options.client_id.clone()),
                ("client_secret", options.client_secret.clone()),
                (
                    "oauth",
                    format!(
                        "{base_url}/oauth/authorize?client_id=…&redirect_uri=…  then POST {base_url}/oauth/v1/token"
                    ),
                ),
            ];
            let controls = knobs::Controls::new(config.knobs.clone(), hubspot::HubSpotFaults);
            (
                hubspot::router(hubspot::HubSpot::new(options, persist)?, controls),
                credentials,
            )
        }
        Product::Zoho => {
            let options = zoho::ZohoOptions {
                client_id: config
                    .client_id
                    .clone()
                    .unwrap_or_else(|| "1000.RACCORDOSANDBOX".into()),
                client_secret: config
                    .client_secret
                    .clone()
                    .unwrap_or_else(|| random_token("")),
                refresh_token: config
                    .refresh_token
                    .clone()
                    .unwrap_or_else(|| format!("1000.{}", random_token(""))),
                api_domain: base_url.clone(),
                access_token_ttl: secs(config.access_token_ttl, 3600),
                daily_credits: 50_000,
                concurrency: config.rate_limit.unwrap_or(20),
                seed: config.seed,
                seed_accounts: config.seed_size.0,
                seed_contacts: config.seed_size.1,
            };
            let credentials = vec![
                ("client_id", options.client_id.clone()),
                ("client_secret", options.client_secret.clone()),
                ("refresh_token", options.refresh_token.clone()),
                ("token_url", format!("{base_url}/oauth/v2/token")),
            ];
            let controls = knobs::Controls::new(config.knobs.clone(), zoho::ZohoFaults);
            (
                zoho::router(zoho::Zoho::new(options, persist)?, controls),
                credentials,
            )
        }
        Product::Ai => {
            let options = ai::AiOptions {
                api_key: config
                    .token
                    .clone()
                    .unwrap_or_else(|| random_token("sk-sandbox-")),
                requests_per_minute: config.rate_limit.unwrap_or(600),
            };
            let credentials = vec![
                ("api_key", options.api_key.clone()),
                ("models", ai::MODELS.join(", ")),
            ];
            let controls = knobs::Controls::new(config.knobs.clone(), ai::AiFaults);
            (ai::router(options, controls), credentials)
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "sandbox server failed");
        }
    });
    Ok(Running {
        product: config.product,
        addr,
        base_url,
        credentials,
        stop: Some(stop_tx),
        task,
    })
}
