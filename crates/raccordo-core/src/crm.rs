//! CRM records as the sync and the CRM clients share them: which CRM, which kind of
//! record, and a record as read.

use std::collections::BTreeMap;

use serde_json::Value;

/// A CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    #[serde(rename = "hubspot")]
    HubSpot,
    Zoho,
}

impl System {
    pub fn other(self) -> Self {
        match self {
            System::HubSpot => System::Zoho,
            System::Zoho => System::HubSpot,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            System::HubSpot => "hubspot",
            System::Zoho => "zoho",
        }
    }
}

/// A kind of record that is synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Contact,
    Company,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 2] = [ObjectKind::Contact, ObjectKind::Company];

    /// HubSpot's object type in API paths.
    pub fn hubspot_object(self) -> &'static str {
        match self {
            ObjectKind::Contact => "contacts",
            ObjectKind::Company => "companies",
        }
    }
    /// Zoho's module API name.
    pub fn zoho_module(self) -> &'static str {
        match self {
            ObjectKind::Contact => "Contacts",
            ObjectKind::Company => "Accounts",
        }
    }
    /// HubSpot's last-modified property (companies use the `hs_` one).
    pub fn hubspot_modified_property(self) -> &'static str {
        match self {
            ObjectKind::Contact => "lastmodifieddate",
            ObjectKind::Company => "hs_lastmodifieddate",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Contact => "contact",
            ObjectKind::Company => "company",
        }
    }
}

/// A record as read from its CRM: field values as the CRM sends them (HubSpot properties
/// are JSON strings), keyed by that CRM's field names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CrmRecord {
    pub id: String,
    pub values: BTreeMap<String, Value>,
    pub modified_at_ms: i64,
    /// HubSpot property history: when each property was last set.
    pub field_modified_at_ms: BTreeMap<String, i64>,
}
