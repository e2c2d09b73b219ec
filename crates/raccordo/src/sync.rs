//! Wiring the CRM sync from `[crm]` and `[sync]`: token sources, clients, the worker on the
//! `sync` queue, the poller that catches lost webhooks, and the Zoho notification channel
//! kept registered.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raccordo_core::crm::{ObjectKind, System};
use raccordo_core::{BucketSpec, Clock, Completion, RetryPolicy, Stores, WorkItem};
use raccordo_crm::tokens::TokenSource;
use raccordo_crm::{
    HubSpotClient, HubSpotSettings, OAuthGrant, OAuthTokens, Sealer, StaticToken, ZohoClient,
    ZohoSettings,
};
use raccordo_flows::CrmClients;
use raccordo_ingest::auth::{HubSpotSignature, ZohoChannelToken};
use raccordo_runtime::{Supervisor, Worker, run_worker};
use raccordo_server::state::CrmIntake;
use raccordo_sync::jobs::{self, enqueue_change};
use raccordo_sync::worker::{BATCH, SyncWorker};

use crate::config::Config;

/// Refresh access tokens this long before they expire.
const REFRESH_AHEAD_MS: i64 = 5 * 60_000;

/// The sync worker as a queue worker: it takes a batch's worth of items per round.
struct SyncQueueWorker(SyncWorker, RetryPolicy);

#[async_trait]
impl Worker for SyncQueueWorker {
    fn queue(&self) -> &'static str {
        jobs::QUEUE
    }
    fn retry_policy(&self) -> RetryPolicy {
        self.1
    }
    async fn process(&self, item: &WorkItem) -> Completion {
        self.0
            .process_batch(std::slice::from_ref(item))
            .await
            .pop()
            .unwrap_or(Completion::Done)
    }
    fn batch_size(&self) -> usize {
        BATCH
    }
    async fn process_batch(&self, items: &[WorkItem]) -> Vec<Completion> {
        self.0.process_batch(items).await
    }
}

/// Builds what `[crm]` configures and starts the sync when both CRMs are connected.
/// Returns what the webhook routes need (`None` when no CRM is configured) and the clients.
pub async fn start(
    config: &Config,
    stores: &Stores,
    clock: Arc<dyn Clock>,
    supervisor: &Supervisor,
    alerts: Arc<raccordo_runtime::AlertEngine>,
) -> anyhow::Result<(Option<CrmIntake>, CrmClients)> {
    let crm = &config.crm;
    if crm.hubspot.is_none() && crm.zoho.is_none() {
        return Ok((None, CrmClients::default()));
    }
    let sealer = Arc::new(Sealer::from_env_or_file(
        &config.server.data_dir.join("secret.key"),
    )?);
    raccordo_crm::seal::check_key(stores.secrets.as_ref(), &sealer).await?;
    let outbound = config.outbound_policy();
    let http = raccordo_outbound::client_builder(&outbound, raccordo_outbound::Redirects::Follow)
        .timeout(Duration::from_secs(30))
        .build()?;
    let shared = GrantContext {
        http: http.clone(),
        stores: stores.clone(),
        sealer: sealer.clone(),
        clock: clock.clone(),
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let backfill_wake = Arc::new(tokio::sync::Notify::new());

    let mut connectors = Vec::new();
    let hubspot = match &crm.hubspot {
        None => None,
        Some(h) => {
            let tokens: Arc<dyn TokenSource> = match &h.access_token {
                Some(token) => Arc::new(StaticToken(token.clone())),
                None => {
                    let (tokens, connector) = grant(
                        OAuthGrant {
                            system: "hubspot",
                            token_url: format!(
                                "{}/oauth/v1/token",
                                h.base_url.trim_end_matches('/')
                            ),
                            client_id: h.client_id.clone().unwrap_or_default(),
                            client_secret: h.client_secret.clone(),
                            refresh_ahead_ms: REFRESH_AHEAD_MS,
                            refresh_budget: BucketSpec::per_interval(10, 60_000),
                        },
                        h.refresh_token.as_deref(),
                        &h.authorize_url,
                        &h.scopes,
                        &shared,
                    )
                    .await?;
                    connectors.push(connector);
                    tokens
                }
            };
            let client = HubSpotClient::new(
                &HubSpotSettings {
                    base_url: h.base_url.clone(),
                    burst_per_10s: h.burst_per_10s,
                    daily: h.daily,
                    search_per_s: h.search_per_s,
                    timeout: h.timeout,
                    outbound: outbound.clone(),
                },
                tokens,
                stores.rate_limits.clone(),
                clock.clone(),
            )?;
            Some((
                Arc::new(client),
                HubSpotSignature::new(&h.client_secret).map_err(anyhow::Error::msg)?,
            ))
        }
    };
    let zoho = match &crm.zoho {
        None => None,
        Some(z) => {
            let (tokens, connector) = grant(
                OAuthGrant {
                    system: "zoho",
                    token_url: z.token_url.clone(),
                    client_id: z.client_id.clone(),
                    client_secret: z.client_secret.clone(),
                    refresh_ahead_ms: REFRESH_AHEAD_MS,
                    // Zoho: at most 10 refreshes per refresh token in 10 minutes.
                    refresh_budget: BucketSpec::per_interval(10, 600_000),
                },
                z.refresh_token.as_deref(),
                &z.authorize_url,
                &z.scopes,
                &shared,
            )
            .await?;
            connectors.push(connector);
            let client = ZohoClient::new(
                &ZohoSettings {
                    base_url: z.base_url.clone(),
                    credits_per_day: z.credits_per_day,
                    concurrency: z.concurrency,
                    workflows: config.sync.zoho_workflows,
                    timeout: z.timeout,
                    outbound: outbound.clone(),
                },
                tokens,
                stores.rate_limits.clone(),
                clock.clone(),
            )?;
            Some((
                Arc::new(client),
                ZohoChannelToken::new(&z.channel_token).map_err(anyhow::Error::msg)?,
                z.channel_id,
            ))
        }
    };

    let mut stats = None;
    let mut reconciler = None;
    let reports_dir = config.server.data_dir.join("reports");
    if let (Some((hubspot, _)), Some((zoho, token, channel_id))) = (&hubspot, &zoho) {
        let sync_stats = Arc::new(raccordo_sync::health::SyncStats::new(
            hubspot.stats(),
            zoho.stats(),
        ));
        stats = Some(sync_stats.clone());
        {
            // Once at start: are the mapped fields and options there on both sides?
            let (hubspot, zoho, sync_config, sync_stats) = (
                hubspot.clone(),
                zoho.clone(),
                config.sync.clone(),
                sync_stats.clone(),
            );
            supervisor.spawn_singleton("sync-mapping-check", move |_ctx| {
                let (hubspot, zoho, sync_config, sync_stats) =
                    (hubspot.clone(), zoho.clone(), sync_config.clone(), sync_stats.clone());
                async move {
                    // A CRM that is down is waited for here: its outage must not make the
                    // hub look unready (ingestion does not depend on it).
                    loop {
                        match raccordo_sync::metadata::check_against_crms(&sync_config, &hubspot, &zoho).await {
                            Ok(problems) => {
                                for p in &problems {
                                    tracing::warn!(problem = %p, "sync mapping does not match the CRM");
                                }
                                sync_stats.set_mapping_problems(problems);
                                return Ok(());
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot read the CRMs' field metadata yet");
                                tokio::time::sleep(Duration::from_secs(60)).await;
                            }
                        }
                    }
                }
            });
        }
        let worker: Arc<dyn Worker> = Arc::new(SyncQueueWorker(
            SyncWorker {
                hubspot: hubspot.clone(),
                zoho: zoho.clone(),
                mappings: stores.mappings.clone(),
                kv: stores.kv.clone(),
                config: Arc::new(config.sync.clone()),
                clock: clock.clone(),
                stats: sync_stats,
            },
            config.sync.retry.policy(),
        ));
        {
            let (queue, clock, wake) = (stores.queue.clone(), clock.clone(), wake.clone());
            supervisor.spawn("sync-worker", move |ctx| {
                run_worker(
                    worker.clone(),
                    queue.clone(),
                    clock.clone(),
                    wake.clone(),
                    ctx,
                )
            });
        }
        {
            let poller = Arc::new(Poller {
                hubspot: hubspot.clone(),
                zoho: zoho.clone(),
                stores: stores.clone(),
                clock: clock.clone(),
                wake: wake.clone(),
                every: config.sync.poll_every,
                config: Arc::new(config.sync.clone()),
            });
            poller.anchor_cursors().await?;
            supervisor.spawn_singleton("sync-poller", move |ctx| poller.clone().run(ctx));
        }
        {
            let backfill = Arc::new(raccordo_sync::backfill::Backfill {
                hubspot: hubspot.clone(),
                zoho: zoho.clone(),
                queue: stores.queue.clone(),
                mappings: stores.mappings.clone(),
                kv: stores.kv.clone(),
                config: Arc::new(config.sync.clone()),
                clock: clock.clone(),
            });
            let (wake, backfill_wake) = (wake.clone(), backfill_wake.clone());
            // Runs a started backfill to its end, and resumes one a restart interrupted.
            supervisor.spawn_singleton("sync-backfill", move |ctx| {
                let (backfill, wake, backfill_wake) =
                    (backfill.clone(), wake.clone(), backfill_wake.clone());
                async move {
                    loop {
                        let pause = tokio::select! {
                            r = backfill.run_pending(&wake) => match r {
                                Ok(_) => None,
                                // The CRM is waited for; the page is asked again.
                                Err(raccordo_sync::backfill::BackfillError::Crm(e)) => {
                                    tracing::warn!(error = %e, "backfill paused: a CRM call failed");
                                    Some(Duration::from_secs(10))
                                }
                                Err(e) => return Err(e.into()),
                            },
                            _ = ctx.cancelled() => return Ok(()),
                        };
                        if let Some(pause) = pause {
                            tokio::select! {
                                _ = tokio::time::sleep(pause) => continue,
                                _ = ctx.cancelled() => return Ok(()),
                            }
                        }
                        tokio::select! {
                            _ = backfill_wake.notified() => {}
                            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                            _ = ctx.cancelled() => return Ok(()),
                        }
                    }
                }
            });
        }
        let r = Arc::new(raccordo_sync::reconcile::Reconciler {
            hubspot: hubspot.clone(),
            zoho: zoho.clone(),
            mappings: stores.mappings.clone(),
            events: stores.query.clone(),
            config: Arc::new(config.sync.clone()),
        });
        reconciler = Some(r.clone());
        if !config.sync.reconcile_every.is_zero() {
            let (every, dir, clock, alerts) = (
                config.sync.reconcile_every,
                reports_dir.clone(),
                clock.clone(),
                alerts.clone(),
            );
            supervisor.spawn_singleton("sync-reconcile", move |ctx| {
                let (r, dir, clock, alerts) = (r.clone(), dir.clone(), clock.clone(), alerts.clone());
                async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(every) => {}
                            _ = ctx.cancelled() => return Ok(()),
                        }
                        let now = clock.now_ms();
                        let yesterday = raccordo_sync::reconcile::yesterday_start_ms(now);
                        let report = match r.run_for_day(now, yesterday).await {
                            Ok(report) => report,
                            // The next round tries again; the CRMs may be down for a while.
                            Err(e) => {
                                tracing::warn!(error = %e, "scheduled reconciliation failed");
                                continue;
                            }
                        };
                        let problems = report.problems();
                        metrics::gauge!("raccordo_sync_reconcile_problems").set(problems as f64);
                        let (_, html) = raccordo_sync::reconcile::write(&report, &dir)?;
                        if problems > 0 {
                            alerts
                                .raise(
                                    "sync_drift",
                                    "crm",
                                    format!("the integrity report found {problems} disagreement(s) between HubSpot and Zoho: {}", html.display()),
                                    every,
                                )
                                .await?;
                        }
                    }
                }
            });
        }
        if let Some(email) = &config.sync.digest.email {
            let channel = Arc::new(
                raccordo_notify::EmailChannel::new(email)
                    .map_err(|e| anyhow::anyhow!("sync.digest.email: {e}"))?,
            );
            let (queue, kv, clock) = (stores.queue.clone(), stores.kv.clone(), clock.clone());
            let (every, hub_url) = (config.sync.digest.every, crm.public_url.clone());
            supervisor.spawn_singleton("sync-digest", move |ctx| {
                let (queue, kv, clock, channel, hub_url) = (
                    queue.clone(),
                    kv.clone(),
                    clock.clone(),
                    channel.clone(),
                    hub_url.clone(),
                );
                async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(every) => {}
                            _ = ctx.cancelled() => return Ok(()),
                        }
                        match raccordo_sync::digest::send_once(
                            queue.as_ref(),
                            kv.as_ref(),
                            &channel,
                            hub_url.as_deref(),
                            clock.now_ms(),
                        )
                        .await
                        {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(failed = n, "sync failure digest sent"),
                            // The same failures go out with the next digest.
                            Err(e) => tracing::warn!(error = %e, "sync failure digest not sent"),
                        }
                    }
                }
            });
        }
        if let Some(public_url) = &crm.public_url {
            let notify_url = format!("{}/webhooks/zoho", public_url.trim_end_matches('/'));
            let (zoho, token, channel_id, clock) = (
                zoho.clone(),
                token.token().to_string(),
                *channel_id,
                clock.clone(),
            );
            supervisor.spawn_singleton("zoho-channel", move |ctx| {
                keep_channel(
                    zoho.clone(),
                    notify_url.clone(),
                    token.clone(),
                    channel_id,
                    clock.clone(),
                    ctx,
                )
            });
        } else {
            tracing::warn!(
                "no `crm.public_url`: Zoho notifications are not registered; changes there arrive through the poller only"
            );
        }
    }
    if !connectors.is_empty() {
        // A refused grant waits for a person: say so once an hour, instead of retrying.
        let watched: Vec<Arc<OAuthTokens>> = connectors.iter().map(|c| c.tokens.clone()).collect();
        supervisor.spawn("crm-grants", move |ctx| {
            let (watched, alerts) = (watched.clone(), alerts.clone());
            async move {
                loop {
                    for tokens in watched.iter().filter(|t| t.refused()) {
                        let system = tokens.system();
                        alerts
                            .raise(
                                "crm_grant_refused",
                                system,
                                format!("{system} refused raccordo's grant (revoked or expired): sync to and from {system} waits; reconnect with `raccordo connect {system}`"),
                                Duration::from_secs(3600),
                            )
                            .await?;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = ctx.cancelled() => return Ok(()),
                    }
                }
            }
        });
    }
    // Flows reach the CRMs through the same clients: one rate-limit budget, one token.
    let clients = CrmClients {
        hubspot: hubspot.as_ref().map(|(c, _)| c.clone()),
        zoho: zoho.as_ref().map(|(c, _, _)| c.clone()),
    };
    let intake = Some(CrmIntake {
        hubspot: hubspot.map(|(_, signature)| signature),
        zoho: zoho.map(|(_, token, _)| token),
        public_url: crm.public_url.clone(),
        mappings: stores.mappings.clone(),
        wake,
        stats,
        connectors,
        kv: stores.kv.clone(),
        backfill_wake,
        reconciler,
        reports_dir,
    });
    Ok((intake, clients))
}

/// What every OAuth grant is built with.
struct GrantContext {
    http: reqwest::Client,
    stores: Stores,
    sealer: Arc<Sealer>,
    clock: Arc<dyn Clock>,
}

/// One OAuth grant's token manager (storing the configured refresh token when no grant is
/// stored yet) and the connector `raccordo connect` uses to renew it.
async fn grant(
    grant: OAuthGrant,
    refresh_token: Option<&str>,
    authorize_url: &str,
    scopes: &[String],
    shared: &GrantContext,
) -> anyhow::Result<(Arc<OAuthTokens>, Arc<raccordo_crm::Connector>)> {
    let (system, client_id) = (grant.system, grant.client_id.clone());
    let tokens = OAuthTokens::new(
        grant,
        shared.http.clone(),
        shared.stores.secrets.clone(),
        shared.stores.rate_limits.clone(),
        shared.sealer.clone(),
        shared.clock.clone(),
    );
    if let Some(refresh) = refresh_token
        && !tokens.has_grant().await?
    {
        tokens.store_refresh_token(refresh).await?;
    }
    let tokens = Arc::new(tokens);
    let connector = Arc::new(raccordo_crm::Connector {
        system,
        authorize_url: authorize_url.to_string(),
        client_id,
        scopes: scopes.to_vec(),
        tokens: tokens.clone(),
    });
    Ok((tokens, connector))
}

/// Keeps the Zoho notification channel registered: at start, then daily, each time for a
/// week ahead (the longest Zoho allows; anything longer silently becomes one hour).
async fn keep_channel(
    zoho: Arc<ZohoClient>,
    notify_url: String,
    token: String,
    channel_id: i64,
    clock: Arc<dyn Clock>,
    ctx: raccordo_runtime::supervisor::TaskContext,
) -> anyhow::Result<()> {
    const WEEK_MS: i64 = 7 * 24 * 3_600_000;
    loop {
        let expiry = clock.now_ms() + WEEK_MS - 60_000;
        // Zoho being down is waited out here (the poller covers the gap): it must not make
        // the hub look unready.
        let next = match zoho.watch(channel_id, &notify_url, &token, expiry).await {
            Ok(()) => {
                tracing::info!(
                    channel_id,
                    "Zoho notification channel registered for a week"
                );
                Duration::from_secs(24 * 3600)
            }
            Err(e) => {
                tracing::warn!(error = %e, "registering the Zoho notification channel failed; retrying in 5 minutes");
                Duration::from_secs(300)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = ctx.cancelled() => return Ok(()),
        }
    }
}

/// Catches changes whose webhook or notification was lost: every `poll_every`, asks both
/// CRMs for records modified since the last poll and queues them (a record already in
/// sync costs a read and writes nothing).
struct Poller {
    hubspot: Arc<HubSpotClient>,
    zoho: Arc<ZohoClient>,
    stores: Stores,
    clock: Arc<dyn Clock>,
    wake: Arc<tokio::sync::Notify>,
    every: Duration,
    config: Arc<raccordo_sync::SyncConfig>,
}

impl Poller {
    async fn run(
        self: Arc<Self>,
        ctx: raccordo_runtime::supervisor::TaskContext,
    ) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = ctx.cancelled() => return Ok(()),
            }
            for kind in ObjectKind::ALL {
                for system in [System::HubSpot, System::Zoho] {
                    // A CRM that fails now is asked again at the next poll, from the same
                    // cursor: nothing is missed, and the hub stays ready meanwhile.
                    if let Err(e) = self.poll(kind, system).await {
                        tracing::warn!(error = %e, system = system.as_str(), kind = kind.as_str(), "poll failed");
                    }
                }
            }
        }
    }

    fn cursor_key(kind: ObjectKind, system: System) -> String {
        format!("sync:cursor:{}:{}", system.as_str(), kind.as_str())
    }

    /// Sets every missing cursor to now, at start, on every node: the first poll — on
    /// whichever node leads by then, perhaps after the first leader died without polling —
    /// looks back to when the sync first started, not merely one interval. (Copying what
    /// existed before that is `raccordo sync backfill`.) A cursor already set is left alone.
    async fn anchor_cursors(&self) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        for kind in ObjectKind::ALL {
            for system in [System::HubSpot, System::Zoho] {
                self.stores
                    .kv
                    .compare_and_swap(
                        &Self::cursor_key(kind, system),
                        None,
                        now.to_string().into_bytes(),
                        None,
                        now,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn poll(&self, kind: ObjectKind, system: System) -> anyhow::Result<()> {
        let key = Self::cursor_key(kind, system);
        let now = self.clock.now_ms();
        let since = match self.stores.kv.get(&key, now).await? {
            Some(v) => String::from_utf8_lossy(&v.value).parse().unwrap_or(now),
            None => now - self.every.as_millis() as i64,
        };
        let object = match kind {
            ObjectKind::Contact => &self.config.contacts,
            ObjectKind::Company => &self.config.companies,
        };
        let mut newest = since;
        let mut queued = 0usize;
        match system {
            System::HubSpot => {
                let properties: Vec<String> =
                    object.fields.iter().map(|f| f.hubspot.clone()).collect();
                let mut after: Option<String> = None;
                loop {
                    let (records, next) = self
                        .hubspot
                        .modified_since(kind, since, after.as_deref(), &properties)
                        .await?;
                    for r in &records {
                        newest = newest.max(r.modified_at_ms);
                        enqueue_change(
                            self.stores.queue.as_ref(),
                            self.stores.mappings.as_ref(),
                            kind,
                            system,
                            &r.id,
                            now,
                        )
                        .await?;
                        queued += 1;
                    }
                    match next {
                        Some(n) if !records.is_empty() => after = Some(n),
                        _ => break,
                    }
                }
            }
            System::Zoho => {
                let fields: Vec<String> = object.fields.iter().map(|f| f.zoho.clone()).collect();
                for page in 1u32.. {
                    let (records, more) =
                        self.zoho.modified_since(kind, since, page, &fields).await?;
                    for r in &records {
                        newest = newest.max(r.modified_at_ms);
                        enqueue_change(
                            self.stores.queue.as_ref(),
                            self.stores.mappings.as_ref(),
                            kind,
                            system,
                            &r.id,
                            now,
                        )
                        .await?;
                        queued += 1;
                    }
                    if !more || page >= 50 {
                        break;
                    }
                }
            }
        }
        self.stores
            .kv
            .put(&key, newest.to_string().into_bytes(), None, now)
            .await?;
        if queued > 0 {
            tracing::debug!(
                system = system.as_str(),
                kind = kind.as_str(),
                queued,
                "poller queued changes"
            );
            self.wake.notify_one();
        }
        Ok(())
    }
}
