//! CRM v4 associations: default and labelled links between contacts and companies.

use super::*;

pub(super) fn pair(from: Kind, from_id: u64, to: Kind, to_id: u64) -> Option<(u64, u64)> {
    match (from, to) {
        (Kind::Contacts, Kind::Companies) => Some((from_id, to_id)),
        (Kind::Companies, Kind::Contacts) => Some((to_id, from_id)),
        _ => None,
    }
}

pub(super) fn type_id(from: Kind) -> u32 {
    match from {
        Kind::Contacts => ASSOC_CONTACT_TO_COMPANY,
        Kind::Companies => ASSOC_COMPANY_TO_CONTACT,
    }
}

impl HubSpot {
    /// Associates two live objects and saves; answers 404 or 400 as HubSpot does.
    fn link(&self, from: Kind, id: &str, to: Kind, to_id: &str) -> Result<(u64, u64), Response> {
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let (Some(a), Some(b)) = (
            find(&store, from, id, None, false),
            find(&store, to, to_id, None, false),
        ) else {
            return Err(not_found());
        };
        let p = pair(from, a, to, b).ok_or_else(|| {
            validation("contacts associate with companies, and companies with contacts")
        })?;
        store.associations.insert(p);
        drop(store);
        self.save();
        Ok((a, b))
    }
}

/// The two object types of an association call; the sandbox links contacts and companies.
pub(super) fn linked_kinds(from: &str, to: &str) -> Result<(Kind, Kind), Response> {
    match (Kind::parse(from), Kind::parse(to)) {
        (Some(from), Some(to)) => Ok((from, to)),
        _ => Err(validation(
            "unsupported object types; the sandbox associates contacts and companies",
        )),
    }
}

pub(super) async fn associate(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
    Path((kind, id, to, to_id)): Path<(String, String, String, String)>,
) -> Response {
    let (from, to) = attempt!(linked_kinds(&kind, &to));
    let started = now_ms();
    attempt!(hs.link(from, &id, to, &to_id));
    let spec = |f: Kind, fid: &str, tid: &str| json!({ "from": {"id": fid}, "to": {"id": tid}, "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id(f)} });
    let (status, body) = batch_envelope(
        vec![spec(from, &id, &to_id), spec(to, &to_id, &id)],
        vec![],
        started,
    );
    ok(status, &body, h)
}

pub(super) async fn list_associations(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
    Path((kind, id, to)): Path<(String, String, String)>,
) -> Response {
    let (from, to) = attempt!(linked_kinds(&kind, &to));
    let store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
    let Some(found) = find(&store, from, &id, None, false) else {
        return not_found();
    };
    let results: Vec<Value> = associated(&store, from, found, to)
        .into_iter()
        .map(|to_id| json!({ "toObjectId": to_id, "associationTypes": [{ "category": "HUBSPOT_DEFINED", "typeId": type_id(from), "label": null }] }))
        .collect();
    ok(StatusCode::OK, &json!({ "results": results }), h)
}

/// The labelled form: the body is an array of `{associationCategory, associationTypeId}`;
/// the sandbox knows HubSpot's defined contact↔company types (unlabelled and primary).
pub(super) async fn associate_labelled(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
    Path((kind, id, to, to_id)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    let (from, to) = attempt!(linked_kinds(&kind, &to));
    let specs = attempt!(parse_json(&body));
    let Some(specs) = specs.as_array().filter(|a| !a.is_empty()) else {
        return validation("the body must be a non-empty array of association types");
    };
    let allowed: &[u64] = match from {
        Kind::Contacts => &[ASSOC_CONTACT_TO_COMPANY as u64, 1],
        Kind::Companies => &[ASSOC_COMPANY_TO_CONTACT as u64, 2],
    };
    for (i, spec) in specs.iter().enumerate() {
        let type_id = spec["associationTypeId"].as_u64().unwrap_or(0);
        if spec["associationCategory"] != "HUBSPOT_DEFINED" || !allowed.contains(&type_id) {
            return validation(&format!(
                "[{i}]: association type {type_id} ({}) is not defined from {} to {}",
                spec["associationCategory"],
                kind_path(from),
                kind_path(to)
            ));
        }
    }
    let (a, b) = attempt!(hs.link(from, &id, to, &to_id));
    let type_id = |k: Kind| match k {
        Kind::Contacts => "0-1",
        Kind::Companies => "0-2",
    };
    ok(
        StatusCode::CREATED,
        &json!({
            "fromObjectTypeId": type_id(from),
            "fromObjectId": a,
            "toObjectTypeId": type_id(to),
            "toObjectId": b,
            "labels": [],
        }),
        h,
    )
}

pub(super) async fn dissociate(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
    Path((kind, id, to, to_id)): Path<(String, String, String, String)>,
) -> Response {
    let (from, to) = attempt!(linked_kinds(&kind, &to));
    if let (Ok(a), Ok(b)) = (id.parse(), to_id.parse())
        && let Some(p) = pair(from, a, to, b)
    {
        hs.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .associations
            .remove(&p);
        hs.save();
    }
    with_headers(StatusCode::NO_CONTENT.into_response(), h)
}
