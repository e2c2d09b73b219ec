//! Dedup keys, as pure functions.
//!
//! Two layers (DESIGN §3): the *delivery id* of a request (`webhook-id` or
//! `Idempotency-Key`), and the *business key* of each event: the key fields (by default
//! `id_cliente` and `evento`), the event time rounded down to a bucket (default 5 minutes)
//! and a hash of the canonical payload *without* the time field, so that a re-sent event
//! whose timestamp was regenerated a few seconds later is still recognised.

use raccordo_core::DedupKey;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn truncate(digest: &[u8]) -> DedupKey {
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    DedupKey(key)
}

/// Appends `bytes` with a length prefix so that field boundaries cannot be shifted
/// (`("ab","c")` and `("a","bc")` hash differently).
fn feed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// Key of a delivery id, scoped to its source so two sources may reuse ids freely.
pub fn delivery_key(source: &str, delivery_id: &str) -> DedupKey {
    let mut h = Sha256::new();
    feed(&mut h, b"delivery");
    feed(&mut h, source.as_bytes());
    feed(&mut h, delivery_id.as_bytes());
    truncate(&h.finalize())
}

/// Hash of a request body (to tell a retried delivery from a reused delivery id).
pub fn body_hash(body: &[u8]) -> DedupKey {
    truncate(&Sha256::digest(body))
}

/// Start of the bucket holding `event_time_ms` (floor division, correct before 1970 too).
pub fn bucket_start(event_time_ms: i64, bucket_ms: i64) -> i64 {
    event_time_ms.div_euclid(bucket_ms.max(1)) * bucket_ms.max(1)
}

/// What the business key is made of, per source.
#[derive(Debug, Clone)]
pub struct BusinessKeySpec {
    /// JSON pointers of the identifying fields (default `/id_cliente`, `/evento`).
    pub key_fields: Vec<String>,
    /// JSON pointer of the event-time field, excluded from the payload hash.
    pub time_field: String,
    pub bucket_ms: i64,
}

impl Default for BusinessKeySpec {
    fn default() -> Self {
        Self {
            key_fields: vec!["/id_cliente".into(), "/evento".into()],
            time_field: "/timestamp".into(),
            bucket_ms: 5 * 60 * 1000,
        }
    }
}

/// Business key of one event. `payload` must be the parsed event; object keys are hashed in
/// sorted order (serde_json's default map), numbers in their shortest round-trip form, so
/// `{"a":1.50,"b":2}` and `{"b":2,"a":1.5}` give the same key.
pub fn business_key(
    source: &str,
    spec: &BusinessKeySpec,
    payload: &Value,
    event_time_ms: i64,
) -> DedupKey {
    let texts: Vec<Option<std::borrow::Cow<'_, str>>> = spec
        .key_fields
        .iter()
        .map(|pointer| match payload.pointer(pointer) {
            Some(Value::String(s)) => Some(std::borrow::Cow::Borrowed(s.as_str())),
            Some(other) => Some(std::borrow::Cow::Owned(other.to_string())),
            None => None,
        })
        .collect();
    let parts: Vec<Option<&[u8]>> = texts
        .iter()
        .map(|t| t.as_deref().map(str::as_bytes))
        .collect();
    // The payload without its time field (its bucket is already in the key). A top-level
    // field is skipped while writing, which avoids cloning the payload on the hot path.
    let text = match top_level_field(&spec.time_field) {
        Some(field) => {
            let mut out = String::with_capacity(256);
            write_object_without(payload, field, &mut out);
            out
        }
        None => canonical_json(&remove_pointer(payload, &spec.time_field)),
    };
    business_key_from_parts(
        source,
        &parts,
        bucket_start(event_time_ms, spec.bucket_ms),
        &[text.as_bytes()],
    )
}

/// The business key from its parts: the key fields' values (a string's own text, other
/// JSON as its text, `None` when absent), the bucket start, and the canonical payload
/// without its time field, given as consecutive slices.
pub fn business_key_from_parts(
    source: &str,
    key_parts: &[Option<&[u8]>],
    bucket_start_ms: i64,
    without_time: &[&[u8]],
) -> DedupKey {
    let mut h = Sha256::new();
    feed(&mut h, b"business");
    feed(&mut h, source.as_bytes());
    for part in key_parts {
        feed(&mut h, part.unwrap_or(b"\0absent"));
    }
    h.update(bucket_start_ms.to_le_bytes());
    let len: usize = without_time.iter().map(|s| s.len()).sum();
    h.update((len as u64).to_le_bytes());
    for slice in without_time {
        h.update(slice);
    }
    truncate(&h.finalize())
}

/// Canonical JSON text: keys sorted by code point, no whitespace, numbers in serde_json's
/// shortest round-trip form. Sorting is explicit so that it holds even when some dependency
/// switches serde_json's map to insertion order (`preserve_order`).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => write_object(map, None, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        // Scalars: serde_json's own text is already canonical (no NaN/Inf can exist in a Value).
        other => out.push_str(&other.to_string()),
    }
}

/// `s` as a JSON string, exactly as `serde_json` writes it (dedup keys hash this text, so
/// it must never change). Most strings need no escape and are copied as they are, without
/// the temporary `String` serialising them would cost on every field of every event.
pub(crate) fn write_string(s: &str, out: &mut String) {
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    // A &str always serialises; the fallback keeps this total without a panic path.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\"")));
}

/// `/name` (one segment, no escapes) → `name`.
fn top_level_field(pointer: &str) -> Option<&str> {
    let name = pointer.strip_prefix('/')?;
    (!name.contains(['/', '~'])).then_some(name)
}

/// Canonical JSON of `value`, leaving out top-level key `skip` when `value` is an object.
fn write_object_without(value: &Value, skip: &str, out: &mut String) {
    match value {
        Value::Object(map) => write_object(map, Some(skip), out),
        other => write_canonical(other, out),
    }
}

/// An object with keys sorted by code point, optionally without one key.
fn write_object(map: &serde_json::Map<String, Value>, skip: Option<&str>, out: &mut String) {
    let mut entries: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(k, _)| Some(k.as_str()) != skip)
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, item)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(key, out);
        out.push(':');
        write_canonical(item, out);
    }
    out.push('}');
}

fn remove_pointer(value: &Value, pointer: &str) -> Value {
    let mut copy = value.clone();
    if let Some((parent, last)) = pointer.rsplit_once('/') {
        let last = last.replace("~1", "/").replace("~0", "~");
        let target = if parent.is_empty() {
            Some(&mut copy)
        } else {
            copy.pointer_mut(parent)
        };
        if let Some(Value::Object(map)) = target {
            map.remove(&last);
        }
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const MIN: i64 = 60_000;

    fn event(ts: &str, valore: f64) -> Value {
        json!({"id_cliente":"CLIENTE-IT-000001","evento":"acquisto_concluso","timestamp":ts,
               "valore":valore,"canale":"email","stato":"completato"})
    }

    #[test]
    fn same_event_in_same_bucket_is_the_same_key() {
        let spec = BusinessKeySpec::default();
        let t = 1_700_000_100_000; // 22:15:00 UTC, start of a bucket
        let a = business_key("s", &spec, &event("a", 10.0), t + MIN);
        let b = business_key("s", &spec, &event("b", 10.0), t + 4 * MIN);
        assert_eq!(
            a, b,
            "timestamp text is not part of the hash, its bucket is"
        );
        let c = business_key("s", &spec, &event("a", 10.0), t + 5 * MIN);
        assert_ne!(a, c, "next bucket is another key");
        let d = business_key("s", &spec, &event("a", 11.0), t + MIN);
        assert_ne!(a, d, "different value is another event");
        let e = business_key("other", &spec, &event("a", 10.0), t + MIN);
        assert_ne!(a, e, "keys are per source");
    }

    #[test]
    fn buckets_floor_before_the_epoch() {
        assert_eq!(bucket_start(-1, 300_000), -300_000);
        assert_eq!(bucket_start(299_999, 300_000), 0);
        assert_eq!(bucket_start(300_000, 300_000), 300_000);
    }

    #[test]
    fn delivery_keys_are_scoped_and_unambiguous() {
        assert_ne!(delivery_key("ab", "c"), delivery_key("a", "bc"));
        assert_eq!(delivery_key("a", "msg_1"), delivery_key("a", "msg_1"));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            (-1.0e6f64..1.0e6).prop_map(|f| json!(f)),
            "[a-z]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The copy without escapes writes what serde_json writes, for any string.
        #[test]
        fn strings_are_written_as_serde_json_writes_them(s in any::<String>(), escapes in "[\"\\\\\u{0}-\u{1f}\u{7f}]{0,3}") {
            for text in [s.clone(), format!("{s}{escapes}"), format!("{escapes}{s}")] {
                let mut out = String::from("x");
                write_string(&text, &mut out);
                prop_assert_eq!(&out[1..], serde_json::to_string(&text).unwrap());
            }
        }

        /// Key order and formatting of the incoming text never change the key.
        #[test]
        fn key_ignores_key_order_and_whitespace(v in arb_json(), t in any::<i64>()) {
            let spec = BusinessKeySpec::default();
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            let reparsed: Value = serde_json::from_str(&pretty).unwrap();
            prop_assert_eq!(business_key("s", &spec, &v, t), business_key("s", &spec, &reparsed, t));
        }

        /// Times in one bucket share a key; times in different buckets never do.
        #[test]
        fn key_changes_exactly_at_bucket_edges(a in -1_000_000_000_000i64..4_000_000_000_000, b in -1_000_000_000_000i64..4_000_000_000_000) {
            let spec = BusinessKeySpec::default();
            let v = event("x", 1.0);
            let same_bucket = bucket_start(a, spec.bucket_ms) == bucket_start(b, spec.bucket_ms);
            prop_assert_eq!(business_key("s", &spec, &v, a) == business_key("s", &spec, &v, b), same_bucket);
        }

        /// Canonical text is valid JSON equal to the input, and stable under re-parsing.
        #[test]
        fn canonical_json_round_trips(v in arb_json()) {
            let text = canonical_json(&v);
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(canonical_json(&back), text);
        }

        /// Skipping the time field while writing equals removing it first, for any object.
        #[test]
        fn skipping_the_time_field_equals_removing_it(v in arb_json()) {
            let mut with_time = v.clone();
            if let Value::Object(map) = &mut with_time {
                map.insert("timestamp".into(), json!("2026-01-01T00:00:00Z"));
            }
            let mut skipped = String::new();
            write_object_without(&with_time, "timestamp", &mut skipped);
            prop_assert_eq!(skipped, canonical_json(&remove_pointer(&with_time, "/timestamp")));
        }

        /// Any change to a hashed field gives another key.
        #[test]
        fn key_sees_every_field(valore in 0u32..1_000_000, other in 0u32..1_000_000) {
            prop_assume!(valore != other);
            let spec = BusinessKeySpec::default();
            let a = business_key("s", &spec, &event("x", valore as f64 / 100.0), 0);
            let b = business_key("s", &spec, &event("x", other as f64 / 100.0), 0);
            prop_assert_ne!(a, b);
        }
    }
}
