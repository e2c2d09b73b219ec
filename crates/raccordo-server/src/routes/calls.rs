//! The call log: per integration (CRM, model, http step, channel) the error rate and latency
//! percentiles of its recent calls, and the calls themselves — never bodies or secrets.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use raccordo_core::calls::{OutboundCall, ServiceCalls};
use serde::Deserialize;

use crate::extract::{Reader, ValidQuery};
use crate::state::AppState;

pub fn router() -> super::ApiRouter {
    super::ApiRouter::new().routes(utoipa_axum::routes!(list_calls))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CallsPage {
    /// Per integration, by name.
    pub services: Vec<ServiceCalls>,
    /// The newest calls first.
    pub calls: Vec<OutboundCall>,
}

/// Query of `GET /api/v1/calls`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CallsQuery {
    /// Only this integration's calls (`hubspot`, `zoho`, `ai:<provider>`, `http:<host>`,
    /// `notify:<kind>`).
    service: Option<String>,
    /// How many recent calls, 0-1000 (default 100).
    limit: Option<usize>,
}

/// Outbound calls: each integration's error rate and latency percentiles over its last
/// 1000 calls, and the newest calls with service, endpoint template, status, latency,
/// attempt and error.
#[utoipa::path(
    get,
    path = "/api/v1/calls",
    tag = "operations",
    params(CallsQuery),
    responses((status = 200, description = "The call log", body = CallsPage)),
    security(("admin_token" = []))
)]
pub async fn list_calls(
    State(_state): State<Arc<AppState>>,
    _reader: Reader,
    ValidQuery(q): ValidQuery<CallsQuery>,
) -> Response {
    let log = raccordo_core::calls::global();
    Json(CallsPage {
        services: log.summary(),
        calls: log.recent(q.service.as_deref(), q.limit.unwrap_or(100).min(1000)),
    })
    .into_response()
}
