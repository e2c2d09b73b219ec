//! CRM v3 batch calls: read, create, update, upsert and archive of up to 100 inputs, with 207 partials.

use super::*;

pub(super) fn batch_envelope(
    results: Vec<Value>,
    errors: Vec<Value>,
    started: i64,
) -> (StatusCode, Value) {
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": iso_ms(started),
        "completedAt": iso_ms(now_ms()),
    });
    if errors.is_empty() {
        (StatusCode::OK, body)
    } else {
        body["numErrors"] = json!(errors.len());
        body["errors"] = Value::Array(errors);
        (StatusCode::MULTI_STATUS, body)
    }
}

/// A batch input's `id`, given as a string (HubSpot's form) or a number.
pub(super) fn input_id(input: &Value) -> String {
    value_text(&input["id"]).unwrap_or_default()
}

pub(super) fn batch_error(category: &str, message: &str, ids: &[String]) -> Value {
    json!({
        "status": "error",
        "category": category,
        "message": message,
        "context": { "ids": ids },
        "errors": [],
        "links": {},
    })
}

pub(super) async fn batch(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
    ObjectKind(kind): ObjectKind,
    Path((_, op)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let input = attempt!(parse_json(&body));
    let Some(inputs) = input["inputs"].as_array() else {
        return validation("Invalid input JSON: `inputs` must be an array");
    };
    if inputs.is_empty() || inputs.len() > BATCH_LIMIT {
        return validation(&format!(
            "inputs: size must be between 1 and {BATCH_LIMIT}, got {}",
            inputs.len()
        ));
    }
    let started = now_ms();
    let pairs = query_pairs(q.as_deref());
    let mut events: Vec<PendingEvent> = Vec::new();
    let response = {
        let mut store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
        match op.as_str() {
            "read" => {
                let properties: Option<Vec<String>> = input["properties"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                });
                let id_property = input["idProperty"].as_str();
                let archived = bool_param(&pairs, "archived");
                let (mut results, mut missing) = (Vec::new(), Vec::new());
                let with_history: Option<Vec<String>> =
                    input["propertiesWithHistory"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    });
                if with_history.is_some() && inputs.len() > 50 {
                    return validation(
                        "Batch read with propertiesWithHistory is limited to 50 inputs",
                    );
                }
                for i in inputs {
                    let key = input_id(i);
                    match find(&store, kind, &key, id_property, archived) {
                        Some(id) => {
                            let o = &store.objects[&kind][&id];
                            let mut r = render(&store, kind, o, properties.as_deref(), None);
                            if let Some(names) = &with_history {
                                r["propertiesWithHistory"] = o.history_json(names);
                            }
                            results.push(r)
                        }
                        None => missing.push(key),
                    }
                }
                let errors = if missing.is_empty() {
                    vec![]
                } else {
                    vec![batch_error(
                        "OBJECT_NOT_FOUND",
                        "Could not get some records.",
                        &missing,
                    )]
                };
                let (status, body) = batch_envelope(results, errors, started);
                ok(status, &body, h)
            }
            "create" => {
                // One bad input fails the call, unless every input has an objectWriteTraceId.
                let traced = inputs.iter().all(|i| i["objectWriteTraceId"].is_string());
                let (mut results, mut errors) = (Vec::new(), Vec::new());
                let mut seen_emails = BTreeSet::new();
                // Check everything first so an untraced failure changes nothing.
                let mut checks = Vec::new();
                for i in inputs {
                    let check = clean_properties(kind, i.get("properties").unwrap_or(&Value::Null))
                        .and_then(|p| match p.get("email").filter(|e| !e.is_empty()) {
                            Some(e) if kind == Kind::Contacts => {
                                if let Some(existing) = email_conflict(&store, e, None) {
                                    return Err(conflict(existing));
                                }
                                if !seen_emails.insert(e.to_lowercase()) {
                                    return Err(error(
                                        StatusCode::CONFLICT,
                                        "CONFLICT",
                                        &format!("Duplicate email in inputs: {e}"),
                                    ));
                                }
                                Ok(())
                            }
                            _ => Ok(()),
                        });
                    checks.push(check);
                }
                if !traced && let Some(Err(_)) = checks.iter().find(|c| c.is_err()) {
                    let idx = checks.iter().position(|c| c.is_err()).unwrap_or(0);
                    return checks
                        .swap_remove(idx)
                        .err()
                        .unwrap_or_else(|| validation("invalid input"));
                }
                for (i, check) in inputs.iter().zip(checks) {
                    match check.and_then(|_| create_one(&mut store, kind, i)) {
                        Ok((id, mut rendered)) => {
                            if let Some(t) = i["objectWriteTraceId"].as_str() {
                                rendered["objectWriteTraceId"] = json!(t);
                            }
                            events.push((id, "creation", None));
                            results.push(rendered);
                        }
                        Err(_) => errors.push(batch_error(
                            "VALIDATION_ERROR",
                            "Some inputs could not be created.",
                            &[i["objectWriteTraceId"].as_str().unwrap_or("").to_string()],
                        )),
                    }
                }
                let (status, body) = batch_envelope(results, errors, started);
                ok(
                    if status == StatusCode::OK {
                        StatusCode::CREATED
                    } else {
                        status
                    },
                    &body,
                    h,
                )
            }
            "update" | "upsert" => {
                let upsert = op == "upsert";
                let (mut results, mut errors) = (Vec::new(), Vec::new());
                for i in inputs {
                    let key = input_id(i);
                    let id_property = i["idProperty"].as_str();
                    if upsert && id_property.is_none() {
                        return validation(
                            "upsert inputs need an idProperty (a unique property such as email)",
                        );
                    }
                    let outcome = match find(&store, kind, &key, id_property, false) {
                        Some(id) => {
                            update_one(&mut store, kind, id, i).map(|(id, mut r, changed)| {
                                if upsert {
                                    r["new"] = json!(false);
                                }
                                for (k, v) in changed {
                                    events.push((id, "propertyChange", Some((k, v))));
                                }
                                r
                            })
                        }
                        None if upsert => {
                            let mut with_key = i.clone();
                            if let (Some(p), Some(prop)) =
                                (with_key["properties"].as_object_mut(), id_property)
                            {
                                p.entry(prop.to_string()).or_insert(json!(key));
                            }
                            create_one(&mut store, kind, &with_key).map(|(id, mut r)| {
                                r["new"] = json!(true);
                                events.push((id, "creation", None));
                                r
                            })
                        }
                        None => Err(not_found()),
                    };
                    match outcome {
                        Ok(r) => results.push(r),
                        Err(_) => {
                            // Invalid properties are reported as HubSpot does, naming each.
                            let invalid =
                                check_properties(kind, i.get("properties").unwrap_or(&Value::Null))
                                    .err();
                            let category = if invalid.is_some() || upsert {
                                "VALIDATION_ERROR"
                            } else {
                                "OBJECT_NOT_FOUND"
                            };
                            let message = invalid.unwrap_or_else(|| "Some inputs failed.".into());
                            errors.push(batch_error(category, &message, &[key]))
                        }
                    }
                }
                let (status, body) = batch_envelope(results, errors, started);
                ok(status, &body, h)
            }
            "archive" => {
                for i in inputs {
                    let key = input_id(i);
                    if let Some(id) = archive_one(&mut store, kind, &key) {
                        events.push((id, "deletion", None));
                    }
                }
                with_headers(StatusCode::NO_CONTENT.into_response(), h)
            }
            other => error(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                &format!("unknown batch operation `{other}`"),
            ),
        }
    };
    if !events.is_empty() {
        hs.save();
        for (id, sub, prop) in events {
            hs.emit(
                kind,
                sub,
                id,
                prop.as_ref().map(|(k, v)| (k.as_str(), v.as_str())),
            );
        }
    }
    response
}
