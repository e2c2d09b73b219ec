//! Field mappings: how a source's own payloads (a HubSpot webhook, a Zoho notification, a
//! form, a shop order) become conversions without being rewritten.
//!
//! The stored event stays the payload as the source sent it (canonical JSON); the mapping is
//! applied when the event is validated (so an event that cannot become a conversion is
//! refused with the failing field, never accepted and then ignored) and again when the live
//! windows read it from the log. Both are this module's pure functions, so they agree.
//!
//! ```toml
//! [sources.hubspot.mapping]
//! customer = "/objectId"
//! event = { pointer = "/subscriptionType", map = { "deal.creation" = "acquisto_concluso" } }
//! time = { pointer = "/occurredAt", format = "epoch_ms" }
//! value = { pointer = "/properties/amount" }
//! channel = { const = "crm" }
//! [sources.hubspot.mapping.dimensions]
//! pipeline = "/properties/pipeline"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::conversion::parse_time_ms;

/// Names an extra dimension cannot take: the built-in rows of the metrics.
pub const RESERVED_DIMENSIONS: [&str; 5] = ["all", "canale", "evento", "campagna", "source"];

/// `[sources.<name>.mapping]`: where each field of the conversion model is in the payload.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// The customer (distinct customers, conversion rate). Required.
    pub customer: FieldSpec,
    /// The event type, compared with `metrics.goals`. Required.
    pub event: FieldSpec,
    /// Event time (`format`: `auto`, `rfc3339`, `epoch_ms`, `epoch_s`); replaces `time_field`.
    pub time: Option<FieldSpec>,
    /// The amount (`format`: `amount`, the default, or `cents` for integer minor units).
    pub value: Option<FieldSpec>,
    /// The channel (the `canale` rows of the metrics).
    pub channel: Option<FieldSpec>,
    /// The outcome: `completato` counts as a conversion (for a goal event), `fallito` as a
    /// failure. Without a status mapping every event is `completato`.
    pub status: Option<FieldSpec>,
    /// The campaign (the `campagna` rows, and CPA).
    pub campaign: Option<FieldSpec>,
    /// Extra dimensions: each gets its own metric rows (`dimension=<name>`).
    #[serde(default)]
    pub dimensions: BTreeMap<String, FieldSpec>,
}

/// One mapped field: a JSON pointer (`"/properties/email"`), or a table with `pointer` or
/// `const`, and optionally `format`, `map` (value lookup) and `default`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[schema(as = MappingField)]
pub struct FieldSpec {
    /// Where the value is (a JSON pointer).
    pub pointer: Option<String>,
    /// A fixed value instead of a pointer.
    #[serde(rename = "const")]
    pub constant: Option<String>,
    /// How to read the value (see each field).
    pub format: Option<Format>,
    /// Lookup table applied to the value's text; values not in it are kept (or `default`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub map: BTreeMap<String, String>,
    /// Used when the pointer is absent (or, with `map`, when the value is not in it).
    pub default: Option<String>,
}

/// Conversions applied to a mapped value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Text as sent; numbers and booleans as their JSON text.
    Text,
    /// Text, lower-cased (e-mail addresses as customer ids).
    Lowercase,
    /// Time: an RFC 3339 string, or epoch ms / s as a number or digit string (numbers of
    /// magnitude 10¹¹ or more are milliseconds, smaller ones seconds).
    Auto,
    /// Time: an RFC 3339 date-time string.
    Rfc3339,
    /// Time: epoch milliseconds (number or digit string).
    EpochMs,
    /// Time: epoch seconds, fractions allowed (number or numeric string).
    EpochS,
    /// Value: an amount in major units (number or decimal string).
    Amount,
    /// Value: integer minor units (cents), divided by 100.
    Cents,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldTable {
    pointer: Option<String>,
    #[serde(rename = "const")]
    constant: Option<String>,
    format: Option<Format>,
    #[serde(default)]
    map: BTreeMap<String, String>,
    default: Option<String>,
}

// A string or a table, with the table's own precise errors (an untagged enum would only say
// "did not match any variant").
impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = FieldSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a JSON pointer such as \"/email\", or a table with `pointer` or `const`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldSpec, E> {
                Ok(FieldSpec {
                    pointer: Some(v.to_string()),
                    ..FieldSpec::default()
                })
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<FieldSpec, M::Error> {
                let t = FieldTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(FieldSpec {
                    pointer: t.pointer,
                    constant: t.constant,
                    format: t.format,
                    map: t.map,
                    default: t.default,
                })
            }
        }
        d.deserialize_any(SpecVisitor)
    }
}

/// What kind of value a field holds, for its formats and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Time,
    Value,
}

impl Kind {
    fn formats(self) -> &'static [Format] {
        match self {
            Kind::Text => &[Format::Text, Format::Lowercase],
            Kind::Time => &[
                Format::Auto,
                Format::Rfc3339,
                Format::EpochMs,
                Format::EpochS,
            ],
            Kind::Value => &[Format::Amount, Format::Cents],
        }
    }
}

/// A checked mapping, ready to apply.
#[derive(Debug, Clone)]
pub struct ConversionMapping {
    customer: Rule,
    event: Rule,
    time: Option<Rule>,
    value: Option<Rule>,
    channel: Option<Rule>,
    status: Option<Rule>,
    campaign: Option<Rule>,
    dimensions: Vec<(Arc<str>, Rule)>,
}

#[derive(Debug, Clone)]
struct Rule {
    pointer: Option<String>,
    constant: Option<String>,
    format: Format,
    map: BTreeMap<String, String>,
    default: Option<String>,
}

/// A payload read through a mapping: what the windows count.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MappedConversion {
    pub customer: String,
    pub event: String,
    /// Event time, epoch ms (`None`: the mapping has no time; arrival time is used).
    pub time_ms: Option<i64>,
    /// Amount in cents (0 when the mapping has no value or the payload none).
    pub value_cents: i64,
    pub channel: Option<String>,
    /// `completato` when the mapping has no status.
    pub status: String,
    pub campaign: Option<String>,
    /// Extra dimensions present in the payload, in the mapping's order.
    pub dimensions: Vec<(String, String)>,
}

/// One reason a payload cannot be mapped: the payload pointer (or the mapping field when
/// the value is missing) and a message that never quotes the value.
pub type MappingProblem = (String, String);

impl MappingConfig {
    /// Checks the mapping; problems are `(key, message)` relative to the mapping table.
    pub fn build(&self) -> Result<ConversionMapping, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut rule =
            |name: &str, spec: &FieldSpec, kind: Kind| Rule::build(name, spec, kind, &mut problems);
        let customer = rule("customer", &self.customer, Kind::Text);
        let event = rule("event", &self.event, Kind::Text);
        let time = self.time.as_ref().map(|s| rule("time", s, Kind::Time));
        let value = self.value.as_ref().map(|s| rule("value", s, Kind::Value));
        let channel = self
            .channel
            .as_ref()
            .map(|s| rule("channel", s, Kind::Text));
        let status = self.status.as_ref().map(|s| rule("status", s, Kind::Text));
        let campaign = self
            .campaign
            .as_ref()
            .map(|s| rule("campaign", s, Kind::Text));
        let mut dimensions = Vec::new();
        for (name, spec) in &self.dimensions {
            let key = format!("dimensions.{name}");
            let valid_name = !name.is_empty()
                && name.len() <= 40
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid_name {
                problems.push((
                    key.clone(),
                    "a dimension name is 1–40 of a-z, 0-9 and _".into(),
                ));
            } else if RESERVED_DIMENSIONS.contains(&name.as_str()) {
                problems.push((
                    key.clone(),
                    format!("`{name}` is a built-in dimension; choose another name"),
                ));
            }
            let r = Rule::build(&key, spec, Kind::Text, &mut problems);
            dimensions.push((Arc::from(name.as_str()), r));
        }
        if let Some(time) = &time
            && time.pointer.is_none()
        {
            problems.push(("time".into(), "the event time needs a `pointer`".into()));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(ConversionMapping {
            customer,
            event,
            time,
            value,
            channel,
            status,
            campaign,
            dimensions,
        })
    }
}

impl Rule {
    fn build(
        name: &str,
        spec: &FieldSpec,
        kind: Kind,
        problems: &mut Vec<(String, String)>,
    ) -> Rule {
        match (&spec.pointer, &spec.constant) {
            (Some(_), Some(_)) => problems.push((
                name.into(),
                "give either `pointer` or `const`, not both".into(),
            )),
            (None, None) => problems.push((name.into(), "needs a `pointer` or a `const`".into())),
            (Some(p), None) if !(p.is_empty() || p.starts_with('/')) => problems.push((
                format!("{name}.pointer"),
                "must be a JSON pointer such as `/properties/email`".into(),
            )),
            _ => {}
        }
        let default_format = kind.formats()[0];
        let format = spec.format.unwrap_or(default_format);
        if !kind.formats().contains(&format) {
            let allowed: Vec<String> = kind
                .formats()
                .iter()
                .map(|f| format!("`{}`", format_name(*f)))
                .collect();
            problems.push((
                format!("{name}.format"),
                format!("must be one of {}", allowed.join(", ")),
            ));
        }
        if kind != Kind::Text && !spec.map.is_empty() {
            problems.push((
                format!("{name}.map"),
                "a lookup applies to text fields only".into(),
            ));
        }
        Rule {
            pointer: spec.pointer.clone(),
            constant: spec.constant.clone(),
            format,
            map: spec.map.clone(),
            default: spec.default.clone(),
        }
    }

    /// The raw value: the pointed-at JSON, the constant, or nothing.
    fn raw<'a>(&'a self, payload: &'a Value) -> Option<Raw<'a>> {
        if let Some(c) = &self.constant {
            return Some(Raw::Text(c));
        }
        match payload.pointer(self.pointer.as_deref()?) {
            None | Some(Value::Null) => None,
            Some(v) => Some(Raw::Json(v)),
        }
    }

    fn at(&self) -> String {
        self.pointer.clone().unwrap_or_default()
    }

    /// A text field: `Ok(None)` when absent without a default.
    fn text(&self, payload: &Value) -> Result<Option<String>, MappingProblem> {
        let text = match self.raw(payload) {
            None => return Ok(self.default.clone()),
            Some(Raw::Text(t)) => t.to_string(),
            Some(Raw::Json(Value::String(s))) => s.clone(),
            Some(Raw::Json(v @ (Value::Number(_) | Value::Bool(_)))) => v.to_string(),
            Some(Raw::Json(_)) => {
                return Err((
                    self.at(),
                    "must be text, a number or a boolean to be mapped".into(),
                ));
            }
        };
        let text = if self.format == Format::Lowercase {
            text.to_lowercase()
        } else {
            text
        };
        if self.map.is_empty() {
            return Ok(Some(text));
        }
        Ok(Some(match self.map.get(&text) {
            Some(mapped) => mapped.clone(),
            None => self.default.clone().unwrap_or(text),
        }))
    }

    fn time(&self, payload: &Value) -> Result<Option<i64>, MappingProblem> {
        let Some(raw) = self.raw(payload) else {
            return Ok(None);
        };
        read_time(raw.as_value().as_ref(), self.format)
            .map(Some)
            .map_err(|m| (self.at(), m.to_string()))
    }

    fn cents(&self, payload: &Value) -> Result<i64, MappingProblem> {
        let raw = match self.raw(payload) {
            Some(raw) => raw,
            None => match &self.default {
                Some(d) => Raw::Text(d),
                None => return Ok(0),
            },
        };
        let number = match raw.as_value().as_ref() {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        let Some(number) = number.filter(|n| n.is_finite() && n.abs() < 1e15) else {
            return Err((self.at(), "must be a number or a numeric string".into()));
        };
        Ok(match self.format {
            Format::Cents => number.round() as i64,
            _ => (number * 100.0).round() as i64,
        })
    }
}

enum Raw<'a> {
    Text(&'a str),
    Json(&'a Value),
}

impl Raw<'_> {
    fn as_value(&self) -> std::borrow::Cow<'_, Value> {
        match self {
            Raw::Text(t) => std::borrow::Cow::Owned(Value::String(t.to_string())),
            Raw::Json(v) => std::borrow::Cow::Borrowed(v),
        }
    }
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Text => "text",
        Format::Lowercase => "lowercase",
        Format::Auto => "auto",
        Format::Rfc3339 => "rfc3339",
        Format::EpochMs => "epoch_ms",
        Format::EpochS => "epoch_s",
        Format::Amount => "amount",
        Format::Cents => "cents",
    }
}

/// Epoch ms of years 1–9999 (outside: refused, so arithmetic on times cannot overflow).
const MIN_TIME_MS: i64 = -62_135_596_800_000;
const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// Reads an event time. The message names the expected form, never the value.
pub fn read_time(value: &Value, format: Format) -> Result<i64, &'static str> {
    let number = |v: &Value| -> Option<f64> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s)
                if !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-') =>
            {
                s.parse::<f64>().ok()
            }
            _ => None,
        }
    };
    let ms = match format {
        Format::Rfc3339 => match value {
            Value::String(s) => parse_time_ms(s).ok_or("is not an RFC 3339 date-time")?,
            _ => return Err("must be an RFC 3339 date-time string"),
        },
        Format::EpochMs => number(value)
            .ok_or("must be epoch milliseconds (a number or a digit string)")?
            .round() as i64,
        Format::EpochS => {
            (number(value).ok_or("must be epoch seconds (a number or a numeric string)")? * 1000.0)
                .round() as i64
        }
        _ => match (value, number(value)) {
            (_, Some(n)) if n.abs() >= 1e11 => n.round() as i64,
            (_, Some(n)) => (n * 1000.0).round() as i64,
            (Value::String(s), None) => parse_time_ms(s).ok_or("is not an RFC 3339 date-time")?,
            _ => return Err("must be an RFC 3339 date-time or epoch seconds/milliseconds"),
        },
    };
    if !(MIN_TIME_MS..=MAX_TIME_MS).contains(&ms) {
        return Err("is outside the years 1 to 9999");
    }
    Ok(ms)
}

impl ConversionMapping {
    /// Reads a payload; every problem is reported, not just the first.
    pub fn apply(&self, payload: &Value) -> Result<MappedConversion, Vec<MappingProblem>> {
        let mut problems = Vec::new();
        let mut required = |name: &str, rule: &Rule| match rule.text(payload) {
            Ok(Some(t)) if !t.is_empty() => Some(t),
            Ok(_) => {
                let at = rule.pointer.clone().unwrap_or_default();
                problems.push((
                    at,
                    format!("is required: the source's mapping reads the {name} here"),
                ));
                None
            }
            Err(p) => {
                problems.push(p);
                None
            }
        };
        let customer = required("customer", &self.customer);
        let event = required("event type", &self.event);
        let mut optional = |rule: &Option<Rule>| match rule.as_ref().map(|r| r.text(payload)) {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(t))) => Some(t),
            Some(Err(p)) => {
                problems.push(p);
                None
            }
        };
        let channel = optional(&self.channel);
        let status = optional(&self.status);
        let campaign = optional(&self.campaign);
        let mut dimensions = Vec::with_capacity(self.dimensions.len());
        for (name, rule) in &self.dimensions {
            match rule.text(payload) {
                Ok(Some(t)) => dimensions.push((name.to_string(), t)),
                Ok(None) => {}
                Err(p) => problems.push(p),
            }
        }
        let time_ms = match self.time.as_ref().map(|r| r.time(payload)) {
            None => None,
            Some(Ok(t)) => t,
            Some(Err(p)) => {
                problems.push(p);
                None
            }
        };
        let value_cents = match self.value.as_ref().map(|r| r.cents(payload)) {
            None => 0,
            Some(Ok(c)) => c,
            Some(Err(p)) => {
                problems.push(p);
                0
            }
        };
        match (customer, event) {
            (Some(customer), Some(event)) if problems.is_empty() => Ok(MappedConversion {
                customer,
                event,
                time_ms,
                value_cents,
                channel,
                status: status.unwrap_or_else(|| "completato".into()),
                campaign,
                dimensions,
            }),
            _ => Err(problems),
        }
    }

    /// Pointer and format of the event time, when the mapping has one.
    pub fn time(&self) -> Option<(&str, Format)> {
        let t = self.time.as_ref()?;
        Some((t.pointer.as_deref()?, t.format))
    }

    /// Where the customer id is in a payload (`None` for a constant customer).
    pub fn customer_pointer(&self) -> Option<&str> {
        self.customer.pointer.as_deref()
    }

    /// The customer of a payload as the windows count it (formatted, looked up).
    pub fn customer_of(&self, payload: &Value) -> Option<String> {
        self.customer.text(payload).ok().flatten()
    }

    /// Whether customer ids are lower-cased (e-mail addresses): a subject's id is then
    /// matched case-insensitively.
    pub fn customer_is_lowercased(&self) -> bool {
        self.customer.format == Format::Lowercase
    }

    /// Pointers of the customer and event type (the default business-key fields).
    pub fn key_pointers(&self) -> Vec<String> {
        [&self.customer, &self.event]
            .into_iter()
            .filter_map(|r| r.pointer.clone())
            .collect()
    }

    /// Every pointer the mapping reads, with the mapping key that names it.
    pub fn pointers(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        let named = [
            ("customer", Some(&self.customer)),
            ("event", Some(&self.event)),
            ("time", self.time.as_ref()),
            ("value", self.value.as_ref()),
            ("channel", self.channel.as_ref()),
            ("status", self.status.as_ref()),
            ("campaign", self.campaign.as_ref()),
        ];
        for (name, rule) in named {
            if let Some(p) = rule.and_then(|r| r.pointer.as_deref()) {
                out.push((name.to_string(), p));
            }
        }
        for (name, rule) in &self.dimensions {
            if let Some(p) = rule.pointer.as_deref() {
                out.push((format!("dimensions.{name}"), p));
            }
        }
        out
    }

    /// Event types this mapping can produce when they are fixed (constants and lookup
    /// results): `check` compares them with the goals.
    pub fn known_events(&self) -> Vec<String> {
        let mut out: Vec<String> = self.event.map.values().cloned().collect();
        out.extend(self.event.constant.clone());
        out.extend(self.event.default.clone());
        out
    }

    /// Names of the extra dimensions.
    pub fn dimension_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.dimensions.iter().map(|(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(toml_text: &str) -> ConversionMapping {
        let config: MappingConfig = toml::from_str(toml_text).unwrap();
        config.build().unwrap()
    }

    #[test]
    fn a_hubspot_shaped_payload_maps_with_epoch_ms_and_a_lookup() {
        let m = mapping(
            r#"
            customer = "/objectId"
            event = { pointer = "/subscriptionType", map = { "deal.creation" = "acquisto_concluso" } }
            time = { pointer = "/occurredAt", format = "epoch_ms" }
            value = { pointer = "/properties/amount" }
            channel = { const = "crm" }
            [dimensions]
            pipeline = { pointer = "/properties/pipeline", default = "none" }
            "#,
        );
        let payload = json!({
            "objectId": 1246965, "subscriptionType": "deal.creation",
            "occurredAt": 1730000000123_i64, "properties": {"amount": "1250.50"}
        });
        let c = m.apply(&payload).unwrap();
        assert_eq!(c.customer, "1246965");
        assert_eq!(c.event, "acquisto_concluso");
        assert_eq!(c.time_ms, Some(1_730_000_000_123));
        assert_eq!(c.value_cents, 125_050);
        assert_eq!(c.channel.as_deref(), Some("crm"));
        assert_eq!(c.status, "completato");
        assert_eq!(c.dimensions, vec![("pipeline".into(), "none".into())]);
    }

    #[test]
    fn cents_lowercase_and_auto_seconds() {
        let m = mapping(
            r#"
            customer = { pointer = "/email", format = "lowercase" }
            event = { const = "acquisto_concluso" }
            time = "/ts"
            value = { pointer = "/total_cents", format = "cents" }
            status = { pointer = "/state", map = { paid = "completato", refused = "fallito" }, default = "in_corso" }
            "#,
        );
        let c = m
            .apply(&json!({"email": "Ada@Example.COM", "ts": 1730000000, "total_cents": 4999, "state": "paid"}))
            .unwrap();
        assert_eq!(c.customer, "ada@example.com");
        assert_eq!(c.time_ms, Some(1_730_000_000_000));
        assert_eq!(c.value_cents, 4999);
        assert_eq!(c.status, "completato");
        let c = m
            .apply(&json!({"email": "a@b.it", "ts": "2024-10-27T03:33:20Z", "state": "pending"}))
            .unwrap();
        assert_eq!(c.status, "in_corso", "not in the lookup: the default");
        assert_eq!(c.value_cents, 0);
        assert_eq!(c.time_ms, Some(1_730_000_000_000));
    }

    #[test]
    fn every_problem_is_reported_with_its_pointer_and_never_the_value() {
        let m = mapping(
            r#"
            customer = "/id"
            event = "/type"
            time = { pointer = "/at", format = "epoch_ms" }
            value = "/amount"
            "#,
        );
        let problems = m
            .apply(&json!({"type": {"nested": true}, "at": "yesterday-secret", "amount": "ten"}))
            .unwrap_err();
        let at: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(at, ["/id", "/type", "/at", "/amount"]);
        assert!(
            problems
                .iter()
                .all(|(_, m)| !m.contains("secret") && !m.contains("ten"))
        );
    }

    #[test]
    fn config_problems_name_their_keys() {
        let config: MappingConfig = toml::from_str(
            r#"
            customer = "id"
            event = { pointer = "/e", const = "x" }
            time = { const = "now", format = "cents" }
            value = { pointer = "/v", map = { a = "b" } }
            [dimensions]
            canale = "/c"
            "Bad Name" = "/d"
            "#,
        )
        .unwrap();
        let keys: Vec<String> = config
            .build()
            .unwrap_err()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for expected in [
            "customer.pointer",
            "event",
            "time.format",
            "value.map",
            "dimensions.canale",
            "dimensions.Bad Name",
            "time",
        ] {
            assert!(
                keys.iter().any(|k| k == expected),
                "{expected} missing from {keys:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_in_a_field_table_are_refused_by_name() {
        let e = toml::from_str::<MappingConfig>("customer = { pointr = \"/id\" }\nevent = \"/e\"")
            .unwrap_err();
        assert!(e.to_string().contains("pointr"), "{e}");
    }

    #[test]
    fn time_formats_refuse_what_they_cannot_read() {
        assert_eq!(
            read_time(&json!(1730000000123_i64), Format::Auto),
            Ok(1_730_000_000_123)
        );
        assert_eq!(
            read_time(&json!("1730000000"), Format::Auto),
            Ok(1_730_000_000_000)
        );
        assert_eq!(
            read_time(&json!(1730000000.5), Format::EpochS),
            Ok(1_730_000_000_500)
        );
        assert!(read_time(&json!(1730000000123_i64), Format::Rfc3339).is_err());
        assert!(read_time(&json!("soon"), Format::EpochMs).is_err());
        assert!(read_time(&json!(1e300), Format::EpochMs).is_err());
        assert!(read_time(&json!(true), Format::Auto).is_err());
    }
}
