//! Field mappings: one HubSpot property paired with one Zoho field, and the conversions
//! between each side's representation and a canonical one.
//!
//! The merge compares *canonical* values, so that `"02 1234 5678"` in HubSpot and
//! `"+39 02 12345678"` in Zoho are the same phone, and `"1704412800000"` (a HubSpot date
//! property, UTC midnight in epoch ms) is the same day as Zoho's `"2024-01-05"`. A canonical
//! value is `None` when the field is empty. Converting a canonical value to a side and back
//! gives it back unchanged (property-tested), so a value raccordo wrote never reads back as
//! a change.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};

/// Why a field's value could not be converted: the field is left out of the write and the
/// operation is reported (dead-letter queue and digest) with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    /// The field identifies the record across the CRMs (the match field) and is empty.
    #[error("missing: the record is matched across the CRMs by this field")]
    Missing,
    #[error("not a valid e-mail address")]
    MalformedEmail,
    #[error("not a phone number (6 to 15 digits, optionally with a + and country code)")]
    MalformedPhone,
    #[error("not a number")]
    MalformedNumber,
    #[error("not a date (YYYY-MM-DD, or epoch milliseconds at UTC midnight)")]
    MalformedDate,
    #[error("not a date-time (RFC 3339, or epoch milliseconds)")]
    MalformedDateTime,
    #[error("not a boolean")]
    MalformedBool,
    #[error("not a web domain or address")]
    MalformedDomain,
    #[error("expected text, found a JSON {0}")]
    NotText(&'static str),
    /// Picklist option values are configuration, not personal data, so naming them is safe
    /// and is what the person fixing the mapping needs.
    #[error("picklist value `{0}` has no mapping to the other CRM")]
    UnknownOption(String),
}

/// How a field's values are read, compared and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Text, compared after trimming surrounding white space.
    #[default]
    Text,
    /// An e-mail address, compared in lower case.
    Email,
    /// A phone number, compared in E.164 form (`+390212345678`): spaces, dots, dashes and
    /// brackets are dropped, `00` becomes `+`, and a number without a country code gets
    /// the mapping's `default_country_code`.
    Phone,
    /// A number: HubSpot sends it as a string, Zoho as a JSON number.
    Number,
    /// A calendar date: `YYYY-MM-DD` in Zoho; in HubSpot date properties, epoch milliseconds
    /// at UTC midnight (what HubSpot requires), read also as `YYYY-MM-DD`.
    Date,
    /// An instant, compared to the second (Zoho keeps no milliseconds).
    DateTime,
    /// `true` / `false`: strings in HubSpot, JSON booleans in Zoho.
    Bool,
    /// A web domain, compared as a lower-case host without scheme, `www.`, port or path:
    /// HubSpot's company `domain` (`rossi.it`) and Zoho's `Website` (`https://www.rossi.it/`)
    /// are the same value. Written as the bare domain.
    Domain,
    /// A picklist whose option values may differ between the CRMs (the mapping's `options`).
    /// The canonical value is HubSpot's. With no options listed, values pass through
    /// unchanged; with options, a value with no pair is reported and not written.
    Picklist,
}

/// One picklist option as each CRM spells it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PicklistOption {
    /// HubSpot's internal option value (e.g. `marketingqualifiedlead`).
    pub hubspot: String,
    /// Zoho's option value (e.g. `Marketing Qualified Lead`).
    pub zoho: String,
}

/// One synced field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// HubSpot property name (internal name, e.g. `firstname`). Also the field's name in
    /// snapshots, reports and the hot rule.
    pub hubspot: String,
    /// Zoho field API name (e.g. `First_Name`).
    pub zoho: String,
    /// How values are compared and converted: `text`, `email`, `phone`, `number`, `date`,
    /// `date_time`, `bool`, `domain`, `picklist`.
    #[serde(rename = "type", default)]
    pub kind: FieldType,
    /// For `phone`: digits of the country code given to numbers written without one (`39`
    /// for Italy); none leaves such numbers as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_country_code: Option<String>,
    /// For `picklist`: each option as HubSpot and Zoho spell it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<PicklistOption>,
    /// An empty value on one side clears the other side's value. Off by default: a form
    /// that leaves a field blank should not erase what the other CRM knows.
    #[serde(default)]
    pub empty_overwrites: bool,
}

/// A canonical field value; `None` is empty.
pub type Canonical = Option<String>;

impl FieldMapping {
    pub fn new(hubspot: &str, zoho: &str, kind: FieldType) -> Self {
        Self {
            hubspot: hubspot.into(),
            zoho: zoho.into(),
            kind,
            default_country_code: None,
            options: Vec::new(),
            empty_overwrites: false,
        }
    }

    /// A picklist mapping with its options as (HubSpot, Zoho) pairs.
    pub fn picklist(hubspot: &str, zoho: &str, options: &[(&str, &str)]) -> Self {
        Self {
            options: options
                .iter()
                .map(|(h, z)| PicklistOption {
                    hubspot: (*h).into(),
                    zoho: (*z).into(),
                })
                .collect(),
            ..Self::new(hubspot, zoho, FieldType::Picklist)
        }
    }

    /// A phone mapping that gives numbers without a country code this one.
    pub fn phone(hubspot: &str, zoho: &str, default_country_code: Option<&str>) -> Self {
        Self {
            default_country_code: default_country_code.map(Into::into),
            ..Self::new(hubspot, zoho, FieldType::Phone)
        }
    }

    fn mapped_options(&self) -> Option<&[PicklistOption]> {
        (self.kind == FieldType::Picklist && !self.options.is_empty()).then_some(&self.options)
    }

    /// Reads a HubSpot property value (HubSpot sends every property as a string; an empty
    /// string is an empty value).
    pub fn from_hubspot(&self, raw: Option<&str>) -> Result<Canonical, FieldProblem> {
        let Some(text) = raw.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        match self.kind {
            FieldType::Date => {
                if let Ok(ms) = text.parse::<i64>() {
                    let at = datetime_from_ms(ms).ok_or(FieldProblem::MalformedDate)?;
                    return Ok(Some(format_date(at.date())));
                }
                parse_date(text).map(|d| Some(format_date(d)))
            }
            _ if let Some(options) = self.mapped_options() => options
                .iter()
                .find(|o| o.hubspot == text)
                .map(|o| Some(o.hubspot.clone()))
                .ok_or_else(|| FieldProblem::UnknownOption(text.to_string())),
            _ => self.normalise(text),
        }
    }

    /// Reads a Zoho field value (`null` or `""` is empty).
    pub fn from_zoho(&self, raw: &Value) -> Result<Canonical, FieldProblem> {
        let text = match raw {
            Value::Null => return Ok(None),
            Value::String(s) => s.trim().to_string(),
            Value::Number(n) => match self.kind {
                FieldType::Number | FieldType::Text => n.to_string(),
                FieldType::DateTime => n.to_string(),
                _ => return Err(FieldProblem::NotText("number")),
            },
            Value::Bool(b) => match self.kind {
                FieldType::Bool | FieldType::Text => b.to_string(),
                _ => return Err(FieldProblem::NotText("boolean")),
            },
            // A lookup (`{"id", "name"}`) mapped to a text property: its display name.
            Value::Object(o) => match o.get("name").and_then(Value::as_str) {
                Some(name) if self.kind == FieldType::Text => name.trim().to_string(),
                _ => return Err(FieldProblem::NotText("object")),
            },
            Value::Array(_) => return Err(FieldProblem::NotText("array")),
        };
        if text.is_empty() {
            return Ok(None);
        }
        match &self.kind {
            _ if let Some(options) = self.mapped_options() => options
                .iter()
                .find(|o| o.zoho == text)
                .map(|o| Some(o.hubspot.clone()))
                .ok_or(FieldProblem::UnknownOption(text)),
            _ => self.normalise(&text),
        }
    }

    /// The HubSpot property value to write (`""` clears it).
    pub fn to_hubspot(&self, value: Option<&str>) -> String {
        let Some(v) = value else {
            return String::new();
        };
        match self.kind {
            // HubSpot date properties take UTC midnight in epoch milliseconds.
            FieldType::Date => parse_date(v)
                .map(|d| (d.midnight().assume_utc().unix_timestamp() * 1000).to_string())
                .unwrap_or_else(|_| v.to_string()),
            _ => v.to_string(),
        }
    }

    /// The Zoho field value to write (`null` clears it).
    pub fn to_zoho(&self, value: Option<&str>) -> Value {
        let Some(v) = value else {
            return Value::Null;
        };
        match self.kind {
            FieldType::Number => v
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or_else(|| Value::String(v.into()), Value::Number),
            FieldType::Bool => Value::Bool(v == "true"),
            // Zoho writes date-times with an explicit offset.
            FieldType::DateTime => Value::String(v.replace('Z', "+00:00")),
            FieldType::Picklist => Value::String(
                self.options
                    .iter()
                    .find(|o| o.hubspot == v)
                    .map_or(v, |o| o.zoho.as_str())
                    .to_string(),
            ),
            _ => Value::String(v.to_string()),
        }
    }

    /// The canonical form of a non-empty, trimmed text in this field's type.
    fn normalise(&self, text: &str) -> Result<Canonical, FieldProblem> {
        Ok(Some(match self.kind {
            FieldType::Text | FieldType::Picklist => text.to_string(),
            FieldType::Email => normalise_email(text)?,
            FieldType::Phone => normalise_phone(text, self.default_country_code.as_deref())?,
            FieldType::Number => normalise_number(text)?,
            FieldType::Date => format_date(parse_date(text)?),
            FieldType::DateTime => {
                let at = match text.parse::<i64>() {
                    Ok(ms) => datetime_from_ms(ms),
                    Err(_) => OffsetDateTime::parse(text, &Rfc3339).ok(),
                }
                .ok_or(FieldProblem::MalformedDateTime)?;
                format_datetime(at)
            }
            FieldType::Domain => normalise_domain(text)?,
            FieldType::Bool => match text.to_ascii_lowercase().as_str() {
                "true" => "true".into(),
                "false" => "false".into(),
                _ => return Err(FieldProblem::MalformedBool),
            },
        }))
    }
}

fn normalise_email(text: &str) -> Result<String, FieldProblem> {
    let lower = text.to_lowercase();
    let (local, domain) = lower.split_once('@').ok_or(FieldProblem::MalformedEmail)?;
    let valid = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !lower.chars().any(char::is_whitespace);
    if valid {
        Ok(lower)
    } else {
        Err(FieldProblem::MalformedEmail)
    }
}

fn normalise_phone(text: &str, default_country: Option<&str>) -> Result<String, FieldProblem> {
    let mut digits = String::with_capacity(text.len());
    let mut plus = false;
    for (i, c) in text.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => plus = true,
            ' ' | '-' | '.' | '(' | ')' | '/' => {}
            _ => return Err(FieldProblem::MalformedPhone),
        }
    }
    if !plus && let Some(rest) = digits.strip_prefix("00") {
        digits = rest.to_string();
        plus = true;
    }
    if !plus && let Some(code) = default_country {
        digits = format!("{code}{digits}");
        plus = true;
    }
    if !(6..=15).contains(&digits.len()) {
        return Err(FieldProblem::MalformedPhone);
    }
    Ok(if plus { format!("+{digits}") } else { digits })
}

fn normalise_domain(text: &str) -> Result<String, FieldProblem> {
    let lower = text.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .unwrap_or(&lower);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = host.split(':').next().unwrap_or_default();
    let host = host.strip_prefix("www.").unwrap_or(host);
    let valid = host.contains('.')
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if valid {
        Ok(host.to_string())
    } else {
        Err(FieldProblem::MalformedDomain)
    }
}

fn normalise_number(text: &str) -> Result<String, FieldProblem> {
    let n: f64 = text.parse().map_err(|_| FieldProblem::MalformedNumber)?;
    if !n.is_finite() {
        return Err(FieldProblem::MalformedNumber);
    }
    // `Display` for f64 is the shortest text that reads back as the same number and never
    // uses an exponent: `12.50` and `12.5` compare equal.
    Ok(if n == 0.0 { "0".into() } else { n.to_string() })
}

fn parse_date(text: &str) -> Result<Date, FieldProblem> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    // Zoho and HubSpot both accept a date-time where a date is asked; keep the date part.
    let day = text.get(..10).unwrap_or(text);
    Date::parse(day, &format).map_err(|_| FieldProblem::MalformedDate)
}

fn format_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn datetime_from_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

fn format_datetime(at: OffsetDateTime) -> String {
    let at = at
        .to_offset(UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(at);
    at.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn phone() -> FieldMapping {
        FieldMapping::phone("phone", "Phone", Some("39"))
    }

    #[test]
    fn the_same_phone_written_two_ways_is_one_value() {
        let m = phone();
        let hs = m.from_hubspot(Some("02 1234 5678")).unwrap();
        let zo = m.from_zoho(&json!("+39 02-1234.5678")).unwrap();
        assert_eq!(hs, zo);
        assert_eq!(hs.as_deref(), Some("+390212345678"));
        assert_eq!(m.from_hubspot(Some("0039 02 12345678")).unwrap(), hs);
        assert_eq!(
            m.from_hubspot(Some("call me")),
            Err(FieldProblem::MalformedPhone)
        );
    }

    #[test]
    fn hubspot_dates_are_utc_midnight_in_epoch_ms() {
        let m = FieldMapping::new("closedate", "Closing_Date", FieldType::Date);
        let day = m.from_zoho(&json!("2024-01-05")).unwrap();
        assert_eq!(m.to_hubspot(day.as_deref()), "1704412800000");
        assert_eq!(m.from_hubspot(Some("1704412800000")).unwrap(), day);
        assert_eq!(m.from_hubspot(Some("2024-01-05")).unwrap(), day);
        assert_eq!(
            m.from_zoho(&json!("2024-13-05")),
            Err(FieldProblem::MalformedDate)
        );
    }

    #[test]
    fn numbers_compare_by_value_and_are_written_as_json_numbers_to_zoho() {
        let m = FieldMapping::new("annualrevenue", "Annual_Revenue", FieldType::Number);
        assert_eq!(
            m.from_hubspot(Some("12.50")).unwrap(),
            m.from_zoho(&json!(12.5)).unwrap()
        );
        assert_eq!(m.to_zoho(Some("12.5")), json!(12.5));
        assert_eq!(
            m.from_hubspot(Some("NaN")),
            Err(FieldProblem::MalformedNumber)
        );
    }

    #[test]
    fn picklist_values_are_mapped_and_unknown_ones_reported() {
        let m = FieldMapping::picklist(
            "lifecyclestage",
            "Lifecycle_Stage",
            &[("marketingqualifiedlead", "Marketing Qualified Lead")],
        );
        let v = m.from_zoho(&json!("Marketing Qualified Lead")).unwrap();
        assert_eq!(v.as_deref(), Some("marketingqualifiedlead"));
        assert_eq!(m.to_zoho(v.as_deref()), json!("Marketing Qualified Lead"));
        assert_eq!(
            m.from_zoho(&json!("Cold")),
            Err(FieldProblem::UnknownOption("Cold".into()))
        );
    }

    #[test]
    fn a_company_domain_and_a_website_are_the_same_value() {
        let m = FieldMapping::new("domain", "Website", FieldType::Domain);
        assert_eq!(
            m.from_zoho(&json!("https://www.Rossi.it/contatti"))
                .unwrap(),
            m.from_hubspot(Some("rossi.it")).unwrap()
        );
        assert_eq!(
            m.from_hubspot(Some("not a domain")),
            Err(FieldProblem::MalformedDomain)
        );
    }

    #[test]
    fn a_zoho_lookup_maps_to_its_name_and_empty_values_are_none() {
        let m = FieldMapping::new("company", "Account_Name", FieldType::Text);
        assert_eq!(
            m.from_zoho(&json!({"id": "1", "name": "Rossi S.r.l."}))
                .unwrap(),
            Some("Rossi S.r.l.".into())
        );
        assert_eq!(m.from_zoho(&json!("  ")).unwrap(), None);
        assert_eq!(m.from_hubspot(Some("")).unwrap(), None);
        assert_eq!(m.to_zoho(None), Value::Null);
        assert_eq!(m.to_hubspot(None), "");
    }

    fn any_mapping() -> impl Strategy<Value = FieldMapping> {
        prop_oneof![
            Just(FieldMapping::new("p", "F", FieldType::Text)),
            Just(FieldMapping::new("p", "F", FieldType::Email)),
            Just(FieldMapping::phone("p", "F", Some("39"))),
            Just(FieldMapping::phone("p", "F", None)),
            Just(FieldMapping::new("p", "F", FieldType::Number)),
            Just(FieldMapping::new("p", "F", FieldType::Date)),
            Just(FieldMapping::new("p", "F", FieldType::DateTime)),
            Just(FieldMapping::new("p", "F", FieldType::Bool)),
            Just(FieldMapping::new("p", "F", FieldType::Domain)),
            Just(FieldMapping::new("p", "F", FieldType::Picklist)),
            Just(FieldMapping::picklist(
                "p",
                "F",
                &[("lead", "Lead"), ("customer", "Cliente")]
            )),
        ]
    }

    fn raw_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ a-zA-Z0-9@.+()-]{0,24}",
            "[a-z]{1,8}@[a-z]{1,8}\\.(it|com)",
            "(\\+|00)?[0-9 ]{6,14}",
            "-?[0-9]{1,9}(\\.[0-9]{1,4})?",
            "20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])",
            "20[0-9]{2}-0[1-9]-1[0-9]T[01][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{3})?(Z|\\+0[0-9]:00)",
            "(true|false|TRUE|False)",
            "(https?://)?(www\\.)?[a-z]{1,8}\\.(it|com)(:8080)?(/[a-z]{0,4})?",
            "(lead|customer|Lead|Cliente)",
        ]
    }

    proptest! {
        /// Whatever raccordo writes to a side reads back as the value it meant to write, so
        /// its own writes never look like changes (echo suppression rests on this).
        #[test]
        fn writing_a_canonical_value_and_reading_it_back_changes_nothing(m in any_mapping(), raw in raw_text(), from_zoho: bool) {
            let read = if from_zoho { m.from_zoho(&Value::String(raw)) } else { m.from_hubspot(Some(&raw)) };
            if let Ok(canonical) = read {
                prop_assert_eq!(m.from_hubspot(Some(&m.to_hubspot(canonical.as_deref()))).unwrap(), canonical.clone());
                prop_assert_eq!(m.from_zoho(&m.to_zoho(canonical.as_deref())).unwrap(), canonical);
            }
        }

        /// Reading never panics, whatever a CRM sends.
        #[test]
        fn any_input_converts_or_is_refused(m in any_mapping(), raw in ".{0,40}", n in any::<f64>()) {
            let _ = m.from_hubspot(Some(&raw));
            let _ = m.from_zoho(&Value::String(raw));
            let _ = m.from_zoho(&serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number));
        }
    }
}
