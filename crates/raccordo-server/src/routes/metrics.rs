//! Live window metrics: query, CSV and the SSE stream.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header;
use serde::Deserialize;

use crate::extract::{Admin, Reader, ValidQuery, time_param};
use crate::problem::Problem;
use crate::state::AppState;
use raccordo_runtime::live::{ClusterWindows, MetricRow, WindowFeed};

/// Which windows a request reads.
enum Windows {
    /// This node's windows over the whole log, in memory.
    Live,
    /// The cluster's windows, kept per stream partition by their owners.
    Partitions(Arc<ClusterWindows>),
}

/// The `view` parameter: `live` (default) or `partitions` (where the hub keeps windows per
/// stream partition).
/// The default is `partitions` where the node keeps no windows of its own.
fn windows_view(state: &AppState, view: Option<&str>) -> Result<Windows, Problem> {
    match (view, &state.partition_windows) {
        (None, Some(cluster)) if !state.node_windows => Ok(Windows::Partitions(cluster.clone())),
        (None | Some("live"), _) if state.node_windows => Ok(Windows::Live),
        (Some("live"), _) => Err(Problem::bad_parameter(
            "view",
            "this cluster keeps its windows per partition only ([storage.stream] node_windows = false): use `partitions`",
        )),
        (Some("partitions"), Some(cluster)) => Ok(Windows::Partitions(cluster.clone())),
        (Some("partitions"), None) => Err(Problem::bad_parameter(
            "view",
            "this hub keeps no windows per partition (a cluster with a [storage.stream] does)",
        )),
        _ => Err(Problem::bad_parameter("view", "`live` or `partitions`")),
    }
}

pub fn router() -> super::ApiRouter {
    super::ApiRouter::new()
        .routes(utoipa_axum::routes!(metrics_api))
        .routes(utoipa_axum::routes!(metrics_stream))
        .routes(utoipa_axum::routes!(list_dimensions))
        .routes(utoipa_axum::routes!(late_table))
        .routes(utoipa_axum::routes!(reaggregate_late))
}

/// One message of the SSE stream: `provisional` (open windows, with the log position they
/// count through) or `final` (windows the watermark passed, or late updates).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StreamMessage {
    pub rows: Vec<MetricRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub through_seq: Option<i64>,
}

/// Window rows and how far into the log they count.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct MetricsPage {
    /// Log position of the newest event the rows include.
    pub processed_seq: i64,
    pub rows: Vec<MetricRow>,
}

/// Query of `GET /api/v1/metrics`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Windows ending after this (RFC 3339); default: 6 hours ago.
    #[param(format = DateTime)]
    from: Option<String>,
    /// Windows starting before this (RFC 3339); default: now + 1 hour.
    #[param(format = DateTime)]
    to: Option<String>,
    /// `all`, `canale`, `evento`, `campagna`, `source`, or an extra dimension of a mapping.
    dimension: Option<String>,
    /// Only this value of the dimension (e.g. `email`).
    value: Option<String>,
    /// `json` (default) or `csv`.
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
    /// `partitions` (the default in a cluster with a conversion stream): the windows kept per
    /// stream partition by their owning nodes, merged — final results from the store, open
    /// windows and late updates as the owners publish them (within about half a second).
    /// `live` (the default elsewhere, or with `node_windows = true`): this node's windows
    /// over the whole log, in memory.
    #[param(pattern = "^(live|partitions)$")]
    view: Option<String>,
}

/// Event-time window aggregates per dimension, provisional (open windows) and final.
#[utoipa::path(
    get,
    path = "/api/v1/metrics",
    tag = "metrics",
    params(MetricsQuery),
    responses(
        (status = 200, description = "Window rows (JSON, or CSV with `format=csv`)", content(
            (MetricsPage = "application/json"),
            (String = "text/csv"),
        )),
    ),
    security(("admin_token" = []))
)]
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
    let dimension = match parse_dimension(&state.live, q.dimension.as_deref()) {
        Ok(d) => d,
        Err(p) => return p.into_response(),
    };
    let windows = match windows_view(&state, q.view.as_deref()) {
        Ok(w) => w,
        Err(p) => return p.into_response(),
    };
    let partitioned = matches!(windows, Windows::Partitions(_));
    let (mut rows, processed_seq) = match windows {
        // A cluster's windows, per stream partition on their owners, merged.
        Windows::Partitions(cluster) => match cluster
            .query(from, to, dimension.as_ref(), q.value.as_deref())
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "reading the partitions' windows failed");
                return Problem::unavailable("reading stored window results failed")
                    .into_response();
            }
        },
        Windows::Live => state
            .live
            .query(from, to, dimension.as_ref(), q.value.as_deref()),
    };
    // Older windows than memory keeps come from the store (the dashboard's 7 days).
    let horizon = state.live.memory_horizon_ms();
    if !partitioned && from < horizon {
        match state
            .windows
            .results_between("live", from, to.min(horizon))
            .await
        {
            Ok(stored) => {
                let known: std::collections::HashSet<(i64, String, String)> = rows
                    .iter()
                    .map(|r| {
                        (
                            r.window_start_ms,
                            r.dimension.as_str().to_string(),
                            r.value.clone(),
                        )
                    })
                    .collect();
                let older = state
                    .live
                    .rows_from_results(stored, dimension.as_ref(), q.value.as_deref())
                    .into_iter()
                    .filter(|r| {
                        !known.contains(&(
                            r.window_start_ms,
                            r.dimension.as_str().to_string(),
                            r.value.clone(),
                        ))
                    });
                rows.extend(older);
                rows.sort_by(|a, b| {
                    (a.window_start_ms, &a.dimension, &a.value).cmp(&(
                        b.window_start_ms,
                        &b.dimension,
                        &b.value,
                    ))
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "reading stored window results failed");
                return Problem::unavailable("reading stored window results failed")
                    .into_response();
            }
        }
    }
    match q.format.as_deref() {
        None | Some("json") => Json(MetricsPage {
            processed_seq,
            rows,
        })
        .into_response(),
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

/// Query of `GET /api/v1/metrics/stream`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// `all`, `canale`, `evento`, `campagna`, `source`, or an extra dimension of a mapping.
    dimension: Option<String>,
    /// Only this value of the dimension.
    value: Option<String>,
    /// `partitions` or `live`, as for `GET /api/v1/metrics`.
    #[param(pattern = "^(live|partitions)$")]
    view: Option<String>,
}

fn parse_dimension(
    live: &raccordo_runtime::LiveMetrics,
    text: Option<&str>,
) -> Result<Option<raccordo_runtime::live::Dimension>, Problem> {
    let Some(text) = text else {
        return Ok(None);
    };
    let known = live.dimensions();
    match known.iter().find(|d| d.as_str() == text) {
        Some(d) => Ok(Some(d.clone())),
        None => {
            let names: Vec<String> = known.iter().map(|d| format!("`{}`", d.as_str())).collect();
            Err(Problem::bad_parameter(
                "dimension",
                format!("one of {}", names.join(", ")),
            ))
        }
    }
}

/// The metrics live, as Server-Sent Events.
///
/// `provisional` events carry the open windows (with `through_seq`) soon after new events
/// are counted (`metrics.provisional_coalesce`, 25 ms) and every `metrics.provisional_every`
/// when nothing is new; `final` events carry windows as the watermark passes them, and again
/// whenever a late event updates them.
#[utoipa::path(
    get,
    path = "/api/v1/metrics/stream",
    tag = "metrics",
    params(StreamQuery),
    responses((status = 200, description = "An endless event stream; the `data` of each event is a `StreamMessage`", content_type = "text/event-stream", body = StreamMessage)),
    security(("admin_token" = []))
)]
pub async fn metrics_stream(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ValidQuery(q): ValidQuery<StreamQuery>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let dimension = match parse_dimension(&state.live, q.dimension.as_deref()) {
        Ok(d) => d,
        Err(p) => return p.into_response(),
    };
    let live: Arc<dyn WindowFeed> = match windows_view(&state, q.view.as_deref()) {
        Ok(Windows::Live) => state.live.clone(),
        Ok(Windows::Partitions(cluster)) => cluster,
        Err(p) => return p.into_response(),
    };
    let value = q.value;
    let fired = live.subscribe();
    let mut tick = tokio::time::interval(state.provisional_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let progress = live.progress();
    let coalesce = state.provisional_coalesce;
    let stream = futures_util::stream::unfold(
        (fired, tick, progress),
        move |(mut fired, mut tick, mut progress)| {
            let (live, dimension, value) = (live.clone(), dimension.clone(), value.clone());
            async move {
                let wanted = |r: &raccordo_runtime::live::MetricRow| {
                    dimension.as_ref().is_none_or(|d| *d == r.dimension)
                        && value.as_deref().is_none_or(|v| v == r.value)
                };
                let event = loop {
                    tokio::select! {
                        // New events counted: publish them after the coalescing pause, with whatever
                        // else was counted meanwhile.
                        changed = progress.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                            if !coalesce.is_zero() {
                                tokio::time::sleep(coalesce).await;
                            }
                            progress.borrow_and_update();
                            tick.reset();
                            let (rows, through_seq) = live.provisional(dimension.as_ref(), value.as_deref());
                            break Event::default().event("provisional").json_data(StreamMessage { rows, through_seq: Some(through_seq) });
                        }
                        // Nothing new for a while: the open windows again, as a heartbeat.
                        _ = tick.tick() => {
                            let (rows, through_seq) = live.provisional(dimension.as_ref(), value.as_deref());
                            break Event::default().event("provisional").json_data(StreamMessage { rows, through_seq: Some(through_seq) });
                        }
                        received = fired.recv() => match received {
                            Ok(rows) => {
                                let rows: Vec<_> = rows.into_iter().filter(|r| wanted(r)).collect();
                                if rows.is_empty() {
                                    continue;
                                }
                                break Event::default().event("final").json_data(StreamMessage { rows, through_seq: None });
                            }
                            // A slow client missed some updates; the next ones still come.
                            Err(RecvError::Lagged(_)) => continue,
                            Err(RecvError::Closed) => return None,
                        },
                    }
                };
                Some((event, (fired, tick, progress)))
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Query of `GET /api/v1/metrics/late` and `POST /api/v1/metrics/late/reaggregate`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LateQuery {
    /// Only this source's late events.
    source: Option<String>,
    /// Only rows of this dimension (with `value`: only events with that value).
    dimension: Option<String>,
    /// Only this value of the dimension.
    value: Option<String>,
    /// Only these events: comma-separated ids (`evt_…`).
    ids: Option<String>,
    /// How many late events to list, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `partitions` or `live`, as for `GET /api/v1/metrics`: with `partitions`, every
    /// partition's late events, re-aggregated by the partitions' owners.
    #[param(pattern = "^(live|partitions)$")]
    view: Option<String>,
}

fn late_filter(
    live: &raccordo_runtime::LiveMetrics,
    q: &LateQuery,
) -> Result<raccordo_runtime::live::LateFilter, Problem> {
    let dimension = parse_dimension(live, q.dimension.as_deref())?;
    let key = match (dimension, &q.value) {
        (Some(d), Some(v)) => Some((d, v.clone())),
        (None, Some(_)) => {
            return Err(Problem::bad_parameter(
                "value",
                "needs a `dimension` to belong to",
            ));
        }
        _ => None,
    };
    let ids = match &q.ids {
        None => None,
        Some(text) => Some(
            text.split(',')
                .map(|id| id.trim().parse::<raccordo_core::EventId>())
                .collect::<Result<std::collections::HashSet<_>, _>>()
                .map_err(|_| {
                    Problem::bad_parameter("ids", "comma-separated event ids such as `evt_01J…`")
                })?,
        ),
    };
    Ok(raccordo_runtime::live::LateFilter {
        source: q.source.clone(),
        key,
        ids,
    })
}

/// The late table: accepted events that came after their windows closed (past the allowed
/// lateness), counted per window and dimension row, and listed with their event ids.
#[utoipa::path(
    get,
    path = "/api/v1/metrics/late",
    tag = "metrics",
    params(LateQuery),
    responses((status = 200, description = "Late counts and events", body = raccordo_runtime::live::LateTable)),
    security(("admin_token" = []))
)]
pub async fn late_table(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ValidQuery(q): ValidQuery<LateQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Problem::bad_parameter("limit", "between 1 and 1000").into_response();
    }
    let windows = match windows_view(&state, q.view.as_deref()) {
        Ok(w) => w,
        Err(p) => return p.into_response(),
    };
    match (late_filter(&state.live, &q), windows) {
        (Ok(filter), Windows::Live) => Json(state.live.late(&filter, limit)).into_response(),
        (Ok(filter), Windows::Partitions(cluster)) => {
            Json(cluster.late(&filter, limit)).into_response()
        }
        (Err(p), _) => p.into_response(),
    }
}

/// Count late events into the windows they were late for: the windows' final results
/// change (their distinct-customer counts become upper bounds), the events leave the late
/// table, and the changed rows are streamed as `final` again; the answer comes once the
/// change is saved. Filters as for the late table; without any, every late event is
/// re-aggregated.
#[utoipa::path(
    post,
    path = "/api/v1/metrics/late/reaggregate",
    tag = "metrics",
    params(LateQuery),
    responses((status = 200, description = "What changed", body = raccordo_runtime::live::Reaggregated)),
    security(("admin_token" = []))
)]
pub async fn reaggregate_late(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    ValidQuery(q): ValidQuery<LateQuery>,
) -> Response {
    let windows = match windows_view(&state, q.view.as_deref()) {
        Ok(w) => w,
        Err(p) => return p.into_response(),
    };
    match late_filter(&state.live, &q) {
        Ok(filter) => {
            // Answered once the change is saved, so that it survives a crash right after.
            let wait = std::time::Duration::from_secs(10);
            let done = match windows {
                Windows::Live => state.live.reaggregate_durably(&filter, wait).await,
                Windows::Partitions(cluster) => cluster.reaggregate(&filter, wait).await,
            };
            tracing::info!(
                events = done.events,
                rows = done.rows,
                "late events re-aggregated into their windows"
            );
            Json(done).into_response()
        }
        Err(p) => p.into_response(),
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Dimensions {
    /// `all`, `canale`, `evento`, `campagna`, `source`, then the mappings' extra dimensions.
    pub dimensions: Vec<raccordo_runtime::live::Dimension>,
}

/// The dimensions metric rows can have: the built-in ones and every extra dimension the
/// sources' mappings name.
#[utoipa::path(
    get,
    path = "/api/v1/metrics/dimensions",
    tag = "metrics",
    responses((status = 200, description = "The dimensions", body = Dimensions)),
    security(("admin_token" = []))
)]
pub async fn list_dimensions(State(state): State<Arc<AppState>>, _reader: Reader) -> Response {
    Json(Dimensions {
        dimensions: state.live.dimensions(),
    })
    .into_response()
}
