//! The metadata calls the official SDK makes: users, org, fields and modules.

use super::*;

pub(super) async fn users(_: Admitted) -> Response {
    json_response(
        StatusCode::OK,
        JSON,
        &json!({
            "users": [{
                "id": USER_ID, "full_name": "Sandbox Admin", "first_name": "Sandbox", "last_name": "Admin",
                "email": "admin@raccordo-sandbox.it", "status": "active", "time_zone": "UTC", "locale": "it_IT",
                "role": { "name": "CEO", "id": "4876876000000026005" },
                "profile": { "name": "Administrator", "id": "4876876000000026011" }
            }],
            "info": { "per_page": 200, "count": 1, "page": 1, "more_records": false }
        }),
    )
}

pub(super) async fn org(_: Admitted) -> Response {
    json_response(
        StatusCode::OK,
        JSON,
        &json!({
            "org": [{
                "id": "4876876000000225011", "company_name": "raccordo sandbox S.r.l.", "zgid": "20091234",
                "primary_email": "admin@raccordo-sandbox.it", "country_code": "IT", "time_zone": "UTC",
                "currency": "Euro - EUR", "iso_code": "EUR", "type": "production"
            }]
        }),
    )
}

pub(super) fn field_json(module: Module, i: usize, f: &FieldSpec) -> Value {
    let mut v = json!({
        "api_name": f.api_name, "field_label": f.api_name.replace('_', " "), "data_type": f.data_type,
        "json_type": f.json_type, "system_mandatory": f.mandatory, "custom_field": f.api_name.starts_with("AI_") || ["Lifecycle_Stage", "Lead_Status"].contains(&f.api_name),
        "read_only": false, "length": if f.data_type == "textarea" { 32000 } else { 255 },
        "id": format!("{}{:03}", &module.module_id()[..16], i + 100),
        "unique": { "casesensitive": if f.unique { "false" } else { "" } },
    });
    if f.data_type == "lookup" {
        v["lookup"] = json!({ "module": { "api_name": "Accounts", "id": Module::Accounts.module_id() }, "display_label": "Account Name", "api_name": "Account_Name" });
    }
    v
}

pub(super) async fn fields(RawQuery(q): RawQuery, _: Admitted) -> Response {
    let pairs = query_pairs(q.as_deref());
    let Some((_, name)) = pairs.iter().find(|(k, _)| k == "module") else {
        return required_param_missing("module");
    };
    let Some(module) = Module::parse(name) else {
        return zoho_error(
            StatusCode::BAD_REQUEST,
            "INVALID_MODULE",
            "the module name given seems to be invalid",
            json!({ "param_name": "module" }),
        );
    };
    let mut list: Vec<Value> = module
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| field_json(module, i, f))
        .collect();
    for (i, (name, t)) in [
        ("Owner", "ownerlookup"),
        ("Created_Time", "datetime"),
        ("Modified_Time", "datetime"),
        ("Created_By", "ownerlookup"),
        ("Modified_By", "ownerlookup"),
    ]
    .iter()
    .enumerate()
    {
        let mut v = field_json(module, 50 + i, &field(name, t));
        v["read_only"] = json!(true);
        list.push(v);
    }
    json_response(StatusCode::OK, JSON, &json!({ "fields": list }))
}

pub(super) async fn modules(_: Admitted) -> Response {
    let m = |m: Module, singular: &str| {
        json!({
            "api_name": m.name(), "module_name": m.name(), "id": m.module_id(), "plural_label": m.name(),
            "singular_label": singular, "api_supported": true, "generated_type": "default", "creatable": true,
            "editable": true, "deletable": true, "viewable": true
        })
    };
    json_response(
        StatusCode::OK,
        JSON,
        &json!({ "modules": [m(Module::Contacts, "Contact"), m(Module::Accounts, "Account")] }),
    )
}
