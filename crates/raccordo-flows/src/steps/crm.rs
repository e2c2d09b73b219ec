//! `crm_update` and `crm_search`: HubSpot or Zoho contacts and companies through the hub's
//! CRM clients (their batching, rate limits and OAuth tokens), matched by id or e-mail.

use std::collections::BTreeMap;

use async_trait::async_trait;
use raccordo_core::crm::{ObjectKind, System};
use raccordo_crm::CrmError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    BuildContext, BuildError, Step, StepEnv, StepError, StepOutput, eval_field, read_input,
    render_field, template, template_value,
};
use crate::template::{Template, TemplateValue};

fn step_error(e: CrmError) -> StepError {
    if e.is_retryable() || matches!(e, CrmError::Unauthorized { .. }) {
        // Refused credentials wait for `raccordo connect` like the sync's work does.
        StepError::Retryable {
            message: e.to_string(),
            retry_after_ms: e.retry_after_ms(),
        }
    } else {
        StepError::Permanent {
            field: e.field().map(|f| format!("properties.{f}")),
            message: e.to_string(),
        }
    }
}

/// The e-mail property of each CRM: how `match.email` finds a record.
fn email_property(system: System, kind: ObjectKind) -> Result<&'static str, StepError> {
    match (system, kind) {
        (System::HubSpot, ObjectKind::Contact) => Ok("email"),
        (System::Zoho, ObjectKind::Contact) => Ok("Email"),
        (_, ObjectKind::Company) => Err(StepError::at(
            "match.email",
            "companies have no e-mail; match them by `id`",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSettings {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmUpdateSettings {
    system: System,
    #[serde(default = "contact")]
    object: ObjectKind,
    /// How to find the record: `{ id = "…" }` or `{ email = "…" }` (templates).
    #[serde(rename = "match", default)]
    matching: Option<MatchSettings>,
    /// The properties to set, in the CRM's own field names (templates).
    #[serde(default)]
    properties: Option<Value>,
    /// Instead of `match`: an expression giving a list of records to update in batch
    /// calls, each `{ "id", "properties" }` — or with `properties` given, each any object
    /// with an `id`, and `properties` templates over it as `record` (one write per item).
    #[serde(default)]
    records: Option<String>,
}

fn contact() -> ObjectKind {
    ObjectKind::Contact
}

enum Matcher {
    Id(Template),
    Email(Template),
}

enum Target {
    One {
        matcher: Matcher,
        properties: TemplateValue,
    },
    Many {
        records: Template,
        /// Per record, over `record`.
        properties: Option<TemplateValue>,
    },
}

pub struct CrmUpdateStep {
    system: System,
    object: ObjectKind,
    target: Target,
}

/// Records per batch-mode step: one or two batch calls, well inside a step's timeout.
const MAX_RECORDS: usize = 200;

#[derive(Serialize, Deserialize)]
struct UpdateInput {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    properties: BTreeMap<String, Value>,
}

impl CrmUpdateStep {
    pub fn build(s: CrmUpdateSettings, cx: &BuildContext<'_>) -> Result<Self, BuildError> {
        let scope = cx.scope(false);
        let (matching, properties) = match (s.matching, s.properties, s.records) {
            (None, properties, Some(records)) => {
                let records = crate::template::condition(&records, &scope)
                    .map_err(|e| ("records".to_string(), e))?;
                let per_record = crate::template::Scope {
                    has_record: true,
                    ..scope.clone()
                };
                let properties = match properties {
                    Some(p) if p.is_object() => {
                        Some(template_value("properties", &p, &per_record)?)
                    }
                    Some(_) => {
                        return Err(("properties".into(), "must be a table of properties".into()));
                    }
                    None => None,
                };
                return Ok(Self {
                    system: s.system,
                    object: s.object,
                    target: Target::Many {
                        records,
                        properties,
                    },
                });
            }
            (Some(m), Some(p), None) => (m, p),
            (Some(_), _, Some(_)) => {
                return Err(("records".into(), "give either `records` or `match`".into()));
            }
            (None, _, None) => {
                return Err(("match".into(), "missing: which record to update".into()));
            }
            (Some(_), None, None) => {
                return Err(("properties".into(), "missing: what to set".into()));
            }
        };
        let matcher = match (matching.id, matching.email) {
            (Some(id), None) => Matcher::Id(template("match.id", &id, &scope)?),
            (None, Some(email)) => {
                if s.object == ObjectKind::Company {
                    return Err((
                        "match.email".into(),
                        "companies have no e-mail; match them by `id`".into(),
                    ));
                }
                Matcher::Email(template("match.email", &email, &scope)?)
            }
            _ => {
                return Err((
                    "match".into(),
                    "give exactly one of `id` and `email`".into(),
                ));
            }
        };
        if !properties.is_object() {
            return Err(("properties".into(), "must be a table of properties".into()));
        }
        Ok(Self {
            system: s.system,
            object: s.object,
            target: Target::One {
                matcher,
                properties: template_value("properties", &properties, &scope)?,
            },
        })
    }
}

#[async_trait]
impl Step for CrmUpdateStep {
    fn kind(&self) -> &'static str {
        "crm_update"
    }

    fn input(&self, context: &minijinja::Value) -> Result<Value, StepError> {
        let (matcher, properties) = match &self.target {
            Target::Many {
                records,
                properties,
            } => {
                let records = records
                    .eval(context)
                    .map_err(|e| StepError::at("records", e))?;
                let Some(properties) = properties else {
                    return Ok(json!({ "records": records }));
                };
                let items = records
                    .as_array()
                    .ok_or_else(|| StepError::at("records", "must be a list"))?;
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let scope =
                        super::with_var(context, "record", minijinja::Value::from_serialize(item));
                    let props = properties.eval(&scope).map_err(|(p, e)| {
                        StepError::at(format!("properties{p} (record {i})"), e)
                    })?;
                    out.push(json!({ "id": item["id"], "properties": props }));
                }
                return Ok(json!({ "records": out }));
            }
            Target::One {
                matcher,
                properties,
            } => (matcher, properties),
        };
        let properties = eval_field("properties", properties, context)?;
        let (id, email) = match matcher {
            Matcher::Id(t) => (Some(render_field("match.id", t, context)?), None),
            Matcher::Email(t) => (None, Some(render_field("match.email", t, context)?)),
        };
        Ok(json!({ "id": id, "email": email, "properties": properties }))
    }

    async fn run(&self, input: &Value, env: &StepEnv<'_>) -> Result<StepOutput, StepError> {
        if let Target::Many { .. } = &self.target {
            return self.run_many(input, env).await;
        }
        let input: UpdateInput = read_input(input)?;
        let crm = &env.services.crm;
        let id = match (input.id, input.email) {
            (Some(id), _) if !id.trim().is_empty() => id,
            (_, Some(email)) if !email.trim().is_empty() => {
                let property = email_property(self.system, self.object)?;
                crm.find(self.system, self.object, property, email.trim(), &[])
                    .await
                    .map_err(step_error)?
                    .map(|r| r.id)
                    .ok_or_else(|| {
                        StepError::at(
                            "email",
                            format!(
                                "no {} {} has this e-mail",
                                self.system.as_str(),
                                self.object.as_str()
                            ),
                        )
                    })?
            }
            _ => {
                return Err(StepError::at(
                    "id",
                    "the record to update has no id or e-mail",
                ));
            }
        };
        // CRM fields are strings in HubSpot; Zoho takes JSON types. Values are sent as given.
        // Marked first: the CRM may notify the change before the update call returns.
        let echo = crate::services::echo_key(self.system, self.object, &id);
        let now = env.services.clock.now_ms();
        env.services
            .kv
            .put(&echo, Vec::new(), Some(crate::services::ECHO_MS), now)
            .await
            .map_err(|e| StepError::retryable(format!("marking the write: {e}")))?;
        crm.update(self.system, self.object, &id, &input.properties)
            .await
            .map_err(step_error)?;
        Ok(StepOutput::of(json!({
            "system": self.system,
            "object": self.object,
            "id": id,
            "updated": input.properties.keys().collect::<Vec<_>>(),
        })))
    }
}

#[derive(Deserialize)]
struct BatchRecord {
    id: Value,
    properties: BTreeMap<String, Value>,
}

impl CrmUpdateStep {
    async fn run_many(&self, input: &Value, env: &StepEnv<'_>) -> Result<StepOutput, StepError> {
        let records: Vec<BatchRecord> =
            serde_json::from_value(input["records"].clone()).map_err(|e| {
                StepError::at(
                    "records",
                    format!("must be a list of {{ \"id\", \"properties\" }}: {e}"),
                )
            })?;
        if records.len() > MAX_RECORDS {
            return Err(StepError::at(
                "records",
                format!("at most {MAX_RECORDS} records per step"),
            ));
        }
        let records: Vec<(String, BTreeMap<String, Value>)> = records
            .into_iter()
            .map(|r| {
                let id = match r.id {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (id, r.properties)
            })
            .collect();
        let now = env.services.clock.now_ms();
        for (id, _) in &records {
            let echo = crate::services::echo_key(self.system, self.object, id);
            env.services
                .kv
                .put(&echo, Vec::new(), Some(crate::services::ECHO_MS), now)
                .await
                .map_err(|e| StepError::retryable(format!("marking the write: {e}")))?;
        }
        let outcomes = env
            .services
            .crm
            .update_many(self.system, self.object, &records)
            .await
            .map_err(step_error)?;
        let failed: Vec<Value> = records
            .iter()
            .zip(&outcomes)
            .filter_map(|((id, _), r)| {
                r.as_ref()
                    .err()
                    .map(|e| json!({ "id": id, "error": e.to_string() }))
            })
            .collect();
        // A retry would write the ones that worked again; the failures are in the output
        // for a later step (or a person) to look at.
        Ok(StepOutput::of(json!({
            "system": self.system,
            "object": self.object,
            "updated": records.len() - failed.len(),
            "failed": failed,
        })))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmSearchSettings {
    system: System,
    #[serde(default = "contact")]
    object: ObjectKind,
    /// The property to match, in the CRM's own naming (`email`, `Email`, `domain`, …).
    #[serde(default)]
    property: Option<String>,
    /// The value it must equal (a template).
    #[serde(default)]
    value: Option<String>,
    /// Instead of `property` and `value`: every record changed within this time (`24h`),
    /// oldest change first, up to `limit`.
    #[serde(default, with = "humantime_serde")]
    modified_within: Option<std::time::Duration>,
    #[serde(default = "default_limit")]
    limit: usize,
    /// Properties to read back.
    #[serde(default)]
    properties: Vec<String>,
}

fn default_limit() -> usize {
    100
}

enum Query {
    Equals { property: String, value: Template },
    ModifiedWithin(std::time::Duration),
}

pub struct CrmSearchStep {
    system: System,
    object: ObjectKind,
    query: Query,
    limit: usize,
    properties: Vec<String>,
}

impl CrmSearchStep {
    pub fn build(s: CrmSearchSettings, cx: &BuildContext<'_>) -> Result<Self, BuildError> {
        let query = match (s.property, s.value, s.modified_within) {
            (Some(property), Some(value), None) => {
                if property.trim().is_empty() {
                    return Err(("property".into(), "must name a property".into()));
                }
                Query::Equals {
                    property,
                    value: template("value", &value, &cx.scope(false))?,
                }
            }
            (None, None, Some(within)) if !within.is_zero() => Query::ModifiedWithin(within),
            (None, None, Some(_)) => {
                return Err(("modified_within".into(), "must be longer than zero".into()));
            }
            _ => {
                return Err((
                    "property".into(),
                    "give `property` and `value`, or `modified_within`".into(),
                ));
            }
        };
        if !(1..=MAX_RECORDS).contains(&s.limit) {
            return Err(("limit".into(), format!("between 1 and {MAX_RECORDS}")));
        }
        Ok(Self {
            system: s.system,
            object: s.object,
            query,
            limit: s.limit,
            properties: s.properties,
        })
    }
}

#[async_trait]
impl Step for CrmSearchStep {
    fn kind(&self) -> &'static str {
        "crm_search"
    }
    fn input(&self, context: &minijinja::Value) -> Result<Value, StepError> {
        match &self.query {
            Query::Equals { value, .. } => {
                Ok(json!({ "value": render_field("value", value, context)? }))
            }
            Query::ModifiedWithin(within) => Ok(json!({ "within_ms": within.as_millis() as i64 })),
        }
    }
    async fn run(&self, input: &Value, env: &StepEnv<'_>) -> Result<StepOutput, StepError> {
        let property = match &self.query {
            Query::Equals { property, .. } => property,
            Query::ModifiedWithin(_) => {
                let within = input["within_ms"].as_i64().ok_or_else(|| {
                    StepError::at("within_ms", "must be a number of milliseconds")
                })?;
                let since = env.services.clock.now_ms() - within;
                let records = env
                    .services
                    .crm
                    .modified_since(
                        self.system,
                        self.object,
                        since,
                        &self.properties,
                        self.limit,
                    )
                    .await
                    .map_err(step_error)?;
                return Ok(StepOutput::of(json!({
                    "found": !records.is_empty(),
                    "count": records.len(),
                    "records": records.iter().map(|r| json!({ "id": r.id, "properties": r.values })).collect::<Vec<_>>(),
                })));
            }
        };
        let value = input["value"]
            .as_str()
            .ok_or_else(|| StepError::at("value", "must be text"))?;
        let found = env
            .services
            .crm
            .find(
                self.system,
                self.object,
                property,
                value.trim(),
                &self.properties,
            )
            .await
            .map_err(step_error)?;
        // Not found is an answer, not a failure: a later `filter` or `branch` decides.
        Ok(StepOutput::of(match found {
            None => json!({ "found": false }),
            Some(r) => json!({ "found": true, "id": r.id, "properties": r.values }),
        }))
    }
}
