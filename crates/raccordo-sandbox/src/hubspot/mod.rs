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
use crate::{Persist, iso_ms, list_param, query_pairs, random_token};

mod associations;
mod batch;
mod metadata;
mod oauth;
mod objects;
mod search;
mod webhooks;
use associations::*;
use batch::*;
use oauth::*;
use objects::*;
use search::*;
use webhooks::*;
pub use webhooks::{signature_v1, signature_v3};

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
    /// Each property's values with the time they were set, oldest first (what
    /// `propertiesWithHistory` answers, newest first).
    #[serde(default)]
    pub history: BTreeMap<String, Vec<(String, i64)>>,
}

impl Object {
    /// Sets a property, recording it in the property's history.
    pub(crate) fn set(&mut self, name: String, value: String, at_ms: i64) {
        self.history
            .entry(name.clone())
            .or_default()
            .push((value.clone(), at_ms));
        self.properties.insert(name, value);
    }

    /// `{"<property>": [{"value", "timestamp", "sourceType"}…]}`, newest first, for the
    /// properties asked.
    pub(crate) fn history_json(&self, names: &[String]) -> Value {
        let mut out = Map::new();
        for name in names {
            let entries: Vec<Value> = self
                .history
                .get(name)
                .into_iter()
                .flatten()
                .rev()
                .map(|(value, at)| json!({ "value": value, "timestamp": iso_ms(*at), "sourceType": "API", "sourceId": "sandbox", "updatedByUserId": null }))
                .collect();
            out.insert(name.clone(), Value::Array(entries));
        }
        Value::Object(out)
    }
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

/// An admitted call, the opening of every CRM handler: the bearer token checked and the
/// call counted against the rate limits (`SEARCH`: the search limit too). Holds the
/// rate-limit headers to answer with; a refusal is HubSpot's own 401 or 429.
pub(super) struct Admitted<const SEARCH: bool = false>(pub HeaderMap);

impl<const SEARCH: bool> axum::extract::FromRequestParts<Arc<HubSpot>> for Admitted<SEARCH> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        hs: &Arc<HubSpot>,
    ) -> Result<Self, Response> {
        hs.admit(&parts.headers, SEARCH).map(|(_, h)| Admitted(h))
    }
}

/// The `{kind}` path segment as an object type (`contacts`, `companies`), or HubSpot's 404.
pub(super) struct ObjectKind(pub Kind);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ObjectKind {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        let segment = crate::path_segment(parts, state, "kind").await?;
        kind_or_404(&segment).map(ObjectKind)
    }
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
    let mut company_ids = Vec::new();
    let mut n = 0;
    for c in &data.companies {
        let props = [
            ("name", &c.name),
            ("domain", &c.domain),
            ("city", &c.city),
            ("industry", &c.industry),
            ("phone", &c.phone),
        ];
        let (created, modified) = seeded_times(n);
        n += 1;
        let id = insert_at(
            store,
            Kind::Companies,
            props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created,
            modified,
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
        let (created, modified) = seeded_times(n);
        n += 1;
        let id = insert_at(
            store,
            Kind::Contacts,
            props.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            created,
            modified,
        );
        if let Some(company_id) = company_ids.get(p.company) {
            store.associations.insert((id, *company_id));
        }
    }
}

fn insert(store: &mut Store, kind: Kind, properties: BTreeMap<String, String>, now: i64) -> u64 {
    insert_at(store, kind, properties, now, now)
}

/// Seeded records get distinct creation and modification times, a month back: clients
/// that page or merge by time see a realistic spread, not one instant.
fn seeded_times(i: usize) -> (i64, i64) {
    let base = now_ms() - 30 * 86_400_000;
    let created = base + i as i64 * 60_000;
    (created, created + (1 + (i as i64 % 48)) * 3_600_000)
}

fn insert_at(
    store: &mut Store,
    kind: Kind,
    mut properties: BTreeMap<String, String>,
    created: i64,
    now: i64,
) -> u64 {
    store.next_id = store.next_id.max(100) + 1 + (rand::random::<u8>() % 7) as u64;
    let id = store.next_id;
    properties.insert("hs_object_id".into(), id.to_string());
    properties.insert("createdate".into(), iso_ms(created));
    properties.insert(kind.modified_property().into(), iso_ms(now));
    let history = properties
        .iter()
        .map(|(k, v)| (k.clone(), vec![(v.clone(), now)]))
        .collect();
    store.objects.entry(kind).or_default().insert(
        id,
        Object {
            id,
            properties,
            created_at: created,
            updated_at: now,
            archived_at: None,
            history,
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
        .route("/crm/v3/objects/{kind}/gdpr-delete", post(gdpr_delete))
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
        .route("/crm/v3/properties/{kind}", get(metadata::list_properties))
        .route(
            "/crm/v3/properties/{kind}/{name}",
            get(metadata::read_property),
        )
        .route(
            "/properties/v2/{kind}/properties",
            get(metadata::legacy_properties),
        )
        .route("/crm/v3/schemas", get(metadata::schemas))
        // The path the official SDK calls.
        .route("/crm-object-schemas/v3/schemas", get(metadata::schemas))
        .route("/crm/v3/owners", get(metadata::owners))
        .route("/crm/v3/owners/", get(metadata::owners))
        .route("/crm/v3/pipelines/{object}", get(metadata::pipelines))
        .route("/account-info/v3/details", get(metadata::account_details))
        .route(
            "/oauth/v1/access-tokens/{token}",
            get(metadata::access_token_info),
        )
        .route(
            "/crm/v4/associations/{from}/{to}/batch/read",
            post(metadata::batch_read_associations),
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
    check_properties(kind, value).map_err(|message| validation(&message))
}

/// The properties as strings, or HubSpot's validation message (which lists each invalid
/// property as JSON, the way batch errors and single calls both report it).
pub(super) fn check_properties(
    kind: Kind,
    value: &Value,
) -> Result<BTreeMap<String, String>, String> {
    let Some(map) = value.as_object() else {
        return Err("Invalid input JSON: `properties` must be an object of property values".into());
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
        Err(format!(
            "Property values were not valid: {}",
            Value::Array(invalid)
        ))
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
            history: BTreeMap::new(),
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
