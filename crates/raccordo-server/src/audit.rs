//! The audit trail of admin actions: every request that changes something (`POST`, `PUT`,
//! `PATCH`, `DELETE`) and passed with an `admin`-scope token is appended to the audit log
//! once answered — who (the token's name, never the token), what route, on what path, and
//! the status. Handlers write nothing themselves: a new admin route is audited by being one.

use std::sync::{Arc, OnceLock};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use raccordo_core::AuditRecord;

use crate::state::AppState;

/// Carried by a request while it is handled; the admin extractor signs it with the token's
/// name.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(Arc<Slot>);

#[derive(Debug, Default)]
struct Slot {
    actor: OnceLock<String>,
    /// Set by a handler whose path holds personal data (a customer's id): the record names
    /// the target this way instead.
    target: OnceLock<String>,
    detail: OnceLock<serde_json::Value>,
}

impl AuditSlot {
    pub fn sign(&self, actor: &str) {
        let _ = self.0.actor.set(actor.to_string());
    }

    /// The record's target and detail, in place of the path and `{}`.
    pub fn describe(&self, target: String, detail: serde_json::Value) {
        let _ = self.0.target.set(target);
        let _ = self.0.detail.set(detail);
    }
}

/// Appends an audit record for an admin action, under `actor`; a store failure is logged
/// (the action itself already happened).
pub async fn append(
    state: &AppState,
    actor: &str,
    action: String,
    target: String,
    status: u16,
    detail: serde_json::Value,
) {
    let record = AuditRecord {
        id: format!("aud_{}", ulid::Ulid::new()),
        at_ms: state.clock.now_ms(),
        actor: actor.to_string(),
        action,
        target,
        status,
        detail,
    };
    if let Err(e) = state.audit.append_audit(&record).await {
        metrics::counter!("raccordo_audit_failures_total").increment(1);
        tracing::error!(error = %e, action = %record.action, actor = %record.actor, "audit record not written");
    }
}

/// The middleware: audits mutating requests that an admin token passed.
pub async fn record(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    use http::Method;
    // Admin tokens come as `Authorization: Bearer`; webhook senders signing or sending an API
    // key pass straight through, with nothing added on the ingest path.
    let bearer = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| {
            v.as_bytes().len() > 7 && v.as_bytes()[..7].eq_ignore_ascii_case(b"bearer ")
        });
    if !bearer
        || !matches!(
            *request.method(),
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        )
    {
        return next.run(request).await;
    }
    let slot = AuditSlot::default();
    request.extensions_mut().insert(slot.clone());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let method = request.method().clone();
    // The path names the object (a run, a request, an address); the query is left out, as
    // it may carry values.
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    if let Some(actor) = slot.0.actor.get() {
        append(
            &state,
            actor,
            format!("{method} {route}"),
            slot.0.target.get().cloned().unwrap_or(path),
            response.status().as_u16(),
            slot.0
                .detail
                .get()
                .cloned()
                .unwrap_or_else(|| serde_json::json!({})),
        )
        .await;
    }
    response
}
