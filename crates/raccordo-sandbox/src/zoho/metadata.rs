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
                "currency": "Euro - EUR", "iso_code": "EUR", "type": "production",
                "license_details": {
                    "paid_expiry": null, "users_license_purchased": 10, "trial_type": null,
                    "trial_expiry": null, "paid": true, "paid_type": "enterprise",
                }
            }]
        }),
    )
}

pub(super) fn field_json(module: Module, i: usize, f: &FieldSpec) -> Value {
    let label = f.api_name.replace('_', " ");
    let mut v = json!({
        "api_name": f.api_name, "field_label": label, "display_label": label, "data_type": f.data_type,
        "decimal_place": if f.data_type == "currency" || f.data_type == "double" { json!(2) } else { Value::Null },
        "visible": true, "field_read_only": false, "column_name": f.api_name.to_uppercase(),
        "json_type": f.json_type, "system_mandatory": f.mandatory, "custom_field": f.api_name.starts_with("AI_") || ["Lifecycle_Stage", "Lead_Status"].contains(&f.api_name),
        "read_only": false, "length": if f.data_type == "textarea" { 32000 } else { 255 },
        "id": format!("{}{:03}", &module.module_id()[..16], i + 100),
        "unique": { "casesensitive": if f.unique { "false" } else { "" } },
    });
    if f.data_type == "picklist" {
        let options: &[&str] = match f.api_name {
            "Lifecycle_Stage" => &[
                "Subscriber",
                "Lead",
                "Marketing Qualified Lead",
                "Sales Qualified Lead",
                "Opportunity",
                "Customer",
                "Evangelist",
                "Other",
            ],
            "Lead_Status" => &[
                "New",
                "Open",
                "In Progress",
                "Open Deal",
                "Unqualified",
                "Attempted to Contact",
                "Connected",
                "Bad Timing",
            ],
            "Lead_Source" => &[
                "Advertisement",
                "Cold Call",
                "Partner",
                "Trade Show",
                "Web Download",
                "Web Research",
            ],
            "Industry" => &[
                "Agricoltura",
                "Alimentare",
                "Edilizia",
                "Informatica",
                "Manifattura",
                "Moda",
                "Servizi",
                "Turismo",
            ],
            _ => &[],
        };
        v["pick_list_values"] = Value::Array(
            std::iter::once("-None-")
                .chain(options.iter().copied())
                .enumerate()
                .map(|(i, o)| json!({ "display_value": o, "actual_value": o, "sequence_number": i, "type": "used", "id": format!("{}{:03}", &module.module_id()[..16], 500 + i) }))
                .collect(),
        );
    }
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

/// `GET /crm/v8/settings/modules/{module}`: one module's metadata.
pub(super) async fn module(Path(name): Path<String>, _: Admitted) -> Response {
    let Some(m) = Module::parse(&name) else {
        return zoho_error(
            StatusCode::BAD_REQUEST,
            "INVALID_MODULE",
            "the module name given seems to be invalid",
            json!({ "resource_path_index": 0 }),
        );
    };
    let singular = match m {
        Module::Contacts => "Contact",
        Module::Accounts => "Account",
    };
    json_response(
        StatusCode::OK,
        JSON,
        &json!({ "modules": [{
            "api_name": m.name(), "module_name": m.name(), "id": m.module_id(), "plural_label": m.name(),
            "singular_label": singular, "api_supported": true, "generated_type": "default", "creatable": true,
            "editable": true, "deletable": true, "viewable": true, "status": "visible",
            "fields": m.fields().iter().enumerate().map(|(i, f)| field_json(m, i, f)).collect::<Vec<_>>(),
        }] }),
    )
}
