//! `crm_update` and `crm_search`: HubSpot or Zoho contacts and companies through the hub's
//! CRM clients (their batching, rate limits and OAuth tokens), matched by id or e-mail.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use raccordo_core::crm::{CrmRecord, ObjectKind, System};
use raccordo_crm::{CrmError, HubSpotClient, ZohoClient};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    BuildContext, BuildError, Step, StepEnv, StepError, StepOutput, eval_field, read_input,
    render_field, template, template_value,
};
use crate::template::{Template, TemplateValue};

/// What flows need of a CRM; the hub's clients implement it, tests may fake it.
#[async_trait]
pub trait CrmGateway: Send + Sync {
    /// The oldest record whose `property` equals `value`.
    async fn find(
        &self,
        system: System,
        kind: ObjectKind,
        property: &str,
        value: &str,
        properties: &[String],
    ) -> Result<Option<CrmRecord>, CrmError>;

    /// Sets `properties` on the record `id`.
    async fn update(
        &self,
        system: System,
        kind: ObjectKind,
        id: &str,
        properties: &BTreeMap<String, Value>,
    ) -> Result<(), CrmError>;
}

/// The hub's configured CRM clients.
#[derive(Clone, Default)]
pub struct CrmClients {
    pub hubspot: Option<Arc<HubSpotClient>>,
    pub zoho: Option<Arc<ZohoClient>>,
}

fn not_configured(system: System) -> CrmError {
    CrmError::Permanent {
        system: system.as_str(),
        status: None,
        message: format!(
            "{} is not configured (`[crm.{}]`)",
            system.as_str(),
            system.as_str()
        ),
        field: None,
    }
}

#[async_trait]
impl CrmGateway for CrmClients {
    async fn find(
        &self,
        system: System,
        kind: ObjectKind,
        property: &str,
        value: &str,
        properties: &[String],
    ) -> Result<Option<CrmRecord>, CrmError> {
        match system {
            System::HubSpot => {
                let c = self
                    .hubspot
                    .as_ref()
                    .ok_or_else(|| not_configured(system))?;
                c.find_by(kind, property, value, properties).await
            }
            System::Zoho => {
                let c = self.zoho.as_ref().ok_or_else(|| not_configured(system))?;
                c.find_by(kind, property, value, properties).await
            }
        }
    }

    async fn update(
        &self,
        system: System,
        kind: ObjectKind,
        id: &str,
        properties: &BTreeMap<String, Value>,
    ) -> Result<(), CrmError> {
        let inputs = [(id.to_string(), properties.clone())];
        match system {
            System::HubSpot => {
                let c = self
                    .hubspot
                    .as_ref()
                    .ok_or_else(|| not_configured(system))?;
                c.update(kind, &inputs).await?.remove(id).unwrap_or(Ok(()))
            }
            System::Zoho => {
                let c = self.zoho.as_ref().ok_or_else(|| not_configured(system))?;
                c.update(kind, &inputs)
                    .await?
                    .pop()
                    .map_or(Ok(()), |r| r.map(|_| ()))
            }
        }
    }
}

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
    #[serde(rename = "match")]
    matching: MatchSettings,
    /// The properties to set, in the CRM's own field names (templates).
    properties: Value,
}

fn contact() -> ObjectKind {
    ObjectKind::Contact
}

enum Matcher {
    Id(Template),
    Email(Template),
}

pub struct CrmUpdateStep {
    system: System,
    object: ObjectKind,
    matcher: Matcher,
    properties: TemplateValue,
}

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
        let matcher = match (s.matching.id, s.matching.email) {
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
        if !s.properties.is_object() {
            return Err(("properties".into(), "must be a table of properties".into()));
        }
        Ok(Self {
            system: s.system,
            object: s.object,
            matcher,
            properties: template_value("properties", &s.properties, &scope)?,
        })
    }
}

#[async_trait]
impl Step for CrmUpdateStep {
    fn kind(&self) -> &'static str {
        "crm_update"
    }

    fn input(&self, context: &minijinja::Value) -> Result<Value, StepError> {
        let properties = eval_field("properties", &self.properties, context)?;
        let (id, email) = match &self.matcher {
            Matcher::Id(t) => (Some(render_field("match.id", t, context)?), None),
            Matcher::Email(t) => (None, Some(render_field("match.email", t, context)?)),
        };
        Ok(json!({ "id": id, "email": email, "properties": properties }))
    }

    async fn run(&self, input: &Value, env: &StepEnv<'_>) -> Result<StepOutput, StepError> {
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
#[serde(deny_unknown_fields)]
pub struct CrmSearchSettings {
    system: System,
    #[serde(default = "contact")]
    object: ObjectKind,
    /// The property to match, in the CRM's own naming (`email`, `Email`, `domain`, …).
    property: String,
    /// The value it must equal (a template).
    value: String,
    /// Properties to read back.
    #[serde(default)]
    properties: Vec<String>,
}

pub struct CrmSearchStep {
    system: System,
    object: ObjectKind,
    property: String,
    value: Template,
    properties: Vec<String>,
}

impl CrmSearchStep {
    pub fn build(s: CrmSearchSettings, cx: &BuildContext<'_>) -> Result<Self, BuildError> {
        if s.property.trim().is_empty() {
            return Err(("property".into(), "must name a property".into()));
        }
        Ok(Self {
            system: s.system,
            object: s.object,
            property: s.property,
            value: template("value", &s.value, &cx.scope(false))?,
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
        Ok(json!({ "value": render_field("value", &self.value, context)? }))
    }
    async fn run(&self, input: &Value, env: &StepEnv<'_>) -> Result<StepOutput, StepError> {
        let value = input["value"]
            .as_str()
            .ok_or_else(|| StepError::at("value", "must be text"))?;
        let found = env
            .services
            .crm
            .find(
                self.system,
                self.object,
                &self.property,
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
