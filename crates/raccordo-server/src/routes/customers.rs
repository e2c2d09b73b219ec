//! A data subject's rights (GDPR articles 15 and 17): the export of what the hub holds about
//! one customer, and its erasure from every store. Each store that holds personal data is a
//! [`PersonalData`] holder registered once (`AppState::personal_data`); these handlers only
//! walk them.
//!
//! The customer's id is in the path, so neither request is logged by path (requests are
//! logged by route) and their audit records name the customer by fingerprint only.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use raccordo_core::privacy::{Pseudonymiser, Subject};
use serde::Serialize;

use crate::audit::AuditSlot;
use crate::extract::{Admin, AdminNamed};
use crate::problem::Problem;
use crate::state::AppState;

pub fn router() -> super::ApiRouter {
    super::ApiRouter::new()
        .routes(utoipa_axum::routes!(erase_customer))
        .routes(utoipa_axum::routes!(export_customer))
}

/// What the hub keeps after an erasure, and why it is not personal data.
const KEPT: [(&str, &str); 3] = [
    (
        "window_results",
        "anonymous counts and sums per window and dimension, no customer ids",
    ),
    (
        "call_log",
        "outbound calls by endpoint template and status, never a body, an id or a query",
    ),
    (
        "audit_log",
        "the erasure's own record, naming the customer by fingerprint only",
    ),
];

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Erasure {
    /// SHA-256 of the id (first 16 bytes, hex): whoever knows the id can match it to this
    /// answer and to the audit record, which do not hold the id itself.
    pub customer_fingerprint: String,
    /// What was removed or pseudonymised, by store (0: held nothing, or already erased).
    pub erased: BTreeMap<String, u64>,
    /// What stays, and why it is not personal data.
    pub kept: BTreeMap<String, String>,
}

fn subject_of(id: &str) -> Result<Subject, Problem> {
    Subject::new(id).map_err(|e| Problem::bad_parameter("id", e.to_string()))
}

/// Erase a customer's personal data from every store: their events keep their counts and
/// values but the customer id and the personal fields (`[privacy] personal_fields`) become
/// pseudonyms, with their dedup claims dropped; refused requests, flow runs, AI answers, sync
/// snapshots and mappings, pending work and dead letters about them are deleted; window
/// results stay as anonymous counts. Idempotent: erasing again answers zeros.
#[utoipa::path(
    delete,
    path = "/api/v1/customers/{id}",
    tag = "privacy",
    params(("id" = String, Path, description = "The customer's id as the data names them: a customer id (`id_cliente`), an e-mail address")),
    responses(
        (status = 200, description = "What was erased, by store", body = Erasure),
        (status = 400, description = "The id is empty, too long or holds control characters", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A store could not be reached: nothing is lost, erase again", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn erase_customer(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    slot: Option<axum::Extension<AuditSlot>>,
    Path(id): Path<String>,
) -> Response {
    let subject = match subject_of(&id) {
        Ok(subject) => subject,
        Err(problem) => return problem.into_response(),
    };
    let fingerprint = subject.fingerprint();
    // One key for this erasure: every event of the customer gets the same pseudonym, and
    // the key is dropped when this handler returns.
    let pseudonymiser = Pseudonymiser::random();
    let mut erased = BTreeMap::new();
    let mut failed = None;
    for holder in &state.personal_data {
        match holder.erase(&subject, &pseudonymiser).await {
            Ok(changes) => {
                for (kind, n) in changes {
                    *erased.entry(kind.to_string()).or_insert(0) += n;
                    metrics::counter!("raccordo_erased_total", "store" => kind).increment(n);
                }
            }
            Err(e) => {
                tracing::error!(store = holder.name(), error = %e, "erasure failed; it can be run again");
                failed = Some((holder.name(), e));
                break;
            }
        }
    }
    if let Some(axum::Extension(slot)) = &slot {
        slot.describe(
            format!("customer:{fingerprint}"),
            serde_json::json!({ "erased": erased, "complete": failed.is_none() }),
        );
    }
    if let Some((store, e)) = failed {
        let mut problem = Problem::unavailable(format!(
            "the erasure stopped at `{store}`: {e}; what was erased before it stays erased, and erasing again finishes it"
        ));
        problem.retry_after_s = Some(e.retry_after_ms().map_or(5, |ms| ms.div_ceil(1000)));
        return problem.into_response();
    }
    tracing::info!(customer = %fingerprint, "customer erased");
    Json(Erasure {
        customer_fingerprint: fingerprint,
        erased,
        kept: KEPT
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
    .into_response()
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerExport {
    /// The id asked for.
    pub customer: String,
    /// When the export was made (RFC 3339).
    pub exported_at: String,
    /// What each store holds about the customer; stores holding nothing are left out.
    #[schema(value_type = Object)]
    pub data: BTreeMap<String, serde_json::Value>,
}

/// Export what the hub holds about a customer (a data subject access request): their stored
/// events, refused requests, flow runs, AI answers and sync snapshots, as JSON. Audited.
#[utoipa::path(
    get,
    path = "/api/v1/customers/{id}/export",
    tag = "privacy",
    params(("id" = String, Path, description = "The customer's id as the data names them")),
    responses(
        (status = 200, description = "Everything held about the customer", body = CustomerExport),
        (status = 400, description = "The id is empty, too long or holds control characters", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A store could not be read", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn export_customer(
    State(state): State<Arc<AppState>>,
    AdminNamed(actor): AdminNamed,
    Path(id): Path<String>,
) -> Response {
    let subject = match subject_of(&id) {
        Ok(subject) => subject,
        Err(problem) => return problem.into_response(),
    };
    let mut data = BTreeMap::new();
    let mut status = 200;
    let mut failure = None;
    for holder in &state.personal_data {
        match holder.export(&subject).await {
            Ok(Some(value)) => {
                data.insert(holder.name().to_string(), value);
            }
            Ok(None) => {}
            Err(e) => {
                status = 503;
                failure = Some(Problem::unavailable(format!(
                    "`{}` could not be read: {e}",
                    holder.name()
                )));
                break;
            }
        }
    }
    // Reads are not audited by the middleware; a data export is.
    crate::audit::append(
        &state,
        &actor,
        "GET /api/v1/customers/{id}/export".into(),
        format!("customer:{}", subject.fingerprint()),
        status,
        serde_json::json!({ "stores": data.keys().collect::<Vec<_>>() }),
    )
    .await;
    if let Some(problem) = failure {
        return problem.into_response();
    }
    Json(CustomerExport {
        customer: subject.id().to_string(),
        exported_at: raccordo_core::rfc3339(state.clock.now_ms()),
        data,
    })
    .into_response()
}
