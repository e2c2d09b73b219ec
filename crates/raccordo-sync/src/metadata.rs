//! Checking the field mappings against what the CRMs say about their fields: that every
//! mapped property and field exists, that picklist options exist on both sides, and that a
//! mapping's type suits the CRM's (a HubSpot date property mapped as text would write text
//! HubSpot refuses). Pure: the worker fetches the metadata and reports what this finds.

use crate::config::ObjectSync;
use crate::fields::FieldType;

/// What a CRM says about one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMeta {
    pub name: String,
    /// The CRM's own type name (`enumeration`, `date`, `picklist`, `email`, …).
    pub kind: String,
    /// Picklist option values.
    pub options: Vec<String>,
}

/// Problems with `object`'s mappings, one sentence each, naming the field.
pub fn check(object: &ObjectSync, hubspot: &[FieldMeta], zoho: &[FieldMeta]) -> Vec<String> {
    let mut out = Vec::new();
    for f in &object.fields {
        let h = hubspot.iter().find(|m| m.name == f.hubspot);
        let z = zoho.iter().find(|m| m.name == f.zoho);
        if h.is_none() {
            out.push(format!("HubSpot has no property `{}`", f.hubspot));
        }
        if z.is_none() {
            out.push(format!("Zoho has no field `{}`", f.zoho));
        }
        if f.kind == FieldType::Picklist {
            for o in &f.options {
                if let Some(h) = h.filter(|h| !h.options.is_empty())
                    && !h.options.contains(&o.hubspot)
                {
                    out.push(format!(
                        "`{}`: HubSpot has no option `{}`",
                        f.hubspot, o.hubspot
                    ));
                }
                if let Some(z) = z.filter(|z| !z.options.is_empty())
                    && !z.options.contains(&o.zoho)
                {
                    out.push(format!("`{}`: Zoho has no option `{}`", f.zoho, o.zoho));
                }
            }
        }
        let expected = match f.kind {
            FieldType::Date => Some(("date", "date")),
            FieldType::DateTime => Some(("datetime", "datetime")),
            FieldType::Number => Some(("number", "")),
            FieldType::Bool => Some(("bool", "boolean")),
            _ => None,
        };
        if let Some(h) = h
            && matches!(h.kind.as_str(), "date" | "datetime")
            && !matches!(f.kind, FieldType::Date | FieldType::DateTime)
        {
            out.push(format!(
                "`{}` is a HubSpot {} property: map it with type `{}`",
                f.hubspot,
                h.kind,
                h.kind.replace("datetime", "date_time")
            ));
        }
        if let (Some((hubspot_kind, _)), Some(h)) = (expected, h)
            && !h.kind.starts_with(hubspot_kind)
            && !(hubspot_kind == "number" && h.kind == "string")
        {
            out.push(format!(
                "`{}` is mapped as {:?} but HubSpot says `{}`",
                f.hubspot, f.kind, h.kind
            ));
        }
    }
    out
}

/// Fetches both CRMs' field metadata and checks every object's mappings.
pub async fn check_against_crms(
    config: &crate::config::SyncConfig,
    hubspot: &raccordo_crm::HubSpotClient,
    zoho: &raccordo_crm::ZohoClient,
) -> Result<Vec<String>, raccordo_crm::CrmError> {
    use raccordo_core::crm::ObjectKind;
    let meta = |list: Vec<(String, String, Vec<String>)>| -> Vec<FieldMeta> {
        list.into_iter()
            .map(|(name, kind, options)| FieldMeta {
                name,
                kind,
                options,
            })
            .collect()
    };
    let mut out = Vec::new();
    for (kind, object) in [
        (ObjectKind::Contact, &config.contacts),
        (ObjectKind::Company, &config.companies),
    ] {
        let h = meta(hubspot.properties(kind).await?);
        let z = meta(zoho.fields(kind).await?);
        out.extend(
            check(object, &h, &z)
                .into_iter()
                .map(|p| format!("{}s: {p}", kind.as_str())),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, kind: &str, options: &[&str]) -> FieldMeta {
        FieldMeta {
            name: name.into(),
            kind: kind.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn missing_fields_options_and_type_mismatches_are_named() {
        let mut object = ObjectSync::default_contacts();
        object.fields.push(crate::fields::FieldMapping::new(
            "closedate",
            "Closing_Date",
            FieldType::Text,
        ));
        let hubspot = vec![
            meta("email", "string", &[]),
            meta("lifecyclestage", "enumeration", &["lead", "customer"]),
            meta("closedate", "date", &[]),
        ];
        let zoho = vec![
            meta("Email", "email", &[]),
            meta("Lifecycle_Stage", "picklist", &["Lead", "Customer"]),
        ];
        let problems = check(&object, &hubspot, &zoho);
        for expected in [
            "HubSpot has no property `firstname`",
            "Zoho has no field `Closing_Date`",
            "`lifecyclestage`: HubSpot has no option `marketingqualifiedlead`",
            "`Lifecycle_Stage`: Zoho has no option `Sales Qualified Lead`",
            "`closedate` is a HubSpot date property: map it with type `date`",
        ] {
            assert!(
                problems.iter().any(|p| p == expected),
                "{expected} not in {problems:#?}"
            );
        }
        assert!(
            !problems.iter().any(|p| p.contains("`email`")),
            "{problems:#?}"
        );
    }
}
