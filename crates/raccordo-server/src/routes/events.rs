//! Reading stored events.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::extract::{Reader, ValidQuery, time_param};
use crate::problem::Problem;
use crate::state::AppState;
use raccordo_core::{EventFilter, SourceName};

pub fn router() -> super::ApiRouter {
    super::ApiRouter::new().routes(utoipa_axum::routes!(list_events))
}

/// One page of stored events.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventsPage {
    pub events: Vec<raccordo_core::StoredEvent>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /api/v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of this source.
    source: Option<String>,
    /// Payload field `evento` equals this.
    evento: Option<String>,
    canale: Option<String>,
    stato: Option<String>,
    id_cliente: Option<String>,
    /// Event time lower bound (RFC 3339, inclusive).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Event time upper bound (RFC 3339, exclusive).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Events per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The stored events in log order, filtered, with cursor paging (business-key duplicates
/// are left out).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(EventsQuery),
    responses((status = 200, description = "A page of events", body = EventsPage)),
    security(("admin_token" = []))
)]
pub async fn list_events(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ValidQuery(q): ValidQuery<EventsQuery>,
) -> Response {
    let filter = match events_filter(q) {
        Ok(f) => f,
        Err(p) => return p.into_response(),
    };
    match state.events.read(filter).await {
        Ok(page) => Json(EventsPage {
            events: page.events,
            next_cursor: page.next_after_seq.map(|s| s.to_string()),
        })
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading events failed");
            Problem::unavailable("reading the event log failed").into_response()
        }
    }
}

fn events_filter(q: EventsQuery) -> Result<EventFilter, Problem> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::bad_parameter(
            "limit",
            "must be between 1 and 1000",
        ));
    }
    let after_seq = q
        .cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| Problem::bad_parameter("cursor", "not a cursor returned by this API"))
        })
        .transpose()?;
    let source = q
        .source
        .map(|s| SourceName::new(s).map_err(|e| Problem::bad_parameter("source", e.to_string())))
        .transpose()?;
    let mut fields = Vec::new();
    for (name, value) in [
        ("evento", q.evento),
        ("canale", q.canale),
        ("stato", q.stato),
        ("id_cliente", q.id_cliente),
    ] {
        if let Some(value) = value {
            fields.push((name.to_string(), value));
        }
    }
    Ok(EventFilter {
        after_seq,
        source,
        fields,
        event_time_from_ms: time_param("from", q.from.as_deref())?,
        event_time_to_ms: time_param("to", q.to.as_deref())?,
        limit,
    })
}
