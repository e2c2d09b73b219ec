//! What a source needs to take events straight from a web page: CORS for `fetch` from the
//! site's own origins, and HTML form bodies (`application/x-www-form-urlencoded`) read as
//! JSON objects, with an optional redirect back to the site for plain form posts.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `[sources.<name>.cors]`: which web origins may call the source from a browser.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://www.example.it`, scheme and host, and port when not the
    /// default). `*` is refused: a source takes credentials.
    pub allowed_origins: Vec<String>,
    /// How long a browser may keep the answer to a preflight (default 1 h).
    #[serde(default = "hour", with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub max_age: Duration,
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

/// `[sources.<name>.forms]`: accept HTML form bodies.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FormsConfig {
    /// Where to send the browser after a plain form post was accepted (`303 See Other`);
    /// without it the answer is the usual JSON.
    #[serde(default)]
    pub redirect: Option<String>,
    /// Fields read as numbers (`valore`); every other field is text, and a repeated field a
    /// list.
    #[serde(default)]
    pub numbers: Vec<String>,
}

impl CorsConfig {
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.allowed_origins.is_empty() {
            out.push(("allowed_origins".into(), "list at least one origin".into()));
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let ok = origin
                .parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
                .is_some_and(|u| u.path() == "/" && !origin.ends_with('/'));
            if !ok {
                out.push((
                    format!("allowed_origins[{i}]"),
                    "must be an origin: scheme and host (and port), no path, e.g. `https://www.example.it`".into(),
                ));
            }
        }
        out
    }

    /// Whether a request's `Origin` may call the source.
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
    }
}

impl FormsConfig {
    pub fn problems(&self) -> Vec<(String, String)> {
        match &self.redirect {
            Some(url)
                if !url.parse::<http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                }) =>
            {
                vec![("redirect".into(), "must be an http(s) URL".into())]
            }
            _ => Vec::new(),
        }
    }
}

/// Whether the body is an HTML form's.
pub fn is_form(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

/// An urlencoded form as a JSON object: text fields, `numbers` as numbers (or an error naming
/// the field), a repeated field as a list.
pub fn form_to_json(body: &[u8], numbers: &[String]) -> Result<Value, (String, String)> {
    let mut object = Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        let value = if numbers.iter().any(|n| n == key.as_ref()) {
            let n: f64 = value
                .trim()
                .replace(',', ".")
                .parse()
                .map_err(|_| (format!("/{key}"), "must be a number".to_string()))?;
            serde_json::Number::from_f64(n)
                .map(Value::Number)
                .ok_or_else(|| (format!("/{key}"), "must be a finite number".to_string()))?
        } else {
            Value::String(value.into_owned())
        };
        match object.get_mut(key.as_ref()) {
            None => {
                object.insert(key.into_owned(), value);
            }
            Some(Value::Array(items)) => items.push(value),
            Some(first) => {
                let first = first.take();
                object.insert(key.into_owned(), Value::Array(vec![first, value]));
            }
        }
    }
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forms_become_objects_with_numbers_and_lists() {
        let v = form_to_json(
            b"email=anna%40example.it&valore=12%2C50&tag=a&tag=b&note=",
            &["valore".into()],
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"email": "anna@example.it", "valore": 12.5, "tag": ["a", "b"], "note": ""})
        );
        let e = form_to_json(b"valore=dodici", &["valore".into()]).unwrap_err();
        assert_eq!(e.0, "/valore");
        assert!(!e.1.contains("dodici"));
    }

    #[test]
    fn origins_are_exact_and_checked() {
        let c = CorsConfig {
            allowed_origins: vec!["https://www.example.it".into()],
            max_age: hour(),
        };
        assert!(c.problems().is_empty());
        assert!(c.allows("https://www.example.it"));
        assert!(!c.allows("https://evil.example.it"));
        let bad = CorsConfig {
            allowed_origins: vec![
                "*".into(),
                "https://x.it/path".into(),
                "https://x.it/".into(),
            ],
            max_age: hour(),
        };
        assert_eq!(bad.problems().len(), 3);
    }
}
