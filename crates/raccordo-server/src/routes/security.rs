//! Addresses blocked after repeated authentication failures (`[ingest.auth_failures]`):
//! who is blocked now, and letting one back in; and the audit log of admin actions.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

use crate::extract::Admin;
use crate::problem::Problem;
use crate::state::AppState;

pub fn router() -> super::ApiRouter {
    super::ApiRouter::new()
        .routes(utoipa_axum::routes!(list_blocked))
        .routes(utoipa_axum::routes!(unblock))
        .routes(utoipa_axum::routes!(audit_log))
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// At most this many records (1–500, default 100).
    pub limit: Option<usize>,
    /// Records older than this id (the previous page's last `id`).
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub records: Vec<raccordo_core::AuditRecord>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The audit log, newest first: every change made with an admin token (by the token's name,
/// the route, the path and the status answered) and the hub's own certificate reloads.
/// Append-only: nothing here can be changed or removed.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "security",
    params(AuditQuery),
    responses((status = 200, description = "A page of audit records", body = AuditPage)),
    security(("admin_token" = []))
)]
pub async fn audit_log(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    crate::extract::ValidQuery(q): crate::extract::ValidQuery<AuditQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Problem::bad_parameter("limit", "between 1 and 500").into_response();
    }
    match state.audit.audit_records(q.cursor.as_deref(), limit).await {
        Ok(records) => {
            let next_cursor = (records.len() == limit)
                .then(|| records.last().map(|r| r.id.clone()))
                .flatten();
            Json(AuditPage {
                records,
                next_cursor,
            })
            .into_response()
        }
        Err(e) => {
            Problem::unavailable(format!("the audit log cannot be read: {e}")).into_response()
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BlockedList {
    pub blocked: Vec<raccordo_ingest::guard::Block>,
}

/// Addresses blocked now after repeated failed authentication (webhook credentials,
/// client certificates or admin tokens), soonest release first.
#[utoipa::path(
    get,
    path = "/api/v1/security/blocked",
    tag = "security",
    responses((status = 200, description = "The blocked addresses", body = BlockedList)),
    security(("admin_token" = []))
)]
pub async fn list_blocked(State(state): State<Arc<AppState>>, _admin: Admin) -> Response {
    Json(BlockedList {
        blocked: state.ingestor.guard().blocked(state.clock.now_ms()),
    })
    .into_response()
}

/// Lets a blocked address back in at once.
#[utoipa::path(
    delete,
    path = "/api/v1/security/blocked/{address}",
    tag = "security",
    params(("address" = String, Path, description = "An IPv4 or IPv6 address")),
    responses(
        (status = 204, description = "Unblocked"),
        (status = 400, description = "Not an address", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The address is not blocked", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn unblock(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(address): Path<String>,
) -> Response {
    let Ok(address) = address.parse::<std::net::IpAddr>() else {
        return Problem::bad_parameter("address", "an IPv4 or IPv6 address").into_response();
    };
    if state
        .ingestor
        .guard()
        .unblock(address, state.clock.now_ms())
    {
        tracing::info!(%address, "address unblocked by an admin");
        StatusCode::NO_CONTENT.into_response()
    } else {
        Problem::not_found("this address is not blocked").into_response()
    }
}
