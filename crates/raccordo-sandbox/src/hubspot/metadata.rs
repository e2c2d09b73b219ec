//! The metadata calls connectors make before any record call: properties (v3 and the legacy
//! v2 list) with types and picklist options, schemas, owners, pipelines, account details,
//! access-token metadata, and the v4 batch read of associations.

use super::*;

/// (name, label, type, fieldType, options) of a property the sandbox knows.
type PropertySpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

const LEAD_STATUS: [&str; 8] = [
    "NEW",
    "OPEN",
    "IN_PROGRESS",
    "OPEN_DEAL",
    "UNQUALIFIED",
    "ATTEMPTED_TO_CONTACT",
    "CONNECTED",
    "BAD_TIMING",
];

fn spec(kind: Kind, name: &'static str) -> PropertySpec {
    match name {
        "lifecyclestage" => (
            name,
            "Lifecycle Stage",
            "enumeration",
            "radio",
            &LIFECYCLE_STAGES,
        ),
        "hs_lead_status" => (name, "Lead Status", "enumeration", "radio", &LEAD_STATUS),
        "email" => (name, "Email", "string", "text", &[]),
        "phone" | "mobilephone" => (name, "Phone Number", "string", "phonenumber", &[]),
        "annualrevenue" | "numberofemployees" => (name, "Number", "number", "number", &[]),
        "createdate" | "lastmodifieddate" | "hs_lastmodifieddate" => {
            (name, "Date", "datetime", "date", &[])
        }
        "hs_object_id" => (name, "Record ID", "number", "number", &[]),
        _ => {
            let _ = kind;
            (name, "Text", "string", "text", &[])
        }
    }
}

fn property_json(kind: Kind, name: &'static str, v2: bool) -> Value {
    let (name, label, t, field_type, options) = spec(kind, name);
    let read_only = !kind.writable().contains(&name);
    let options: Vec<Value> = options
        .iter()
        .enumerate()
        .map(|(i, o)| {
            json!({ "label": o.replace('_', " "), "value": o, "displayOrder": i, "hidden": false })
        })
        .collect();
    if v2 {
        return json!({
            "name": name, "label": label, "type": t, "fieldType": field_type,
            "groupName": format!("{}information", kind.singular()), "options": options,
            "readOnlyValue": read_only, "hidden": false, "calculated": false, "hubspotDefined": true,
        });
    }
    json!({
        "name": name, "label": label, "type": t, "fieldType": field_type,
        "groupName": format!("{}information", kind.singular()), "options": options,
        "displayOrder": -1, "calculated": false, "externalOptions": false, "hasUniqueValue": name == "email" || name == "hs_object_id",
        "hidden": false, "hubspotDefined": true, "formField": !read_only,
        "modificationMetadata": { "archivable": false, "readOnlyDefinition": true, "readOnlyValue": read_only },
        "createdAt": "2019-08-06T02:41:08.029Z", "updatedAt": "2019-08-06T02:41:08.029Z", "archived": false,
    })
}

fn all_properties(kind: Kind) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = kind.writable().to_vec();
    for extra in ["hs_object_id", "createdate", kind.modified_property()] {
        if !names.contains(&extra) {
            names.push(extra);
        }
    }
    names
}

/// `GET /crm/v3/properties/{kind}`.
pub(super) async fn list_properties(
    ObjectKind(kind): ObjectKind,
    Admitted(h): Admitted,
) -> Response {
    let results: Vec<Value> = all_properties(kind)
        .into_iter()
        .map(|n| property_json(kind, n, false))
        .collect();
    ok(StatusCode::OK, &json!({ "results": results }), h)
}

/// `GET /crm/v3/properties/{kind}/{name}`.
pub(super) async fn read_property(
    ObjectKind(kind): ObjectKind,
    Admitted(h): Admitted,
    Path((_, name)): Path<(String, String)>,
) -> Response {
    match all_properties(kind).into_iter().find(|n| *n == name) {
        Some(n) => ok(StatusCode::OK, &property_json(kind, n, false), h),
        None => error(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            &format!(
                "Unable to find property {name} on object type {}",
                kind.singular()
            ),
        ),
    }
}

/// The legacy `GET /properties/v2/{kind}/properties` (a bare array).
pub(super) async fn legacy_properties(
    ObjectKind(kind): ObjectKind,
    Admitted(h): Admitted,
) -> Response {
    let list: Vec<Value> = all_properties(kind)
        .into_iter()
        .map(|n| property_json(kind, n, true))
        .collect();
    ok(StatusCode::OK, &Value::Array(list), h)
}

/// `GET /crm/v3/schemas`: custom object schemas; the sandbox has none.
pub(super) async fn schemas(Admitted(h): Admitted) -> Response {
    ok(StatusCode::OK, &json!({ "results": [] }), h)
}

/// `GET /crm/v3/owners`: the one sandbox user.
pub(super) async fn owners(Admitted(h): Admitted) -> Response {
    ok(
        StatusCode::OK,
        &json!({ "results": [{
            "id": "52550153", "email": "admin@raccordo-sandbox.it", "firstName": "Sandbox", "lastName": "Admin",
            "userId": 7_191_121, "userIdIncludingInactive": 7_191_121, "teams": [],
            "createdAt": "2024-01-10T09:00:00.000Z", "updatedAt": "2024-01-10T09:00:00.000Z", "archived": false,
        }] }),
        h,
    )
}

/// `GET /crm/v3/pipelines/{objectType}`: the default pipeline of deals and tickets.
pub(super) async fn pipelines(Admitted(h): Admitted, Path(object): Path<String>) -> Response {
    let stages: &[(&str, &str)] = match object.as_str() {
        "deals" | "0-3" => &[
            ("appointmentscheduled", "Appointment Scheduled"),
            ("qualifiedtobuy", "Qualified To Buy"),
            ("closedwon", "Closed Won"),
            ("closedlost", "Closed Lost"),
        ],
        "tickets" | "0-5" => &[("1", "New"), ("2", "Waiting on contact"), ("4", "Closed")],
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                &format!("Unable to get pipelines for object type {object}"),
            );
        }
    };
    let stages: Vec<Value> = stages
        .iter()
        .enumerate()
        .map(|(i, (id, label))| {
            json!({ "id": id, "label": label, "displayOrder": i, "metadata": {}, "archived": false,
            "createdAt": "2024-01-10T09:00:00.000Z", "updatedAt": "2024-01-10T09:00:00.000Z" })
        })
        .collect();
    ok(
        StatusCode::OK,
        &json!({ "results": [{ "id": "default", "label": "Pipeline", "displayOrder": 0, "stages": stages, "archived": false,
            "createdAt": "2024-01-10T09:00:00.000Z", "updatedAt": "2024-01-10T09:00:00.000Z" }] }),
        h,
    )
}

/// `GET /account-info/v3/details`.
pub(super) async fn account_details(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
) -> Response {
    ok(
        StatusCode::OK,
        &json!({
            "portalId": hs.options.portal_id, "accountType": "STANDARD", "timeZone": "Europe/Rome",
            "companyCurrency": "EUR", "additionalCurrencies": [], "utcOffset": "+01:00",
            "utcOffsetMilliseconds": 3_600_000, "uiDomain": "app-eu1.hubspot.com", "dataHostingLocation": "eu1",
        }),
        h,
    )
}

/// `GET /oauth/v1/access-tokens/{token}`: what an OAuth access token is.
pub(super) async fn access_token_info(
    State(hs): State<Arc<HubSpot>>,
    Path(token): Path<String>,
) -> Response {
    let expiry = hs
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .access
        .get(&token)
        .copied();
    match expiry.filter(|e| *e > now_ms()) {
        Some(e) => json_response(
            StatusCode::OK,
            JSON,
            &json!({
                "token": token, "user": "admin@raccordo-sandbox.it", "hub_domain": "raccordo-sandbox.hubspot.com",
                "scopes": ["oauth", "crm.objects.contacts.read", "crm.objects.contacts.write", "crm.objects.companies.read", "crm.objects.companies.write"],
                "hub_id": hs.options.portal_id, "app_id": hs.options.app_id, "expires_in": (e - now_ms()) / 1000,
                "user_id": 7_191_121, "token_type": "access",
            }),
        ),
        None => error(
            StatusCode::NOT_FOUND,
            "BAD_ACCESS_TOKEN",
            "access token not found or expired",
        ),
    }
}

/// `POST /crm/v4/associations/{from}/{to}/batch/read`: the associations of up to 1000 records.
pub(super) async fn batch_read_associations(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted,
    Path((from, to)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (Some(from), Some(to)) = (Kind::parse(&from), Kind::parse(&to)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "unknown object type",
        );
    };
    let input = attempt!(parse_json(&body));
    let Some(inputs) = input["inputs"].as_array() else {
        return validation("Invalid input JSON: `inputs` must be an array");
    };
    if inputs.is_empty() || inputs.len() > 1000 {
        return validation("inputs: size must be between 1 and 1000");
    }
    let store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
    let (type_id, label_from_contact) = match (from, to) {
        (Kind::Contacts, Kind::Companies) => (ASSOC_CONTACT_TO_COMPANY, true),
        (Kind::Companies, Kind::Contacts) => (ASSOC_COMPANY_TO_CONTACT, false),
        _ => return validation("only contact ↔ company associations exist in the sandbox"),
    };
    let mut results = Vec::new();
    for i in inputs {
        let Some(id) = input_id(i).parse::<u64>().ok() else {
            continue;
        };
        let linked: Vec<Value> = store
            .associations
            .iter()
            .filter(|(c, co)| if label_from_contact { *c == id } else { *co == id })
            .map(|(c, co)| {
                let other = if label_from_contact { co } else { c };
                json!({ "toObjectId": other, "associationTypes": [{ "category": "HUBSPOT_DEFINED", "typeId": type_id, "label": null }] })
            })
            .collect();
        results.push(json!({ "from": { "id": id.to_string() }, "to": linked }));
    }
    let now = iso_ms(now_ms());
    ok(
        StatusCode::OK,
        &json!({ "status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now }),
        h,
    )
}
