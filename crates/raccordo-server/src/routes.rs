//! HTTP handlers: thin, each one reads its input, calls the core, and maps the outcome.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use raccordo_core::{EventFilter, SourceName};
use raccordo_ingest::{IngestError, Target};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::extract::{Admin, Reader, ValidQuery, time_param};
use crate::problem::Problem;

/// `POST /api/v1/eventi/conversione`
pub async fn ingest_conversion(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(&state, Target::Conversion, headers, body).await
}

/// `POST /webhooks/in/{source}`
pub async fn ingest_source(
    State(state): State<Arc<AppState>>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(&state, Target::Source(&source), headers, body).await
}

async fn ingest(state: &AppState, target: Target<'_>, headers: HeaderMap, body: Body) -> Response {
    let _in_flight = InFlight::enter();
    if state.shutting_down.load(Ordering::Relaxed) {
        return Problem::unavailable("the server is shutting down").into_response();
    }
    let body = match read_body(&headers, body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return Problem::from(e).into_response(),
    };
    match state.ingestor.ingest(target, &headers, body).await {
        Ok(response) => {
            let duplicates = response.items.iter().filter(|i| i.is_duplicate()).count();
            let now = state.clock.now_ms();
            if duplicates > 0 {
                state
                    .alerts
                    .observe_duplicates(response.source.as_str(), duplicates, now)
                    .await;
            }
            state
                .alerts
                .observe_clock_skew(response.source.as_str(), response.clock_skew_ms, now)
                .await;
            if response.single {
                (StatusCode::ACCEPTED, Json(response.items[0])).into_response()
            } else {
                (StatusCode::ACCEPTED, Json(response.items)).into_response()
            }
        }
        Err(e) => Problem::from(e).into_response(),
    }
}

/// Counts ingest requests being processed (`raccordo_ingest_in_flight_requests`).
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!("raccordo_ingest_in_flight_requests").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("raccordo_ingest_in_flight_requests").decrement(1.0);
    }
}

/// Reads the body up to `limit` bytes; a declared or actual larger body is a 413.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngestError::BodyTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util_limited::LengthLimitError>());
        if too_large || e.to_string().contains("length limit") {
            IngestError::BodyTooLarge { limit }
        } else {
            IngestError::InvalidJson {
                detail: "the body could not be read completely".into(),
            }
        }
    })
}

mod http_body_util_limited {
    /// axum wraps http-body-util's error; matching by type keeps us off its private paths.
    pub type LengthLimitError = axum::extract::rejection::LengthLimitError;
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
    match state.ingestor.log().read(filter).await {
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

/// Query of `GET /api/v1/metrics`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    /// Windows ending after this (RFC 3339); default: 6 hours ago.
    from: Option<String>,
    /// Windows starting before this (RFC 3339); default: now + 1 hour.
    to: Option<String>,
    /// `all`, `canale`, `evento` or `campagna`.
    dimension: Option<String>,
    /// Only this value of the dimension (e.g. `email`).
    value: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// `GET /api/v1/metrics`: event-time window aggregates, provisional and final.
pub async fn metrics_api(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ValidQuery(q): ValidQuery<MetricsQuery>,
) -> Response {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let (from, to) = match (
        time_param("from", q.from.as_deref()),
        time_param("to", q.to.as_deref()),
    ) {
        (Ok(f), Ok(t)) => (
            f.unwrap_or(now - 6 * 3_600_000),
            t.unwrap_or(now + 3_600_000),
        ),
        (Err(p), _) | (_, Err(p)) => return p.into_response(),
    };
    let dimension = match parse_dimension(q.dimension.as_deref()) {
        Ok(d) => d,
        Err(p) => return p.into_response(),
    };
    let (rows, processed_seq) = state
        .live
        .query(from, to, dimension.as_ref(), q.value.as_deref());
    match q.format.as_deref() {
        None | Some("json") => {
            Json(json!({ "processed_seq": processed_seq, "rows": rows })).into_response()
        }
        Some("csv") => {
            let mut out = csv::Writer::from_writer(Vec::new());
            let written = rows.iter().try_for_each(|row| out.serialize(row));
            match (written, out.into_inner()) {
                (Ok(()), Ok(bytes)) => {
                    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], bytes).into_response()
                }
                _ => Problem::unavailable("could not write CSV").into_response(),
            }
        }
        Some(_) => Problem::bad_parameter("format", "`json` or `csv`").into_response(),
    }
}

/// `PUT /api/v1/campaigns/{id}/costs` with `{"days":[{"date":"2026-11-22","amount":120.50}]}`:
/// sets the campaign's spend for those UTC days (other days keep their figures). Needs `admin`.
pub async fn put_campaign_costs(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(campaign): Path<String>,
    body: Bytes,
) -> Response {
    if campaign.is_empty() || campaign.chars().count() > 200 {
        return Problem::not_found("campaign ids are 1-200 characters").into_response();
    }
    let days = match parse_costs(&body) {
        Ok(days) => days,
        Err(problem) => return problem.into_response(),
    };
    if let Err(e) = state.costs.put(campaign.clone(), days.clone()).await {
        tracing::error!(error = %e, "storing campaign costs failed");
        return Problem::unavailable("storing the costs failed; nothing was changed")
            .into_response();
    }
    state.live.set_costs(&campaign, &days);
    Json(json!({ "campaign": campaign, "days": days.len() })).into_response()
}

/// Validates a costs body whole: every bad field is reported, by pointer.
fn parse_costs(body: &[u8]) -> Result<Vec<(i64, i64)>, Problem> {
    use raccordo_ingest::FieldError;
    let invalid = |errors: Vec<FieldError>| {
        let mut p = Problem::new(
            422,
            "validation-failed",
            "Validation failed",
            format!(
                "{} problem(s) in the body; nothing was stored",
                errors.len()
            ),
        );
        p.errors = errors;
        p
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Problem::new(
            400,
            "invalid-json",
            "Malformed JSON",
            format!(
                "the body is not valid JSON: line {} column {}",
                e.line(),
                e.column()
            ),
        )
    })?;
    let Some(items) = value.get("days").and_then(Value::as_array) else {
        return Err(invalid(vec![FieldError::new(
            "/days",
            "must be an array of {\"date\", \"amount\"}",
        )]));
    };
    if items.is_empty() || items.len() > 3660 {
        return Err(invalid(vec![FieldError::new(
            "/days",
            "must hold 1 to 3660 days",
        )]));
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let mut errors = Vec::new();
    let mut days = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let date = item
            .get("date")
            .and_then(Value::as_str)
            .and_then(|d| time::Date::parse(d, &format).ok());
        if date.is_none() {
            errors.push(FieldError::new(
                format!("/days/{i}/date"),
                "must be a date like 2026-11-22",
            ));
        }
        let amount = item
            .get("amount")
            .and_then(Value::as_f64)
            .filter(|a| (0.0..1e13).contains(a));
        let cents = amount
            .map(|a| (a * 100.0).round())
            .filter(|c| (c - amount.unwrap_or(0.0) * 100.0).abs() < 1e-6);
        if cents.is_none() {
            errors.push(FieldError::new(
                format!("/days/{i}/amount"),
                "must be a number >= 0 with at most 2 decimals",
            ));
        }
        if let (Some(date), Some(cents)) = (date, cents) {
            days.push((i64::from(date.to_julian_day()) - 2_440_588, cents as i64));
        }
    }
    if errors.is_empty() {
        Ok(days)
    } else {
        Err(invalid(errors))
    }
}

/// Query of `GET /api/v1/metrics/stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    dimension: Option<String>,
    value: Option<String>,
}

fn parse_dimension(text: Option<&str>) -> Result<Option<crate::live::Dimension>, Problem> {
    use crate::live::Dimension;
    match text {
        None => Ok(None),
        Some("all") => Ok(Some(Dimension::All)),
        Some("canale") => Ok(Some(Dimension::Canale)),
        Some("evento") => Ok(Some(Dimension::Evento)),
        Some("campagna") => Ok(Some(Dimension::Campagna)),
        Some(_) => Err(Problem::bad_parameter(
            "dimension",
            "one of `all`, `canale`, `evento`, `campagna`",
        )),
    }
}

/// `GET /api/v1/metrics/stream`: Server-Sent Events. `provisional` events carry the open
/// windows every 500 ms; `final` events carry windows as the watermark passes them, and again
/// whenever a late event updates them.
pub async fn metrics_stream(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ValidQuery(q): ValidQuery<StreamQuery>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let dimension = match parse_dimension(q.dimension.as_deref()) {
        Ok(d) => d,
        Err(p) => return p.into_response(),
    };
    let value = q.value;
    let fired = state.live.subscribe();
    let mut tick = tokio::time::interval(state.provisional_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let live = state.live.clone();
    let stream = futures_util::stream::unfold((fired, tick), move |(mut fired, mut tick)| {
        let (live, dimension, value) = (live.clone(), dimension.clone(), value.clone());
        async move {
            let wanted = |r: &crate::live::MetricRow| {
                dimension.as_ref().is_none_or(|d| *d == r.dimension)
                    && value.as_deref().is_none_or(|v| v == r.value)
            };
            let event = loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let (rows, through_seq) = live.provisional(dimension.as_ref(), value.as_deref());
                        break Event::default().event("provisional").json_data(json!({ "rows": rows, "through_seq": through_seq }));
                    }
                    received = fired.recv() => match received {
                        Ok(rows) => {
                            let rows: Vec<_> = rows.into_iter().filter(|r| wanted(r)).collect();
                            if rows.is_empty() {
                                continue;
                            }
                            break Event::default().event("final").json_data(json!({ "rows": rows }));
                        }
                        // A slow client missed some updates; the next ones still come.
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return None,
                    },
                }
            };
            Some((event, (fired, tick)))
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /api/v1/alerts`: the latest alerts and their deliveries.
pub async fn list_alerts(State(state): State<Arc<AppState>>, _reader: Reader) -> Response {
    Json(json!({ "alerts": state.alerts.history() })).into_response()
}

/// `GET /api/v1/ingest/health`: per-source counters, the live windows' lag, store state.
pub async fn ingest_health(State(state): State<Arc<AppState>>, _reader: Reader) -> Response {
    let mut sources: Vec<_> = state
        .ingestor
        .sources()
        .map(|s| s.health_snapshot())
        .collect();
    sources.sort_by(|a, b| a.source.cmp(&b.source));
    Json(json!({
        "ready": state.ingestor.log().is_ready(),
        "live": state.live.health(),
        "sources": sources,
    }))
    .into_response()
}

/// Query of `GET /api/v1/dlq`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    queue: Option<String>,
    cursor: Option<i64>,
    limit: Option<usize>,
}

/// `GET /api/v1/dlq`: operations that failed for good, oldest first.
pub async fn list_dead_letters(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    ValidQuery(q): ValidQuery<DeadLetterQuery>,
) -> Response {
    use raccordo_core::WorkQueue;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match state
        .queue
        .dead_letters(q.queue.as_deref(), q.cursor, limit)
        .await
    {
        Ok(letters) => {
            let next = (letters.len() == limit)
                .then(|| letters.last().map(|l| l.id))
                .flatten();
            Json(json!({ "dead_letters": letters, "next_cursor": next })).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "reading dead letters failed");
            Problem::unavailable("reading the dead-letter queue failed").into_response()
        }
    }
}

/// `POST /api/v1/dlq/{id}/replay`: puts a dead letter back on its queue.
pub async fn replay_dead_letter(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<i64>,
) -> Response {
    use raccordo_core::WorkQueue;
    match state.queue.replay(id, state.clock.now_ms()).await {
        Ok(Some(item)) => (
            StatusCode::ACCEPTED,
            Json(json!({ "dead_letter": id, "work_item": item })),
        )
            .into_response(),
        Ok(None) => Problem::not_found(format!("no dead letter {id}")).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "replaying a dead letter failed");
            Problem::unavailable("the replay failed; nothing was changed").into_response()
        }
    }
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the process can take traffic (store writable, not draining).
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Problem::unavailable("shutting down").into_response();
    }
    if !state.ingestor.log().is_ready() {
        return Problem::unavailable("the event store is not accepting writes").into_response();
    }
    Json(json!({"status": "ready"})).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
        .into_response()
}

/// `POST /_bench/noop`: reads the body and answers like an accepted event, doing nothing
/// else. Only mounted with `server.bench_routes`; it is the baseline of the ingest benchmark.
pub async fn noop(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    match read_body(&headers, body, state.max_body_bytes).await {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(json!({"id": "evt_noop", "status": "accepted"})),
        )
            .into_response(),
        Err(e) => Problem::from(e).into_response(),
    }
}

/// `GET /`: the live dashboard, a single self-contained page (no build step, no CDN).
pub async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        include_str!("../assets/dashboard.html"),
    )
        .into_response()
}

pub async fn not_found() -> Response {
    Problem::not_found("no such route").into_response()
}
