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
use crate::{Persist, query_pairs, random_token};

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

const CONTACT_FIELDS: [FieldSpec; 12] = [
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
    let now = now_ms();
    let mut account_ids = Vec::new();
    for c in &data.companies {
        let mut f = Map::new();
        f.insert("Account_Name".into(), json!(c.name));
        f.insert("Website".into(), json!(format!("https://www.{}", c.domain)));
        f.insert("Phone".into(), json!(c.phone));
        f.insert("Billing_City".into(), json!(c.city));
        f.insert("Industry".into(), json!(c.industry));
        account_ids.push((insert(store, Module::Accounts, f, now), c.name.clone()));
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
        insert(store, Module::Contacts, f, now);
    }
}

fn insert(store: &mut Store, module: Module, fields: Map<String, Value>, now: i64) -> u64 {
    store.next_id = store.next_id.max(FIRST_ID - 1) + 1;
    let id = store.next_id;
    store.records.entry(module).or_default().insert(
        id,
        Record {
            id,
            fields,
            created_ms: now,
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

pub fn router(zoho: Arc<Zoho>, controls: Arc<Controls>) -> Router {
    Router::new()
        .route("/oauth/v2/token", post(token))
        .route("/oauth/v2/token/revoke", post(revoke))
        .route("/crm/v8/users", get(users))
        .route("/crm/v8/org", get(org))
        .route("/crm/v8/settings/fields", get(fields))
        .route("/crm/v8/settings/modules", get(modules))
        .route(
            "/crm/v8/actions/watch",
            get(list_watch)
                .post(enable_watch)
                .put(enable_watch)
                .patch(patch_watch)
                .delete(disable_watch),
        )
        .route(
            "/crm/v8/{module}",
            get(list).post(create).put(update_many).delete(delete_many),
        )
        .route("/crm/v8/{module}/upsert", post(upsert))
        .route("/crm/v8/{module}/search", get(search))
        .route("/crm/v8/{module}/deleted", get(deleted))
        .route(
            "/crm/v8/{module}/{id}",
            get(read).put(update_one).delete(delete_one),
        )
        .with_state(zoho)
        .merge(crate::knobs::admin_routes(controls.clone()))
        .layer(axum::middleware::from_fn_with_state(
            controls,
            crate::knobs::inject,
        ))
}

// ---------------------------------------------------------------- OAuth

async fn token(State(z): State<Arc<Zoho>>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    // The SDK sends a form body; Zoho also takes the parameters in the query string.
    let mut form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    form.extend(query_pairs(q.as_deref()));
    let answer = |v: Value| json_response(StatusCode::OK, JSON, &v);
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if get("client_id") != z.options.client_id {
        return answer(json!({ "error": "invalid_client" }));
    }
    if get("client_secret") != z.options.client_secret {
        return answer(json!({ "error": "invalid_client_secret" }));
    }
    match get("grant_type") {
        "refresh_token" if get("refresh_token") == z.options.refresh_token => {}
        "refresh_token" | "authorization_code" => {
            return answer(json!({ "error": "invalid_code" }));
        }
        _ => return answer(json!({ "error": "unsupported_grant_type" })),
    }
    let now = now_ms();
    let mut tokens = z.tokens.lock().unwrap_or_else(|p| p.into_inner());
    if tokens.grants.try_take(now, 600_000, 10).is_err() {
        return answer(
            json!({ "error": "Access Denied", "error_description": "You have made too many requests continuously. Please try again after some time.", "status": "failure" }),
        );
    }
    let access = format!("1000.{}", random_token("").get(..32).unwrap_or_default());
    let ttl = z.options.access_token_ttl.as_secs() as i64;
    tokens.access.insert(access.clone(), now + ttl * 1000);
    // At most 15 live access tokens per refresh token: the oldest goes.
    if tokens.access.len() > 15
        && let Some(oldest) = tokens
            .access
            .iter()
            .min_by_key(|(_, e)| **e)
            .map(|(k, _)| k.clone())
    {
        tokens.access.remove(&oldest);
    }
    answer(json!({
        "access_token": access,
        "scope": "ZohoCRM.modules.ALL ZohoCRM.settings.ALL ZohoCRM.users.READ ZohoCRM.org.READ ZohoCRM.notifications.ALL ZohoSearch.securesearch.READ",
        "api_domain": z.options.api_domain,
        "token_type": "Bearer",
        "expires_in": ttl,
    }))
}

async fn revoke(State(z): State<Arc<Zoho>>, RawQuery(q): RawQuery) -> Response {
    if let Some((_, t)) = query_pairs(q.as_deref())
        .into_iter()
        .find(|(k, _)| k == "token")
    {
        z.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .access
            .remove(&t);
    }
    json_response(StatusCode::OK, JSON, &json!({ "status": "success" }))
}

// ---------------------------------------------------------------- metadata

async fn users(State(z): State<Arc<Zoho>>, headers: HeaderMap) -> Response {
    attempt!(z.admit(&headers));
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

async fn org(State(z): State<Arc<Zoho>>, headers: HeaderMap) -> Response {
    attempt!(z.admit(&headers));
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

fn field_json(module: Module, i: usize, f: &FieldSpec) -> Value {
    let mut v = json!({
        "api_name": f.api_name, "field_label": f.api_name.replace('_', " "), "data_type": f.data_type,
        "json_type": f.json_type, "system_mandatory": f.mandatory, "custom_field": f.api_name.starts_with("AI_"),
        "read_only": false, "length": if f.data_type == "textarea" { 32000 } else { 255 },
        "id": format!("{}{:03}", &module.module_id()[..16], i + 100),
        "unique": { "casesensitive": if f.unique { "false" } else { "" } },
    });
    if f.data_type == "lookup" {
        v["lookup"] = json!({ "module": { "api_name": "Accounts", "id": Module::Accounts.module_id() }, "display_label": "Account Name", "api_name": "Account_Name" });
    }
    v
}

async fn fields(State(z): State<Arc<Zoho>>, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    attempt!(z.admit(&headers));
    let pairs = query_pairs(q.as_deref());
    let Some((_, name)) = pairs.iter().find(|(k, _)| k == "module") else {
        return zoho_error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "One of the expected parameter is missing",
            json!({ "param_name": "module" }),
        );
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

async fn modules(State(z): State<Arc<Zoho>>, headers: HeaderMap) -> Response {
    attempt!(z.admit(&headers));
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

// ---------------------------------------------------------------- records

fn module_or_error(name: &str) -> Result<Module, Response> {
    Module::parse(name).ok_or_else(|| {
        zoho_error(
            StatusCode::BAD_REQUEST,
            "INVALID_MODULE",
            "the module name given seems to be invalid",
            json!({ "resource_path_index": 0 }),
        )
    })
}

/// Counts concurrent calls against the edition's limit.
struct Slot<'a>(&'a AtomicU32);
impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn enter<'a>(z: &'a Zoho, headers: &HeaderMap) -> Result<Slot<'a>, Response> {
    z.admit(headers)?;
    let n = z.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let slot = Slot(&z.in_flight);
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

fn body_data(body: &Bytes) -> Result<(Vec<Value>, Value), Response> {
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
        return Err(zoho_error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "One of the expected parameter is missing",
            json!({ "param_name": "data" }),
        ));
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
fn multi(entries: Vec<Value>, ok: StatusCode) -> Response {
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

async fn create(
    State(z): State<Arc<Zoho>>,
    Path(module): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _slot = attempt!(enter(&z, &headers));
    let module = attempt!(module_or_error(&module));
    let (data, _) = attempt!(body_data(&body));
    let mut entries = Vec::new();
    let mut created = Vec::new();
    {
        let mut store = z.store.lock().unwrap_or_else(|p| p.into_inner());
        for (i, d) in data.iter().enumerate() {
            let Some(fields) = d.as_object() else {
                entries.push(record_error(
                    "INVALID_DATA",
                    "invalid data",
                    json!({ "json_path": format!("$.data[{i}]") }),
                ));
                continue;
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
type Applied = (Value, Vec<String>, Map<String, Value>);

fn apply_update(
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

fn id_of(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
}

async fn update_many(
    State(z): State<Arc<Zoho>>,
    Path(module): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    update(z, module, None, headers, body).await
}

async fn update_one(
    State(z): State<Arc<Zoho>>,
    Path((module, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    update(z, module, Some(id), headers, body).await
}

async fn update(
    z: Arc<Zoho>,
    module: String,
    path_id: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _slot = attempt!(enter(&z, &headers));
    let module = attempt!(module_or_error(&module));
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

async fn upsert(
    State(z): State<Arc<Zoho>>,
    Path(module): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _slot = attempt!(enter(&z, &headers));
    let module = attempt!(module_or_error(&module));
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
            let Some(fields) = d.as_object() else {
                entries.push(record_error(
                    "INVALID_DATA",
                    "invalid data",
                    json!({ "json_path": format!("$.data[{i}]") }),
                ));
                continue;
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

async fn delete_one(
    State(z): State<Arc<Zoho>>,
    Path((module, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(z, module, vec![id], headers).await
}

async fn delete_many(
    State(z): State<Arc<Zoho>>,
    Path(module): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let ids: Vec<String> = query_pairs(q.as_deref())
        .into_iter()
        .filter(|(k, _)| k == "ids")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect();
    if ids.is_empty() {
        attempt!(z.admit(&headers));
        return zoho_error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "One of the expected parameter is missing",
            json!({ "param_name": "ids" }),
        );
    }
    delete(z, module, ids, headers).await
}

async fn delete(z: Arc<Zoho>, module: String, ids: Vec<String>, headers: HeaderMap) -> Response {
    let _slot = attempt!(enter(&z, &headers));
    let module = attempt!(module_or_error(&module));
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

async fn read(
    State(z): State<Arc<Zoho>>,
    Path((module, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let _slot = attempt!(enter(&z, &headers));
    let module = attempt!(module_or_error(&module));
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

fn fields_param(q: Option<&str>) -> Option<Vec<String>> {
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

struct Paging {
    page: usize,
    per_page: usize,
    offset: usize,
}

fn paging(pairs: &[(String, String)]) -> Result<Paging, Response> {
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

fn page_answer(
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

async fn list(
    State(z): State<Arc<Zoho>>,
    Path(module): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let _slot = attempt!(enter(&z, &headers));
    let module = attempt!(module_or_error(&module));
    let pairs = query_pairs(q.as_deref());
    let Some(only) = fields_param(q.as_deref()).filter(|f| !f.is_empty()) else {
        return zoho_error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "One of the expected parameter is missing",
            json!({ "param_name": "fields" }),
        );
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

async fn deleted(
    State(z): State<Arc<Zoho>>,
    Path(module): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let _slot = attempt!(enter(&z, &headers));
    let module = attempt!(module_or_error(&module));
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

// ---------------------------------------------------------------- search

#[derive(Debug, PartialEq)]
pub enum Criteria {
    Test {
        field: String,
        op: String,
        value: String,
    },
    And(Box<Criteria>, Box<Criteria>),
    Or(Box<Criteria>, Box<Criteria>),
}

/// Parses `((Email:equals:a@b.it)and(Last_Name:starts_with:Ro))`; `\(`, `\)` and `\,`
/// escape those characters in values.
pub fn parse_criteria(s: &str) -> Result<Criteria, String> {
    let chars: Vec<char> = s.trim().chars().collect();
    let (c, rest) = parse_expr(&chars)?;
    if !rest.is_empty() {
        return Err(format!("unexpected `{}`", rest.iter().collect::<String>()));
    }
    Ok(c)
}

fn parse_expr(input: &[char]) -> Result<(Criteria, &[char]), String> {
    let (mut left, mut rest) = parse_group(input)?;
    let mut count = 1;
    loop {
        let text: String = rest.iter().take(3).collect::<String>().to_lowercase();
        let (is_and, skip) = if text.starts_with("and") {
            (true, 3)
        } else if text.starts_with("or") {
            (false, 2)
        } else {
            break;
        };
        let (right, r) = parse_group(&rest[skip..])?;
        count += 1;
        if count > 10 {
            return Err("at most 10 criteria".into());
        }
        left = if is_and {
            Criteria::And(Box::new(left), Box::new(right))
        } else {
            Criteria::Or(Box::new(left), Box::new(right))
        };
        rest = r;
    }
    Ok((left, rest))
}

fn parse_group(input: &[char]) -> Result<(Criteria, &[char]), String> {
    if input.first() != Some(&'(') {
        return Err("a criterion starts with `(`".into());
    }
    if input.get(1) == Some(&'(') {
        let (inner, rest) = parse_expr(&input[1..])?;
        if rest.first() != Some(&')') {
            return Err("missing `)`".into());
        }
        return Ok((inner, &rest[1..]));
    }
    let mut text = String::new();
    let mut i = 1;
    while i < input.len() {
        match input[i] {
            '\\' if i + 1 < input.len() => {
                text.push('\u{0}');
                text.push(input[i + 1]);
                i += 2;
            }
            ')' => break,
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    if i >= input.len() {
        return Err("missing `)`".into());
    }
    let parts: Vec<&str> = text.splitn(3, ':').collect();
    let [field, op, value] = parts.as_slice() else {
        return Err(format!(
            "`{}` is not field:operator:value",
            text.replace('\u{0}', "")
        ));
    };
    Ok((
        Criteria::Test {
            field: field.to_string(),
            op: op.to_string(),
            value: value.replace('\u{0}', ""),
        },
        &input[i + 1..],
    ))
}

fn field_text(r: &Record, field: &str) -> Option<String> {
    match field {
        "id" => Some(r.id.to_string()),
        "Created_Time" => Some(zoho_time(r.created_ms)),
        "Modified_Time" => Some(zoho_time(r.modified_ms)),
        _ => match r.fields.get(field)? {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("name").and_then(Value::as_str).map(String::from),
            other => Some(other.to_string()),
        },
    }
}

fn eval(c: &Criteria, r: &Record) -> Result<bool, String> {
    Ok(match c {
        Criteria::And(a, b) => eval(a, r)? && eval(b, r)?,
        Criteria::Or(a, b) => eval(a, r)? || eval(b, r)?,
        Criteria::Test { field, op, value } => {
            let actual = field_text(r, field);
            let a = actual.as_deref().unwrap_or("").to_lowercase();
            let v = value.to_lowercase();
            let num = |s: &str| {
                s.parse::<f64>()
                    .ok()
                    .or_else(|| parse_time(s).map(|t| t as f64))
            };
            let cmp = || match (num(&a), num(&v)) {
                (Some(x), Some(y)) => x.partial_cmp(&y),
                _ => Some(a.cmp(&v)),
            };
            use std::cmp::Ordering::*;
            match op.as_str() {
                // Zoho: `equals` on text behaves like "contains".
                "equals" => actual.is_some() && a.contains(&v),
                "not_equal" => !a.contains(&v),
                "starts_with" => a.starts_with(&v),
                "in" => v.split(',').any(|x| a == x.trim()),
                "greater_than" => cmp() == Some(Greater),
                "greater_equal" => matches!(cmp(), Some(Greater | Equal)),
                "less_than" => cmp() == Some(Less),
                "less_equal" => matches!(cmp(), Some(Less | Equal)),
                other => return Err(format!("unsupported operator `{other}`")),
            }
        }
    })
}

async fn search(
    State(z): State<Arc<Zoho>>,
    Path(module): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let _slot = attempt!(enter(&z, &headers));
    let module = attempt!(module_or_error(&module));
    let pairs = query_pairs(q.as_deref());
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let criteria = if let Some(c) = get("criteria") {
        match parse_criteria(&c) {
            Ok(c) => c,
            Err(e) => {
                return zoho_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_QUERY",
                    &format!("invalid query formed: {e}"),
                    json!({ "param_name": "criteria" }),
                );
            }
        }
    } else if let Some(email) = get("email") {
        Criteria::Test {
            field: "Email".into(),
            op: "equals".into(),
            value: email,
        }
    } else if let Some(phone) = get("phone") {
        Criteria::Test {
            field: "Phone".into(),
            op: "equals".into(),
            value: phone,
        }
    } else if let Some(word) = get("word") {
        let fields = match module {
            Module::Contacts => ["First_Name", "Last_Name", "Email"],
            Module::Accounts => ["Account_Name", "Website", "Billing_City"],
        };
        let t = |f: &str| {
            Box::new(Criteria::Test {
                field: f.into(),
                op: "equals".into(),
                value: word.clone(),
            })
        };
        Criteria::Or(
            t(fields[0]),
            Box::new(Criteria::Or(t(fields[1]), t(fields[2]))),
        )
    } else {
        return zoho_error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "One of the expected parameter is missing",
            json!({ "param_name": "criteria" }),
        );
    };
    let p = attempt!(paging(&pairs));
    let only = fields_param(q.as_deref());
    let store = z.store.lock().unwrap_or_else(|p| p.into_inner());
    let mut hits = Vec::new();
    for r in store
        .records
        .get(&module)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|r| r.deleted_ms.is_none())
    {
        match eval(&criteria, r) {
            Ok(true) => hits.push(r),
            Ok(false) => {}
            Err(e) => {
                return zoho_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_QUERY",
                    &format!("invalid query formed: {e}"),
                    json!({ "param_name": "criteria" }),
                );
            }
        }
    }
    page_answer(hits, &p, only.as_deref(), "id", "asc")
}

// ---------------------------------------------------------------- notifications

#[derive(Deserialize)]
struct WatchBody {
    watch: Vec<Value>,
}

fn watch_body(body: &Bytes) -> Result<Vec<Value>, Response> {
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

fn watch_error(index: usize, code: &str, message: &str, field: &str) -> Value {
    json!({ "code": code, "details": { "api_name": field, "json_path": format!("$.watch[{index}].{field}") }, "message": message, "status": "error" })
}

async fn enable_watch(State(z): State<Arc<Zoho>>, headers: HeaderMap, body: Bytes) -> Response {
    attempt!(z.admit(&headers));
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
            let events: Vec<String> = w["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(String::from))
                .collect();
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

async fn list_watch(State(z): State<Arc<Zoho>>, headers: HeaderMap) -> Response {
    attempt!(z.admit(&headers));
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
async fn patch_watch(State(z): State<Arc<Zoho>>, headers: HeaderMap, body: Bytes) -> Response {
    attempt!(z.admit(&headers));
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
            let events: Vec<String> = w["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(String::from))
                .collect();
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

async fn disable_watch(
    State(z): State<Arc<Zoho>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    attempt!(z.admit(&headers));
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
        return zoho_error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "One of the expected parameter is missing",
            json!({ "param_name": "channel_ids" }),
        );
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
