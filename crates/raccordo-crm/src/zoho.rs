//! Zoho CRM v8 client: batch reads and writes of 100 records per call, upserts keyed by
//! duplicate-check fields, `"trigger": []` unless workflows are wanted, the org's API
//! credits and concurrency kept, typed errors; and the notification channel (`actions/watch`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raccordo_core::crm::{CrmRecord, ObjectKind};
use raccordo_core::{Clock, RateLimitStore};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::error::{Attempt, CrmError, body_message, from_status};
use crate::hubspot::parse_time;
use crate::limits::{Limit, rolling_window};
use crate::stats::CallStats;
use crate::tokens::TokenSource;
pub use crate::transport::Written;
use crate::transport::{Answer, Request, Transport};

const SYSTEM: &str = "zoho";
/// Records per insert, update, upsert or read call (Zoho's limit).
pub const BATCH: usize = 100;

#[derive(Debug, Clone)]
pub struct ZohoSettings {
    /// The API domain (`https://www.zohoapis.eu`), or a sandbox.
    pub base_url: String,
    /// API credits per rolling 24 hours (by edition: 50 000 + 1 000 per user licence on
    /// Enterprise, …). A batch call costs one credit here; Zoho counts some calls as more.
    pub credits_per_day: u32,
    /// Concurrent calls (Free 5, Standard 10, Professional 15, Enterprise 20, Ultimate 25).
    pub concurrency: usize,
    /// Let writes run Zoho workflows, approvals and blueprints (`trigger` left out);
    /// otherwise writes send `"trigger": []`.
    pub workflows: bool,
    pub timeout: Duration,
    /// Which addresses the client may call (`[outbound]`); the default allows public
    /// `https` hosts only.
    pub outbound: raccordo_outbound::Outbound,
}

impl Default for ZohoSettings {
    fn default() -> Self {
        Self {
            base_url: "https://www.zohoapis.com".into(),
            credits_per_day: 50_000,
            concurrency: 10,
            workflows: false,
            timeout: Duration::from_secs(30),
            outbound: Default::default(),
        }
    }
}

pub struct ZohoClient {
    transport: Transport,
    credits: Limit,
    concurrency: Semaphore,
    /// Writes of more than 10 records count against a separate sub-concurrency of 10.
    heavy: Semaphore,
    workflows: bool,
}

impl ZohoClient {
    pub fn new(
        settings: &ZohoSettings,
        tokens: Arc<dyn TokenSource>,
        limits: Arc<dyn RateLimitStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CrmError> {
        Ok(Self {
            transport: Transport::new(
                SYSTEM,
                &settings.base_url,
                settings.timeout,
                &settings.outbound,
                tokens,
                limits,
                clock,
            )?,
            credits: Limit {
                bucket: "zoho:credits".into(),
                spec: rolling_window(settings.credits_per_day, 86_400_000, 0.05),
            },
            concurrency: Semaphore::new(settings.concurrency.max(1)),
            heavy: Semaphore::new(10),
            workflows: settings.workflows,
        })
    }

    /// What this client did so far.
    pub fn stats(&self) -> Arc<CallStats> {
        self.transport.stats.clone()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: Option<&Value>,
        heavy: bool,
    ) -> Result<(StatusCode, Value), CrmError> {
        let closed = |_| CrmError::permanent(SYSTEM, "client closed");
        let _slot = self.concurrency.acquire().await.map_err(closed)?;
        let _heavy = if heavy {
            Some(self.heavy.acquire().await.map_err(closed)?)
        } else {
            None
        };
        self.transport
            .run(|| self.attempt(&method, path, query, headers, body))
            .await
    }

    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), Attempt> {
        let request = Request {
            method,
            path,
            query,
            body,
        };
        let Answer {
            status,
            headers: response_headers,
            body: value,
            token,
        } = self
            .transport
            .send(request, &[&self.credits], |mut request, token| {
                request = request.header("authorization", format!("Zoho-oauthtoken {token}"));
                for (k, v) in headers {
                    request = request.header(*k, v);
                }
                request
            })
            .await?;
        // A write whose every record failed answers 400 with the per-record entries: the
        // caller reads them like a 207's.
        let per_record = status == StatusCode::BAD_REQUEST && value["data"].is_array();
        if status.is_success() || status == StatusCode::NOT_MODIFIED || per_record {
            return Ok((status, value));
        }
        if status == StatusCode::UNAUTHORIZED && value["code"] == "INVALID_TOKEN" {
            return Err(Attempt::Unauthorized(token));
        }
        let field = value["details"]["api_name"]
            .as_str()
            .or(value["details"]["param_name"].as_str())
            .map(str::to_string);
        Err(Attempt::Failed(from_status(
            SYSTEM,
            status,
            &response_headers,
            zoho_message(&value),
            field,
            None,
        )))
    }

    /// Records by id, 100 per call; missing ones are left out.
    pub async fn read(
        &self,
        kind: ObjectKind,
        ids: &[String],
        fields: &[String],
    ) -> Result<Vec<CrmRecord>, CrmError> {
        let fields = with_system_fields(fields);
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let ids = chunk.join(",");
            let path = format!("/crm/v8/{}", kind.zoho_module());
            let (_, value) = self
                .call(
                    Method::GET,
                    &path,
                    &[("ids", &ids), ("fields", &fields)],
                    &[],
                    None,
                    false,
                )
                .await?;
            out.extend(data(&value).iter().map(record));
        }
        Ok(out)
    }

    /// The record whose `field` equals `value` exactly (Zoho's `equals` matches like
    /// "contains" on text, so matches are checked here), the oldest when several do.
    pub async fn find_by(
        &self,
        kind: ObjectKind,
        field: &str,
        value: &str,
        fields: &[String],
    ) -> Result<Option<CrmRecord>, CrmError> {
        let criteria = format!("({field}:equals:{})", criteria_value(value));
        let fields = with_system_fields(fields);
        let path = format!("/crm/v8/{}/search", kind.zoho_module());
        let (status, found) = self
            .call(
                Method::GET,
                &path,
                &[("criteria", &criteria), ("fields", &fields)],
                &[],
                None,
                false,
            )
            .await?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let mut matches: Vec<CrmRecord> = data(&found)
            .iter()
            .filter(|r| {
                r[field]
                    .as_str()
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case(value.trim()))
            })
            .map(record)
            .collect();
        matches.sort_by_key(|r| r.id.parse::<u128>().unwrap_or(u128::MAX));
        Ok(matches.into_iter().next())
    }

    /// Records whose `field` equals one of `values` (case aside), by the lower-cased value,
    /// 50 values per COQL query: the bulk form of [`ZohoClient::find_by`].
    pub async fn find_many(
        &self,
        kind: ObjectKind,
        field: &str,
        values: &[String],
        fields: &[String],
    ) -> Result<std::collections::HashMap<String, CrmRecord>, CrmError> {
        let select = with_system_fields(fields);
        let mut found = std::collections::HashMap::new();
        for chunk in values.chunks(50) {
            let list = chunk
                .iter()
                .map(|v| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
                .collect::<Vec<_>>()
                .join(", ");
            let query = format!(
                "select {select} from {} where {field} in ({list}) limit 2000",
                kind.zoho_module()
            );
            let body = json!({ "select_query": query });
            let (status, answer) = self
                .call(Method::POST, "/crm/v8/coql", &[], &[], Some(&body), false)
                .await?;
            if status == StatusCode::NO_CONTENT {
                continue;
            }
            for r in data(&answer) {
                if let Some(v) = r[field].as_str() {
                    // The oldest record wins when several match (ids grow with time).
                    let record = record(r);
                    let key = v.trim().to_lowercase();
                    let older = found.get(&key).is_some_and(|existing: &CrmRecord| {
                        existing.id.parse::<u128>().unwrap_or(u128::MAX)
                            <= record.id.parse::<u128>().unwrap_or(u128::MAX)
                    });
                    if !older {
                        found.insert(key, record);
                    }
                }
            }
        }
        Ok(found)
    }

    fn write_body(&self, records: Vec<Value>, duplicate_check: &[String]) -> Value {
        let mut body = json!({ "data": records });
        if !duplicate_check.is_empty() {
            body["duplicate_check_fields"] = json!(duplicate_check);
        }
        if !self.workflows {
            body["trigger"] = json!([]);
        }
        body
    }

    /// Creates or updates by `duplicate_check` (e.g. `Email`; Zoho checks the fields in
    /// order), 100 per call; outcomes in the order of `records`.
    pub async fn upsert(
        &self,
        kind: ObjectKind,
        duplicate_check: &[String],
        records: &[BTreeMap<String, Value>],
    ) -> Result<Vec<Result<Written, CrmError>>, CrmError> {
        let mut out = Vec::with_capacity(records.len());
        for chunk in records.chunks(BATCH) {
            let body = self.write_body(chunk.iter().map(|r| json!(r)).collect(), duplicate_check);
            let path = format!("/crm/v8/{}/upsert", kind.zoho_module());
            let answer = self
                .call(Method::POST, &path, &[], &[], Some(&body), chunk.len() > 10)
                .await;
            out.extend(outcomes(answer, chunk.len())?);
        }
        Ok(out)
    }

    /// Updates records (each with its `id`), 100 per call; outcomes in order.
    pub async fn update(
        &self,
        kind: ObjectKind,
        records: &[(String, BTreeMap<String, Value>)],
    ) -> Result<Vec<Result<Written, CrmError>>, CrmError> {
        let mut out = Vec::with_capacity(records.len());
        for chunk in records.chunks(BATCH) {
            let body = self.write_body(
                chunk
                    .iter()
                    .map(|(id, fields)| {
                        let mut r = json!(fields);
                        r["id"] = json!(id);
                        r
                    })
                    .collect(),
                &[],
            );
            let path = format!("/crm/v8/{}", kind.zoho_module());
            let answer = self
                .call(Method::PUT, &path, &[], &[], Some(&body), chunk.len() > 10)
                .await;
            out.extend(outcomes(answer, chunk.len())?);
        }
        Ok(out)
    }

    /// Moves records to the recycle bin (restorable for 60 days), 100 per call.
    pub async fn delete(&self, kind: ObjectKind, ids: &[String]) -> Result<(), CrmError> {
        for chunk in ids.chunks(BATCH) {
            let ids = chunk.join(",");
            let path = format!("/crm/v8/{}", kind.zoho_module());
            let trigger = if self.workflows { "true" } else { "false" };
            self.call(
                Method::DELETE,
                &path,
                &[("ids", &ids), ("wf_trigger", trigger)],
                &[],
                None,
                false,
            )
            .await?;
        }
        Ok(())
    }

    /// Records modified after `since_ms`, oldest first, 200 per page (`page` from 1): what
    /// the poller uses to catch changes whose notification was lost. The second value says
    /// whether more pages follow.
    pub async fn modified_since(
        &self,
        kind: ObjectKind,
        since_ms: i64,
        page: u32,
        fields: &[String],
    ) -> Result<(Vec<CrmRecord>, bool), CrmError> {
        let since = raccordo_core::rfc3339(since_ms.max(0));
        let fields = with_system_fields(fields);
        let page = page.max(1).to_string();
        let path = format!("/crm/v8/{}", kind.zoho_module());
        let (status, value) = self
            .call(
                Method::GET,
                &path,
                &[
                    ("fields", &fields),
                    ("sort_by", "Modified_Time"),
                    ("sort_order", "asc"),
                    ("per_page", "200"),
                    ("page", &page),
                ],
                &[("if-modified-since", since)],
                None,
                false,
            )
            .await?;
        if status != StatusCode::OK {
            return Ok((Vec::new(), false));
        }
        let more = value["info"]["more_records"].as_bool().unwrap_or(false);
        Ok((data(&value).iter().map(record).collect(), more))
    }

    /// One page of every record of `kind` (200 per page), in id order: `cursor` is the
    /// previous page's answer (`None` for the first). Past 2000 records Zoho wants its
    /// `page_token`, which the cursor carries.
    pub async fn list_page(
        &self,
        kind: ObjectKind,
        fields: &[String],
        cursor: Option<&str>,
    ) -> Result<(Vec<CrmRecord>, Option<String>), CrmError> {
        let fields = with_system_fields(fields);
        let path = format!("/crm/v8/{}", kind.zoho_module());
        let mut query: Vec<(&str, &str)> = vec![
            ("fields", &fields),
            ("sort_by", "id"),
            ("sort_order", "asc"),
            ("per_page", "200"),
        ];
        // The cursor is `page:N` or `token:T`.
        let (page, token) = match cursor {
            Some(c) if c.starts_with("token:") => (None, Some(&c[6..])),
            Some(c) => (c.strip_prefix("page:"), None),
            None => (Some("1"), None),
        };
        if let Some(p) = page {
            query.push(("page", p));
        }
        if let Some(t) = token {
            query.push(("page_token", t));
        }
        let (status, value) = self
            .call(Method::GET, &path, &query, &[], None, false)
            .await?;
        if status != StatusCode::OK {
            return Ok((Vec::new(), None));
        }
        let info = &value["info"];
        let next = if info["more_records"] != true {
            None
        } else if let Some(t) = info["next_page_token"].as_str() {
            Some(format!("token:{t}"))
        } else {
            let current: u64 = page.and_then(|p| p.parse().ok()).unwrap_or(1);
            Some(format!("page:{}", current + 1))
        };
        Ok((data(&value).iter().map(record).collect(), next))
    }

    /// How many records have `field` = `value` and `date_field` within [`from_ms`, `to_ms`)
    /// (a search, counted page by page).
    pub async fn count(
        &self,
        kind: ObjectKind,
        field: &str,
        value: &str,
        date_field: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<u64, CrmError> {
        let criteria = format!(
            "(({field}:equals:{})and({date_field}:greater_equal:{})and({date_field}:less_than:{}))",
            criteria_value(value),
            criteria_value(&raccordo_core::rfc3339(from_ms)),
            criteria_value(&raccordo_core::rfc3339(to_ms))
        );
        let path = format!("/crm/v8/{}/search", kind.zoho_module());
        let mut total = 0u64;
        for page in 1u32..=50 {
            let page_text = page.to_string();
            let (status, found) = self
                .call(
                    Method::GET,
                    &path,
                    &[
                        ("criteria", criteria.as_str()),
                        ("fields", field),
                        ("per_page", "200"),
                        ("page", page_text.as_str()),
                    ],
                    &[],
                    None,
                    false,
                )
                .await?;
            if status == StatusCode::NO_CONTENT {
                break;
            }
            // `equals` matches text loosely: count exact values only.
            total += data(&found)
                .iter()
                .filter(|r| {
                    r[field]
                        .as_str()
                        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value.trim()))
                })
                .count() as u64;
            if found["info"]["more_records"] != true {
                break;
            }
        }
        Ok(total)
    }

    /// The module's fields: (API name, data type, picklist values).
    pub async fn fields(
        &self,
        kind: ObjectKind,
    ) -> Result<Vec<(String, String, Vec<String>)>, CrmError> {
        let (_, value) = self
            .call(
                Method::GET,
                "/crm/v8/settings/fields",
                &[("module", kind.zoho_module())],
                &[],
                None,
                false,
            )
            .await?;
        Ok(value["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| {
                let options = f["pick_list_values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o["actual_value"].as_str().map(str::to_string))
                    .filter(|o| o != "-None-")
                    .collect();
                Some((
                    f["api_name"].as_str()?.to_string(),
                    f["data_type"].as_str().unwrap_or_default().to_string(),
                    options,
                ))
            })
            .collect())
    }

    /// Subscribes `notify_url` to changes of contacts and accounts (or renews the channel:
    /// enabling an existing channel id replaces its details), until `expiry_ms` (at most a
    /// week ahead: Zoho silently shortens anything longer to an hour).
    pub async fn watch(
        &self,
        channel_id: i64,
        notify_url: &str,
        token: &str,
        expiry_ms: i64,
    ) -> Result<(), CrmError> {
        let expiry = raccordo_core::rfc3339(expiry_ms);
        let body = json!({ "watch": [{
            "channel_id": channel_id,
            "events": ["Contacts.all", "Accounts.all"],
            "channel_expiry": expiry,
            "token": token,
            "notify_url": notify_url,
        }]});
        let (_, answer) = self
            .call(
                Method::POST,
                "/crm/v8/actions/watch",
                &[],
                &[],
                Some(&body),
                false,
            )
            .await?;
        match answer["watch"][0]["status"].as_str() {
            Some("success") => Ok(()),
            _ => Err(CrmError::permanent(
                SYSTEM,
                format!("watch refused: {}", zoho_message(&answer["watch"][0])),
            )),
        }
    }
}

/// A value inside a search `criteria`: Zoho wants `(`, `)`, `,` and `\` escaped.
fn criteria_value(value: &str) -> String {
    value
        .chars()
        .flat_map(|c| match c {
            '(' | ')' | ',' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// Reads always ask for the modification time too (the merge needs it).
fn with_system_fields(fields: &[String]) -> String {
    let mut all: Vec<&str> = fields.iter().map(String::as_str).collect();
    if !all.contains(&"Modified_Time") {
        all.push("Modified_Time");
    }
    all.join(",")
}

fn data(value: &Value) -> &[Value] {
    value["data"].as_array().map_or(&[], Vec::as_slice)
}

fn zoho_message(value: &Value) -> String {
    match value["code"].as_str() {
        Some(code) => format!("{code}: {}", body_message(value)),
        None => body_message(value),
    }
}

fn record(r: &Value) -> CrmRecord {
    let values: BTreeMap<String, Value> = r
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    CrmRecord {
        id: match &r["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        modified_at_ms: r["Modified_Time"]
            .as_str()
            .and_then(parse_time)
            .unwrap_or(0),
        values,
        field_modified_at_ms: BTreeMap::new(),
    }
}

/// Per-record outcomes of a write, in order.
fn outcomes(
    answer: Result<(StatusCode, Value), CrmError>,
    expected: usize,
) -> Result<Vec<Result<Written, CrmError>>, CrmError> {
    let (_, value) = answer?;
    let entries = data(&value);
    Ok((0..expected)
        .map(|i| {
            let entry = entries.get(i).unwrap_or(&Value::Null);
            if entry["status"] == "success" {
                Ok(Written {
                    id: entry["details"]["id"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_default(),
                    created: entry["action"] == "insert" || entry["message"] == "record added",
                })
            } else {
                Err(CrmError::Permanent {
                    system: SYSTEM,
                    status: None,
                    message: zoho_message(entry),
                    field: entry["details"]["api_name"].as_str().map(str::to_string),
                })
            }
        })
        .collect())
}
