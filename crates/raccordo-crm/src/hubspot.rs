//! HubSpot CRM v3 client: batch reads and writes of 100 records per call, the searches the
//! sync needs, the account's rate limits kept by [`Budget`], typed errors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raccordo_core::crm::{CrmRecord, ObjectKind};
use raccordo_core::{Clock, RateLimitStore};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::error::{Attempt, CrmError, body_message, from_status};
use crate::limits::{Limit, rolling_window};
use crate::stats::CallStats;
use crate::tokens::TokenSource;
pub use crate::transport::Written;
use crate::transport::{Answer, Request, Transport};

const SYSTEM: &str = "hubspot";
/// Inputs per batch call (HubSpot's limit).
pub const BATCH: usize = 100;
/// Inputs per batch read that asks for property history.
pub const BATCH_WITH_HISTORY: usize = 50;

/// Where the API is and which limits the account has.
#[derive(Debug, Clone)]
pub struct HubSpotSettings {
    /// `https://api.hubapi.com`, or a sandbox.
    pub base_url: String,
    /// Calls per rolling 10 seconds (100 on Free/Starter and for public apps, 190 on
    /// Professional and Enterprise).
    pub burst_per_10s: u32,
    /// Calls per day; `None` for OAuth apps, which have no daily cap.
    pub daily: Option<u32>,
    /// Search calls per second.
    pub search_per_s: u32,
    pub timeout: Duration,
    /// Which addresses the client may call (`[outbound]`); the default allows public
    /// `https` hosts only.
    pub outbound: raccordo_outbound::Outbound,
}

impl Default for HubSpotSettings {
    fn default() -> Self {
        Self {
            base_url: "https://api.hubapi.com".into(),
            burst_per_10s: 100,
            daily: None,
            search_per_s: 4,
            timeout: Duration::from_secs(30),
            outbound: Default::default(),
        }
    }
}

pub struct HubSpotClient {
    transport: Transport,
    burst: Limit,
    daily: Option<Limit>,
    search: Limit,
}

impl HubSpotClient {
    pub fn new(
        settings: &HubSpotSettings,
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
            burst: Limit {
                bucket: "hubspot:burst".into(),
                spec: rolling_window(settings.burst_per_10s, 10_000, 0.05),
            },
            daily: settings.daily.map(|n| Limit {
                bucket: "hubspot:daily".into(),
                spec: rolling_window(n, 86_400_000, 0.05),
            }),
            search: Limit {
                bucket: "hubspot:search".into(),
                spec: rolling_window(settings.search_per_s, 1_000, 0.05),
            },
        })
    }

    /// What this client did so far.
    pub fn stats(&self) -> Arc<CallStats> {
        self.transport.stats.clone()
    }

    /// One API call: rate limits, token (refreshed once on a 401), error sorting.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        search: bool,
    ) -> Result<(StatusCode, Value), CrmError> {
        let mut limits = vec![&self.burst];
        limits.extend(self.daily.as_ref());
        if search {
            limits.push(&self.search);
        }
        self.transport
            .run(|| self.attempt(&method, path, query, body, &limits))
            .await
    }

    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        limits: &[&Limit],
    ) -> Result<(StatusCode, Value), Attempt> {
        let request = Request {
            method,
            path,
            query,
            body,
        };
        let answer = self
            .transport
            .send(request, limits, |request, token| request.bearer_auth(token))
            .await?;
        self.transport.stats.remaining(&answer.headers);
        let Answer {
            status,
            headers,
            body: value,
            token,
        } = answer;
        if status.is_success() {
            return Ok((status, value));
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(Attempt::Unauthorized(token));
        }
        let policy_wait = match value["policyName"].as_str() {
            Some("TEN_SECONDLY_ROLLING") => Some(10_000),
            Some("DAILY") => Some(3_600_000),
            _ if body_message(&value) == "You have reached your secondly limit." => Some(1_000),
            _ => None,
        };
        Err(Attempt::Failed(from_status(
            SYSTEM,
            status,
            &headers,
            body_message(&value),
            invalid_property(&value),
            policy_wait,
        )))
    }

    /// Records by id, or by a unique property (`id_property = Some("email")`); missing and
    /// archived ones are left out. With `history`, each property's last-change time comes
    /// from its history (for the field-level merge).
    pub async fn read(
        &self,
        kind: ObjectKind,
        ids: &[String],
        id_property: Option<&str>,
        properties: &[String],
        history: bool,
    ) -> Result<Vec<CrmRecord>, CrmError> {
        let mut out = Vec::with_capacity(ids.len());
        let chunk = if history { BATCH_WITH_HISTORY } else { BATCH };
        for ids in ids.chunks(chunk) {
            let mut body = json!({
                "inputs": ids.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>(),
                "properties": properties,
            });
            if history {
                body["propertiesWithHistory"] = json!(properties);
            }
            if let Some(p) = id_property {
                body["idProperty"] = json!(p);
            }
            let path = format!("/crm/v3/objects/{}/batch/read", kind.hubspot_object());
            let (_, value) = self
                .call(
                    Method::POST,
                    &path,
                    &[("archived", "false")],
                    Some(&body),
                    false,
                )
                .await?;
            out.extend(results(&value).iter().map(|r| record(r, kind)));
        }
        Ok(out)
    }

    /// Creates or updates by a unique property (`email` for contacts), 100 per call. The
    /// outcomes are keyed by the lower-cased property value.
    pub async fn upsert(
        &self,
        kind: ObjectKind,
        id_property: &str,
        inputs: &[BTreeMap<String, Value>],
    ) -> Result<BTreeMap<String, Result<Written, CrmError>>, CrmError> {
        let mut out = BTreeMap::new();
        for chunk in inputs.chunks(BATCH) {
            let body = json!({
                "inputs": chunk.iter().map(|props| json!({
                    "id": props.get(id_property).cloned().unwrap_or(Value::Null),
                    "idProperty": id_property,
                    "properties": props,
                })).collect::<Vec<_>>(),
            });
            let path = format!("/crm/v3/objects/{}/batch/upsert", kind.hubspot_object());
            let (_, value) = self
                .call(Method::POST, &path, &[], Some(&body), false)
                .await?;
            for r in results(&value) {
                let Some(key) = r["properties"][id_property].as_str() else {
                    continue;
                };
                out.insert(
                    key.to_lowercase(),
                    Ok(Written {
                        id: id_of(r),
                        created: r["new"].as_bool().unwrap_or(false),
                    }),
                );
            }
            // Inputs with no result failed; the 207 answer says why (its first error).
            let failure = batch_failure(&value);
            for props in chunk {
                let key = props
                    .get(id_property)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_lowercase();
                out.entry(key).or_insert_with(|| Err(failure.clone()));
            }
        }
        Ok(out)
    }

    /// Updates records by id, 100 per call; outcomes by id.
    pub async fn update(
        &self,
        kind: ObjectKind,
        inputs: &[(String, BTreeMap<String, Value>)],
    ) -> Result<BTreeMap<String, Result<(), CrmError>>, CrmError> {
        let mut out = BTreeMap::new();
        for chunk in inputs.chunks(BATCH) {
            let body = json!({
                "inputs": chunk.iter().map(|(id, props)| json!({ "id": id, "properties": props })).collect::<Vec<_>>(),
            });
            let path = format!("/crm/v3/objects/{}/batch/update", kind.hubspot_object());
            let (_, value) = self
                .call(Method::POST, &path, &[], Some(&body), false)
                .await?;
            for r in results(&value) {
                out.insert(id_of(r), Ok(()));
            }
            let failure = batch_failure(&value);
            for (id, _) in chunk {
                out.entry(id.clone())
                    .or_insert_with(|| Err(failure.clone()));
            }
        }
        Ok(out)
    }

    /// The company each contact is associated with (the lowest company id when several:
    /// HubSpot lists the primary one among them, and a stable choice keeps the sync from
    /// flapping), 1000 contacts per call.
    pub async fn companies_of(
        &self,
        contact_ids: &[String],
    ) -> Result<std::collections::HashMap<String, String>, CrmError> {
        let mut out = std::collections::HashMap::new();
        for chunk in contact_ids.chunks(1000) {
            let body =
                json!({ "inputs": chunk.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>() });
            let (_, value) = self
                .call(
                    Method::POST,
                    "/crm/v4/associations/contacts/companies/batch/read",
                    &[],
                    Some(&body),
                    false,
                )
                .await?;
            for r in results(&value) {
                let Some(from) = r["from"]["id"].as_str() else {
                    continue;
                };
                let company = r["to"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| match &t["toObjectId"] {
                        Value::String(s) => s.parse::<u64>().ok(),
                        v => v.as_u64(),
                    })
                    .min();
                if let Some(company) = company {
                    out.insert(from.to_string(), company.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Associates a contact with a company (HubSpot's default, unlabelled association).
    pub async fn associate_company(
        &self,
        contact_id: &str,
        company_id: &str,
    ) -> Result<(), CrmError> {
        let path = format!(
            "/crm/v4/objects/contacts/{contact_id}/associations/default/companies/{company_id}"
        );
        self.call(Method::PUT, &path, &[], None, false).await?;
        Ok(())
    }

    /// The object's properties: (name, type, picklist option values).
    pub async fn properties(
        &self,
        kind: ObjectKind,
    ) -> Result<Vec<(String, String, Vec<String>)>, CrmError> {
        let path = format!("/crm/v3/properties/{}", kind.hubspot_object());
        let (_, value) = self.call(Method::GET, &path, &[], None, false).await?;
        Ok(results(&value)
            .iter()
            .filter_map(|p| {
                let options = p["options"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o["value"].as_str().map(str::to_string))
                    .collect();
                Some((
                    p["name"].as_str()?.to_string(),
                    p["type"].as_str().unwrap_or_default().to_string(),
                    options,
                ))
            })
            .collect())
    }

    /// Removes a contact's association with a company.
    pub async fn dissociate_company(
        &self,
        contact_id: &str,
        company_id: &str,
    ) -> Result<(), CrmError> {
        let path =
            format!("/crm/v4/objects/contacts/{contact_id}/associations/companies/{company_id}");
        self.call(Method::DELETE, &path, &[], None, false).await?;
        Ok(())
    }

    /// Deletes a contact for good (HubSpot's GDPR deletion; its e-mail is then blocked).
    pub async fn gdpr_delete(&self, contact_id: &str) -> Result<(), CrmError> {
        let body = json!({ "objectId": contact_id });
        self.call(
            Method::POST,
            "/crm/v3/objects/contacts/gdpr-delete",
            &[],
            Some(&body),
            false,
        )
        .await?;
        Ok(())
    }

    /// Archives records (restorable for 90 days), 100 per call.
    pub async fn archive(&self, kind: ObjectKind, ids: &[String]) -> Result<(), CrmError> {
        for chunk in ids.chunks(BATCH) {
            let body =
                json!({ "inputs": chunk.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>() });
            let path = format!("/crm/v3/objects/{}/batch/archive", kind.hubspot_object());
            self.call(Method::POST, &path, &[], Some(&body), false)
                .await?;
        }
        Ok(())
    }

    /// The record whose `property` equals `value` (e.g. a company by `domain`), the oldest
    /// when several do.
    pub async fn find_by(
        &self,
        kind: ObjectKind,
        property: &str,
        value: &str,
        properties: &[String],
    ) -> Result<Option<CrmRecord>, CrmError> {
        let body = json!({
            "filterGroups": [{ "filters": [{ "propertyName": property, "operator": "EQ", "value": value }] }],
            "sorts": [{ "propertyName": "createdate", "direction": "ASCENDING" }],
            "properties": properties,
            "limit": 1,
        });
        let path = format!("/crm/v3/objects/{}/search", kind.hubspot_object());
        let (_, found) = self
            .call(Method::POST, &path, &[], Some(&body), true)
            .await?;
        Ok(results(&found).first().map(|r| record(r, kind)))
    }

    /// One page (100) of every record of `kind`; `after` is the previous page's cursor.
    pub async fn list_page(
        &self,
        kind: ObjectKind,
        properties: &[String],
        after: Option<&str>,
    ) -> Result<(Vec<CrmRecord>, Option<String>), CrmError> {
        let properties = properties.join(",");
        let mut query = vec![("limit", "100"), ("properties", properties.as_str())];
        if let Some(after) = after {
            query.push(("after", after));
        }
        let path = format!("/crm/v3/objects/{}", kind.hubspot_object());
        let (_, page) = self.call(Method::GET, &path, &query, None, false).await?;
        let next = page["paging"]["next"]["after"].as_str().map(str::to_string);
        Ok((
            results(&page).iter().map(|r| record(r, kind)).collect(),
            next,
        ))
    }

    /// How many records have `property` = `value` and `date_property` within
    /// [`from_ms`, `to_ms`) (the search answer's `total`; one call).
    pub async fn count(
        &self,
        kind: ObjectKind,
        property: &str,
        value: &str,
        date_property: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<u64, CrmError> {
        let body = json!({
            "filterGroups": [{ "filters": [
                { "propertyName": property, "operator": "EQ", "value": value },
                { "propertyName": date_property, "operator": "GTE", "value": from_ms.to_string() },
                { "propertyName": date_property, "operator": "LT", "value": to_ms.to_string() },
            ] }],
            "properties": ["hs_object_id"],
            "limit": 1,
        });
        let path = format!("/crm/v3/objects/{}/search", kind.hubspot_object());
        let (_, found) = self
            .call(Method::POST, &path, &[], Some(&body), true)
            .await?;
        Ok(found["total"].as_u64().unwrap_or(0))
    }

    /// Records modified at or after `since_ms`, oldest first, a page at a time: what the
    /// poller uses to catch changes whose webhook was lost. `after` is the page cursor.
    pub async fn modified_since(
        &self,
        kind: ObjectKind,
        since_ms: i64,
        after: Option<&str>,
        properties: &[String],
    ) -> Result<(Vec<CrmRecord>, Option<String>), CrmError> {
        let modified = kind.hubspot_modified_property();
        let mut body = json!({
            "filterGroups": [{ "filters": [{ "propertyName": modified, "operator": "GTE", "value": since_ms.to_string() }] }],
            "sorts": [{ "propertyName": modified, "direction": "ASCENDING" }],
            "properties": properties,
            "limit": 100,
        });
        if let Some(after) = after {
            body["after"] = json!(after);
        }
        let path = format!("/crm/v3/objects/{}/search", kind.hubspot_object());
        let (_, page) = self
            .call(Method::POST, &path, &[], Some(&body), true)
            .await?;
        let next = page["paging"]["next"]["after"].as_str().map(str::to_string);
        Ok((
            results(&page).iter().map(|r| record(r, kind)).collect(),
            next,
        ))
    }
}

fn results(value: &Value) -> &[Value] {
    value["results"].as_array().map_or(&[], Vec::as_slice)
}

fn id_of(r: &Value) -> String {
    match &r["id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A HubSpot object as a record: properties as strings, times in epoch ms.
fn record(r: &Value, kind: ObjectKind) -> CrmRecord {
    let values: BTreeMap<String, Value> = r["properties"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let modified_at_ms = r["updatedAt"]
        .as_str()
        .and_then(parse_time)
        .or_else(|| {
            values
                .get(kind.hubspot_modified_property())
                .and_then(Value::as_str)
                .and_then(parse_time)
        })
        .unwrap_or(0);
    let field_modified_at_ms = r["propertiesWithHistory"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, history)| {
                    // Newest first; the first entry is the current value's.
                    let at = history.get(0)?["timestamp"].as_str().and_then(parse_time)?;
                    Some((k.clone(), at))
                })
                .collect()
        })
        .unwrap_or_default();
    CrmRecord {
        id: id_of(r),
        values,
        modified_at_ms,
        field_modified_at_ms,
    }
}

/// An RFC 3339 time, or epoch milliseconds, as epoch milliseconds.
pub(crate) fn parse_time(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The reason a batch's failed inputs failed: the first error of a 207 answer.
fn batch_failure(value: &Value) -> CrmError {
    let first = &value["errors"][0];
    CrmError::Permanent {
        system: SYSTEM,
        status: Some(207),
        message: first["message"]
            .as_str()
            .unwrap_or("no result for this input")
            .to_string(),
        field: first["context"]["propertyName"][0]
            .as_str()
            .map(str::to_string)
            .or_else(|| invalid_property(first)),
    }
}

/// The property a validation error names. HubSpot puts the details as JSON inside the
/// message: `Property values were not valid: [{"isValid":false,…,"name":"lifecyclestage"}]`.
fn invalid_property(body: &Value) -> Option<String> {
    let message = body["message"].as_str()?;
    let list = &message[message.find('[')?..];
    let details: Value = serde_json::from_str(list).ok()?;
    details[0]["name"].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_invalid_property_is_read_from_the_message() {
        let body = json!({"message": "Property values were not valid: [{\"isValid\":false,\"message\":\"x was not one of the allowed options\",\"error\":\"INVALID_OPTION\",\"name\":\"lifecyclestage\"}]", "category": "VALIDATION_ERROR"});
        assert_eq!(invalid_property(&body).as_deref(), Some("lifecyclestage"));
        assert_eq!(invalid_property(&json!({"message": "nope"})), None);
    }

    #[test]
    fn objects_become_records_with_history_times() {
        let r = record(
            &json!({"id": "101", "properties": {"email": "a@b.it"}, "updatedAt": "2026-01-02T03:04:05.006Z",
                    "propertiesWithHistory": {"email": [{"value": "a@b.it", "timestamp": "2026-01-01T00:00:00Z"}]}}),
            ObjectKind::Contact,
        );
        assert_eq!(r.id, "101");
        assert_eq!(r.modified_at_ms, 1_767_323_045_006);
        assert_eq!(r.field_modified_at_ms["email"], 1_767_225_600_000);
    }
}
