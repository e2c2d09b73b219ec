//! What flows need of a CRM, and the hub's CRM clients behind it.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use raccordo_core::crm::{CrmRecord, ObjectKind, System};
use raccordo_crm::{CrmError, HubSpotClient, ZohoClient};
use serde_json::Value;

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

    /// Sets properties on many records in batch calls; an outcome per record, in order.
    async fn update_many(
        &self,
        system: System,
        kind: ObjectKind,
        records: &[(String, BTreeMap<String, Value>)],
    ) -> Result<Vec<Result<(), CrmError>>, CrmError>;

    /// Up to `limit` records changed since `since_ms`, oldest change first.
    async fn modified_since(
        &self,
        system: System,
        kind: ObjectKind,
        since_ms: i64,
        properties: &[String],
        limit: usize,
    ) -> Result<Vec<CrmRecord>, CrmError>;
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
        self.update_many(system, kind, &[(id.to_string(), properties.clone())])
            .await?
            .pop()
            .unwrap_or(Ok(()))
    }

    async fn update_many(
        &self,
        system: System,
        kind: ObjectKind,
        records: &[(String, BTreeMap<String, Value>)],
    ) -> Result<Vec<Result<(), CrmError>>, CrmError> {
        match system {
            System::HubSpot => {
                let c = self
                    .hubspot
                    .as_ref()
                    .ok_or_else(|| not_configured(system))?;
                let mut outcomes = c.update(kind, records).await?;
                Ok(records
                    .iter()
                    .map(|(id, _)| outcomes.remove(id).unwrap_or(Ok(())))
                    .collect())
            }
            System::Zoho => {
                let c = self.zoho.as_ref().ok_or_else(|| not_configured(system))?;
                Ok(c.update(kind, records)
                    .await?
                    .into_iter()
                    .map(|r| r.map(|_| ()))
                    .collect())
            }
        }
    }

    async fn modified_since(
        &self,
        system: System,
        kind: ObjectKind,
        since_ms: i64,
        properties: &[String],
        limit: usize,
    ) -> Result<Vec<CrmRecord>, CrmError> {
        let mut out = Vec::new();
        match system {
            System::HubSpot => {
                let c = self
                    .hubspot
                    .as_ref()
                    .ok_or_else(|| not_configured(system))?;
                let mut after = None;
                loop {
                    let (page, next) = c
                        .modified_since(kind, since_ms, after.as_deref(), properties)
                        .await?;
                    out.extend(page);
                    match next {
                        Some(n) if out.len() < limit => after = Some(n),
                        _ => break,
                    }
                }
            }
            System::Zoho => {
                let c = self.zoho.as_ref().ok_or_else(|| not_configured(system))?;
                let mut page = 1;
                loop {
                    let (records, more) =
                        c.modified_since(kind, since_ms, page, properties).await?;
                    out.extend(records);
                    if !more || out.len() >= limit {
                        break;
                    }
                    page += 1;
                }
            }
        }
        out.truncate(limit);
        Ok(out)
    }
}
