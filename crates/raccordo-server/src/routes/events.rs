//! Reading stored events.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::extract::{Reader, ValidQuery, time_param};
use crate::problem::Problem;
use crate::state::AppState;
use raccordo_core::{EventFilter, SourceName};

pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/api/v1/events", get(list_events))
}

/// Query of `GET /api/v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    source: Option<String>,
    evento: Option<String>,
    canale: Option<String>,
    stato: Option<String>,
    id_cliente: Option<String>,
    /// Event time lower bound (RFC 3339, inclusive).
    from: Option<String>,
    /// Event time upper bound (RFC 3339, exclusive).
    to: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /api/v1/events`: the stored events in log order, filtered, with cursor paging.
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
        Ok(page) => Json(json!({
            "events": page.events,
            "next_cursor": page.next_after_seq.map(|s| s.to_string()),
        }))
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
