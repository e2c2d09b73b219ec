//! Records of Contacts and Accounts: list, read, insert, update, upsert, delete and deleted.

use super::*;

pub(super) fn module_or_error(name: &str) -> Result<Module, Response> {
    Module::parse(name).ok_or_else(|| {
        zoho_error(
            StatusCode::BAD_REQUEST,
            "INVALID_MODULE",
            "the module name given seems to be invalid",
            json!({ "resource_path_index": 0 }),
        )
    })
}

/// Counts concurrent calls against the edition's limit while it lives.
pub(super) struct Slot(Arc<Zoho>);
impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) fn enter(z: &Arc<Zoho>, headers: &HeaderMap) -> Result<Slot, Response> {
    z.admit(headers)?;
    let n = z.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let slot = Slot(z.clone());
    if n > z.options.concurrency {
        return Err(zoho_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REQUESTS",
            "The number of concurrent requests has exceeded the limit",
            json!({}),
        ));
    }
    Ok(slot)
}

/// The opening of every records call: the token admitted, a concurrency slot held for the
/// call's length, and the `{module}` path segment known (else Zoho's `INVALID_MODULE`).
pub(super) struct ModuleCall {
    pub module: Module,
    _slot: Slot,
}

impl axum::extract::FromRequestParts<Arc<Zoho>> for ModuleCall {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        z: &Arc<Zoho>,
    ) -> Result<Self, Response> {
        let slot = enter(z, &parts.headers)?;
        let segment = crate::path_segment(parts, z, "module").await?;
        Ok(ModuleCall {
            module: module_or_error(&segment)?,
            _slot: slot,
        })
    }
}

pub(super) fn body_data(body: &Bytes) -> Result<(Vec<Value>, Value), Response> {
    // The SDK sends JSON without a Content-Type: parse whatever it says.
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        zoho_error(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "body is not a valid JSON",
            json!({}),
        )
    })?;
    let Some(data) = v["data"].as_array().cloned() else {
        return Err(required_param_missing("data"));
    };
    if data.is_empty() || data.len() > MAX_RECORDS_PER_CALL {
        return Err(zoho_error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "the number of records exceeds the limit",
            json!({ "limit": MAX_RECORDS_PER_CALL }),
        ));
    }
    Ok((data, v))
}

/// 2xx for all-success (`ok`), 207 for mixed, 400 when every record failed.
pub(super) fn multi(entries: Vec<Value>, ok: StatusCode) -> Response {
    let failed = entries.iter().filter(|e| e["status"] == "error").count();
    let status = if failed == 0 {
        ok
    } else if failed == entries.len() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::MULTI_STATUS
    };
    json_response(status, JSON, &json!({ "data": entries }))
}

/// The fields of `data[i]`, or the answer entry Zoho gives for an item that is no object.
pub(super) fn record_fields(i: usize, d: &Value) -> Result<&Map<String, Value>, Value> {
    d.as_object().ok_or_else(|| {
        record_error(
            "INVALID_DATA",
            "invalid data",
            json!({ "json_path": format!("$.data[{i}]") }),
        )
    })
}

pub(super) async fn create(State(z): State<Arc<Zoho>>, call: ModuleCall, body: Bytes) -> Response {
    let module = call.module;
    let (data, _) = attempt!(body_data(&body));
    let mut entries = Vec::new();
    let mut created = Vec::new();
    {
        let mut store = z.store.lock().unwrap_or_else(|p| p.into_inner());
        for (i, d) in data.iter().enumerate() {
            let fields = match record_fields(i, d) {
                Ok(fields) => fields,
                Err(entry) => {
                    entries.push(entry);
                    continue;
                }
            };
            match check_record(&store, module, i, fields, None) {
                Ok(clean) => {
                    let keys: Vec<String> = clean.keys().cloned().collect();
                    let id = insert(&mut store, module, clean, now_ms());
                    entries.push(success("record added", &store.records[&module][&id]));
                    created.push((id, keys, Map::new()));
                }
                Err(e) => entries.push(e),
            }
        }
    }
    if !created.is_empty() {
        z.save();
        z.notify(module, "insert", created);
    }
    multi(entries, StatusCode::CREATED)
}

/// The answer entry, the changed field names and their new values.
pub(super) type Applied = (Value, Vec<String>, Map<String, Value>);

pub(super) fn apply_update(
    store: &mut Store,
    module: Module,
    index: usize,
    id: u64,
    data: &Map<String, Value>,
) -> Result<Applied, Value> {
    let live = store
        .records
        .get(&module)
        .and_then(|m| m.get(&id))
        .is_some_and(|r| r.deleted_ms.is_none());
    if !live {
        return Err(record_error(
            "INVALID_DATA",
            "the id given seems to be invalid",
            json!({ "api_name": "id", "json_path": format!("$.data[{index}].id") }),
        ));
    }
    let clean = check_record(store, module, index, data, Some(id))?;
    let now = now_ms();
    let record = store
        .records
        .get_mut(&module)
        .and_then(|m| m.get_mut(&id))
        .expect("checked above");
    let mut changed = Vec::new();
    let mut values = Map::new();
    for (k, v) in clean {
        if record.fields.get(&k) != Some(&v) {
            changed.push(k.clone());
            values.insert(k.clone(), v.clone());
            record.fields.insert(k, v);
        }
    }
    record.modified_ms = now;
    Ok((success("record updated", record), changed, values))
}

pub(super) fn id_of(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
}

pub(super) async fn update_many(
    State(z): State<Arc<Zoho>>,
    call: ModuleCall,
    body: Bytes,
) -> Response {
    update(z, call, None, body).await
}

pub(super) async fn update_one(
    State(z): State<Arc<Zoho>>,
    call: ModuleCall,
    Path((_, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    update(z, call, Some(id), body).await
}

pub(super) async fn update(
    z: Arc<Zoho>,
    call: ModuleCall,
    path_id: Option<String>,
    body: Bytes,
) -> Response {
    let module = call.module;
    let (data, _) = attempt!(body_data(&body));
    let mut entries = Vec::new();
    let mut changes = Vec::new();
    {
        let mut store = z.store.lock().unwrap_or_else(|p| p.into_inner());
        for (i, d) in data.iter().enumerate() {
            let id = path_id
                .as_deref()
                .and_then(|s| s.parse().ok())
                .or_else(|| id_of(&d["id"]));
            let (Some(id), Some(fields)) = (id, d.as_object()) else {
                entries.push(record_error(
                    "MANDATORY_NOT_FOUND",
                    "required field not found",
                    json!({ "api_name": "id", "json_path": format!("$.data[{i}].id") }),
                ));
                continue;
            };
            match apply_update(&mut store, module, i, id, fields) {
                Ok((entry, changed, values)) => {
                    entries.push(entry);
                    if !changed.is_empty() {
                        changes.push((id, changed, values));
                    }
                }
                Err(e) => entries.push(e),
            }
        }
    }
    if !changes.is_empty() {
        z.save();
        z.notify(module, "update", changes);
    }
    multi(entries, StatusCode::OK)
}

pub(super) async fn upsert(State(z): State<Arc<Zoho>>, call: ModuleCall, body: Bytes) -> Response {
    let module = call.module;
    let (data, whole) = attempt!(body_data(&body));
    let check_fields: Vec<String> = whole["duplicate_check_fields"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .filter(|v: &Vec<String>| !v.is_empty())
        .unwrap_or_else(|| vec![module.default_duplicate_check().to_string()]);
    if let Some(bad) = check_fields
        .iter()
        .find(|f| !module.fields().iter().any(|s| s.api_name == f.as_str()))
    {
        return zoho_error(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "invalid data",
            json!({ "api_name": bad, "json_path": "$.duplicate_check_fields" }),
        );
    }
    let (mut entries, mut inserted, mut updated) = (Vec::new(), Vec::new(), Vec::new());
    {
        let mut store = z.store.lock().unwrap_or_else(|p| p.into_inner());
        for (i, d) in data.iter().enumerate() {
            let fields = match record_fields(i, d) {
                Ok(fields) => fields,
                Err(entry) => {
                    entries.push(entry);
                    continue;
                }
            };
            // The listed order is the check order.
            let matched = check_fields.iter().find_map(|f| {
                let v = fields.get(f)?.as_str()?;
                store
                    .records
                    .get(&module)?
                    .values()
                    .find(|r| {
                        r.deleted_ms.is_none()
                            && r.fields
                                .get(f)
                                .and_then(Value::as_str)
                                .is_some_and(|x| x.eq_ignore_ascii_case(v))
                    })
                    .map(|r| (r.id, f.clone()))
            });
            match matched {
                Some((id, field)) => match apply_update(&mut store, module, i, id, fields) {
                    Ok((mut entry, changed, values)) => {
                        entry["action"] = json!("update");
                        entry["duplicate_field"] = json!(field);
                        entries.push(entry);
                        if !changed.is_empty() {
                            updated.push((id, changed, values));
                        }
                    }
                    Err(e) => entries.push(e),
                },
                None => match check_record(&store, module, i, fields, None) {
                    Ok(clean) => {
                        let keys = clean.keys().cloned().collect();
                        let id = insert(&mut store, module, clean, now_ms());
                        let mut entry = success("record added", &store.records[&module][&id]);
                        entry["action"] = json!("insert");
                        entry["duplicate_field"] = Value::Null;
                        entries.push(entry);
                        inserted.push((id, keys, Map::new()));
                    }
                    Err(e) => entries.push(e),
                },
            }
        }
    }
    if !inserted.is_empty() || !updated.is_empty() {
        z.save();
        z.notify(module, "insert", inserted);
        z.notify(module, "update", updated);
    }
    multi(entries, StatusCode::OK)
}

pub(super) async fn delete_one(
    State(z): State<Arc<Zoho>>,
    call: ModuleCall,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    delete(z, call, vec![id]).await
}

pub(super) async fn delete_many(
    State(z): State<Arc<Zoho>>,
    call: ModuleCall,
    RawQuery(q): RawQuery,
) -> Response {
    let ids = list_param(&query_pairs(q.as_deref()), "ids").unwrap_or_default();
    if ids.is_empty() {
        return required_param_missing("ids");
    }
    delete(z, call, ids).await
}

pub(super) async fn delete(z: Arc<Zoho>, call: ModuleCall, ids: Vec<String>) -> Response {
    let module = call.module;
    if ids.len() > MAX_RECORDS_PER_CALL {
        return zoho_error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "the number of records exceeds the limit",
            json!({ "limit": MAX_RECORDS_PER_CALL }),
        );
    }
    let mut entries = Vec::new();
    let mut gone = Vec::new();
    {
        let mut store = z.store.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        for raw in &ids {
            let record = raw
                .parse::<u64>()
                .ok()
                .and_then(|id| store.records.get_mut(&module)?.get_mut(&id))
                .filter(|r| r.deleted_ms.is_none());
            match record {
                Some(r) => {
                    r.deleted_ms = Some(now);
                    entries.push(json!({ "code": "SUCCESS", "details": { "id": raw }, "message": "record deleted", "status": "success" }));
                    gone.push((r.id, Vec::new(), Map::new()));
                }
                None => entries.push(record_error(
                    "INVALID_DATA",
                    "the related id given seems to be invalid",
                    json!({ "id": raw }),
                )),
            }
        }
    }
    if !gone.is_empty() {
        z.save();
        z.notify(module, "delete", gone);
    }
    multi(entries, StatusCode::OK)
}

pub(super) async fn read(
    State(z): State<Arc<Zoho>>,
    call: ModuleCall,
    Path((_, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let module = call.module;
    let only = fields_param(q.as_deref());
    let store = z.store.lock().unwrap_or_else(|p| p.into_inner());
    let record = id
        .parse::<u64>()
        .ok()
        .and_then(|id| store.records.get(&module)?.get(&id))
        .filter(|r| r.deleted_ms.is_none());
    match record {
        Some(r) => json_response(
            StatusCode::OK,
            JSON,
            &json!({ "data": [render(r, only.as_deref())] }),
        ),
        // Sandbox choice: unknown and deleted records answer 204, as an empty list does.
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

pub(super) fn fields_param(q: Option<&str>) -> Option<Vec<String>> {
    query_pairs(q)
        .into_iter()
        .find(|(k, _)| k == "fields")
        .map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
}

pub(super) struct Paging {
    page: usize,
    per_page: usize,
    offset: usize,
}

pub(super) fn paging(pairs: &[(String, String)]) -> Result<Paging, Response> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let bad = |p: &str| {
        zoho_error(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "invalid data",
            json!({ "param_name": p }),
        )
    };
    let per_page = match get("per_page").map(str::parse::<usize>) {
        None => 200,
        Some(Ok(n)) if (1..=200).contains(&n) => n,
        Some(_) => return Err(bad("per_page")),
    };
    if let Some(token) = get("page_token") {
        if get("page").is_some() {
            return Err(bad("page"));
        }
        let offset = token
            .strip_prefix("pt")
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| bad("page_token"))?;
        return Ok(Paging {
            page: offset / per_page + 1,
            per_page,
            offset,
        });
    }
    let page = match get("page").map(str::parse::<usize>) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => return Err(bad("page")),
    };
    if page * per_page > 2000 {
        return Err(zoho_error(
            StatusCode::BAD_REQUEST,
            "DISCRETE_PAGINATION_LIMIT_EXCEEDED",
            "Cannot fetch more than 2000 records without page_token",
            json!({}),
        ));
    }
    Ok(Paging {
        page,
        per_page,
        offset: (page - 1) * per_page,
    })
}

pub(super) fn page_answer(
    records: Vec<&Record>,
    p: &Paging,
    only: Option<&[String]>,
    sort_by: &str,
    sort_order: &str,
) -> Response {
    if records.len() <= p.offset {
        return StatusCode::NO_CONTENT.into_response();
    }
    let more = records.len() > p.offset + p.per_page;
    let data: Vec<Value> = records
        .iter()
        .skip(p.offset)
        .take(p.per_page)
        .map(|r| render(r, only))
        .collect();
    let next = more.then(|| format!("pt{}", p.offset + p.per_page));
    json_response(
        StatusCode::OK,
        JSON,
        &json!({
            "data": data,
            "info": {
                "per_page": p.per_page, "count": data.len(), "page": p.page, "more_records": more,
                "sort_by": sort_by, "sort_order": sort_order,
                "next_page_token": next, "previous_page_token": null,
                "page_token_expiry": next.as_ref().map(|_| zoho_time(now_ms() + 86_400_000)),
            }
        }),
    )
}

pub(super) async fn list(
    State(z): State<Arc<Zoho>>,
    call: ModuleCall,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let module = call.module;
    let pairs = query_pairs(q.as_deref());
    // v2 lists every field when none are named; v3 and later require `fields`.
    let v2_all = uri.path().starts_with("/crm/v2/").then(|| {
        module
            .fields()
            .iter()
            .map(|f| f.api_name.to_string())
            .collect::<Vec<_>>()
    });
    let Some(only) = fields_param(q.as_deref())
        .filter(|f| !f.is_empty())
        .or(v2_all)
    else {
        return required_param_missing("fields");
    };
    if only.len() > 50 {
        return zoho_error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "the number of fields exceeds the limit",
            json!({ "param_name": "fields", "limit": 50 }),
        );
    }
    let p = attempt!(paging(&pairs));
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let sort_by = get("sort_by").unwrap_or("id");
    if !["id", "Created_Time", "Modified_Time"].contains(&sort_by) {
        return zoho_error(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "invalid data",
            json!({ "param_name": "sort_by" }),
        );
    }
    let sort_order = get("sort_order").unwrap_or("desc");
    let since = headers
        .get("if-modified-since")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_time);
    let ids: Option<Vec<u64>> =
        get("ids").map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let store = z.store.lock().unwrap_or_else(|p| p.into_inner());
    let mut records: Vec<&Record> = store
        .records
        .get(&module)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|r| r.deleted_ms.is_none())
        .filter(|r| since.is_none_or(|s| r.modified_ms > s))
        .filter(|r| ids.as_ref().is_none_or(|ids| ids.contains(&r.id)))
        .collect();
    if since.is_some() && records.is_empty() {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    records.sort_by_key(|r| match sort_by {
        "Created_Time" => (r.created_ms, r.id),
        "Modified_Time" => (r.modified_ms, r.id),
        _ => (0, r.id),
    });
    if sort_order == "desc" {
        records.reverse();
    }
    page_answer(records, &p, Some(&only), sort_by, sort_order)
}

pub(super) async fn deleted(
    State(z): State<Arc<Zoho>>,
    call: ModuleCall,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let module = call.module;
    let since = headers
        .get("if-modified-since")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_time);
    let pairs = query_pairs(q.as_deref());
    let p = attempt!(paging(&pairs));
    let store = z.store.lock().unwrap_or_else(|p| p.into_inner());
    let gone: Vec<Value> = store.records.get(&module).into_iter().flat_map(|m| m.values())
        .filter_map(|r| Some((r, r.deleted_ms?)))
        .filter(|(_, at)| since.is_none_or(|s| *at > s))
        .skip(p.offset).take(p.per_page)
        .map(|(r, at)| json!({
            "id": r.id.to_string(), "type": "recycle", "deleted_time": zoho_time(at), "deleted_by": owner(),
            "display_name": r.fields.get("Last_Name").or_else(|| r.fields.get("Account_Name")).cloned().unwrap_or(Value::Null)
        }))
        .collect();
    if gone.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    json_response(
        StatusCode::OK,
        JSON,
        &json!({ "data": gone, "info": { "per_page": p.per_page, "count": gone.len(), "page": p.page, "more_records": false } }),
    )
}
