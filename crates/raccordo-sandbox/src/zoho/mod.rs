//! The parts of the Zoho CRM v8 API raccordo uses, as Zoho answers them: OAuth refresh
//! grants on `/oauth/v2/token`, the metadata calls the official SDK makes (users, org,
//! settings/fields, settings/modules), Contacts and Accounts records (list, get, insert,
//! update, upsert, delete, search, deleted), API limits, and the notifications API
//! (`/crm/v8/actions/watch`) with callbacks to the channel's `notify_url`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::knobs::{Controls, FaultStyle, json_response, now_ms};
use crate::{Persist, list_param, query_pairs, random_token};

mod coql;
mod criteria;
mod metadata;
mod notifications;
mod oauth;
mod records;
use criteria::*;
pub use criteria::{Criteria, parse_criteria};
use metadata::*;
use notifications::*;
use oauth::*;
use records::*;

const JSON: &str = "application/json;charset=UTF-8";
const FIRST_ID: u64 = 4_876_876_000_000_371_001;
const MAX_RECORDS_PER_CALL: usize = 100;
const WEEK_MS: i64 = 7 * 86_400_000;

#[derive(Debug, Clone)]
pub struct ZohoOptions {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    /// The base URL the sandbox is reached at; echoed as `api_domain` in token answers so
    /// the official SDK keeps calling the sandbox.
    pub api_domain: String,
    pub access_token_ttl: Duration,
    /// API credits per rolling 24 hours.
    pub daily_credits: u32,
    /// Calls in progress at once (Enterprise edition: 20).
    pub concurrency: u32,
    pub seed: u64,
    pub seed_accounts: usize,
    pub seed_contacts: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Module {
    Contacts,
    Accounts,
}

struct FieldSpec {
    api_name: &'static str,
    data_type: &'static str,
    json_type: &'static str,
    mandatory: bool,
    unique: bool,
}

const fn field(api_name: &'static str, data_type: &'static str) -> FieldSpec {
    let json_type = match data_type.as_bytes() {
        b"lookup" | b"ownerlookup" => "jsonobject",
        _ => "string",
    };
    FieldSpec {
        api_name,
        data_type,
        json_type,
        mandatory: false,
        unique: false,
    }
}

const CONTACT_FIELDS: [FieldSpec; 14] = [
    FieldSpec {
        mandatory: true,
        ..field("Last_Name", "text")
    },
    field("First_Name", "text"),
    // Sandbox choice: Email is a unique field, so DUPLICATE_DATA can be exercised.
    FieldSpec {
        unique: true,
        ..field("Email", "email")
    },
    field("Phone", "phone"),
    field("Mobile", "phone"),
    field("Account_Name", "lookup"),
    field("Lead_Source", "picklist"),
    field("Mailing_City", "text"),
    field("Title", "text"),
    field("Description", "textarea"),
    field("AI_Sentiment", "text"),
    field("AI_Summary", "textarea"),
    // Custom picklists a HubSpot-synced org adds (raccordo's default contact mapping
    // carries lifecycle stage and lead status in them).
    field("Lifecycle_Stage", "picklist"),
    field("Lead_Status", "picklist"),
];

const ACCOUNT_FIELDS: [FieldSpec; 7] = [
    FieldSpec {
        mandatory: true,
        unique: true,
        ..field("Account_Name", "text")
    },
    field("Website", "website"),
    field("Phone", "phone"),
    field("Billing_City", "text"),
    field("Industry", "picklist"),
    field("Description", "textarea"),
    field("AI_Summary", "textarea"),
];

impl Module {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "Contacts" => Some(Module::Contacts),
            "Accounts" => Some(Module::Accounts),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Module::Contacts => "Contacts",
            Module::Accounts => "Accounts",
        }
    }
    fn fields(self) -> &'static [FieldSpec] {
        match self {
            Module::Contacts => &CONTACT_FIELDS,
            Module::Accounts => &ACCOUNT_FIELDS,
        }
    }
    fn module_id(self) -> &'static str {
        match self {
            Module::Contacts => "4876876000000002179",
            Module::Accounts => "4876876000000002177",
        }
    }
    fn default_duplicate_check(self) -> &'static str {
        match self {
            Module::Contacts => "Email",
            Module::Accounts => "Account_Name",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub fields: Map<String, Value>,
    pub created_ms: i64,
    pub modified_ms: i64,
    pub deleted_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Channel {
    pub channel_id: i64,
    pub events: Vec<String>,
    pub token: Option<String>,
    pub notify_url: String,
    pub expiry_ms: i64,
    pub return_affected_field_values: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Store {
    next_id: u64,
    records: BTreeMap<Module, BTreeMap<u64, Record>>,
    channels: BTreeMap<i64, Channel>,
}

#[derive(Default)]
struct Tokens {
    /// access token → expiry
    access: HashMap<String, i64>,
    /// one-use authorization codes → expiry
    codes: HashMap<String, i64>,
    /// refresh grants in the last 10 minutes (Zoho allows 10)
    grants: crate::SlidingLimit,
    credits: crate::SlidingLimit,
}

pub struct Zoho {
    options: ZohoOptions,
    store: Mutex<Store>,
    tokens: Mutex<Tokens>,
    in_flight: AtomicU32,
    persist: Persist,
    client: reqwest::Client,
}

pub struct ZohoFaults;

fn zoho_error(status: StatusCode, code: &str, message: &str, details: Value) -> Response {
    json_response(
        status,
        JSON,
        &json!({ "code": code, "details": details, "message": message, "status": "error" }),
    )
}

impl FaultStyle for ZohoFaults {
    fn throttled(&self) -> Response {
        zoho_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REQUESTS",
            "The maximum number of concurrent requests or API credits has been exceeded",
            json!({}),
        )
    }
    fn server_error(&self) -> Response {
        zoho_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "Internal Server Error",
            json!({}),
        )
    }
    fn unavailable(&self) -> Response {
        zoho_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "INTERNAL_ERROR",
            "Service temporarily unavailable",
            json!({}),
        )
    }
}

/// `2026-11-22T18:51:00+00:00`: ISO 8601 with offset, seconds precision, as Zoho writes it.
fn zoho_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+00:00",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn parse_time(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

const USER_ID: &str = "4876876000000225013";

fn owner() -> Value {
    json!({ "name": "Sandbox Admin", "id": USER_ID, "email": "admin@raccordo-sandbox.it" })
}

impl Zoho {
    pub fn new(options: ZohoOptions, persist: Persist) -> anyhow::Result<Arc<Self>> {
        let mut store: Store = persist.load()?.unwrap_or_default();
        if store.records.is_empty() {
            seed_store(&mut store, &options);
        }
        let zoho = Arc::new(Self {
            options,
            store: Mutex::new(store),
            tokens: Mutex::new(Tokens::default()),
            in_flight: AtomicU32::new(0),
            persist,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        });
        zoho.save();
        Ok(zoho)
    }

    fn save(&self) {
        self.persist
            .save(&*self.store.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Checks `Authorization: Zoho-oauthtoken …` and the credit limit.
    fn admit(&self, headers: &HeaderMap) -> Result<(), Response> {
        let header = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(token) = header.strip_prefix("Zoho-oauthtoken ") else {
            return Err(zoho_error(
                StatusCode::UNAUTHORIZED,
                "AUTHENTICATION_FAILURE",
                "Authentication failed",
                json!({}),
            ));
        };
        let now = now_ms();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match tokens.access.get(token.trim()) {
            Some(expiry) if *expiry > now => {}
            _ => {
                return Err(zoho_error(
                    StatusCode::UNAUTHORIZED,
                    "INVALID_TOKEN",
                    "invalid oauth token",
                    json!({}),
                ));
            }
        }
        if tokens
            .credits
            .try_take(now, 86_400_000, self.options.daily_credits)
            .is_err()
        {
            return Err(zoho_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_REQUESTS",
                "API credits for the last 24 hours are exhausted",
                json!({}),
            ));
        }
        Ok(())
    }

    fn notify(
        &self,
        module: Module,
        operation: &str,
        changes: Vec<(u64, Vec<String>, Map<String, Value>)>,
    ) {
        if changes.is_empty() {
            return;
        }
        let now = now_ms();
        let event = format!(
            "{}.{}",
            module.name(),
            match operation {
                "insert" => "create",
                "update" => "edit",
                _ => "delete",
            }
        );
        let all = format!("{}.all", module.name());
        let channels: Vec<Channel> = self
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .channels
            .values()
            .filter(|c| c.expiry_ms > now && c.events.iter().any(|e| *e == event || *e == all))
            .cloned()
            .collect();
        for channel in channels {
            let query_params: Map<String, Value> = channel
                .notify_url
                .split_once('?')
                .map(|(_, q)| {
                    query_pairs(Some(q))
                        .into_iter()
                        .map(|(k, v)| (k, json!(v)))
                        .collect()
                })
                .unwrap_or_default();
            let mut payload = json!({
                "server_time": now,
                "query_params": query_params,
                "module": module.name(),
                "resource_uri": format!("{}/crm/v2/{}", self.options.api_domain, module.name()),
                "ids": changes.iter().map(|(id, _, _)| id.to_string()).collect::<Vec<_>>(),
                "affected_fields": changes.iter().map(|(id, f, _)| json!({ id.to_string(): f })).collect::<Vec<_>>(),
                "operation": operation,
                "channel_id": channel.channel_id.to_string(),
                "token": channel.token,
            });
            if channel.return_affected_field_values && operation == "update" {
                payload["affected_values"] = json!(
                    changes
                        .iter()
                        .map(|(id, _, v)| json!({ "record_id": id.to_string(), "values": v }))
                        .collect::<Vec<_>>()
                );
            }
            let client = self.client.clone();
            tokio::spawn(async move {
                for attempt in 0..3u32 {
                    match client.post(&channel.notify_url).json(&payload).send().await {
                        Ok(r) if r.status().is_success() => return,
                        _ => tokio::time::sleep(Duration::from_millis(500 << attempt)).await,
                    }
                }
                tracing::warn!(url = %channel.notify_url, "notification callback failed three times");
            });
        }
    }
}

fn seed_store(store: &mut Store, options: &ZohoOptions) {
    let data = crate::seed::generate(
        options.seed ^ 0x5a,
        options.seed_accounts,
        options.seed_contacts,
    );
    // Distinct creation and modification times, a month back (as the HubSpot sandbox).
    let base = now_ms() - 30 * 86_400_000;
    let mut n: i64 = 0;
    let mut at = move || {
        n += 1;
        let created = base + n * 60_000;
        (created, created + (1 + n % 48) * 3_600_000)
    };
    let mut account_ids = Vec::new();
    for c in &data.companies {
        let mut f = Map::new();
        f.insert("Account_Name".into(), json!(c.name));
        f.insert("Website".into(), json!(format!("https://www.{}", c.domain)));
        f.insert("Phone".into(), json!(c.phone));
        f.insert("Billing_City".into(), json!(c.city));
        f.insert("Industry".into(), json!(c.industry));
        account_ids.push((
            {
                let (c, m) = at();
                insert_at(store, Module::Accounts, f, c, m)
            },
            c.name.clone(),
        ));
    }
    for p in &data.contacts {
        let mut f = Map::new();
        f.insert("First_Name".into(), json!(p.first_name));
        f.insert("Last_Name".into(), json!(p.last_name));
        f.insert("Email".into(), json!(p.email));
        f.insert("Phone".into(), json!(p.phone));
        f.insert("Mailing_City".into(), json!(p.city));
        f.insert("Lead_Source".into(), json!("Web Download"));
        if let Some((id, name)) = account_ids.get(p.company) {
            f.insert(
                "Account_Name".into(),
                json!({ "id": id.to_string(), "name": name }),
            );
        }
        {
            let (c, m) = at();
            insert_at(store, Module::Contacts, f, c, m);
        }
    }
}

fn insert(store: &mut Store, module: Module, fields: Map<String, Value>, now: i64) -> u64 {
    insert_at(store, module, fields, now, now)
}

fn insert_at(
    store: &mut Store,
    module: Module,
    fields: Map<String, Value>,
    created: i64,
    now: i64,
) -> u64 {
    store.next_id = store.next_id.max(FIRST_ID - 1) + 1;
    let id = store.next_id;
    store.records.entry(module).or_default().insert(
        id,
        Record {
            id,
            fields,
            created_ms: created,
            modified_ms: now,
            deleted_ms: None,
        },
    );
    id
}

fn render(r: &Record, only: Option<&[String]>) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(r.id.to_string()));
    let include = |name: &str| only.is_none_or(|o| o.iter().any(|f| f == name));
    for (k, v) in &r.fields {
        if include(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in [
        ("Created_Time", json!(zoho_time(r.created_ms))),
        ("Modified_Time", json!(zoho_time(r.modified_ms))),
        ("Owner", owner()),
        ("Created_By", owner()),
        ("Modified_By", owner()),
    ] {
        if include(k) {
            out.insert(k.into(), v);
        }
    }
    Value::Object(out)
}

fn success(message: &str, r: &Record) -> Value {
    json!({
        "code": "SUCCESS",
        "details": {
            "Modified_Time": zoho_time(r.modified_ms),
            "Modified_By": { "name": "Sandbox Admin", "id": USER_ID },
            "Created_Time": zoho_time(r.created_ms),
            "id": r.id.to_string(),
            "Created_By": { "name": "Sandbox Admin", "id": USER_ID },
        },
        "message": message,
        "status": "success",
    })
}

/// Zoho's answer to a call without a parameter it needs.
fn required_param_missing(name: &str) -> Response {
    zoho_error(
        StatusCode::BAD_REQUEST,
        "REQUIRED_PARAM_MISSING",
        "One of the expected parameter is missing",
        json!({ "param_name": name }),
    )
}

fn record_error(code: &str, message: &str, details: Value) -> Value {
    json!({ "code": code, "details": details, "message": message, "status": "error" })
}

/// Checks one record's fields for `module`; `Err` is the per-record error entry.
fn check_record(
    store: &Store,
    module: Module,
    index: usize,
    data: &Map<String, Value>,
    existing: Option<u64>,
) -> Result<Map<String, Value>, Value> {
    let path = |f: &str| format!("$.data[{index}].{f}");
    let mut clean = Map::new();
    for spec in module.fields() {
        let Some(value) = data.get(spec.api_name) else {
            if spec.mandatory && existing.is_none() {
                return Err(record_error(
                    "MANDATORY_NOT_FOUND",
                    "required field not found",
                    json!({ "api_name": spec.api_name, "json_path": path(spec.api_name) }),
                ));
            }
            continue;
        };
        let invalid = |expected: &str| {
            record_error(
                "INVALID_DATA",
                "invalid data",
                json!({ "api_name": spec.api_name, "expected_data_type": expected, "json_path": path(spec.api_name) }),
            )
        };
        match (spec.data_type, value) {
            (_, Value::Null) if spec.mandatory => {
                return Err(record_error(
                    "MANDATORY_NOT_FOUND",
                    "required field not found",
                    json!({ "api_name": spec.api_name, "json_path": path(spec.api_name) }),
                ));
            }
            (_, Value::Null) => {}
            ("lookup", Value::Object(o)) => {
                let id = o.get("id").and_then(|v| {
                    v.as_str()
                        .map(String::from)
                        .or_else(|| v.as_u64().map(|n| n.to_string()))
                });
                let target = id
                    .as_deref()
                    .and_then(|s| s.parse::<u64>().ok())
                    .and_then(|id| store.records.get(&Module::Accounts)?.get(&id))
                    .filter(|r| r.deleted_ms.is_none());
                match target {
                    Some(account) => {
                        let name = account
                            .fields
                            .get("Account_Name")
                            .cloned()
                            .unwrap_or(Value::Null);
                        clean.insert(
                            spec.api_name.into(),
                            json!({ "id": account.id.to_string(), "name": name }),
                        );
                        continue;
                    }
                    None => return Err(invalid("lookup")),
                }
            }
            ("lookup", _) => return Err(invalid("lookup")),
            ("email", Value::String(s))
                if !(s.contains('@') && s.rsplit('@').next().is_some_and(|d| d.contains('.'))) =>
            {
                return Err(invalid("email"));
            }
            (_, Value::String(s)) if s.chars().count() > 255 => return Err(invalid("text")),
            (_, Value::String(s)) if spec.mandatory && s.trim().is_empty() => {
                return Err(record_error(
                    "MANDATORY_NOT_FOUND",
                    "required field not found",
                    json!({ "api_name": spec.api_name, "json_path": path(spec.api_name) }),
                ));
            }
            (_, Value::String(_)) => {}
            (t, _) => return Err(invalid(if t == "email" { "email" } else { "text" })),
        }
        if spec.unique
            && let Some(v) = value.as_str()
        {
            let dup = store
                .records
                .get(&module)
                .into_iter()
                .flat_map(|m| m.values())
                .find(|r| {
                    r.deleted_ms.is_none()
                        && Some(r.id) != existing
                        && r.fields
                            .get(spec.api_name)
                            .and_then(Value::as_str)
                            .is_some_and(|x| x.eq_ignore_ascii_case(v))
                });
            if let Some(dup) = dup {
                return Err(record_error(
                    "DUPLICATE_DATA",
                    "duplicate data",
                    json!({
                        "api_name": spec.api_name,
                        "json_path": path(spec.api_name),
                        "duplicate_record": { "id": dup.id.to_string(), "module": { "api_name": module.name(), "id": module.module_id() }, "Owner": owner() },
                    }),
                ));
            }
        }
        clean.insert(spec.api_name.into(), value.clone());
    }
    Ok(clean)
}

/// A call with a valid access token (metadata and notifications calls; records calls take
/// a `ModuleCall`, which also holds a concurrency slot).
pub(super) struct Admitted;

impl axum::extract::FromRequestParts<Arc<Zoho>> for Admitted {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        z: &Arc<Zoho>,
    ) -> Result<Self, Response> {
        z.admit(&parts.headers).map(|()| Admitted)
    }
}

fn api_routes(version: &str) -> Router<Arc<Zoho>> {
    let at = |path: &str| format!("/crm/{version}{path}");
    Router::new()
        .route(&at("/users"), get(users))
        .route(&at("/coql"), post(coql::coql))
        .route(&at("/org"), get(org))
        .route(&at("/settings/fields"), get(fields))
        .route(&at("/settings/modules"), get(modules))
        .route(&at("/settings/modules/{module}"), get(metadata::module))
        .route(
            &at("/actions/watch"),
            get(list_watch)
                .post(enable_watch)
                .put(enable_watch)
                .patch(patch_watch)
                .delete(disable_watch),
        )
        .route(
            &at("/{module}"),
            get(list).post(create).put(update_many).delete(delete_many),
        )
        .route(&at("/{module}/upsert"), post(upsert))
        .route(&at("/{module}/search"), get(search))
        .route(&at("/{module}/deleted"), get(deleted))
        .route(
            &at("/{module}/{id}"),
            get(read).put(update_one).delete(delete_one),
        )
}

pub fn router(zoho: Arc<Zoho>, controls: Arc<Controls>) -> Router {
    Router::new()
        .route("/oauth/v2/token", post(token))
        .route("/oauth/v2/token/revoke", post(revoke))
        .route("/oauth/v2/auth", get(oauth::authorize))
        .route("/_sandbox/tokens/expire", post(oauth::expire_tokens))
        .merge(api_routes("v8"))
        // The v2 API, which many clients still call: the same calls and answers (`fields`
        // is optional when listing there).
        .merge(api_routes("v2"))
        .with_state(zoho)
        .merge(crate::knobs::admin_routes(controls.clone()))
        .layer(axum::middleware::from_fn_with_state(
            controls,
            crate::knobs::inject,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: Value) -> Record {
        Record {
            id: FIRST_ID,
            fields: fields.as_object().unwrap().clone(),
            created_ms: 0,
            modified_ms: 0,
            deleted_ms: None,
        }
    }

    #[test]
    fn criteria_parse_and_evaluate_like_zoho() {
        let r = record(
            json!({"Email": "mario.rossi@example.it", "Last_Name": "Rossi (Milano)", "Mailing_City": "Milano"}),
        );
        let t = |c: &str| eval(&parse_criteria(c).unwrap(), &r).unwrap();
        assert!(t("(Email:equals:mario.rossi@example.it)"));
        assert!(
            t("(Email:equals:rossi)"),
            "equals on text behaves like contains"
        );
        assert!(t("((Email:equals:nobody)or(Last_Name:starts_with:ros))"));
        assert!(!t("((Email:equals:mario)and(Mailing_City:equals:Roma))"));
        assert!(
            t(r"(Last_Name:equals:Rossi \(Milano\))"),
            "escaped parentheses"
        );
        assert!(parse_criteria("(Email:equals)").is_err());
        assert!(parse_criteria("Email:equals:x").is_err());
        assert!(eval(&parse_criteria("(Email:like:x)").unwrap(), &r).is_err());
    }

    #[test]
    fn records_are_checked_with_zoho_codes() {
        let store = Store::default();
        let data = json!({"First_Name": "Maria"});
        let e =
            check_record(&store, Module::Contacts, 0, data.as_object().unwrap(), None).unwrap_err();
        assert_eq!(e["code"], "MANDATORY_NOT_FOUND");
        assert_eq!(e["details"]["json_path"], "$.data[0].Last_Name");
        let data = json!({"Last_Name": "Rossi", "Email": "not-an-email"});
        let e =
            check_record(&store, Module::Contacts, 3, data.as_object().unwrap(), None).unwrap_err();
        assert_eq!(
            (
                e["code"].as_str(),
                e["details"]["expected_data_type"].as_str()
            ),
            (Some("INVALID_DATA"), Some("email"))
        );
        assert_eq!(zoho_time(1_795_379_460_123), "2026-11-22T20:31:00+00:00");
    }
}
