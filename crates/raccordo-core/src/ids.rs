//! Typed identifiers. A `String` that means "source name" should not be passable where an
//! event id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Identifier of a stored event: `evt_` followed by a ULID, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(ulid::Ulid);

impl EventId {
    const PREFIX: &'static str = "evt_";

    /// A fresh id; ids made later in the same process sort after earlier ones.
    pub fn generate(generator: &mut ulid::Generator, now_ms: i64) -> Self {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms.max(0) as u64);
        // The generator only fails when 2^80 ids are made in one millisecond.
        let id = generator
            .generate_from_datetime(when)
            .unwrap_or_else(|_| ulid::Ulid::new());
        Self(id)
    }

    pub fn from_ulid(id: ulid::Ulid) -> Self {
        Self(id)
    }

    pub fn from_u128(id: u128) -> Self {
        Self(ulid::Ulid(id))
    }

    /// The id as a 128-bit number (its compact storage form).
    pub fn as_u128(self) -> u128 {
        self.0.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.0)
    }
}

impl FromStr for EventId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| format!("event ids start with `{}`", Self::PREFIX))?;
        ulid::Ulid::from_string(rest)
            .map(Self)
            .map_err(|e| e.to_string())
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The name of a configured event source: 1–64 characters of `[a-z0-9_-]`, so it is safe
/// in URLs, metric labels and log lines without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SourceName(String);

#[derive(Debug, thiserror::Error)]
#[error("source names are 1-64 characters of lower-case letters, digits, `-` and `_`; got {0:?}")]
pub struct SourceNameError(pub String);

impl SourceName {
    pub fn new(name: impl Into<String>) -> Result<Self, SourceNameError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(name))
        } else {
            Err(SourceNameError(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SourceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SourceName::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_sort_by_time() {
        let mut generator = ulid::Generator::new();
        let a = EventId::generate(&mut generator, 1_700_000_000_000);
        let b = EventId::generate(&mut generator, 1_700_000_000_000);
        let c = EventId::generate(&mut generator, 1_700_000_000_001);
        assert!(a < b && b < c);
        let text = a.to_string();
        assert!(text.starts_with("evt_"));
        assert_eq!(text.parse::<EventId>().unwrap(), a);
        assert!("01ARZ3NDEKTSV4RRFFQ69G5FAV".parse::<EventId>().is_err());
    }

    #[test]
    fn source_names_are_restricted() {
        assert!(SourceName::new("crm-forms_2").is_ok());
        for bad in ["", "Upper", "sp ace", "a/b", &"x".repeat(65)] {
            assert!(SourceName::new(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}

/// OpenAPI: ids are strings of a known shape.
mod schemas {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    use utoipa::openapi::{RefOr, schema::SchemaType};

    fn string(description: &str, pattern: &str) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .description(Some(description))
            .pattern(Some(pattern))
            .into()
    }

    impl utoipa::PartialSchema for super::EventId {
        fn schema() -> RefOr<Schema> {
            string(
                "A stored event: `evt_` and a ULID",
                "^evt_[0-9A-HJKMNP-TV-Z]{26}$",
            )
        }
    }
    impl utoipa::ToSchema for super::EventId {}

    impl utoipa::PartialSchema for super::SourceName {
        fn schema() -> RefOr<Schema> {
            string(
                "A configured source: 1-64 of a-z, 0-9, `-`, `_`",
                "^[a-z0-9_-]{1,64}$",
            )
        }
    }
    impl utoipa::ToSchema for super::SourceName {}
}
