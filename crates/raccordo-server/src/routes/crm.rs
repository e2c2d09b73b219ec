//! CRM change notifications: `POST /webhooks/hubspot` (signed by the HubSpot app) and
//! `POST /webhooks/zoho` (the channel token raccordo registered). Thin: verify, read the
//! notification strictly, put one sync item per changed record on the durable queue,
//! answer. The answer comes well within HubSpot's timeout: nothing here calls a CRM.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use raccordo_ingest::{FieldError, IngestError};
use raccordo_sync::intake::{self, BodyError, Change};
use raccordo_sync::jobs::{apply_hubspot_merge, enqueue_change};

use crate::body::read_body;
use crate::extract::{Admin, Reader, ValidQuery};
use crate::problem::Problem;
use crate::state::{AppState, CrmIntake};

pub fn router() -> super::ApiRouter {
    super::ApiRouter::new()
        .routes(utoipa_axum::routes!(hubspot_webhook))
        .routes(utoipa_axum::routes!(zoho_webhook))
        .routes(utoipa_axum::routes!(sync_health))
        .routes(utoipa_axum::routes!(start_backfill, backfill_progress))
        .routes(utoipa_axum::routes!(reconcile))
        .routes(utoipa_axum::routes!(authorize_url))
        .routes(utoipa_axum::routes!(store_grant))
        .routes(utoipa_axum::routes!(record_state))
}

/// One record's place in the sync.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RecordState {
    pub system: String,
    pub object: String,
    pub id: String,
    /// The linked record in the other CRM, when the sync has linked one.
    pub linked: Option<RecordLink>,
    /// Failed sync operations of this record (the dead-letter queue), oldest first.
    pub failures: Vec<raccordo_core::DeadLetter>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RecordLink {
    pub system: String,
    pub id: String,
}

/// A record's sync state: which record it is linked to in the other CRM, and its failed
/// sync operations with their reasons.
#[utoipa::path(
    get,
    path = "/api/v1/sync/records/{system}/{object}/{id}",
    tag = "crm",
    params(
        ("system" = String, Path, description = "`hubspot` or `zoho`"),
        ("object" = String, Path, description = "`contact` or `company`"),
        ("id" = String, Path, description = "The record's id in that CRM"),
    ),
    responses(
        (status = 200, description = "The record's sync state", body = RecordState),
        (status = 404, description = "Unknown system or object, or no CRM configured", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn record_state(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    axum::extract::Path((system, object, id)): axum::extract::Path<(String, String, String)>,
) -> Response {
    use raccordo_core::crm::{ObjectKind, System};
    let Some(crm) = state.crm.as_ref() else {
        return not_configured("No CRM");
    };
    let system = match system.as_str() {
        "hubspot" => System::HubSpot,
        "zoho" => System::Zoho,
        _ => return Problem::not_found("the system is `hubspot` or `zoho`").into_response(),
    };
    let kind = match object.as_str() {
        "contact" => ObjectKind::Contact,
        "company" => ObjectKind::Company,
        _ => return Problem::not_found("the object is `contact` or `company`").into_response(),
    };
    let reference = raccordo_sync::jobs::record_ref(system, kind, &id);
    let linked = match crm.mappings.find(&reference, system.other().as_str()).await {
        Ok(linked) => linked,
        Err(e) => {
            tracing::error!(error = %e, "reading the id mapping failed");
            return Problem::unavailable("reading the id mapping failed").into_response();
        }
    };
    // Sync work is grouped by the HubSpot id of the pair (the Zoho id before a link).
    let mut groups = vec![raccordo_sync::jobs::pair_group(kind, system, &id)];
    if let Some(other) = &linked {
        groups.push(raccordo_sync::jobs::pair_group(kind, system.other(), other));
    }
    let mut failures = Vec::new();
    let mut after = None;
    loop {
        let page = match state
            .queue
            .dead_letters(Some(raccordo_sync::jobs::QUEUE), after, 1000)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(error = %e, "reading the dead-letter queue failed");
                return Problem::unavailable("reading the dead-letter queue failed")
                    .into_response();
            }
        };
        after = page.last().map(|d| d.id);
        let done = page.len() < 1000;
        failures.extend(page.into_iter().filter(|d| groups.contains(&d.group_key)));
        if done {
            break;
        }
    }
    Json(RecordState {
        system: system.as_str().into(),
        object: kind.as_str().into(),
        linked: linked.map(|id| RecordLink {
            system: system.other().as_str().into(),
            id,
        }),
        id,
        failures,
    })
    .into_response()
}

fn connector(state: &AppState, system: &str) -> Option<Arc<raccordo_crm::Connector>> {
    state
        .crm
        .as_ref()?
        .connectors
        .iter()
        .find(|c| c.system == system)
        .cloned()
}

/// Query of `GET /api/v1/crm/{system}/authorize-url`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuthorizeQuery {
    /// Where the CRM sends the browser back with the code (`raccordo connect`'s local
    /// callback).
    redirect_uri: String,
    /// An unguessable value the callback must see again.
    state: String,
    /// The PKCE challenge (S256), for CRMs that take it.
    code_challenge: Option<String>,
}

/// The consent page a browser opens to give raccordo a grant (`raccordo connect`).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AuthorizeAnswer {
    pub url: String,
    /// Whether the CRM takes PKCE (then send the verifier with the code).
    pub pkce: bool,
}

/// The authorization URL for a new grant (`raccordo connect hubspot|zoho` uses it).
#[utoipa::path(
    get,
    path = "/api/v1/crm/{system}/authorize-url",
    tag = "crm",
    params(("system" = String, Path, description = "`hubspot` or `zoho`"), AuthorizeQuery),
    responses(
        (status = 200, description = "The consent page URL", body = AuthorizeAnswer),
        (status = 404, description = "No OAuth client for that CRM", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn authorize_url(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    axum::extract::Path(system): axum::extract::Path<String>,
    ValidQuery(q): ValidQuery<AuthorizeQuery>,
) -> Response {
    let Some(connector) = connector(&state, &system) else {
        return not_configured("An OAuth client for that CRM");
    };
    if !(q.redirect_uri.starts_with("http://") || q.redirect_uri.starts_with("https://")) {
        return Problem::bad_parameter("redirect_uri", "must be an http(s) URL").into_response();
    }
    if q.state.len() < 16 {
        return Problem::bad_parameter("state", "must be at least 16 characters").into_response();
    }
    Json(AuthorizeAnswer {
        url: connector.authorize_url(&q.redirect_uri, &q.state, q.code_challenge.as_deref()),
        pkce: connector.uses_pkce(),
    })
    .into_response()
}

/// An authorization code to exchange for a grant.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub code: String,
    /// The same `redirect_uri` the authorization used.
    pub redirect_uri: String,
    /// The PKCE verifier, when the authorization sent a challenge.
    pub code_verifier: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct GrantStored {
    pub system: String,
    pub connected: bool,
}

/// Exchange an authorization code and store the grant, sealed (`raccordo connect`).
#[utoipa::path(
    post,
    path = "/api/v1/crm/{system}/grant",
    tag = "crm",
    params(("system" = String, Path, description = "`hubspot` or `zoho`")),
    request_body = GrantRequest,
    responses(
        (status = 200, description = "The grant is stored", body = GrantStored),
        (status = 400, description = "The CRM refused the code", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No OAuth client for that CRM", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn store_grant(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    axum::extract::Path(system): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(connector) = connector(&state, &system) else {
        return not_configured("An OAuth client for that CRM");
    };
    let body = match read_body(&headers, body, 64 * 1024).await {
        Ok(body) => body,
        Err(e) => return Problem::from(e).into_response(),
    };
    let request: GrantRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return invalid(vec![(
                String::new(),
                format!(
                    "expected {{code, redirect_uri, code_verifier?}}: {}",
                    e.classify_text()
                ),
            )]);
        }
    };
    match connector
        .exchange(
            &request.code,
            &request.redirect_uri,
            request.code_verifier.as_deref(),
        )
        .await
    {
        Ok(()) => Json(GrantStored {
            system,
            connected: true,
        })
        .into_response(),
        Err(e) if e.is_retryable() => {
            Problem::unavailable(format!("the CRM could not be reached: {e}")).into_response()
        }
        Err(e) => {
            Problem::new(400, "grant-refused", "Grant refused", e.to_string()).into_response()
        }
    }
}

/// A serde error's category, without the input it quotes.
trait ClassifyText {
    fn classify_text(&self) -> &'static str;
}

impl ClassifyText for serde_json::Error {
    fn classify_text(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "the body could not be read",
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "the body is not valid JSON"
            }
            serde_json::error::Category::Data => "a field is missing, unknown or of the wrong type",
        }
    }
}

/// How the HubSpot ↔ Zoho sync is doing.
///
/// Pairs in sync by kind, the `sync` queue (waiting, in flight, retrying, dead letters),
/// failures grouped by reason, and since the hub started: the decisions taken (written, in
/// sync, not hot, failed), the change-to-sync delay (p50, p99, max) and the CRM clients'
/// calls by outcome with the limits the CRMs last said remain.
#[utoipa::path(
    get,
    path = "/api/v1/sync/health",
    tag = "crm",
    responses(
        (status = 200, description = "The sync's state", body = raccordo_sync::health::SyncHealth),
        (status = 404, description = "The sync is not configured", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn sync_health(State(state): State<Arc<AppState>>, _reader: Reader) -> Response {
    let Some((crm, stats)) = state.crm.as_ref().and_then(|c| Some((c, c.stats.clone()?))) else {
        return not_configured("The HubSpot ↔ Zoho sync");
    };
    let now = state.clock.now_ms();
    let unavailable = |e: raccordo_core::StoreError| {
        tracing::error!(error = %e, "reading the sync state failed");
        Problem::unavailable("reading the sync state failed").into_response()
    };
    let mut pairs = std::collections::BTreeMap::new();
    for kind in raccordo_core::crm::ObjectKind::ALL {
        match crm.mappings.count("hubspot", kind.as_str(), "zoho").await {
            Ok(n) => {
                pairs.insert(kind.as_str().to_string(), n);
            }
            Err(e) => return unavailable(e),
        }
    }
    let queue = match state.queue.depth(raccordo_sync::jobs::QUEUE, now).await {
        Ok(q) => q,
        Err(e) => return unavailable(e),
    };
    // The reasons of (at most) the last thousand failures.
    let after = queue.dead_letters.saturating_sub(1000);
    let letters = match state
        .queue
        .dead_letters(Some(raccordo_sync::jobs::QUEUE), None, 100_000)
        .await
    {
        Ok(l) => l,
        Err(e) => return unavailable(e),
    };
    let failures = raccordo_sync::health::failure_reasons(
        letters
            .iter()
            .skip(after as usize)
            .map(|l| l.last_error.as_str()),
    );
    Json(raccordo_sync::health::SyncHealth {
        pairs,
        queue,
        failures,
        activity: stats.snapshot(),
    })
    .into_response()
}

/// What a CRM notification is answered.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CrmIntakeAnswer {
    /// Records queued for sync (repeated notifications of a pending record fold into it).
    pub queued: usize,
    /// Events about objects raccordo does not sync (deals, tickets, other modules).
    pub ignored: usize,
}

#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documents the answers; handlers build them as `Response`s
pub enum CrmResponses {
    /// Queued for sync
    #[response(status = 200)]
    Queued(CrmIntakeAnswer),
    /// The signature or token is missing or wrong
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// The CRM is not connected on this hub
    #[response(status = 404, content_type = "application/problem+json")]
    NotConfigured(Problem),
    /// The notification is malformed; `errors` names each field by pointer
    #[response(status = 422, content_type = "application/problem+json")]
    Invalid(Problem),
}

fn not_configured(what: &str) -> Response {
    Problem::new(
        404,
        "not-configured",
        "Not configured",
        format!("{what} is not connected on this hub (see `[sync]` in the configuration)"),
    )
    .into_response()
}

fn invalid(errors: Vec<BodyError>) -> Response {
    Problem::from(IngestError::Validation {
        total: errors.len(),
        errors: errors
            .into_iter()
            .map(|(pointer, detail)| FieldError::new(pointer, detail))
            .collect(),
    })
    .into_response()
}

async fn queue_changes(
    state: &AppState,
    crm: &CrmIntake,
    changes: &[Change],
    ignored: usize,
) -> Response {
    let now = state.clock.now_ms();
    for change in changes {
        let queued = if change.merged.is_empty() {
            enqueue_change(
                state.queue.as_ref(),
                crm.mappings.as_ref(),
                change.kind,
                change.origin,
                &change.id,
                now,
            )
            .await
            .map(|_| ())
        } else {
            apply_hubspot_merge(
                state.queue.as_ref(),
                crm.mappings.as_ref(),
                change.kind,
                &change.id,
                &change.merged,
                now,
            )
            .await
        };
        if let Err(e) = queued {
            tracing::warn!(error = %e, "could not queue a CRM change");
            let mut p = Problem::unavailable(
                "the work queue cannot take the change now; the CRM will retry",
            );
            p.retry_after_s = Some(e.retry_after_ms().map_or(5, |ms| ms.div_ceil(1000).max(1)));
            return p.into_response();
        }
    }
    if let Some(flows) = &state.flows {
        for change in changes {
            if let Err(e) = flows
                .crm_changed(change.origin, change.kind, &change.id, now)
                .await
            {
                tracing::warn!(error = %e, "could not start the flows of a CRM change");
                let mut p = Problem::unavailable(
                    "the flows cannot take the change now; the CRM will retry",
                );
                p.retry_after_s = Some(5);
                return p.into_response();
            }
        }
    }
    metrics::counter!("raccordo_crm_changes_total", "origin" => changes.first().map_or("none", |c| c.origin.as_str())).increment(changes.len() as u64);
    crm.wake.notify_one();
    (
        StatusCode::OK,
        Json(CrmIntakeAnswer {
            queued: changes.len(),
            ignored,
        }),
    )
        .into_response()
}

/// HubSpot webhook events (a JSON array, up to 100 per request).
///
/// Verified with the app's v3 signature (`X-HubSpot-Signature-v3` over method, full URL,
/// body and `X-HubSpot-Request-Timestamp`, at most 5 minutes old), or v1/v2 for older apps.
/// Each contact or company event queues a sync of that record; a merge moves the merged
/// records' id mappings to the survivor.
#[utoipa::path(
    post,
    path = "/webhooks/hubspot",
    tag = "crm",
    request_body(content_type = "application/json", description = "HubSpot's array of webhook events"),
    responses(CrmResponses),
    security(("hubspot_signature" = []))
)]
pub async fn hubspot_webhook(
    State(state): State<Arc<AppState>>,
    uri: http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(crm) = state.crm.as_ref() else {
        return not_configured("HubSpot");
    };
    let Some(signature) = crm.hubspot.as_ref() else {
        return not_configured("HubSpot");
    };
    let body = match read_body(&headers, body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return Problem::from(e).into_response(),
    };
    let path = uri
        .path_and_query()
        .map_or("/webhooks/hubspot", |p| p.as_str());
    let full_url = match &crm.public_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => {
            let host = headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}{path}")
        }
    };
    if let Err(e) = signature.verify("POST", &full_url, &headers, &body, state.clock.now_ms()) {
        metrics::counter!("raccordo_crm_rejected_total", "origin" => "hubspot").increment(1);
        return Problem::from(e).into_response();
    }
    match intake::hubspot_events(&body) {
        Ok((changes, ignored)) => queue_changes(&state, crm, &changes, ignored).await,
        Err(errors) => invalid(errors),
    }
}

/// Zoho CRM notifications (from the channel raccordo registers and renews).
///
/// Checked by the channel `token` echoed in the body. Each id of `Contacts` or `Accounts`
/// queues a sync of that record.
#[utoipa::path(
    post,
    path = "/webhooks/zoho",
    tag = "crm",
    request_body(content_type = "application/json", description = "A Zoho notification: `module`, `ids`, `operation`, `token`"),
    responses(CrmResponses),
    security(())
)]
pub async fn zoho_webhook(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(crm) = state.crm.as_ref() else {
        return not_configured("Zoho CRM");
    };
    let Some(token) = crm.zoho.as_ref() else {
        return not_configured("Zoho CRM");
    };
    let body = match read_body(&headers, body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return Problem::from(e).into_response(),
    };
    let notification = match intake::zoho_notification(&body) {
        Ok(n) => n,
        // A malformed body cannot be told from a forged one: answer 401 when the token is
        // not there to check, so no one learns the schema without the token.
        Err(errors) => {
            return if serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["token"].as_str().map(|t| token.verify(Some(t)).is_ok()))
                .unwrap_or(false)
            {
                invalid(errors)
            } else {
                Problem::from(IngestError::InvalidCredentials {
                    reason: "the channel `token` is missing or wrong".into(),
                })
                .into_response()
            };
        }
    };
    if let Err(e) = token.verify(notification.token.as_deref()) {
        metrics::counter!("raccordo_crm_rejected_total", "origin" => "zoho").increment(1);
        return Problem::from(e).into_response();
    }
    queue_changes(&state, crm, &notification.changes, 0).await
}

/// A backfill's progress and the sync queue it fills.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BackfillAnswer {
    /// `None` before the first backfill.
    pub backfill: Option<raccordo_sync::backfill::BackfillState>,
    pub queue: raccordo_core::QueueDepth,
}

async fn backfill_answer(state: &AppState, crm: &CrmIntake, status: StatusCode) -> Response {
    let now = state.clock.now_ms();
    let backfill = match raccordo_sync::backfill::load(crm.kv.as_ref(), now).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "reading the backfill state failed");
            return Problem::unavailable("reading the backfill state failed").into_response();
        }
    };
    match state.queue.depth(raccordo_sync::jobs::QUEUE, now).await {
        Ok(queue) => (status, Json(BackfillAnswer { backfill, queue })).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading the queue depth failed");
            Problem::unavailable("reading the queue depth failed").into_response()
        }
    }
}

/// Start a backfill: every contact and company of both CRMs is queued for sync.
///
/// Resumes the running one instead when one is unfinished. `raccordo sync backfill` calls this
/// and shows the progress.
#[utoipa::path(
    post,
    path = "/api/v1/sync/backfill",
    tag = "crm",
    responses(
        (status = 202, description = "Started (or already running)", body = BackfillAnswer),
        (status = 404, description = "The sync is not configured", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn start_backfill(State(state): State<Arc<AppState>>, _admin: Admin) -> Response {
    let Some(crm) = state.crm.as_ref().filter(|c| c.stats.is_some()) else {
        return not_configured("The HubSpot ↔ Zoho sync");
    };
    if let Err(e) = raccordo_sync::backfill::start(crm.kv.as_ref(), state.clock.now_ms()).await {
        tracing::error!(error = %e, "starting a backfill failed");
        return Problem::unavailable("starting the backfill failed").into_response();
    }
    crm.backfill_wake.notify_one();
    backfill_answer(&state, crm, StatusCode::ACCEPTED).await
}

/// The backfill's progress: records queued per list, and the sync queue draining.
#[utoipa::path(
    get,
    path = "/api/v1/sync/backfill",
    tag = "crm",
    responses(
        (status = 200, description = "Progress", body = BackfillAnswer),
        (status = 404, description = "The sync is not configured", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn backfill_progress(State(state): State<Arc<AppState>>, _reader: Reader) -> Response {
    let Some(crm) = state.crm.as_ref().filter(|c| c.stats.is_some()) else {
        return not_configured("The HubSpot ↔ Zoho sync");
    };
    backfill_answer(&state, crm, StatusCode::OK).await
}

/// An integrity report and where the hub wrote it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ReconcileAnswer {
    pub report: raccordo_sync::reconcile::Report,
    /// Problems found (0: the CRMs agree).
    pub problems: u64,
    pub json_path: String,
    pub html_path: String,
}

/// Query of `POST /api/v1/sync/reconcile`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReconcileQuery {
    /// The UTC day whose conversions are checked, `YYYY-MM-DD` (default: yesterday).
    day: Option<String>,
}

/// Compare both CRMs now and write the integrity report (`raccordo reconcile`).
///
/// Reads every contact and company on both sides; lists pairs whose mapped fields differ
/// (field names and checksums, never values), records missing on one side, matching
/// records not yet linked, and links to records that are gone.
#[utoipa::path(
    post,
    path = "/api/v1/sync/reconcile",
    tag = "crm",
    params(ReconcileQuery),
    responses(
        (status = 200, description = "The report", body = ReconcileAnswer),
        (status = 404, description = "The sync is not configured", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn reconcile(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    ValidQuery(q): ValidQuery<ReconcileQuery>,
) -> Response {
    let Some((crm, reconciler)) = state
        .crm
        .as_ref()
        .and_then(|c| Some((c, c.reconciler.clone()?)))
    else {
        return not_configured("The HubSpot ↔ Zoho sync");
    };
    let now = state.clock.now_ms();
    let day = match q.day.as_deref() {
        None => raccordo_sync::reconcile::yesterday_start_ms(now),
        Some(text) => match raccordo_sync::reconcile::day_start_ms(text) {
            Some(ms) => ms,
            None => {
                return Problem::bad_parameter("day", "a UTC day as YYYY-MM-DD").into_response();
            }
        },
    };
    let report = match reconciler.run_for_day(now, day).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "reconciliation failed");
            return Problem::unavailable(format!("reading the CRMs failed: {e}")).into_response();
        }
    };
    match raccordo_sync::reconcile::write(&report, &crm.reports_dir) {
        Ok((json_path, html_path)) => Json(ReconcileAnswer {
            problems: report.problems(),
            report,
            json_path: json_path.display().to_string(),
            html_path: html_path.display().to_string(),
        })
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "writing the integrity report failed");
            Problem::unavailable("writing the integrity report failed").into_response()
        }
    }
}
