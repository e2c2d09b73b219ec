//! What both CRM clients do around each call, whatever the CRM: one HTTP client with the
//! configured timeout, the base URL, the token source, the account's rate-limit budget and
//! the call statistics. Each client keeps only what is its CRM's own: how the token is
//! sent and how an error answer is read.

use std::sync::Arc;
use std::time::Duration;

use raccordo_core::{Clock, RateLimitStore};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

use crate::error::{Attempt, CrmError, quick_retry_wait};
use crate::limits::{Budget, Limit};
use crate::stats::CallStats;
use crate::tokens::TokenSource;

pub(crate) struct Transport {
    system: &'static str,
    http: reqwest::Client,
    base: String,
    tokens: Arc<dyn TokenSource>,
    budget: Budget,
    pub(crate) stats: Arc<CallStats>,
}

/// A CRM's answer to one request, read whole.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as JSON; `Null` when it is empty or not JSON.
    pub body: Value,
    /// The access token the request carried, for a refresh after a 401.
    pub token: String,
}

/// One record's outcome in a batch write, in either CRM.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub id: String,
    /// A create (as opposed to an update of an existing record).
    pub created: bool,
}

/// A call's request, before the CRM's own way of carrying the token is added.
pub(crate) struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub body: Option<&'a Value>,
}

impl Transport {
    pub fn new(
        system: &'static str,
        base_url: &str,
        timeout: Duration,
        outbound: &raccordo_outbound::Outbound,
        tokens: Arc<dyn TokenSource>,
        limits: Arc<dyn RateLimitStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CrmError> {
        let http =
            raccordo_outbound::client_builder(outbound, raccordo_outbound::Redirects::Follow)
                .timeout(timeout)
                .build()
                .map_err(|e| CrmError::transport(system, &e))?;
        Ok(Self {
            system,
            http,
            base: base_url.trim_end_matches('/').to_string(),
            tokens,
            budget: Budget::new(limits, clock),
            stats: Arc::new(CallStats::new()),
        })
    }

    /// Runs one call through [`run_call`]: a token refresh on a 401, in-place retries of
    /// brief hiccups, every outcome counted.
    pub async fn run<T, F, Fut>(&self, attempt: F) -> Result<T, CrmError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        run_call(self.system, self.tokens.as_ref(), &self.stats, attempt).await
    }

    /// One attempt's I/O: waits for room under `limits`, takes a current access token,
    /// sends the request with the token as `authorize` carries it, reads the answer.
    pub async fn send(
        &self,
        request: Request<'_>,
        limits: &[&Limit],
        authorize: impl FnOnce(RequestBuilder, &str) -> RequestBuilder,
    ) -> Result<Answer, Attempt> {
        self.budget.take(self.system, limits).await?;
        let token = self.tokens.access_token().await?;
        let url = format!("{}{}", self.base, request.path);
        let mut builder = self
            .http
            .request(request.method.clone(), url)
            .query(request.query);
        builder = authorize(builder, &token);
        if let Some(body) = request.body {
            builder = builder.json(body);
        }
        let transport = |e: reqwest::Error| CrmError::transport(self.system, &e);
        let endpoint = raccordo_core::calls::endpoint(request.method.as_str(), request.path);
        let started = std::time::Instant::now();
        let sent = builder.send().await;
        let (status, timed_out) = match &sent {
            Ok(r) => (Some(r.status().as_u16()), false),
            Err(e) => (None, e.is_timeout()),
        };
        raccordo_core::calls::record(
            self.system,
            endpoint,
            status,
            started.elapsed(),
            raccordo_core::calls::reason(status, timed_out),
        );
        let response = sent.map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(transport)?;
        Ok(Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            token,
        })
    }
}

/// Runs one client call: tries `attempt`, refreshes the token once on a 401, retries a
/// brief hiccup in place ([`quick_retry_wait`](crate::error::quick_retry_wait)), and records every outcome in `stats`.
async fn run_call<T, F, Fut>(
    system: &'static str,
    tokens: &dyn crate::tokens::TokenSource,
    stats: &crate::stats::CallStats,
    mut attempt: F,
) -> Result<T, CrmError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Attempt>>,
{
    let (mut refreshed, mut tries) = (false, 0);
    loop {
        let error = match raccordo_core::calls::attempt_scope(
            tries + 1 + refreshed as u32,
            attempt(),
        )
        .await
        {
            Ok(done) => {
                stats.record(system, Ok(()));
                return Ok(done);
            }
            Err(Attempt::Unauthorized(token)) if !refreshed => {
                // Once per call: the token may have been revoked or expired early.
                tokens.rejected(&token).await;
                refreshed = true;
                continue;
            }
            Err(Attempt::Unauthorized(_)) => CrmError::Unauthorized {
                system,
                message: "refused a freshly issued token".into(),
            },
            Err(Attempt::Failed(e)) => e,
        };
        stats.record(system, Err(&error));
        tries += 1;
        match quick_retry_wait(&error, tries) {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return Err(error),
        }
    }
}
