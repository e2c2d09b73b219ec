//! JWKS for JWT sources with `jwks_url`: fetched once before the hub listens (so the first
//! token does not meet an empty key set), then refreshed every `JWKS_REFRESH` by a
//! supervised task. A failed fetch is logged and keeps the previous keys; tokens fail until
//! a fetch succeeds.

use std::sync::Arc;
use std::time::Duration;

use raccordo_ingest::Source;
use raccordo_ingest::auth::jwt::JwkSet;

use crate::supervisor::TaskContext;

const JWKS_REFRESH: Duration = Duration::from_secs(300);

fn client(outbound: &raccordo_outbound::Outbound) -> anyhow::Result<reqwest::Client> {
    Ok(
        raccordo_outbound::client_builder(outbound, raccordo_outbound::Redirects::Follow)
            .timeout(Duration::from_secs(10))
            .build()?,
    )
}

/// Fetches every JWKS once; returns whether any source uses one.
pub async fn load_all(
    sources: &[Arc<Source>],
    outbound: &raccordo_outbound::Outbound,
) -> anyhow::Result<bool> {
    let client = client(outbound)?;
    let mut any = false;
    for source in sources {
        for verifier in &source.verifiers {
            if let Some((url, handle)) = verifier.jwks_url() {
                any = true;
                refresh(&client, &source.name.to_string(), url, &handle, true).await;
            }
        }
    }
    Ok(any)
}

/// Refreshes every JWKS every five minutes until shutdown.
pub async fn keep_fresh(
    sources: Vec<Arc<Source>>,
    outbound: raccordo_outbound::Outbound,
    ctx: TaskContext,
) -> anyhow::Result<()> {
    let client = client(&outbound)?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(JWKS_REFRESH) => {}
            _ = ctx.cancelled() => return Ok(()),
        }
        for source in &sources {
            for verifier in &source.verifiers {
                if let Some((url, handle)) = verifier.jwks_url() {
                    refresh(&client, &source.name.to_string(), url, &handle, false).await;
                }
            }
        }
    }
}

async fn refresh(
    client: &reqwest::Client,
    name: &str,
    url: &str,
    handle: &raccordo_ingest::auth::JwksHandle,
    first: bool,
) {
    match fetch(client, url).await {
        Ok(set) => {
            tracing::info!(source = %name, %url, keys = set.keys.len(), first, "JWKS loaded");
            *handle.write().unwrap_or_else(|p| p.into_inner()) = set;
        }
        Err(e) => {
            tracing::warn!(source = %name, %url, error = %e, "JWKS fetch failed; keeping the previous keys")
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> anyhow::Result<JwkSet> {
    Ok(client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}
