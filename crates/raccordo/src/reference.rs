//! The configuration reference of `docs/configuration.md`, generated from the config structs:
//! their doc comments and types (through their OpenAPI schemas, `utoipa::ToSchema`) and
//! their defaults (each struct's `Default`, serialised as the config file writes it). A test
//! fails when the document and the code drift apart; `RACCORDO_BLESS=1 cargo test -p
//! raccordo reference` rewrites the document's generated part.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{Value, json};
use utoipa::openapi::{RefOr, schema::Schema};

/// Where the generated part of `docs/configuration.md` starts and ends.
#[cfg(test)]
pub const BEGIN: &str =
    "<!-- reference: generated from the config structs; do not edit by hand -->";
#[cfg(test)]
pub const END: &str = "<!-- end of reference -->";

/// Every config schema by name, as JSON.
fn schemas() -> BTreeMap<String, Value> {
    let mut all = vec![(
        "Config".to_string(),
        <crate::config::Config as utoipa::PartialSchema>::schema(),
    )];
    <crate::config::Config as utoipa::ToSchema>::schemas(&mut all);
    all.into_iter()
        .map(|(name, schema): (String, RefOr<Schema>)| {
            (name, serde_json::to_value(schema).unwrap_or(Value::Null))
        })
        .collect()
}

/// Defaults of the parts that have no `Default` of their own (a source, an auth method, a
/// channel): deserialise the struct from placeholders for its required keys, serialise it
/// back, and keep what serde's field defaults filled in.
fn defaults_of(name: &str, schema: &Value) -> Value {
    fn placeholder(schema: &Value) -> Value {
        match schema["type"].as_str() {
            Some("array") => json!([]),
            Some("integer") | Some("number") => json!(0),
            Some("boolean") => json!(false),
            _ => json!(""),
        }
    }
    let mut input = serde_json::Map::new();
    for key in schema["required"].as_array().into_iter().flatten() {
        if let Some(key) = key.as_str() {
            input.insert(key.into(), placeholder(&schema["properties"][key]));
        }
    }
    let input = Value::Object(input);
    fn via<T: serde::de::DeserializeOwned + serde::Serialize>(input: Value) -> Value {
        serde_json::from_value::<T>(input)
            .ok()
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(Value::Null)
    }
    let mut defaults = match name {
        "SourceConfig" => via::<raccordo_ingest::SourceConfig>(input),
        "ApiKeyConfig" => via::<raccordo_ingest::auth::ApiKeyConfig>(input),
        "StandardWebhooksConfig" => via::<raccordo_ingest::auth::StandardWebhooksConfig>(input),
        "JwtConfig" => via::<raccordo_ingest::auth::JwtConfig>(input),
        "SlackConfig" => via::<raccordo_notify::SlackConfig>(input),
        "WebhookConfig" => via::<raccordo_notify::WebhookConfig>(input),
        "EmailConfig" => via::<raccordo_notify::EmailConfig>(input),
        "AdminTokenConfig" => via::<raccordo_server::settings::AdminTokenConfig>(input),
        "ProviderConfig" => via::<raccordo_ai::ProviderConfig>(input),
        _ => Value::Null,
    };
    // What was required has no default.
    if let Some(object) = defaults.as_object_mut() {
        for key in schema["required"].as_array().into_iter().flatten() {
            object.remove(key.as_str().unwrap_or(""));
        }
    }
    defaults
}

struct Reference {
    schemas: BTreeMap<String, Value>,
    out: String,
}

fn ref_name(schema: &Value) -> Option<&str> {
    schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
}

impl Reference {
    fn resolve<'a>(&'a self, schema: &'a Value) -> (&'a Value, Option<&'a str>) {
        // `Option<Struct>` comes as oneOf [null, $ref].
        let inner = schema["oneOf"]
            .as_array()
            .and_then(|o| o.iter().find(|s| s["type"] != "null"))
            .unwrap_or(schema);
        match ref_name(inner) {
            Some(name) => (self.schemas.get(name).unwrap_or(inner), Some(name)),
            None => (inner, None),
        }
    }

    fn is_table(schema: &Value) -> bool {
        schema["properties"].is_object() && schema["oneOf"].is_null()
    }

    /// A type as a reader of the TOML file thinks of it.
    fn type_text(&self, schema: &Value) -> String {
        let (schema, _) = self.resolve(schema);
        if let Some(values) = schema["enum"].as_array() {
            return values
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(" \\| ");
        }
        if schema["format"] == "duration" {
            return "duration".into();
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(t) => t
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect(),
            _ => vec![],
        };
        match types.first().copied() {
            Some("array") => {
                let items = &schema["items"];
                let (item, _) = self.resolve(items);
                if !item["oneOf"].is_null() || Self::is_table(item) {
                    "list of tables".into()
                } else {
                    format!("list of {}s", self.type_text(items))
                }
            }
            Some("integer") => "integer".into(),
            Some("number") => "number".into(),
            Some("boolean") => "boolean".into(),
            Some("string") => "string".into(),
            Some("object") => "table".into(),
            _ => "value".into(),
        }
    }

    fn default_text(value: Option<&Value>, required: bool) -> String {
        if required {
            return "(required)".into();
        }
        match value {
            None | Some(Value::Null) => "—".into(),
            Some(Value::Object(o)) if o.is_empty() => "—".into(),
            Some(Value::Object(_)) => "see below".into(),
            Some(v) => format!("`{}`", v.to_string().replace('|', "\\|")),
        }
    }

    fn describe(schema: &Value) -> String {
        schema["description"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|")
    }

    /// One table: `title`, the struct's own description, then a row per key; nested tables
    /// follow as their own sections.
    fn section(&mut self, title: &str, schema: &Value, defaults: &Value) {
        let schema = self.resolve(schema).0.clone();
        let _ = writeln!(self.out, "### `{title}`\n");
        let about = Self::describe(&schema);
        if !about.is_empty() {
            let _ = writeln!(self.out, "{about}\n");
        }
        if schema["properties"]
            .as_object()
            .is_none_or(|p| p.is_empty())
        {
            // Documented by hand (flows: their keys depend on the step type).
            return;
        }
        let _ = writeln!(self.out, "| key | type | default | meaning |");
        let _ = writeln!(self.out, "| --- | --- | --- | --- |");
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut nested = Vec::new();
        let properties = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (key, property) in &properties {
            let (resolved, _) = self.resolve(property);
            let mut meaning = Self::describe(property);
            if meaning.is_empty() {
                meaning = Self::describe(resolved);
            }
            let type_text =
                if Self::is_table(resolved) || resolved["additionalProperties"].is_object() {
                    nested.push((key.clone(), property.clone()));
                    "table (below)".to_string()
                } else {
                    self.type_text(property)
                };
            let default = Self::default_text(defaults.get(key), required.contains(&key.as_str()));
            let _ = writeln!(
                self.out,
                "| `{key}` | {type_text} | {default} | {meaning} |"
            );
        }
        self.out.push('\n');
        for (key, property) in nested {
            let (resolved, inner_name) = self.resolve(&property);
            let resolved = resolved.clone();
            let inner_name = inner_name.map(str::to_string);
            if let Some(entry) = resolved["additionalProperties"].as_object() {
                let entry = Value::Object(entry.clone());
                let (entry_schema, entry_name) = self.resolve(&entry);
                let defaults = defaults_of(entry_name.unwrap_or(""), entry_schema);
                self.section(
                    &format!(
                        "{title_key}.NAME]",
                        title_key = sub_title(title, &key).trim_end_matches(']')
                    ),
                    &entry,
                    &defaults,
                );
            } else {
                let defaults = defaults
                    .get(&key)
                    .filter(|d| d.is_object())
                    .cloned()
                    .unwrap_or_else(|| defaults_of(inner_name.as_deref().unwrap_or(""), &resolved));
                self.section(&sub_title(title, &key), &property, &defaults);
            }
        }
        // Lists of tagged tables (auth methods, channels): one section per kind.
        for (key, property) in schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default()
        {
            let (item, item_name) = self.resolve(&property["items"]);
            if Self::is_table(item) {
                let (item, item_name) = (item.clone(), item_name.unwrap_or("").to_string());
                let defaults = defaults_of(&item_name, &item);
                self.section(&sub_list_title(title, &key), &property["items"], &defaults);
                continue;
            }
            let Some(variants) = item["oneOf"].as_array().cloned() else {
                continue;
            };
            for variant in variants {
                let parts = variant["allOf"].as_array().cloned().unwrap_or_default();
                let Some(tag) = parts.iter().find_map(|p| {
                    p["properties"]["type"]["enum"][0]
                        .as_str()
                        .map(str::to_string)
                }) else {
                    continue;
                };
                let Some(body) = parts.iter().find(|p| ref_name(p).is_some()) else {
                    continue;
                };
                let (body_schema, body_name) = self.resolve(body);
                let defaults = defaults_of(body_name.unwrap_or(""), body_schema);
                let title = format!("{} with type = \"{tag}\"", sub_list_title(title, &key));
                self.section(&title, body, &defaults);
            }
        }
    }
}

fn sub_title(title: &str, key: &str) -> String {
    let base = title.trim_start_matches('[').trim_end_matches(']');
    if base.is_empty() {
        format!("[{key}]")
    } else {
        format!("[{base}.{key}]")
    }
}

fn sub_list_title(title: &str, key: &str) -> String {
    let base = title.trim_start_matches('[').trim_end_matches(']');
    format!("[[{base}.{key}]]")
}

/// The generated reference between its markers, as it stands in the docs.
#[cfg(test)]
pub fn render() -> String {
    format!("{BEGIN}\n\n{}{END}", body())
}

/// The generated reference, as Markdown.
pub fn body() -> String {
    let schemas = schemas();
    let config = schemas.get("Config").cloned().unwrap_or(Value::Null);
    let defaults = serde_json::to_value(crate::config::Config::default()).unwrap_or(Value::Null);
    let mut reference = Reference {
        schemas,
        out: String::new(),
    };
    let properties = config["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (key, property) in properties {
        let section_defaults = defaults.get(&key).cloned().unwrap_or(Value::Null);
        let (resolved, _) = reference.resolve(&property);
        if let Some(entry) = resolved["additionalProperties"].as_object() {
            let entry = Value::Object(entry.clone());
            let (entry_schema, entry_name) = reference.resolve(&entry);
            let entry_defaults = defaults_of(entry_name.unwrap_or(""), entry_schema);
            reference.section(&format!("[{key}.NAME]"), &entry, &entry_defaults);
        } else {
            reference.section(&format!("[{key}]"), &property, &section_defaults);
        }
    }
    reference.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_in_the_docs_is_generated_from_the_config_structs() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        let text = std::fs::read_to_string(path).unwrap();
        let (Some(start), Some(end)) = (text.find(BEGIN), text.find(END)) else {
            panic!("docs/configuration.md lacks the reference markers");
        };
        let current = &text[start..end + END.len()];
        let generated = render();
        if current != generated && std::env::var_os("RACCORDO_BLESS").is_some() {
            let updated = format!("{}{generated}{}", &text[..start], &text[end + END.len()..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        assert!(
            current == generated,
            "docs/configuration.md's reference differs from the config structs; run \
             `RACCORDO_BLESS=1 cargo test -p raccordo reference` and commit the result"
        );
    }

    #[test]
    fn the_reference_names_every_section_with_defaults_and_meanings() {
        let text = render();
        for wanted in [
            "### `[server]`",
            "| `listen` | string | `\"127.0.0.1:8080\"` |",
            "### `[ingest.dedup]`",
            "### `[sources.NAME]`",
            "### `[[sources.NAME.auth]] with type = \"jwt\"`",
            "| `leeway` | duration | `\"30s\"` |",
            "### `[[alerts.channels]] with type = \"email\"`",
            "### `[alerts.clock_skew]`",
            "| `durability` | `\"fsync\"` \\| `\"buffered\"` | `\"fsync\"` |",
        ] {
            assert!(text.contains(wanted), "missing {wanted}\n{text}");
        }
        assert!(
            !text.contains("secs"),
            "durations are written as in the file"
        );
    }
}
