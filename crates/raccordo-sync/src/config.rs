//! `[sync]`: which fields are synced, how records are matched, which Zoho records are "hot"
//! enough for HubSpot, and what a deletion does.

use serde::{Deserialize, Serialize};

use crate::fields::{FieldMapping, FieldType};

/// `[sync]`: HubSpot ↔ Zoho CRM sync of contacts and companies. Zoho is the master of every
/// record; HubSpot holds the "hot" contacts.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// `[sync.contacts]`: HubSpot contacts ↔ Zoho Contacts.
    pub contacts: ObjectSync,
    /// `[sync.companies]`: HubSpot companies ↔ Zoho Accounts.
    pub companies: ObjectSync,
    /// Let raccordo's writes to Zoho run Zoho workflows, approvals and blueprints. Off: writes
    /// send `"trigger": []`, so a synced change does not fire automations a second time.
    pub zoho_workflows: bool,
    /// How often both CRMs are asked for records modified since the last poll, to catch
    /// changes whose webhook or notification was lost.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub poll_every: std::time::Duration,
    /// Contacts follow their company: HubSpot's company association and Zoho's
    /// `Account_Name` are synced like a field (once the company itself is synced).
    pub contact_companies: bool,
    /// `[sync.digest]`: the e-mail digest of failed operations.
    pub digest: crate::digest::DigestConfig,
    /// `[sync.retry]`: how failed sync operations are retried.
    pub retry: RetryConfig,
    /// `[[sync.conversion_checks]]`: the daily integrity check of conversions: the hub's
    /// count of a day's conversion events against a count the CRM gives for that day.
    pub conversion_checks: Vec<ConversionCheck>,
    /// How often both CRMs are compared in full and an integrity report written to
    /// `<data_dir>/reports/` (an alert follows when they disagree); `0s` turns it off.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub reconcile_every: std::time::Duration,
}

/// One daily conversion count compared between the hub and a CRM.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversionCheck {
    /// The check's name in the report.
    pub name: String,
    /// The hub source whose events are counted.
    pub source: String,
    /// Payload fields the counted events have (default: `evento = "acquisto_concluso"` and
    /// `stato = "completato"`, the default conversion).
    #[serde(default = "default_conversion_fields")]
    pub event_fields: std::collections::BTreeMap<String, String>,
    /// Which CRM counts: `hubspot` or `zoho`.
    #[schema(value_type = String)]
    pub crm: raccordo_core::crm::System,
    /// `contact` or `company`.
    #[schema(value_type = String)]
    #[serde(default = "default_contact")]
    pub object: raccordo_core::crm::ObjectKind,
    /// The CRM field (HubSpot property, Zoho field) a converted record has…
    pub field: String,
    /// …with this value (e.g. `lifecyclestage` = `customer`).
    pub value: String,
    /// The CRM date-time field that places a record in a day (e.g. `createdate`, or
    /// `hs_lifecyclestage_customer_date`; in Zoho `Created_Time`, `Modified_Time`).
    pub date_field: String,
    /// Largest difference accepted, as a share of the hub's count (0: equal).
    #[serde(default)]
    pub tolerance: f64,
}

fn default_conversion_fields() -> std::collections::BTreeMap<String, String> {
    [
        ("evento".to_string(), "acquisto_concluso".to_string()),
        ("stato".to_string(), "completato".to_string()),
    ]
    .into()
}

fn default_contact() -> raccordo_core::crm::ObjectKind {
    raccordo_core::crm::ObjectKind::Contact
}

/// Retries of operations that failed for a reason that may pass (timeouts, 5xx, 429):
/// exponential backoff with ±20 % jitter, never sooner than the CRM's `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Wait before the first retry; each next wait doubles.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub first_delay: std::time::Duration,
    /// Longest wait between two attempts.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub max_delay: std::time::Duration,
    /// Attempts in all, the first included; then the operation goes to the dead-letter queue.
    pub attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        // The seed's schedule: first retry after 30 s, five attempts.
        Self {
            first_delay: std::time::Duration::from_secs(30),
            max_delay: std::time::Duration::from_secs(3600),
            attempts: 5,
        }
    }
}

impl RetryConfig {
    pub fn policy(&self) -> raccordo_core::RetryPolicy {
        raccordo_core::RetryPolicy {
            first_delay_ms: self.first_delay.as_millis() as i64,
            max_delay_ms: self.max_delay.as_millis() as i64,
            max_attempts: self.attempts.max(1),
            ..raccordo_core::RetryPolicy::default()
        }
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            contacts: ObjectSync::default_contacts(),
            companies: ObjectSync::default_companies(),
            zoho_workflows: false,
            poll_every: std::time::Duration::from_secs(300),
            contact_companies: true,
            digest: crate::digest::DigestConfig::default(),
            retry: RetryConfig::default(),
            reconcile_every: std::time::Duration::from_secs(24 * 3600),
            conversion_checks: Vec::new(),
        }
    }
}

/// How one kind of record is synced.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectSync {
    /// The synced fields (`[[sync.contacts.fields]]`): HubSpot property, Zoho field, type.
    pub fields: Vec<FieldMapping>,
    /// The field (a mapping's HubSpot name) that identifies a record on both sides before an
    /// id mapping exists: `email` for contacts, `domain` for companies. Creates are upserts
    /// keyed by it, so a retried or repeated create never makes a second record.
    pub match_on: String,
    /// Which Zoho records are created in HubSpot when they have no counterpart there.
    #[serde(default)]
    pub hot: HotRule,
    /// What a deletion on one side does to the counterpart on the other.
    #[serde(default)]
    pub on_delete: OnDelete,
    /// Zoho fields a create checks for an existing record, in order (Zoho's
    /// `duplicate_check_fields`); empty: the match field's. Companies also check
    /// `Account_Name`, Zoho's own unique field for accounts, so a company whose web site is
    /// written differently in Zoho is updated rather than refused as a duplicate.
    #[serde(default)]
    pub zoho_duplicate_check: Vec<String>,
}

/// When a Zoho record without a HubSpot counterpart is created in HubSpot. Records that
/// already have a counterpart are always kept in sync.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HotRule {
    /// `when`: if any condition holds; `always`; `never`.
    pub create: HotCreate,
    /// Conditions on the Zoho record's mapped fields, by the mapping's HubSpot name, compared
    /// with canonical values (for a picklist, HubSpot's option values). Any one suffices.
    pub conditions: Vec<HotCondition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HotCreate {
    #[default]
    When,
    Always,
    Never,
}

/// `field` holds one of `values`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HotCondition {
    pub field: String,
    pub values: Vec<String>,
}

/// What a deletion on one side does to the counterpart on the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    /// Nothing: the counterpart stays, and the id mapping too (a restore resumes the sync).
    #[default]
    Ignore,
    /// The counterpart is archived: HubSpot archives it (restorable for 90 days), Zoho moves
    /// it to the recycle bin (restorable for 60 days). The id mapping is removed.
    Archive,
    /// The counterpart is deleted for good where the CRM's API allows it: a HubSpot contact
    /// gets HubSpot's GDPR deletion (permanent, and its e-mail is blocked from coming back);
    /// HubSpot companies and Zoho records, which the APIs cannot delete for good, are
    /// archived as with `archive`. The id mapping is removed.
    Delete,
}

const LIFECYCLE: [(&str, &str); 8] = [
    ("subscriber", "Subscriber"),
    ("lead", "Lead"),
    ("marketingqualifiedlead", "Marketing Qualified Lead"),
    ("salesqualifiedlead", "Sales Qualified Lead"),
    ("opportunity", "Opportunity"),
    ("customer", "Customer"),
    ("evangelist", "Evangelist"),
    ("other", "Other"),
];

const LEAD_STATUS: [(&str, &str); 8] = [
    ("NEW", "New"),
    ("OPEN", "Open"),
    ("IN_PROGRESS", "In Progress"),
    ("OPEN_DEAL", "Open Deal"),
    ("UNQUALIFIED", "Unqualified"),
    ("ATTEMPTED_TO_CONTACT", "Attempted to Contact"),
    ("CONNECTED", "Connected"),
    ("BAD_TIMING", "Bad Timing"),
];

impl ObjectSync {
    /// Contacts: the standard fields, plus lifecycle stage and lead status, which Zoho keeps
    /// in the custom picklists `Lifecycle_Stage` and `Lead_Status` (add them in Zoho, or map
    /// other fields). A contact is hot when it is a marketing- or sales-qualified lead or an
    /// opportunity, or when its lead status shows someone is working on it.
    pub fn default_contacts() -> Self {
        Self {
            fields: vec![
                FieldMapping::new("email", "Email", FieldType::Email),
                FieldMapping::new("firstname", "First_Name", FieldType::Text),
                FieldMapping::new("lastname", "Last_Name", FieldType::Text),
                FieldMapping::phone("phone", "Phone", Some("39")),
                FieldMapping::phone("mobilephone", "Mobile", Some("39")),
                FieldMapping::new("city", "Mailing_City", FieldType::Text),
                FieldMapping::new("jobtitle", "Title", FieldType::Text),
                FieldMapping::picklist("lifecyclestage", "Lifecycle_Stage", &LIFECYCLE),
                FieldMapping::picklist("hs_lead_status", "Lead_Status", &LEAD_STATUS),
            ],
            match_on: "email".into(),
            hot: HotRule {
                create: HotCreate::When,
                conditions: vec![
                    HotCondition {
                        field: "lifecyclestage".into(),
                        values: vec![
                            "marketingqualifiedlead".into(),
                            "salesqualifiedlead".into(),
                            "opportunity".into(),
                        ],
                    },
                    HotCondition {
                        field: "hs_lead_status".into(),
                        values: vec![
                            "OPEN".into(),
                            "IN_PROGRESS".into(),
                            "OPEN_DEAL".into(),
                            "CONNECTED".into(),
                        ],
                    },
                ],
            },
            on_delete: OnDelete::Ignore,
            zoho_duplicate_check: Vec::new(),
        }
    }

    /// Companies: matched by web domain. Zoho accounts are not created in HubSpot on their
    /// own (HubSpot holds the hot contacts; their companies follow them), only kept in sync
    /// once they exist on both sides.
    pub fn default_companies() -> Self {
        Self {
            fields: vec![
                FieldMapping::new("domain", "Website", FieldType::Domain),
                FieldMapping::new("name", "Account_Name", FieldType::Text),
                FieldMapping::phone("phone", "Phone", Some("39")),
                FieldMapping::new("city", "Billing_City", FieldType::Text),
                FieldMapping::new("industry", "Industry", FieldType::Text),
            ],
            match_on: "domain".into(),
            hot: HotRule {
                create: HotCreate::Never,
                conditions: Vec::new(),
            },
            on_delete: OnDelete::Ignore,
            zoho_duplicate_check: vec!["Website".into(), "Account_Name".into()],
        }
    }

    /// The Zoho fields a create checks for an existing record, in order.
    pub fn zoho_duplicate_fields(&self) -> Vec<String> {
        if !self.zoho_duplicate_check.is_empty() {
            return self.zoho_duplicate_check.clone();
        }
        self.match_field()
            .map(|f| vec![f.zoho.clone()])
            .unwrap_or_default()
    }

    /// The mapping of the match field.
    pub fn match_field(&self) -> Option<&FieldMapping> {
        self.fields.iter().find(|f| f.hubspot == self.match_on)
    }

    /// Every problem with this object's settings, each as (key, message), for `raccordo
    /// check`: duplicate fields on either side, a match field or hot-rule field that is not
    /// mapped, hot-rule values that the picklist does not know.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut seen_h = std::collections::BTreeSet::new();
        let mut seen_z = std::collections::BTreeSet::new();
        for (i, f) in self.fields.iter().enumerate() {
            if !seen_h.insert(&f.hubspot) {
                out.push((
                    format!("fields[{i}].hubspot"),
                    format!("`{}` is mapped twice", f.hubspot),
                ));
            }
            if !seen_z.insert(&f.zoho) {
                out.push((
                    format!("fields[{i}].zoho"),
                    format!("`{}` is mapped twice", f.zoho),
                ));
            }
            if f.hubspot.trim().is_empty() || f.zoho.trim().is_empty() {
                out.push((format!("fields[{i}]"), "field names cannot be empty".into()));
            }
        }
        if self.match_field().is_none() {
            out.push((
                "match_on".into(),
                format!("`{}` is not one of the mapped fields", self.match_on),
            ));
        }
        for (i, c) in self.hot.conditions.iter().enumerate() {
            match self.fields.iter().find(|f| f.hubspot == c.field) {
                None => out.push((
                    format!("hot.conditions[{i}].field"),
                    format!("`{}` is not one of the mapped fields", c.field),
                )),
                Some(f) if f.kind == FieldType::Picklist && !f.options.is_empty() => {
                    for v in &c.values {
                        if !f.options.iter().any(|o| &o.hubspot == v) {
                            out.push((
                                format!("hot.conditions[{i}].values"),
                                format!("`{v}` is not an option of `{}`", c.field),
                            ));
                        }
                    }
                }
                Some(_) => {}
            }
        }
        if self.hot.create == HotCreate::When && self.hot.conditions.is_empty() {
            out.push((
                "hot.conditions".into(),
                "`create = \"when\"` needs at least one condition".into(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_consistent() {
        let c = SyncConfig::default();
        assert_eq!(c.contacts.problems(), Vec::<(String, String)>::new());
        assert_eq!(c.companies.problems(), Vec::<(String, String)>::new());
    }

    #[test]
    fn problems_name_the_key() {
        let mut c = ObjectSync::default_contacts();
        c.match_on = "mail".into();
        c.hot.conditions[0].values.push("hot".into());
        c.fields.push(FieldMapping::new(
            "email",
            "Secondary_Email",
            FieldType::Email,
        ));
        let keys: Vec<String> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            ["fields[9].hubspot", "match_on", "hot.conditions[0].values"]
        );
    }

    #[test]
    fn a_config_in_toml_reads_back() {
        let c: SyncConfig = toml_like(
            r#"{"contacts": {"match_on": "email", "fields": [
                {"hubspot": "email", "zoho": "Email", "type": "email"},
                {"hubspot": "phone", "zoho": "Phone", "type": "phone", "default_country_code": "39"},
                {"hubspot": "x", "zoho": "X", "type": "picklist", "options": [{"hubspot": "a", "zoho": "A"}]}
            ], "hot": {"create": "always"}, "on_delete": "archive"}}"#,
        );
        assert_eq!(c.contacts.fields.len(), 3);
        assert_eq!(
            c.contacts.fields[1],
            FieldMapping::phone("phone", "Phone", Some("39"))
        );
        assert_eq!(c.contacts.hot.create, HotCreate::Always);
        assert_eq!(c.contacts.on_delete, OnDelete::Archive);
        assert_eq!(c.companies, ObjectSync::default_companies());
    }

    fn toml_like(json: &str) -> SyncConfig {
        serde_json::from_str(json).unwrap()
    }
}
