//! The notifications API (`/crm/v8/actions/watch`): channels, expiry and callbacks.

use super::*;

#[derive(Deserialize)]
pub(super) struct WatchBody {
    watch: Vec<Value>,
}

pub(super) fn watch_body(body: &Bytes) -> Result<Vec<Value>, Response> {
    serde_json::from_slice::<WatchBody>(body)
        .map(|b| b.watch)
        .map_err(|_| {
            zoho_error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid data",
                json!({ "api_name": "watch" }),
            )
        })
}

pub(super) fn watch_error(index: usize, code: &str, message: &str, field: &str) -> Value {
    json!({ "code": code, "details": { "api_name": field, "json_path": format!("$.watch[{index}].{field}") }, "message": message, "status": "error" })
}

/// The `events` of a watch entry (`Contacts.create`, …), as given.
pub(super) fn event_names(w: &Value) -> Vec<String> {
    w["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(String::from))
        .collect()
}

pub(super) async fn enable_watch(State(z): State<Arc<Zoho>>, _: Admitted, body: Bytes) -> Response {
    let watch = attempt!(watch_body(&body));
    let now = now_ms();
    let mut entries = Vec::new();
    {
        let mut store = z.store.lock().unwrap_or_else(|p| p.into_inner());
        for (i, w) in watch.iter().enumerate() {
            let Some(channel_id) = w["channel_id"]
                .as_i64()
                .or_else(|| w["channel_id"].as_str().and_then(|s| s.parse().ok()))
            else {
                entries.push(watch_error(
                    i,
                    "MANDATORY_NOT_FOUND",
                    "required field not found",
                    "channel_id",
                ));
                continue;
            };
            let Some(url) = w["notify_url"]
                .as_str()
                .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            else {
                entries.push(watch_error(
                    i,
                    "MANDATORY_NOT_FOUND",
                    "required field not found",
                    "notify_url",
                ));
                continue;
            };
            let events = event_names(w);
            let valid_event = |e: &String| {
                e.split_once('.').is_some_and(|(m, a)| {
                    Module::parse(m).is_some() && ["create", "edit", "delete", "all"].contains(&a)
                })
            };
            if events.is_empty() || !events.iter().all(valid_event) {
                entries.push(watch_error(i, "INVALID_DATA", "invalid data", "events"));
                continue;
            }
            let token = w["token"].as_str().map(String::from);
            if token.as_ref().is_some_and(|t| t.chars().count() > 50) {
                entries.push(watch_error(i, "INVALID_DATA", "invalid data", "token"));
                continue;
            }
            // Beyond a week, or not given: one hour (Zoho's rule since API v4).
            let expiry = w["channel_expiry"]
                .as_str()
                .and_then(parse_time)
                .filter(|t| *t > now && *t <= now + WEEK_MS)
                .unwrap_or(now + 3_600_000);
            store.channels.insert(
                channel_id,
                Channel {
                    channel_id,
                    events: events.clone(),
                    token,
                    notify_url: url.to_string(),
                    expiry_ms: expiry,
                    return_affected_field_values: w["return_affected_field_values"]
                        .as_bool()
                        .unwrap_or(false),
                },
            );
            let details: Vec<Value> = events.iter().map(|e| {
                let module = e.split('.').next().and_then(Module::parse).unwrap_or(Module::Contacts);
                json!({ "channel_expiry": zoho_time(expiry), "resource_uri": format!("{}/crm/v8/{}", z.options.api_domain, module.name()), "resource_id": module.module_id(), "resource_name": module.name(), "channel_id": channel_id.to_string() })
            }).collect();
            entries.push(json!({ "code": "SUCCESS", "details": { "events": details }, "message": "Successfully subscribed for actions-watch of the given module", "status": "success" }));
        }
    }
    z.save();
    let failed = entries.iter().filter(|e| e["status"] == "error").count();
    let status = if failed == 0 {
        StatusCode::CREATED
    } else if failed == entries.len() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    json_response(status, JSON, &json!({ "watch": entries }))
}

pub(super) async fn list_watch(State(z): State<Arc<Zoho>>, _: Admitted) -> Response {
    let now = now_ms();
    let store = z.store.lock().unwrap_or_else(|p| p.into_inner());
    let live: Vec<Value> = store.channels.values().filter(|c| c.expiry_ms > now).map(|c| json!({
        "channel_id": c.channel_id.to_string(), "events": c.events, "channel_expiry": zoho_time(c.expiry_ms),
        "notify_url": c.notify_url, "token": c.token, "return_affected_field_values": c.return_affected_field_values,
    })).collect();
    if live.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    json_response(
        StatusCode::OK,
        JSON,
        &json!({ "watch": live, "info": { "per_page": 200, "count": live.len(), "page": 1, "more_records": false } }),
    )
}

/// Updates some details (expiry, url, token, events), or with `_delete_events` removes
/// the listed events from the channel.
pub(super) async fn patch_watch(State(z): State<Arc<Zoho>>, _: Admitted, body: Bytes) -> Response {
    let watch = attempt!(watch_body(&body));
    let now = now_ms();
    let mut entries = Vec::new();
    {
        let mut store = z.store.lock().unwrap_or_else(|p| p.into_inner());
        for (i, w) in watch.iter().enumerate() {
            let id = w["channel_id"]
                .as_i64()
                .or_else(|| w["channel_id"].as_str().and_then(|s| s.parse().ok()));
            let Some(channel) = id.and_then(|id| store.channels.get_mut(&id)) else {
                entries.push(watch_error(i, "INVALID_DATA", "invalid data", "channel_id"));
                continue;
            };
            let events = event_names(w);
            if w["_delete_events"].as_bool() == Some(true) {
                channel.events.retain(|e| !events.contains(e));
            } else if !events.is_empty() {
                channel.events = events;
            }
            if let Some(t) = w["channel_expiry"].as_str().and_then(parse_time) {
                channel.expiry_ms = if t > now && t <= now + WEEK_MS {
                    t
                } else {
                    now + 3_600_000
                };
            }
            if let Some(url) = w["notify_url"].as_str() {
                channel.notify_url = url.to_string();
            }
            if let Some(t) = w.get("token") {
                channel.token = t.as_str().map(String::from);
            }
            entries.push(json!({ "code": "SUCCESS", "details": { "channel_id": channel.channel_id.to_string(), "channel_expiry": zoho_time(channel.expiry_ms) }, "message": "Successfully updated the subscribe details", "status": "success" }));
        }
    }
    z.save();
    json_response(StatusCode::OK, JSON, &json!({ "watch": entries }))
}

pub(super) async fn disable_watch(
    State(z): State<Arc<Zoho>>,
    RawQuery(q): RawQuery,
    _: Admitted,
) -> Response {
    let ids: Vec<i64> = query_pairs(q.as_deref())
        .into_iter()
        .filter(|(k, _)| k == "channel_ids")
        .flat_map(|(_, v)| {
            v.split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    if ids.is_empty() {
        return required_param_missing("channel_ids");
    }
    let entries: Vec<Value> = {
        let mut store = z.store.lock().unwrap_or_else(|p| p.into_inner());
        ids.iter().map(|id| match store.channels.remove(id) {
            Some(_) => json!({ "code": "SUCCESS", "details": { "channel_id": id.to_string() }, "message": "Successfully unsubscribed from actions-watch", "status": "success" }),
            None => json!({ "code": "INVALID_DATA", "details": { "channel_id": id.to_string() }, "message": "invalid data", "status": "error" }),
        }).collect()
    };
    z.save();
    json_response(StatusCode::OK, JSON, &json!({ "watch": entries }))
}
