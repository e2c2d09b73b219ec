//! The event log as a holder of personal data: a source's events belong to a data subject
//! when their customer field (the built-in schema's `id_cliente`, or the `customer` pointer
//! of the source's mapping) names them. Erasing replaces that field, and the configured
//! personal fields, by same-length pseudonyms in place (see `raccordo_core::privacy`), and
//! drops the events' business-key claims, which hash personal data.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use raccordo_core::privacy::{Erased, PersonalData, Pseudonymiser, Subject, pseudonymise_at};
use raccordo_core::{EventLog, EventQuery, EventSelector, PayloadRewrite, StoreError};
use serde_json::Value;

use crate::mapping::ConversionMapping;
use crate::pipeline::Ingestor;

/// `[privacy]`: what an erasure pseudonymises in stored events besides the customer id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// JSON pointers of payload fields that identify a person in any source (an e-mail
    /// address): an event whose value there equals a customer's id (case-insensitively)
    /// belongs to that customer as much as one whose customer field names them. Their
    /// values are pseudonymised too.
    pub identifier_fields: Vec<String>,
    /// JSON pointers of payload fields that hold personal data besides the customer id (a
    /// place, a device, an e-mail address in a mapped source): an erasure replaces their
    /// values with pseudonyms too. Fields a payload lacks are skipped.
    pub personal_fields: Vec<String>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            identifier_fields: vec!["/email".into()],
            personal_fields: vec!["/metadati/localita".into(), "/metadati/dispositivo".into()],
        }
    }
}

impl PrivacyConfig {
    pub fn problems(&self) -> Vec<(String, String)> {
        let named = |name: &'static str, list: &'_ [String]| {
            list.iter()
                .enumerate()
                .filter(|(_, p)| !p.starts_with('/'))
                .map(move |(i, _)| {
                    (
                        format!("{name}[{i}]"),
                        "must be a JSON pointer (starting with `/`)".to_string(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut out = named("identifier_fields", &self.identifier_fields);
        out.extend(named("personal_fields", &self.personal_fields));
        out
    }
}

/// The built-in conversion schema's customer field.
pub const BUILTIN_CUSTOMER: &str = "/id_cliente";

/// Where one source keeps the customer.
#[derive(Clone)]
enum Customer {
    Builtin,
    Mapped(Arc<ConversionMapping>),
}

impl Customer {
    fn pointer(&self) -> Option<&str> {
        match self {
            Customer::Builtin => Some(BUILTIN_CUSTOMER),
            Customer::Mapped(m) => m.customer_pointer(),
        }
    }

    /// Whether the payload's customer is `id` (`id_lower`: the lower-cased id).
    fn is(&self, payload: &Value, id: &str, id_lower: &str) -> bool {
        match self {
            Customer::Builtin => payload.get("id_cliente").and_then(Value::as_str) == Some(id),
            Customer::Mapped(m) => m.customer_of(payload).is_some_and(|c| {
                if m.customer_is_lowercased() {
                    c == id_lower
                } else {
                    c == id
                }
            }),
        }
    }
}

/// Decides per stored event; shared by the export (select) and the erasure (rewrite).
#[derive(Clone)]
struct Matcher {
    sources: Arc<HashMap<String, Customer>>,
    identifier_fields: Arc<Vec<String>>,
    id: String,
    id_lower: String,
    /// The id as it is written inside a JSON string (escapes applied): a payload that
    /// does not hold this text is skipped without parsing it.
    needle: String,
    needle_lower: String,
}

impl Matcher {
    fn customer(&self, source: &str) -> &Customer {
        // A source removed from the configuration since: the built-in field is assumed.
        self.sources.get(source).unwrap_or(&Customer::Builtin)
    }

    fn picks(&self, source: &str, payload: &str) -> bool {
        // Cheap first: a payload that does not hold the id's text (in any case) is not
        // parsed. Erasing reads the whole log through this, so no allocation either.
        if !payload.contains(&self.needle) && !contains_ignoring_case(payload, &self.needle_lower) {
            return false;
        }
        let Ok(value) = serde_json::from_str::<Value>(payload) else {
            return false;
        };
        self.customer(source).is(&value, &self.id, &self.id_lower)
            || self.identifier_fields.iter().any(|pointer| {
                value
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .is_some_and(|v| v == self.id || v.to_lowercase() == self.id_lower)
            })
    }
}

/// Whether `hay` holds `needle_lower` (lower-case) in any case: ASCII letters compared
/// without allocating; a needle with other letters falls back to lower-casing `hay`.
fn contains_ignoring_case(hay: &str, needle_lower: &str) -> bool {
    if !needle_lower.is_ascii() {
        return hay.to_lowercase().contains(needle_lower);
    }
    let (hay, needle) = (hay.as_bytes(), needle_lower.as_bytes());
    let Some(first) = needle.first() else {
        return true;
    };
    hay.len() >= needle.len()
        && (0..=hay.len() - needle.len()).any(|at| {
            hay[at].to_ascii_lowercase() == *first
                && hay[at..at + needle.len()]
                    .iter()
                    .zip(needle)
                    .all(|(h, n)| h.to_ascii_lowercase() == *n)
        })
}

pub struct EventsHolder {
    log: Arc<dyn EventLog>,
    query: Arc<dyn EventQuery>,
    sources: Arc<HashMap<String, Customer>>,
    identifier_fields: Arc<Vec<String>>,
    /// JSON pointers pseudonymised along with the customer (`[privacy] personal_fields`).
    personal_fields: Vec<String>,
}

impl EventsHolder {
    /// The holder for the sources as `ingestor` has them now.
    pub fn new(ingestor: &Ingestor, query: Arc<dyn EventQuery>, privacy: &PrivacyConfig) -> Self {
        let sources = ingestor
            .sources()
            .map(|s| {
                let customer = match &s.mapping {
                    Some(m) => Customer::Mapped(m.clone()),
                    None => Customer::Builtin,
                };
                (s.name.to_string(), customer)
            })
            .collect();
        Self {
            log: ingestor.log().clone(),
            query,
            sources: Arc::new(sources),
            identifier_fields: Arc::new(privacy.identifier_fields.clone()),
            personal_fields: privacy.personal_fields.clone(),
        }
    }

    fn matcher(&self, subject: &Subject) -> Matcher {
        let literal = subject.json_literal();
        let needle = literal[1..literal.len() - 1].to_string();
        Matcher {
            sources: self.sources.clone(),
            identifier_fields: self.identifier_fields.clone(),
            id: subject.id().to_string(),
            id_lower: subject.id().to_lowercase(),
            needle_lower: needle.to_lowercase(),
            needle,
        }
    }
}

#[async_trait]
impl PersonalData for EventsHolder {
    fn name(&self) -> &'static str {
        "events"
    }

    async fn export(&self, subject: &Subject) -> Result<Option<Value>, StoreError> {
        let matcher = self.matcher(subject);
        let select: EventSelector = Arc::new(move |source, payload| matcher.picks(source, payload));
        let events = self.query.find(select).await?;
        Ok((!events.is_empty())
            .then(|| serde_json::to_value(&events).map_err(|e| StoreError::Backend(e.to_string())))
            .transpose()?)
    }

    async fn erase(
        &self,
        subject: &Subject,
        pseudonymiser: &Pseudonymiser,
    ) -> Result<Erased, StoreError> {
        let matcher = self.matcher(subject);
        let pseudonymiser = pseudonymiser.clone();
        let personal_fields = self.personal_fields.clone();
        let identifier_fields = self.identifier_fields.clone();
        let rewrite: PayloadRewrite = Arc::new(move |source, payload| {
            if !matcher.picks(source, payload) {
                return None;
            }
            let mut pointers: Vec<String> = matcher
                .customer(source)
                .pointer()
                .map(str::to_string)
                .into_iter()
                .collect();
            pointers.extend(identifier_fields.iter().cloned());
            pointers.extend(personal_fields.iter().cloned());
            pseudonymise_at(payload, &pointers, &pseudonymiser)
        });
        let erased = self.log.erase(rewrite).await?;
        Ok(vec![
            ("events", erased.ids.len() as u64),
            ("dedup_claims", erased.claims),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::contains_ignoring_case;

    #[test]
    fn case_is_ignored_without_allocating_for_ascii() {
        assert!(contains_ignoring_case(
            r#"{"email":"Ada@Example.IT"}"#,
            "ada@example.it"
        ));
        assert!(!contains_ignoring_case(
            r#"{"email":"ada@example.com"}"#,
            "ada@example.it"
        ));
        assert!(contains_ignoring_case("x", ""));
        assert!(!contains_ignoring_case("ad", "ada"));
        assert!(contains_ignoring_case("CIAO ÉLODIE", "élodie"));
    }
}
