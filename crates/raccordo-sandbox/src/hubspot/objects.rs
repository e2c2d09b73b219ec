//! CRM v3 basic object calls: list, read (also by `idProperty`), create, update, archive.

use super::*;

pub(super) async fn list(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
    ObjectKind(kind): ObjectKind,
    RawQuery(q): RawQuery,
) -> Response {
    let pairs = query_pairs(q.as_deref());
    let limit = match param(&pairs, "limit").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return validation("limit must be between 1 and 100"),
    };
    let after: u64 = match param(&pairs, "after").map(str::parse) {
        None => 0,
        Some(Ok(a)) => a,
        Some(Err(_)) => return validation("after must be a paging cursor returned by this API"),
    };
    let archived = bool_param(&pairs, "archived");
    let properties = list_param(&pairs, "properties");
    let associations = list_param(&pairs, "associations");
    let store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
    let mut page: Vec<&Object> = store
        .objects
        .get(&kind)
        .into_iter()
        .flat_map(|m| m.range(after..))
        .map(|(_, o)| o)
        .filter(|o| o.archived_at.is_some() == archived)
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let results: Vec<Value> = page
        .iter()
        .map(|o| {
            render(
                &store,
                kind,
                o,
                properties.as_deref(),
                associations.as_deref(),
            )
        })
        .collect();
    let mut body = json!({ "results": results });
    if more && let Some(last) = page.last() {
        let next = (last.id + 1).to_string();
        body["paging"] = json!({ "next": { "after": next, "link": format!("/crm/v3/objects/{}?after={next}", kind_path(kind)) } });
    }
    ok(StatusCode::OK, &body, h)
}

pub(super) fn kind_path(kind: Kind) -> &'static str {
    match kind {
        Kind::Contacts => "contacts",
        Kind::Companies => "companies",
    }
}

pub(super) async fn read(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
    ObjectKind(kind): ObjectKind,
    Path((_, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let pairs = query_pairs(q.as_deref());
    let store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
    let Some(found) = find(
        &store,
        kind,
        &id,
        param(&pairs, "idProperty"),
        bool_param(&pairs, "archived"),
    ) else {
        return not_found();
    };
    let o = &store.objects[&kind][&found];
    let mut rendered = render(
        &store,
        kind,
        o,
        list_param(&pairs, "properties").as_deref(),
        list_param(&pairs, "associations").as_deref(),
    );
    if let Some(names) = list_param(&pairs, "propertiesWithHistory") {
        rendered["propertiesWithHistory"] = o.history_json(&names);
    }
    ok(StatusCode::OK, &rendered, h)
}

pub(super) async fn create(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
    ObjectKind(kind): ObjectKind,
    body: Bytes,
) -> Response {
    let input = attempt!(parse_json(&body));
    let result = {
        let mut store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
        create_one(&mut store, kind, &input)
    };
    match result {
        Ok((id, rendered)) => {
            hs.save();
            hs.emit(kind, "creation", id, None);
            ok(StatusCode::CREATED, &rendered, h)
        }
        Err(r) => r,
    }
}

pub(super) fn create_one(
    store: &mut Store,
    kind: Kind,
    input: &Value,
) -> Result<(u64, Value), Response> {
    let props = clean_properties(kind, input.get("properties").unwrap_or(&Value::Null))?;
    if kind == Kind::Contacts
        && let Some(email) = props.get("email").filter(|e| !e.is_empty())
        && let Some(existing) = email_conflict(store, email, None)
    {
        return Err(conflict(existing));
    }
    let mut links = Vec::new();
    for (i, a) in input["associations"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let to_id: Option<u64> = a["to"]["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| a["to"]["id"].as_u64());
        let type_id = a["types"][0]["associationTypeId"].as_u64().unwrap_or(0) as u32;
        let to_kind = match (kind, type_id) {
            (Kind::Contacts, ASSOC_CONTACT_TO_COMPANY | 1) => Kind::Companies,
            (Kind::Companies, ASSOC_COMPANY_TO_CONTACT | 2) => Kind::Contacts,
            _ => {
                return Err(validation(&format!(
                    "associations[{i}]: association type {type_id} is not valid for {}",
                    kind_path(kind)
                )));
            }
        };
        let Some(to_id) = to_id.filter(|id| {
            store
                .objects
                .get(&to_kind)
                .and_then(|m| m.get(id))
                .is_some_and(|o| o.archived_at.is_none())
        }) else {
            return Err(validation(&format!(
                "associations[{i}].to.id: no {} with that id",
                to_kind.singular()
            )));
        };
        links.push(to_id);
    }
    let id = insert(store, kind, props, now_ms());
    for to in links {
        store.associations.insert(match kind {
            Kind::Contacts => (id, to),
            Kind::Companies => (to, id),
        });
    }
    let o = &store.objects[&kind][&id];
    let wanted: Vec<String> = o.properties.keys().cloned().collect();
    Ok((id, render(store, kind, o, Some(&wanted), None)))
}

pub(super) async fn update(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
    ObjectKind(kind): ObjectKind,
    Path((_, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let pairs = query_pairs(q.as_deref());
    let input = attempt!(parse_json(&body));
    let result = {
        let mut store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
        match find(&store, kind, &id, param(&pairs, "idProperty"), false) {
            None => Err(not_found()),
            Some(found) => update_one(&mut store, kind, found, &input),
        }
    };
    match result {
        Ok((id, rendered, changed)) => {
            hs.save();
            for (name, value) in &changed {
                hs.emit(kind, "propertyChange", id, Some((name, value)));
            }
            ok(StatusCode::OK, &rendered, h)
        }
        Err(r) => r,
    }
}

pub(super) type Updated = (u64, Value, Vec<(String, String)>);
/// (object id, subscription, changed property) of a webhook event to send after a batch.
pub(super) type PendingEvent = (u64, &'static str, Option<(String, String)>);

pub(super) fn update_one(
    store: &mut Store,
    kind: Kind,
    id: u64,
    input: &Value,
) -> Result<Updated, Response> {
    let props = clean_properties(kind, input.get("properties").unwrap_or(&Value::Null))?;
    if kind == Kind::Contacts
        && let Some(email) = props.get("email").filter(|e| !e.is_empty())
        && let Some(existing) = email_conflict(store, email, Some(id))
    {
        return Err(conflict(existing));
    }
    let now = now_ms();
    let o = store
        .objects
        .get_mut(&kind)
        .and_then(|m| m.get_mut(&id))
        .ok_or_else(not_found)?;
    let mut changed = Vec::new();
    for (k, v) in props {
        if o.properties.get(&k) != Some(&v) {
            changed.push((k.clone(), v.clone()));
            o.set(k, v, now);
        }
    }
    if !changed.is_empty() {
        o.updated_at = now;
        o.set(kind.modified_property().into(), iso_ms(now), now);
    }
    let wanted: Vec<String> = o.properties.keys().cloned().collect();
    let o = &store.objects[&kind][&id];
    Ok((id, render(store, kind, o, Some(&wanted), None), changed))
}

pub(super) async fn archive(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
    ObjectKind(kind): ObjectKind,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    let archived = {
        let mut store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
        archive_one(&mut store, kind, &id)
    };
    if let Some(id) = archived {
        hs.save();
        hs.emit(kind, "deletion", id, None);
    }
    // HubSpot answers 204 for unknown ids too.
    with_headers(StatusCode::NO_CONTENT.into_response(), h)
}

pub(super) fn archive_one(store: &mut Store, kind: Kind, id: &str) -> Option<u64> {
    let id: u64 = id.parse().ok()?;
    let o = store.objects.get_mut(&kind)?.get_mut(&id)?;
    if o.archived_at.is_some() {
        return None;
    }
    o.archived_at = Some(now_ms());
    Some(id)
}

/// `POST /crm/v3/objects/contacts/gdpr-delete`: deletes a contact for good (it cannot be
/// read, even with `archived=true`, or restored), with its associations.
pub(super) async fn gdpr_delete(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
    ObjectKind(kind): ObjectKind,
    body: Bytes,
) -> Response {
    if kind != Kind::Contacts {
        return not_found();
    }
    let input = attempt!(parse_json(&body));
    let Some(key) = input["objectId"].as_str().map(str::to_string) else {
        return validation("objectId is required");
    };
    let removed = {
        let mut store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
        // Live or archived: a GDPR deletion takes both.
        let id_property = input["idProperty"].as_str();
        let found = find(&store, kind, &key, id_property, false)
            .or_else(|| find(&store, kind, &key, id_property, true));
        match found {
            Some(id) => {
                store.objects.entry(kind).or_default().remove(&id);
                store.associations.retain(|(contact, _)| *contact != id);
                Some(id)
            }
            None => None,
        }
    };
    match removed {
        Some(id) => {
            hs.save();
            hs.emit(kind, "privacyDeletion", id, None);
            with_headers(StatusCode::NO_CONTENT.into_response(), h)
        }
        None => not_found(),
    }
}
