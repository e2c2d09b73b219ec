//! Event schemas: the built-in conversion schema (the seed's, corrected) or a user's.

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use crate::error::FieldError;

/// The default schema for conversion events. `docs/conversion-schema.md` lists each
/// correction made to the seed article's schema.
pub const CONVERSION_SCHEMA: &str = include_str!("../schemas/conversione.schema.json");

/// Largest number of field errors reported for one request; the total is still counted.
pub const MAX_REPORTED_ERRORS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the schema is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the schema is not a valid JSON Schema: {0}")]
    Invalid(String),
}

/// A compiled schema. Formats (`date-time`, …) are asserted, not just annotated.
pub struct EventSchema {
    validator: Validator,
    /// The schema as written, for questions the validator cannot answer (which pointers
    /// an event can have).
    document: Value,
    /// Whether this is the built-in conversion schema (which implies extra checks).
    builtin_conversion: bool,
}

impl std::fmt::Debug for EventSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSchema")
            .field("builtin_conversion", &self.builtin_conversion)
            .finish()
    }
}

impl EventSchema {
    pub fn conversion() -> Self {
        // The built-in schema is covered by tests; failing here would be a build defect.
        let mut schema = Self::from_json_text(CONVERSION_SCHEMA).expect("built-in schema compiles");
        schema.builtin_conversion = true;
        schema
    }

    pub fn from_json_text(text: &str) -> Result<Self, SchemaError> {
        let schema: Value = serde_json::from_str(text)?;
        Self::from_value(&schema)
    }

    pub fn from_value(schema: &Value) -> Result<Self, SchemaError> {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(schema)
            .map_err(|e| SchemaError::Invalid(e.to_string()))?;
        Ok(Self {
            validator,
            document: schema.clone(),
            builtin_conversion: false,
        })
    }

    /// Validates one item; errors carry pointers prefixed by `prefix` (e.g. `/3`).
    /// Messages are masked: they name the rule that failed, never the submitted value. A
    /// field that breaks several rules gets one message naming them all; an enum lists every
    /// allowed value.
    pub fn validate(&self, item: &Value, prefix: &str, errors: &mut Vec<FieldError>) -> usize {
        let mut located: Vec<FieldError> = Vec::new();
        for error in self.validator.iter_errors(item) {
            let at = format!("{prefix}{}", error.instance_path().as_str());
            // Point at the field itself, not at the object that lacks or has it.
            match error.kind() {
                ValidationErrorKind::Required { property } => {
                    let name = property.as_str().unwrap_or_default();
                    located.push(FieldError::new(
                        format!("{at}/{}", escape_pointer(name)),
                        "is required",
                    ));
                }
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    located.extend(unexpected.iter().map(|name| {
                        FieldError::new(
                            format!("{at}/{}", escape_pointer(name)),
                            "is not an allowed property",
                        )
                    }))
                }
                ValidationErrorKind::Enum { options } => {
                    located.push(FieldError::new(at, one_of(options)));
                }
                _ => located.push(FieldError::new(at, error.masked().to_string())),
            }
        }
        let mut count = 0;
        for e in merge_by_field(located) {
            count += 1;
            if errors.len() < MAX_REPORTED_ERRORS {
                errors.push(e);
            }
        }
        if count == 0 && self.builtin_conversion {
            count += check_two_decimals(item, prefix, errors);
        }
        count
    }

    pub fn is_valid(&self, item: &Value) -> bool {
        self.validator.is_valid(item)
    }

    /// Why no valid event can have a value at `pointer`, or `None` when one can (or the
    /// schema does not say). Reads `properties`, `additionalProperties: false`, `items`,
    /// local `$ref`s and the `allOf`/`anyOf`/`oneOf` branches.
    pub fn cannot_produce(&self, pointer: &str) -> Option<String> {
        let segments: Vec<String> = pointer
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        match reach(&self.document, &self.document, &segments, 0) {
            Reach::Impossible(at) => Some(if at.is_empty() {
                "the schema allows no event at all".into()
            } else {
                format!("the source's schema allows no `{at}`")
            }),
            Reach::Possible => None,
        }
    }
}

enum Reach {
    Possible,
    /// The pointer prefix the schema rules out.
    Impossible(String),
}

/// Walks `segments` through `schema`; depth-limited so that recursive `$ref`s end.
fn reach(root: &Value, schema: &Value, segments: &[String], depth: usize) -> Reach {
    let possible = || Reach::Possible;
    if depth > 32 {
        return possible();
    }
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
            Some(target) => target,
            None => return possible(),
        },
        None => schema,
    };
    if schema == &Value::Bool(false) {
        return Reach::Impossible(String::new());
    }
    let Some((first, rest)) = segments.split_first() else {
        return possible();
    };
    let prefix = |tail: Reach| match tail {
        Reach::Impossible(at) => Reach::Impossible(format!("/{}{at}", escape_pointer(first))),
        p => p,
    };
    // Branches: all of `allOf` must allow it, one of `anyOf`/`oneOf` must.
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for branch in all {
            if let Reach::Impossible(at) = reach(root, branch, segments, depth + 1) {
                return Reach::Impossible(at);
            }
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = schema.get(key).and_then(Value::as_array) {
            let mut first_impossible = None;
            let any = branches
                .iter()
                .any(|b| match reach(root, b, segments, depth + 1) {
                    Reach::Possible => true,
                    Reach::Impossible(at) => {
                        first_impossible.get_or_insert(at);
                        false
                    }
                });
            if !any && let Some(at) = first_impossible {
                return Reach::Impossible(at);
            }
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let can_be = |t: &str| types.is_empty() || types.contains(&t);
    if !can_be("object") && !can_be("array") {
        return Reach::Impossible(format!("/{}", escape_pointer(first)));
    }
    if let Some(sub) = schema.get("properties").and_then(|p| p.get(first.as_str())) {
        return prefix(reach(root, sub, rest, depth + 1));
    }
    let is_index = !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit());
    if is_index && can_be("array") {
        if let Some(items) = schema.get("items") {
            return prefix(reach(root, items, rest, depth + 1));
        }
        return possible();
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(false)) if schema.get("patternProperties").is_none() => {
            Reach::Impossible(format!("/{}", escape_pointer(first)))
        }
        Some(sub @ Value::Object(_)) => prefix(reach(root, sub, rest, depth + 1)),
        _ => possible(),
    }
}

/// `must be one of "email", "social_media", "webform" or "sms"`: every allowed value (they
/// come from the schema, not from the request).
fn one_of(options: &Value) -> String {
    let values: Vec<String> = options
        .as_array()
        .map(|o| o.iter().map(Value::to_string).collect())
        .unwrap_or_default();
    match values.as_slice() {
        [] => "is not an allowed value".into(),
        [one] => format!("must be {one}"),
        [init @ .., last] => format!("must be one of {} or {last}", init.join(", ")),
    }
}

/// One message per field, in the order the fields first failed.
fn merge_by_field(errors: Vec<FieldError>) -> Vec<FieldError> {
    let mut merged: Vec<FieldError> = Vec::with_capacity(errors.len());
    for e in errors {
        match merged.iter_mut().find(|m| m.pointer == e.pointer) {
            Some(m) if !m.detail.contains(&e.detail) => {
                m.detail.push_str("; ");
                m.detail.push_str(&e.detail);
            }
            Some(_) => {}
            None => merged.push(e),
        }
    }
    merged
}

fn escape_pointer(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// `multipleOf: 0.01` is evaluated in binary floating point by validators and can both
/// accept and reject wrongly near the edges; the contract ("at most 2 decimals") is about
/// the decimal text, so check it exactly on the shortest round-trip representation.
fn check_two_decimals(item: &Value, prefix: &str, errors: &mut Vec<FieldError>) -> usize {
    let Some(Value::Number(n)) = item.get("valore") else {
        return 0;
    };
    if n.is_f64() {
        let text = n.to_string();
        let decimals = match (text.find('.'), text.find(['e', 'E'])) {
            (_, Some(_)) => usize::MAX, // exponent form only appears for very small/large values
            (Some(dot), None) => text.len() - dot - 1,
            (None, None) => 0,
        };
        if decimals > 2 {
            if errors.len() < MAX_REPORTED_ERRORS {
                errors.push(FieldError::new(
                    format!("{prefix}/valore"),
                    "has more than 2 decimal places",
                ));
            }
            return 1;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({"id_cliente":"CLIENTE-ITALIA-789456","evento":"acquisto_concluso",
               "timestamp":"2026-11-22T10:15:30.123+01:00","valore":149.99,"canale":"email",
               "stato":"completato","metadati":{"campagna":"black-friday","dispositivo":"mobile","localita":"Milano"}})
    }

    fn pointers(schema: &EventSchema, v: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        schema.validate(v, "/0", &mut errors);
        errors.into_iter().map(|e| e.pointer).collect()
    }

    #[test]
    fn an_enum_error_lists_every_allowed_value_and_a_field_gets_one_message() {
        let schema = EventSchema::conversion();
        let mut v = valid();
        v["canale"] = json!("fax");
        let mut errors = Vec::new();
        schema.validate(&v, "/0", &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].pointer, "/0/canale");
        assert_eq!(
            errors[0].detail,
            r#"must be one of "email", "social_media", "webform" or "sms""#
        );
        assert!(
            !errors[0].detail.contains("fax"),
            "the value is never echoed"
        );

        let schema = EventSchema::from_value(&json!({
            "type": "object",
            "properties": { "code": { "type": "string", "minLength": 5, "pattern": "^[A-Z]+$" } }
        }))
        .unwrap();
        let mut errors = Vec::new();
        let count = schema.validate(&json!({ "code": "ab" }), "", &mut errors);
        assert_eq!(count, 1, "{errors:?}");
        assert_eq!(errors[0].pointer, "/code");
        assert!(
            errors[0].detail.contains("; "),
            "both rules in one message: {errors:?}"
        );
        assert!(!errors[0].detail.contains("\"ab\""), "{errors:?}");
    }

    #[test]
    fn pointers_a_schema_cannot_produce_are_named() {
        let schema = EventSchema::from_value(&json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "email": { "type": "string" },
                "props": { "$ref": "#/$defs/props" },
                "lines": { "type": "array", "items": { "type": "object", "properties": { "sku": {} }, "additionalProperties": false } }
            },
            "$defs": { "props": { "type": "object", "properties": { "amount": {} } } }
        }))
        .unwrap();
        assert_eq!(schema.cannot_produce("/email"), None);
        assert_eq!(schema.cannot_produce("/props/amount"), None);
        assert_eq!(
            schema.cannot_produce("/props/anything"),
            None,
            "props is open"
        );
        assert_eq!(schema.cannot_produce("/lines/0/sku"), None);
        assert!(schema.cannot_produce("/mail").unwrap().contains("`/mail`"));
        assert!(
            schema
                .cannot_produce("/email/x")
                .unwrap()
                .contains("`/email/x`")
        );
        assert!(
            schema
                .cannot_produce("/lines/0/qty")
                .unwrap()
                .contains("`/lines/0/qty`")
        );
        let builtin = EventSchema::conversion();
        assert_eq!(builtin.cannot_produce("/metadati/campagna"), None);
        assert!(builtin.cannot_produce("/email").is_some());
    }

    #[test]
    fn the_seed_example_passes_the_corrected_schema() {
        let schema = EventSchema::conversion();
        assert_eq!(pointers(&schema, &valid()), Vec::<String>::new());
    }

    #[test]
    fn each_field_rule_is_enforced_at_its_pointer() {
        let schema = EventSchema::conversion();
        let cases: Vec<(&str, Value, &str)> = vec![
            ("id_cliente", json!("CLIENTE-it-123456"), "/0/id_cliente"),
            ("id_cliente", json!("CLIENTE-IT-12345"), "/0/id_cliente"),
            ("evento", json!("acquisto"), "/0/evento"),
            ("timestamp", json!("2026-11-22 10:15:30"), "/0/timestamp"),
            ("timestamp", json!("2026-11-22T10:15:30"), "/0/timestamp"),
            ("timestamp", json!("2026-13-22T10:15:30Z"), "/0/timestamp"),
            ("timestamp", json!("2026-11-22T10:15:30.Z"), "/0/timestamp"),
            ("valore", json!(-1), "/0/valore"),
            ("valore", json!(1.234), "/0/valore"),
            ("valore", json!("10"), "/0/valore"),
            ("canale", json!("fax"), "/0/canale"),
            ("stato", json!("ok"), "/0/stato"),
            ("metadati", json!("x"), "/0/metadati"),
            ("metadati", json!({"campagna": 5}), "/0/metadati/campagna"),
            ("metadati", json!({"altro": "x"}), "/0/metadati/altro"),
        ];
        for (field, value, pointer) in cases {
            let mut v = valid();
            v[field] = value.clone();
            let got = pointers(&schema, &v);
            assert!(
                got.iter().any(|p| p == pointer),
                "{field}={value}: expected {pointer}, got {got:?}"
            );
        }
    }

    #[test]
    fn fractional_seconds_of_any_precision_are_accepted() {
        let schema = EventSchema::conversion();
        for ts in [
            "2026-11-22T10:15:30Z",
            "2026-11-22T10:15:30.1+02:00",
            "2026-11-22T10:15:30.123456Z",
            "2026-11-22T10:15:30.123456789-05:00",
        ] {
            let mut v = valid();
            v["timestamp"] = json!(ts);
            assert_eq!(pointers(&schema, &v), Vec::<String>::new(), "{ts}");
        }
    }

    #[test]
    fn missing_and_extra_properties_are_rejected() {
        let schema = EventSchema::conversion();
        let mut v = valid();
        v.as_object_mut().unwrap().remove("stato");
        assert_eq!(pointers(&schema, &v), vec!["/0/stato"]);
        let mut v = valid();
        v["extra/field"] = json!(1);
        assert_eq!(pointers(&schema, &v), vec!["/0/extra~1field"]);
    }

    #[test]
    fn messages_do_not_echo_values() {
        let schema = EventSchema::conversion();
        let mut v = valid();
        v["id_cliente"] = json!("SECRET-TOKEN-VALUE");
        let mut errors = Vec::new();
        schema.validate(&v, "", &mut errors);
        assert!(!errors.is_empty());
        assert!(
            errors
                .iter()
                .all(|e| !e.detail.contains("SECRET-TOKEN-VALUE")),
            "{errors:?}"
        );
    }

    proptest! {
        /// Every amount written with at most two decimals passes; three significant decimals fail.
        #[test]
        fn two_decimal_amounts(cents in 0u64..100_000_000_000, extra in 1u64..10) {
            let schema = EventSchema::conversion();
            let mut v = valid();
            let text = format!("{}.{:02}", cents / 100, cents % 100);
            v["valore"] = serde_json::from_str(&text).unwrap();
            prop_assert!(pointers(&schema, &v).is_empty(), "{} rejected", text);
            let text3 = format!("{}.{:02}{}", cents / 100, cents % 100, extra);
            v["valore"] = serde_json::from_str(&text3).unwrap();
            prop_assert_eq!(pointers(&schema, &v), vec!["/0/valore".to_string()], "{} accepted", text3);
        }

        /// Validation never panics and reports pointers inside the item, whatever the input.
        #[test]
        fn arbitrary_objects_get_located_errors(keys in prop::collection::btree_map("[a-z_]{1,10}", "[ -~]{0,12}", 0..8)) {
            let schema = EventSchema::conversion();
            let v = Value::Object(keys.into_iter().map(|(k, s)| (k, Value::String(s))).collect());
            for p in pointers(&schema, &v) {
                prop_assert!(p.starts_with("/0"));
            }
        }
    }
}
