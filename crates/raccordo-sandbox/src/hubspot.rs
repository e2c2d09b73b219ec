//! The parts of the HubSpot CRM API raccordo uses, as HubSpot answers them (see
//! `docs/sandboxes.md` for the list and the choices made where HubSpot's docs are vague):
//! CRM v3 contacts and companies (basic, batch, search), v4 associations, OAuth 2.0 tokens,
//! the ten-second rolling rate limit with its headers, and signed v3 webhooks.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::knobs::{Controls, FaultStyle, json_response, now_ms};
use crate::{Persist, iso_ms, query_pairs, random_token};

const JSON: &str = "application/json;charset=utf-8";
const BATCH_LIMIT: usize = 100;
const SEARCH_PAGE_LIMIT: usize = 200;
const SEARCH_RESULT_CAP: usize = 10_000;
const ASSOC_CONTACT_TO_COMPANY: u32 = 279;
const ASSOC_COMPANY_TO_CONTACT: u32 = 280;

#[derive(Debug, Clone)]
pub struct HubSpotOptions {
    /// Private-app token accepted as is (no expiry).
    pub token: String,
    pub client_id: String,
    pub client_secret: String,
    /// Lifetime of OAuth access tokens (HubSpot: 30 minutes).
    pub access_token_ttl: Duration,
    /// Calls per rolling 10 s per token (Professional/Enterprise: 190).
    pub burst_limit: u32,
    pub daily_limit: u32,
    /// Search calls per second per token.
    pub search_per_second: u32,
    /// Where webhooks go (none: webhooks are off).
    pub webhook_url: Option<String>,
    pub seed: u64,
    pub seed_companies: usize,
    pub seed_contacts: usize,
    pub portal_id: u64,
    pub app_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Contacts,
    Companies,
}

impl Kind {
    fn parse(segment: &str) -> Option<Self> {
        match segment {
            "contacts" | "contact" | "0-1" => Some(Kind::Contacts),
            "companies" | "company" | "0-2" => Some(Kind::Companies),
            _ => None,
        }
    }
    fn singular(self) -> &'static str {
        match self {
            Kind::Contacts => "contact",
            Kind::Companies => "company",
        }
    }
    fn modified_property(self) -> &'static str {
        match self {
            Kind::Contacts => "lastmodifieddate",
            Kind::Companies => "hs_lastmodifieddate",
        }
    }
    fn default_properties(self) -> &'static [&'static str] {
        match self {
            Kind::Contacts => &[
                "createdate",
                "email",
                "firstname",
                "hs_object_id",
                "lastmodifieddate",
                "lastname",
            ],
            Kind::Companies => &[
                "createdate",
                "domain",
                "hs_lastmodifieddate",
                "hs_object_id",
                "name",
            ],
        }
    }
    fn writable(self) -> &'static [&'static str] {
        match self {
            Kind::Contacts => &[
                "email",
                "firstname",
                "lastname",
                "phone",
                "mobilephone",
                "company",
                "website",
                "city",
                "state",
                "zip",
                "country",
                "address",
                "jobtitle",
                "lifecyclestage",
                "hs_lead_status",
                "industry",
                "annualrevenue",
            ],
            Kind::Companies => &[
                "name",
                "domain",
                "city",
                "state",
                "zip",
                "country",
                "address",
                "phone",
                "industry",
                "description",
                "numberofemployees",
                "annualrevenue",
                "website",
                "lifecyclestage",
                "type",
            ],
        }
    }
}

/// Properties a portal may add; the sandbox accepts these prefixes as custom properties.
const CUSTOM_PREFIXES: [&str; 2] = ["raccordo_", "ai_"];
const LIFECYCLE_STAGES: [&str; 8] = [
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Object {
    pub id: u64,
    pub properties: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub archived_at: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Store {
    next_id: u64,
    objects: BTreeMap<Kind, BTreeMap<u64, Object>>,
    /// (contact id, company id)
    associations: BTreeSet<(u64, u64)>,
}

#[derive(Default)]
struct Tokens {
    /// access token → expiry (ms)
    access: HashMap<String, i64>,
    refresh: BTreeSet<String>,
    /// authorization code → expiry (ms)
    codes: HashMap<String, i64>,
    /// calls per token within the last 10 s, and search calls within the last second
    recent: HashMap<String, crate::SlidingLimit>,
    searches: HashMap<String, crate::SlidingLimit>,
    daily: HashMap<String, (i64, u32)>,
}

pub struct HubSpot {
    options: HubSpotOptions,
    store: Mutex<Store>,
    tokens: Mutex<Tokens>,
    persist: Persist,
    webhooks: Mutex<VecDeque<Value>>,
    wake: tokio::sync::Notify,
}

pub struct HubSpotFaults;

impl FaultStyle for HubSpotFaults {
    fn throttled(&self) -> Response {
        rate_limited(
            "TEN_SECONDLY_ROLLING",
            "You have reached your ten_secondly_rolling limit.",
        )
    }
    fn server_error(&self) -> Response {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error",
        )
    }
    fn unavailable(&self) -> Response {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "Service unavailable",
        )
    }
}

fn correlation_id() -> String {
    let v: u128 = rand::random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn error(status: StatusCode, category: &str, message: &str) -> Response {
    error_with(status, category, message, None)
}

fn error_with(
    status: StatusCode,
    category: &str,
    message: &str,
    context: Option<Value>,
) -> Response {
    let mut body = json!({
        "status": "error",
        "message": message,
        "correlationId": correlation_id(),
        "category": category,
    });
    if let Some(c) = context {
        body["context"] = c;
    }
    let mut r = json_response(status, JSON, &body);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            "x-hubspot-auth-failure",
            HeaderValue::from_static("401 Unauthorized"),
        );
    }
    r
}

fn rate_limited(policy: &str, message: &str) -> Response {
    json_response(
        StatusCode::TOO_MANY_REQUESTS,
        JSON,
        &json!({
            "status": "error",
            "message": message,
            "errorType": "RATE_LIMIT",
            "correlationId": correlation_id(),
            "policyName": policy,
            "groupName": "publicapi",
        }),
    )
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        "Object not found.  objectId are usually numeric.",
    )
}

fn validation(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
}

/// Who called, for the rate limiter and the headers.
struct Caller {
    token: String,
    oauth: bool,
}

impl HubSpot {
    pub fn new(options: HubSpotOptions, persist: Persist) -> anyhow::Result<Arc<Self>> {
        let mut store: Store = persist.load()?.unwrap_or_default();
        if store.objects.is_empty() {
            seed_store(&mut store, &options);
        }
        let hub = Arc::new(Self {
            options,
            store: Mutex::new(store),
            tokens: Mutex::new(Tokens::default()),
            persist,
            webhooks: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
        });
        hub.save();
        Ok(hub)
    }

    fn save(&self) {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        self.persist.save(&*store);
    }

    /// Checks the bearer token and the rate limits; `search` also counts against the
    /// per-second search limit. Adds the rate-limit headers to `Ok`'s header map.
    fn admit(&self, headers: &HeaderMap, search: bool) -> Result<(Caller, HeaderMap), Response> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or("");
        let now = now_ms();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let caller = if !token.is_empty() && token == self.options.token {
            Caller {
                token: token.to_string(),
                oauth: false,
            }
        } else if let Some(expiry) = tokens.access.get(token).copied() {
            if expiry <= now {
                let ago = (now - expiry) / 1000;
                return Err(error_with(
                    StatusCode::UNAUTHORIZED,
                    "EXPIRED_AUTHENTICATION",
                    &format!("The OAuth token used to make this call expired {ago} second(s) ago."),
                    Some(json!({ "expire time": [iso_ms(expiry)] })),
                ));
            }
            Caller {
                token: token.to_string(),
                oauth: true,
            }
        } else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            ));
        };
        let used = tokens
            .recent
            .entry(caller.token.clone())
            .or_default()
            .try_take(now, 10_000, self.options.burst_limit)
            .map_err(|_| {
                rate_limited(
                    "TEN_SECONDLY_ROLLING",
                    "You have reached your ten_secondly_rolling limit.",
                )
            })?;
        if search {
            tokens
                .searches
                .entry(caller.token.clone())
                .or_default()
                .try_take(now, 1000, self.options.search_per_second)
                .map_err(|_| rate_limited("SECONDLY", "You have reached your secondly limit."))?;
        }
        let day = now / 86_400_000;
        let daily = tokens.daily.entry(caller.token.clone()).or_insert((day, 0));
        if daily.0 != day {
            *daily = (day, 0);
        }
        if !caller.oauth && daily.1 >= self.options.daily_limit {
            return Err(rate_limited("DAILY", "You have reached your daily limit."));
        }
        daily.1 += 1;
        let daily_used = daily.1;
        let mut h = HeaderMap::new();
        let n = |v: u32| HeaderValue::from(v);
        h.insert("x-hubspot-ratelimit-max", n(self.options.burst_limit));
        h.insert(
            "x-hubspot-ratelimit-remaining",
            n(self.options.burst_limit.saturating_sub(used)),
        );
        h.insert("x-hubspot-ratelimit-interval-milliseconds", n(10_000));
        if !caller.oauth {
            // OAuth calls have no daily cap, and no daily headers.
            h.insert("x-hubspot-ratelimit-daily", n(self.options.daily_limit));
            h.insert(
                "x-hubspot-ratelimit-daily-remaining",
                n(self.options.daily_limit.saturating_sub(daily_used)),
            );
        }
        h.insert(
            "x-hubspot-correlation-id",
            HeaderValue::from_str(&correlation_id()).expect("ascii"),
        );
        Ok((caller, h))
    }

    fn emit(&self, kind: Kind, subscription: &str, id: u64, property: Option<(&str, &str)>) {
        if self.options.webhook_url.is_none() {
            return;
        }
        let mut event = json!({
            "eventId": rand::random::<u32>() as u64,
            "subscriptionId": 1000 + subscription.len() as u64,
            "portalId": self.options.portal_id,
            "appId": self.options.app_id,
            "occurredAt": now_ms(),
            "subscriptionType": format!("{}.{subscription}", kind.singular()),
            "attemptNumber": 0,
            "objectId": id,
            "changeFlag": match subscription { "creation" => "CREATED", "deletion" => "DELETED", _ => "PROPERTY_CHANGE" },
            "changeSource": "CRM",
        });
        if let Some((name, value)) = property {
            event["propertyName"] = json!(name);
            event["propertyValue"] = json!(value);
        }
        self.webhooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(event);
        self.wake.notify_one();
    }
}

fn seed_store(store: &mut Store, options: &HubSpotOptions) {
    let data = crate::seed::generate(options.seed, options.seed_companies, options.seed_contacts);
    let now = now_ms();
    let mut company_ids = Vec::new();
    for c in &data.companies {
        let props = [
            ("name", &c.name),
            ("domain", &c.domain),
            ("city", &c.city),
            ("industry", &c.industry),
            ("phone", &c.phone),
        ];
        let id = insert(
            store,
            Kind::Companies,
            props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            now,
        );
        company_ids.push(id);
    }
    for p in &data.contacts {
        let company = data
            .companies
            .get(p.company)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let props = [
            ("email", p.email.clone()),
            ("firstname", p.first_name.clone()),
            ("lastname", p.last_name.clone()),
            ("phone", p.phone.clone()),
            ("city", p.city.clone()),
            ("company", company),
            ("lifecyclestage", "lead".to_string()),
        ];
        let id = insert(
            store,
            Kind::Contacts,
            props.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            now,
        );
        if let Some(company_id) = company_ids.get(p.company) {
            store.associations.insert((id, *company_id));
        }
    }
}

fn insert(
    store: &mut Store,
    kind: Kind,
    mut properties: BTreeMap<String, String>,
    now: i64,
) -> u64 {
    store.next_id = store.next_id.max(100) + 1 + (rand::random::<u8>() % 7) as u64;
    let id = store.next_id;
    properties.insert("hs_object_id".into(), id.to_string());
    properties.insert("createdate".into(), iso_ms(now));
    properties.insert(kind.modified_property().into(), iso_ms(now));
    store.objects.entry(kind).or_default().insert(
        id,
        Object {
            id,
            properties,
            created_at: now,
            updated_at: now,
            archived_at: None,
        },
    );
    id
}

pub fn router(hubspot: Arc<HubSpot>, controls: Arc<Controls>) -> Router {
    if hubspot.options.webhook_url.is_some() {
        tokio::spawn(deliver_webhooks(hubspot.clone()));
    }
    Router::new()
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/v1/token", post(token))
        .route("/crm/v3/objects/{kind}", get(list).post(create))
        .route("/crm/v3/objects/{kind}/search", post(search))
        .route("/crm/v3/objects/{kind}/batch/{op}", post(batch))
        .route(
            "/crm/v3/objects/{kind}/{id}",
            get(read).patch(update).delete(archive),
        )
        .route(
            "/crm/v4/objects/{kind}/{id}/associations/default/{to}/{to_id}",
            put(associate),
        )
        .route(
            "/crm/v4/objects/{kind}/{id}/associations/{to}",
            get(list_associations),
        )
        .route(
            "/crm/v4/objects/{kind}/{id}/associations/{to}/{to_id}",
            put(associate_labelled).delete(dissociate),
        )
        .route("/_sandbox/state", get(dump_state))
        .route("/_sandbox/tokens/expire", post(expire_tokens))
        .with_state(hubspot)
        .merge(crate::knobs::admin_routes(controls.clone()))
        .layer(axum::middleware::from_fn_with_state(
            controls,
            crate::knobs::inject,
        ))
}

fn with_headers(mut r: Response, h: HeaderMap) -> Response {
    r.headers_mut().extend(h);
    r
}

fn ok(status: StatusCode, body: &Value, h: HeaderMap) -> Response {
    with_headers(json_response(status, JSON, body), h)
}

/// `properties=a&properties=b` and `properties=a,b` alike.
fn list_param(pairs: &[(String, String)], key: &str) -> Option<Vec<String>> {
    let values: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect();
    (!values.is_empty()).then_some(values)
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn bool_param(pairs: &[(String, String)], key: &str) -> bool {
    param(pairs, key).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn render(
    store: &Store,
    kind: Kind,
    o: &Object,
    properties: Option<&[String]>,
    associations: Option<&[String]>,
) -> Value {
    let mut props = Map::new();
    match properties {
        Some(wanted) => {
            for name in wanted {
                props.insert(
                    name.clone(),
                    o.properties.get(name).map_or(Value::Null, |v| json!(v)),
                );
            }
            // HubSpot always includes these three.
            for name in ["hs_object_id", "createdate", kind.modified_property()] {
                props.insert(name.into(), json!(o.properties.get(name)));
            }
        }
        None => {
            for name in kind.default_properties() {
                props.insert(
                    (*name).into(),
                    o.properties.get(*name).map_or(Value::Null, |v| json!(v)),
                );
            }
        }
    }
    let mut out = json!({
        "id": o.id.to_string(),
        "properties": props,
        "createdAt": iso_ms(o.created_at),
        "updatedAt": iso_ms(o.updated_at),
        "archived": o.archived_at.is_some(),
    });
    if let Some(at) = o.archived_at {
        out["archivedAt"] = json!(iso_ms(at));
    }
    if let Some(kinds) = associations {
        let mut assoc = Map::new();
        for name in kinds {
            let Some(to) = Kind::parse(name) else {
                continue;
            };
            let ids = associated(store, kind, o.id, to);
            if !ids.is_empty() {
                let type_name = format!("{}_to_{}", kind.singular(), to.singular());
                assoc.insert(
                    name.clone(),
                    json!({ "results": ids.iter().map(|id| json!({ "id": id.to_string(), "type": type_name })).collect::<Vec<_>>() }),
                );
            }
        }
        out["associations"] = Value::Object(assoc);
    }
    out
}

fn associated(store: &Store, from: Kind, id: u64, to: Kind) -> Vec<u64> {
    match (from, to) {
        (Kind::Contacts, Kind::Companies) => store
            .associations
            .iter()
            .filter(|(c, _)| *c == id)
            .map(|(_, co)| *co)
            .collect(),
        (Kind::Companies, Kind::Contacts) => store
            .associations
            .iter()
            .filter(|(_, co)| *co == id)
            .map(|(c, _)| *c)
            .collect(),
        _ => Vec::new(),
    }
}

fn kind_or_404(segment: &str) -> Result<Kind, Response> {
    Kind::parse(segment).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            &format!("Unable to infer object type from: {segment}"),
        )
    })
}

/// Finds a live object by id or by a unique property (`email` for contacts).
fn find(
    store: &Store,
    kind: Kind,
    key: &str,
    id_property: Option<&str>,
    archived: bool,
) -> Option<u64> {
    let objects = store.objects.get(&kind)?;
    match id_property {
        None | Some("hs_object_id") => {
            let id: u64 = key.parse().ok()?;
            objects
                .get(&id)
                .filter(|o| o.archived_at.is_some() == archived)
                .map(|o| o.id)
        }
        Some(prop) => objects
            .values()
            .find(|o| {
                o.archived_at.is_some() == archived
                    && o.properties
                        .get(prop)
                        .is_some_and(|v| v.eq_ignore_ascii_case(key))
            })
            .map(|o| o.id),
    }
}

/// Checks and normalises a `properties` object: values become strings.
fn clean_properties(kind: Kind, value: &Value) -> Result<BTreeMap<String, String>, Response> {
    let Some(map) = value.as_object() else {
        return Err(validation(
            "Invalid input JSON: `properties` must be an object of property values",
        ));
    };
    let mut out = BTreeMap::new();
    let mut invalid = Vec::new();
    for (name, v) in map {
        let known = kind.writable().contains(&name.as_str())
            || CUSTOM_PREFIXES.iter().any(|p| name.starts_with(p));
        if !known {
            invalid.push(json!({"isValid": false, "message": format!("Property \"{name}\" does not exist"), "error": "PROPERTY_DOESNT_EXIST", "name": name}));
            continue;
        }
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            _ => {
                invalid.push(json!({"isValid": false, "message": format!("{name} must be a string"), "error": "INVALID_TYPE", "name": name}));
                continue;
            }
        };
        if name == "email" && !text.is_empty() && !valid_email(&text) {
            invalid.push(json!({"isValid": false, "message": format!("Email address {text} is invalid"), "error": "INVALID_EMAIL", "name": "email"}));
            continue;
        }
        if name == "lifecyclestage"
            && !text.is_empty()
            && !LIFECYCLE_STAGES.contains(&text.as_str())
        {
            invalid.push(json!({"isValid": false, "message": format!("{text} was not one of the allowed options: {}", LIFECYCLE_STAGES.join(", ")), "error": "INVALID_OPTION", "name": "lifecyclestage"}));
            continue;
        }
        out.insert(name.clone(), text);
    }
    if invalid.is_empty() {
        Ok(out)
    } else {
        Err(validation(&format!(
            "Property values were not valid: {}",
            Value::Array(invalid)
        )))
    }
}

fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.contains(char::is_whitespace)
}

fn email_conflict(store: &Store, email: &str, except: Option<u64>) -> Option<u64> {
    store
        .objects
        .get(&Kind::Contacts)?
        .values()
        .find(|o| {
            o.archived_at.is_none()
                && Some(o.id) != except
                && o.properties
                    .get("email")
                    .is_some_and(|e| e.eq_ignore_ascii_case(email))
        })
        .map(|o| o.id)
}

fn conflict(existing: u64) -> Response {
    error(
        StatusCode::CONFLICT,
        "CONFLICT",
        &format!("Contact already exists. Existing ID: {existing}"),
    )
}

fn parse_json(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        validation(&format!(
            "Invalid input JSON on line {}, column {}: {e}",
            e.line(),
            e.column()
        ))
    })
}

// ---------------------------------------------------------------- OAuth

#[derive(Deserialize)]
struct AuthorizeQuery {
    client_id: String,
    redirect_uri: String,
    #[serde(default)]
    state: Option<String>,
}

/// The consent screen, approved at once: redirects back with a one-use code (10 minutes).
async fn authorize(State(hs): State<Arc<HubSpot>>, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(q.as_deref());
    let query: AuthorizeQuery =
        match serde_json::from_value(json!(pairs.iter().cloned().collect::<HashMap<_, _>>())) {
            Ok(q) => q,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("missing parameter: {e}"))
                    .into_response();
            }
        };
    if query.client_id != hs.options.client_id {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    let code = random_token("na1-");
    hs.tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .codes
        .insert(code.clone(), now_ms() + 600_000);
    let sep = if query.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    let mut target = format!("{}{sep}code={code}", query.redirect_uri);
    if let Some(state) = query.state {
        target.push_str(&format!("&state={}", crate::encode(&state)));
    }
    Redirect::to(&target).into_response()
}

async fn token(State(hs): State<Arc<HubSpot>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let fail = |status: &str, message: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            JSON,
            &json!({ "status": status, "message": message, "correlationId": correlation_id() }),
        )
    };
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if get("client_id") != hs.options.client_id {
        return fail("BAD_CLIENT_ID", "missing or unknown client_id");
    }
    if get("client_secret") != hs.options.client_secret {
        return fail("BAD_CLIENT_SECRET", "missing or invalid client secret");
    }
    let now = now_ms();
    let mut tokens = hs.tokens.lock().unwrap_or_else(|p| p.into_inner());
    let refresh = match get("grant_type") {
        "authorization_code" => {
            let valid = tokens
                .codes
                .remove(get("code"))
                .is_some_and(|exp| exp > now);
            if !valid {
                return fail("BAD_AUTH_CODE", "missing or unknown auth code");
            }
            if get("redirect_uri").is_empty() {
                return fail("BAD_REDIRECT_URI", "redirect_uri is required");
            }
            let r = random_token("na1-r-");
            tokens.refresh.insert(r.clone());
            r
        }
        "refresh_token" => {
            let r = get("refresh_token").to_string();
            if !tokens.refresh.contains(&r) {
                return fail("BAD_REFRESH_TOKEN", "missing or unknown refresh token");
            }
            r
        }
        other => {
            return fail(
                "BAD_GRANT_TYPE",
                &format!("unsupported grant_type `{other}`"),
            );
        }
    };
    let access = random_token("CJ");
    let ttl = hs.options.access_token_ttl.as_secs();
    tokens
        .access
        .insert(access.clone(), now + ttl as i64 * 1000);
    json_response(
        StatusCode::OK,
        JSON,
        &json!({ "token_type": "bearer", "refresh_token": refresh, "access_token": access, "expires_in": ttl }),
    )
}

async fn expire_tokens(State(hs): State<Arc<HubSpot>>) -> StatusCode {
    let now = now_ms();
    for expiry in hs
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .access
        .values_mut()
    {
        *expiry = (*expiry).min(now - 1000);
    }
    StatusCode::NO_CONTENT
}

async fn dump_state(State(hs): State<Arc<HubSpot>>) -> Response {
    let store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
    json_response(
        StatusCode::OK,
        JSON,
        &serde_json::to_value(&*store).unwrap_or_default(),
    )
}

// ---------------------------------------------------------------- basic

async fn list(
    State(hs): State<Arc<HubSpot>>,
    Path(kind): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (_, h) = attempt!(hs.admit(&headers, false));
    let kind = attempt!(kind_or_404(&kind));
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

fn kind_path(kind: Kind) -> &'static str {
    match kind {
        Kind::Contacts => "contacts",
        Kind::Companies => "companies",
    }
}

async fn read(
    State(hs): State<Arc<HubSpot>>,
    Path((kind, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (_, h) = attempt!(hs.admit(&headers, false));
    let kind = attempt!(kind_or_404(&kind));
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
    ok(
        StatusCode::OK,
        &render(
            &store,
            kind,
            o,
            list_param(&pairs, "properties").as_deref(),
            list_param(&pairs, "associations").as_deref(),
        ),
        h,
    )
}

async fn create(
    State(hs): State<Arc<HubSpot>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, h) = attempt!(hs.admit(&headers, false));
    let kind = attempt!(kind_or_404(&kind));
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

fn create_one(store: &mut Store, kind: Kind, input: &Value) -> Result<(u64, Value), Response> {
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

async fn update(
    State(hs): State<Arc<HubSpot>>,
    Path((kind, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, h) = attempt!(hs.admit(&headers, false));
    let kind = attempt!(kind_or_404(&kind));
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

type Updated = (u64, Value, Vec<(String, String)>);
/// (object id, subscription, changed property) of a webhook event to send after a batch.
type PendingEvent = (u64, &'static str, Option<(String, String)>);

fn update_one(store: &mut Store, kind: Kind, id: u64, input: &Value) -> Result<Updated, Response> {
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
            o.properties.insert(k, v);
        }
    }
    if !changed.is_empty() {
        o.updated_at = now;
        o.properties
            .insert(kind.modified_property().into(), iso_ms(now));
    }
    let wanted: Vec<String> = o.properties.keys().cloned().collect();
    let o = &store.objects[&kind][&id];
    Ok((id, render(store, kind, o, Some(&wanted), None), changed))
}

async fn archive(
    State(hs): State<Arc<HubSpot>>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (_, h) = attempt!(hs.admit(&headers, false));
    let kind = attempt!(kind_or_404(&kind));
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

fn archive_one(store: &mut Store, kind: Kind, id: &str) -> Option<u64> {
    let id: u64 = id.parse().ok()?;
    let o = store.objects.get_mut(&kind)?.get_mut(&id)?;
    if o.archived_at.is_some() {
        return None;
    }
    o.archived_at = Some(now_ms());
    Some(id)
}

// ---------------------------------------------------------------- batch

fn batch_envelope(results: Vec<Value>, errors: Vec<Value>, started: i64) -> (StatusCode, Value) {
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
fn input_id(input: &Value) -> String {
    value_text(&input["id"]).unwrap_or_default()
}

fn batch_error(category: &str, message: &str, ids: &[String]) -> Value {
    json!({
        "status": "error",
        "category": category,
        "message": message,
        "context": { "ids": ids },
        "errors": [],
        "links": {},
    })
}

async fn batch(
    State(hs): State<Arc<HubSpot>>,
    Path((kind, op)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, h) = attempt!(hs.admit(&headers, false));
    let kind = attempt!(kind_or_404(&kind));
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
                for i in inputs {
                    let key = input_id(i);
                    match find(&store, kind, &key, id_property, archived) {
                        Some(id) => results.push(render(
                            &store,
                            kind,
                            &store.objects[&kind][&id],
                            properties.as_deref(),
                            None,
                        )),
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
                        Err(_) => errors.push(batch_error(
                            if upsert {
                                "VALIDATION_ERROR"
                            } else {
                                "OBJECT_NOT_FOUND"
                            },
                            "Some inputs failed.",
                            &[key],
                        )),
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

// ---------------------------------------------------------------- search

/// A property value as a number when it is one (or an ISO date, as epoch ms).
fn numeric(v: &str) -> Option<f64> {
    v.parse::<f64>().ok().or_else(|| {
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as f64)
    })
}

fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    match (numeric(a), numeric(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.to_lowercase().cmp(&b.to_lowercase()),
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether `filter` holds for `o`; `Err` names what is wrong with the filter.
fn matches(o: &Object, filter: &Value) -> Result<bool, String> {
    let name = filter["propertyName"]
        .as_str()
        .ok_or("every filter needs a propertyName")?;
    let op = filter["operator"]
        .as_str()
        .ok_or("every filter needs an operator")?;
    let actual = o.properties.get(name).filter(|v| !v.is_empty());
    let value = value_text(&filter["value"]);
    let need = || {
        value
            .clone()
            .ok_or_else(|| format!("operator {op} needs a value"))
    };
    use std::cmp::Ordering::*;
    Ok(match op {
        "HAS_PROPERTY" => actual.is_some(),
        "NOT_HAS_PROPERTY" => actual.is_none(),
        "EQ" => {
            actual.is_some_and(|a| compare(a, &need().unwrap_or_default()) == Equal)
                && value.is_some()
        }
        "NEQ" => actual.is_none_or(|a| compare(a, &need().unwrap_or_default()) != Equal),
        "LT" | "LTE" | "GT" | "GTE" => {
            let v = need()?;
            let wanted: &[std::cmp::Ordering] = match op {
                "LT" => &[Less],
                "LTE" => &[Less, Equal],
                "GT" => &[Greater],
                _ => &[Greater, Equal],
            };
            actual.is_some_and(|a| wanted.contains(&compare(a, &v)))
        }
        "BETWEEN" => {
            let low = need()?;
            let high =
                value_text(&filter["highValue"]).ok_or("BETWEEN needs value and highValue")?;
            actual.is_some_and(|a| compare(a, &low) != Less && compare(a, &high) != Greater)
        }
        "IN" | "NOT_IN" => {
            let values: Vec<String> = filter["values"]
                .as_array()
                .ok_or(format!("{op} needs values"))?
                .iter()
                .filter_map(value_text)
                .collect();
            let inside = actual.is_some_and(|a| values.iter().any(|v| compare(a, v) == Equal));
            if op == "IN" { inside } else { !inside }
        }
        "CONTAINS_TOKEN" | "NOT_CONTAINS_TOKEN" => {
            let token = need()?.to_lowercase();
            let hit = actual.is_some_and(|a| {
                let a = a.to_lowercase();
                if token.contains('*') {
                    let parts: Vec<&str> = token.split('*').filter(|p| !p.is_empty()).collect();
                    parts.iter().all(|p| a.contains(p))
                } else {
                    a.split(|c: char| !c.is_alphanumeric() && c != '@' && c != '.')
                        .any(|w| w == token)
                        || a == token
                }
            });
            if op == "CONTAINS_TOKEN" { hit } else { !hit }
        }
        other => return Err(format!("Unknown operator {other}")),
    })
}

async fn search(
    State(hs): State<Arc<HubSpot>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, h) = attempt!(hs.admit(&headers, true));
    let kind = attempt!(kind_or_404(&kind));
    let input = attempt!(parse_json(&body));
    let groups = input["filterGroups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if groups.len() > 5 {
        return validation(&format!(
            "There were {} filter groups, the maximum is 5",
            groups.len()
        ));
    }
    let mut total_filters = 0;
    for (i, g) in groups.iter().enumerate() {
        let n = g["filters"].as_array().map_or(0, Vec::len);
        if n > 10 {
            return validation(&format!(
                "filterGroups[{i}] has {n} filters, the maximum is 10"
            ));
        }
        total_filters += n;
    }
    if total_filters > 25 {
        return validation(&format!(
            "There were {total_filters} filters in all, the maximum is 25"
        ));
    }
    let limit = input["limit"].as_u64().unwrap_or(10) as usize;
    if !(1..=SEARCH_PAGE_LIMIT).contains(&limit) {
        return validation(&format!("limit must be between 1 and {SEARCH_PAGE_LIMIT}"));
    }
    let after: usize = match &input["after"] {
        Value::Null => 0,
        v => match value_text(v).and_then(|s| s.parse().ok()) {
            Some(a) => a,
            None => return validation("after must be a paging cursor returned by this API"),
        },
    };
    if after + limit > SEARCH_RESULT_CAP {
        return validation(&format!(
            "The search API returns at most {SEARCH_RESULT_CAP} results; page past that is not possible"
        ));
    }
    let properties: Option<Vec<String>> = input["properties"]
        .as_array()
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        });
    let query = input["query"].as_str().map(str::to_lowercase);
    let sorts: Vec<(String, bool)> = input["sorts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| match s {
            Value::String(s) => Some(match s.strip_prefix('-') {
                Some(p) => (p.to_string(), true),
                None => (s.clone(), false),
            }),
            Value::Object(_) => Some((
                s["propertyName"].as_str()?.to_string(),
                s["direction"].as_str() == Some("DESCENDING"),
            )),
            _ => None,
        })
        .collect();
    let store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
    let mut hits: Vec<&Object> = Vec::new();
    for o in store
        .objects
        .get(&kind)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|o| o.archived_at.is_none())
    {
        let mut group_ok = groups.is_empty();
        for g in &groups {
            let mut all = true;
            for f in g["filters"].as_array().into_iter().flatten() {
                match matches(o, f) {
                    Ok(true) => {}
                    Ok(false) => {
                        all = false;
                        break;
                    }
                    Err(e) => return validation(&e),
                }
            }
            if all {
                group_ok = true;
                break;
            }
        }
        let query_ok = query.as_ref().is_none_or(|q| {
            [
                "email",
                "firstname",
                "lastname",
                "phone",
                "name",
                "domain",
                "company",
            ]
            .iter()
            .any(|p| {
                o.properties
                    .get(*p)
                    .is_some_and(|v| v.to_lowercase().contains(q.as_str()))
            })
        });
        if group_ok && query_ok {
            hits.push(o);
        }
    }
    hits.sort_by(|a, b| {
        for (prop, desc) in &sorts {
            let (x, y) = (
                a.properties.get(prop).map_or("", String::as_str),
                b.properties.get(prop).map_or("", String::as_str),
            );
            let ord = compare(x, y);
            if ord != std::cmp::Ordering::Equal {
                return if *desc { ord.reverse() } else { ord };
            }
        }
        a.id.cmp(&b.id)
    });
    let total = hits.len();
    let page: Vec<Value> = hits
        .iter()
        .skip(after)
        .take(limit)
        .map(|o| render(&store, kind, o, properties.as_deref(), None))
        .collect();
    let mut body = json!({ "total": total, "results": page });
    if after + limit < total.min(SEARCH_RESULT_CAP) {
        let next = (after + limit).to_string();
        body["paging"] = json!({ "next": { "after": next, "link": format!("?after={next}") } });
    }
    ok(StatusCode::OK, &body, h)
}

// ---------------------------------------------------------------- associations (v4)

fn pair(from: Kind, from_id: u64, to: Kind, to_id: u64) -> Option<(u64, u64)> {
    match (from, to) {
        (Kind::Contacts, Kind::Companies) => Some((from_id, to_id)),
        (Kind::Companies, Kind::Contacts) => Some((to_id, from_id)),
        _ => None,
    }
}

fn type_id(from: Kind) -> u32 {
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

async fn associate(
    State(hs): State<Arc<HubSpot>>,
    Path((kind, id, to, to_id)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let (_, h) = attempt!(hs.admit(&headers, false));
    let (Some(from), Some(to)) = (Kind::parse(&kind), Kind::parse(&to)) else {
        return validation(
            "unsupported object types; the sandbox associates contacts and companies",
        );
    };
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

async fn list_associations(
    State(hs): State<Arc<HubSpot>>,
    Path((kind, id, to)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let (_, h) = attempt!(hs.admit(&headers, false));
    let (Some(from), Some(to)) = (Kind::parse(&kind), Kind::parse(&to)) else {
        return validation(
            "unsupported object types; the sandbox associates contacts and companies",
        );
    };
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
async fn associate_labelled(
    State(hs): State<Arc<HubSpot>>,
    Path((kind, id, to, to_id)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, h) = attempt!(hs.admit(&headers, false));
    let (Some(from), Some(to)) = (Kind::parse(&kind), Kind::parse(&to)) else {
        return validation(
            "unsupported object types; the sandbox associates contacts and companies",
        );
    };
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

async fn dissociate(
    State(hs): State<Arc<HubSpot>>,
    Path((kind, id, to, to_id)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let (_, h) = attempt!(hs.admit(&headers, false));
    let (Some(from), Some(to)) = (Kind::parse(&kind), Kind::parse(&to)) else {
        return validation(
            "unsupported object types; the sandbox associates contacts and companies",
        );
    };
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

// ---------------------------------------------------------------- webhooks

/// The v3 signature: base64 HMAC-SHA256, keyed by the app's client secret, over
/// method + URI + body + timestamp (ms).
pub fn signature_v3(
    secret: &str,
    method: &str,
    uri: &str,
    body: &[u8],
    timestamp_ms: i64,
) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(method.as_bytes());
    mac.update(uri.as_bytes());
    mac.update(body);
    mac.update(timestamp_ms.to_string().as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// v1: hex SHA-256 of client secret + body.
pub fn signature_v1(secret: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(secret.as_bytes());
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends pending events in batches of up to 100, like HubSpot; a failed batch is retried
/// with growing delays, up to 10 attempts, with `attemptNumber` counting up.
async fn deliver_webhooks(hs: Arc<HubSpot>) {
    let Some(url) = hs.options.webhook_url.clone() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client");
            return;
        }
    };
    loop {
        let batch: Vec<Value> = {
            let mut q = hs.webhooks.lock().unwrap_or_else(|p| p.into_inner());
            let n = q.len().min(100);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), hs.wake.notified()).await;
            continue;
        }
        // Let a burst of changes gather into one request.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut batch = batch;
        for attempt in 0..10u32 {
            for e in &mut batch {
                e["attemptNumber"] = json!(attempt);
            }
            let body = Value::Array(batch.clone()).to_string();
            let ts = now_ms();
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header(
                    "x-hubspot-signature-v3",
                    signature_v3(&hs.options.client_secret, "POST", &url, body.as_bytes(), ts),
                )
                .header("x-hubspot-request-timestamp", ts.to_string())
                .header(
                    "x-hubspot-signature",
                    signature_v1(&hs.options.client_secret, body.as_bytes()),
                )
                .header("x-hubspot-signature-version", "v1")
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => break,
                outcome => {
                    let why = match outcome {
                        Ok(r) => format!("HTTP {}", r.status()),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(attempt, %why, "webhook delivery failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt.min(6)))).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(props: &[(&str, &str)]) -> Object {
        Object {
            id: 1,
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created_at: 0,
            updated_at: 0,
            archived_at: None,
        }
    }

    #[test]
    fn search_operators_follow_hubspot() {
        let o = object(&[
            ("email", "Mario.Rossi@Example.it"),
            ("createdate", "2026-11-22T10:00:00.000Z"),
            ("city", "Milano"),
        ]);
        let t = |f: Value| matches(&o, &f).unwrap();
        assert!(
            t(
                json!({"propertyName": "email", "operator": "EQ", "value": "mario.rossi@example.it"})
            ),
            "EQ ignores case"
        );
        assert!(
            t(json!({"propertyName": "createdate", "operator": "GTE", "value": "1795341600000"})),
            "dates compare with epoch ms"
        );
        assert!(!t(
            json!({"propertyName": "createdate", "operator": "GT", "value": "1795341600000"})
        ));
        assert!(t(
            json!({"propertyName": "city", "operator": "IN", "values": ["Roma", "Milano"]})
        ));
        assert!(t(
            json!({"propertyName": "phone", "operator": "NOT_HAS_PROPERTY"})
        ));
        assert!(t(
            json!({"propertyName": "email", "operator": "CONTAINS_TOKEN", "value": "*example*"})
        ));
        assert!(
            matches(
                &o,
                &json!({"propertyName": "city", "operator": "LIKE", "value": "x"})
            )
            .is_err()
        );
        assert!(
            matches(
                &o,
                &json!({"propertyName": "city", "operator": "BETWEEN", "value": "a"})
            )
            .is_err()
        );
    }

    #[test]
    fn the_v3_signature_matches_the_documented_construction() {
        // base64(HMAC-SHA256("secret", "POST" + uri + body + ts)) computed independently.
        let sig = signature_v3(
            "secret",
            "POST",
            "https://example.com/hook",
            b"[]",
            1_700_000_000_000,
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"POSThttps://example.com/hook[]1700000000000");
        assert_eq!(
            sig,
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(signature_v1("s", b"x").len(), 64);
    }
}
