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

/// The two bodies an HTML form sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormKind {
    /// `application/x-www-form-urlencoded` (the default `enctype`).
    UrlEncoded,
    /// `multipart/form-data`, with its boundary.
    Multipart(String),
}

/// What kind of form body a `Content-Type` announces, if any.
pub fn form_kind(content_type: &str) -> Option<FormKind> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Some(FormKind::UrlEncoded)
    } else if essence.eq_ignore_ascii_case("multipart/form-data") {
        multer::parse_boundary(content_type)
            .ok()
            .map(FormKind::Multipart)
    } else {
        None
    }
}

/// Whether the body is an HTML form's.
pub fn is_form(content_type: &str) -> bool {
    form_kind(content_type).is_some()
}

/// Adds one form field: `numbers` as numbers (or an error naming the field), text
/// otherwise, a repeated field as a list.
fn put(
    object: &mut Map<String, Value>,
    key: &str,
    value: Value,
    numbers: &[String],
) -> Result<(), (String, String)> {
    let value = match value {
        Value::String(text) if numbers.iter().any(|n| n == key) => {
            let n: f64 = text
                .trim()
                .replace(',', ".")
                .parse()
                .map_err(|_| (format!("/{key}"), "must be a number".to_string()))?;
            serde_json::Number::from_f64(n)
                .map(Value::Number)
                .ok_or_else(|| (format!("/{key}"), "must be a finite number".to_string()))?
        }
        other => other,
    };
    match object.get_mut(key) {
        None => {
            object.insert(key.to_string(), value);
        }
        Some(Value::Array(items)) => items.push(value),
        Some(first) => {
            let first = first.take();
            object.insert(key.to_string(), Value::Array(vec![first, value]));
        }
    }
    Ok(())
}

/// An urlencoded form as a JSON object: text fields, `numbers` as numbers (or an error naming
/// the field), a repeated field as a list.
pub fn form_to_json(body: &[u8], numbers: &[String]) -> Result<Value, (String, String)> {
    let mut object = Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        put(
            &mut object,
            &key,
            Value::String(value.into_owned()),
            numbers,
        )?;
    }
    Ok(Value::Object(object))
}

/// A `multipart/form-data` body as a JSON object, like [`form_to_json`]. A file part is
/// described, not kept: `{"filename", "content_type", "bytes"}` — an event store is no place
/// for uploads, and the description still says the file came.
pub async fn multipart_to_json(
    body: bytes::Bytes,
    boundary: &str,
    numbers: &[String],
) -> Result<Value, (String, String)> {
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut object = Map::new();
    let malformed = |_| {
        (
            String::new(),
            "is not a well-formed multipart/form-data body".to_string(),
        )
    };
    while let Some(field) = parts.next_field().await.map_err(malformed)? {
        let Some(key) = field.name().map(str::to_string) else {
            return Err((String::new(), "a part has no field name".into()));
        };
        let file = field
            .file_name()
            .map(|f| (f.to_string(), field.content_type().map(|m| m.to_string())));
        let value = match file {
            Some((filename, content_type)) => {
                let bytes = field.bytes().await.map_err(malformed)?;
                serde_json::json!({
                    "filename": filename,
                    "content_type": content_type,
                    "bytes": bytes.len(),
                })
            }
            None => Value::String(
                field
                    .text()
                    .await
                    .map_err(|_| (format!("/{key}"), "is not UTF-8 text".to_string()))?,
            ),
        };
        put(&mut object, &key, value, numbers)?;
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

    #[tokio::test]
    async fn multipart_forms_become_objects_and_files_are_described() {
        let body = "--XyZ\r\n\
            Content-Disposition: form-data; name=\"email\"\r\n\r\n\
            anna@example.it\r\n\
            --XyZ\r\n\
            Content-Disposition: form-data; name=\"valore\"\r\n\r\n\
            12,50\r\n\
            --XyZ\r\n\
            Content-Disposition: form-data; name=\"cv\"; filename=\"cv.pdf\"\r\n\
            Content-Type: application/pdf\r\n\r\n\
            %PDF-1.7\r\n\
            --XyZ--\r\n";
        let kind = form_kind("multipart/form-data; boundary=XyZ").unwrap();
        assert_eq!(kind, FormKind::Multipart("XyZ".into()));
        let v = multipart_to_json(body.into(), "XyZ", &["valore".into()])
            .await
            .unwrap();
        assert_eq!(
            v,
            json!({"email": "anna@example.it", "valore": 12.5,
                   "cv": {"filename": "cv.pdf", "content_type": "application/pdf", "bytes": 8}})
        );
        let e = multipart_to_json("--XyZ\r\nno headers".into(), "XyZ", &[])
            .await
            .unwrap_err();
        assert!(e.1.contains("multipart"), "{e:?}");
        assert_eq!(form_kind("multipart/form-data"), None, "no boundary");
        assert_eq!(form_kind("application/json"), None);
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

    proptest::proptest! {
        /// Any bytes as a form body: no panic, and what is read is a JSON object.
        #[test]
        fn any_form_body_reads_as_an_object_or_a_precise_error(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            if let Ok(value) = form_to_json(&body, &["valore".to_string()]) {
                proptest::prop_assert!(value.is_object());
            }
        }
    }
}
