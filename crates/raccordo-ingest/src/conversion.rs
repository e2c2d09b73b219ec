//! A typed fast path for the built-in conversion schema.
//!
//! The generic path parses each event into a `serde_json::Value` tree, runs the JSON Schema
//! validator over it and serialises it again for the canonical form — most of the CPU an
//! event costs. Here serde reads the body straight into borrowed structs, the schema's rules
//! are checked by hand, and the canonical text is written field by field in sorted key order.
//!
//! It only ever *accepts*: anything it does not accept (a schema violation, but also legal
//! oddities such as duplicate keys or a leap second) goes to the generic path, which decides
//! and produces the located errors. Property tests check that whatever it accepts, the
//! generic path accepts too, with the same canonical text, event time and dedup key.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::Number;

use crate::dedup::write_string;

const EVENTS: [&str; 4] = [
    "richiesta_demo",
    "acquisto_concluso",
    "iscrizione_evento",
    "cancello_abbandono",
];
const CHANNELS: [&str; 4] = ["email", "social_media", "webform", "sms"];
const STATES: [&str; 3] = ["completato", "duplicato", "fallito"];
const MAX_METADATA_CHARS: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conversion<'a> {
    #[serde(borrow)]
    id_cliente: Cow<'a, str>,
    #[serde(borrow)]
    evento: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    valore: Number,
    #[serde(borrow)]
    canale: Cow<'a, str>,
    #[serde(borrow)]
    stato: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "present")]
    metadati: Option<Metadati<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadati<'a> {
    #[serde(default, borrow, deserialize_with = "present_str")]
    campagna: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present_str")]
    dispositivo: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present_str")]
    localita: Option<Cow<'a, str>>,
}

/// An optional field that, when present, must not be `null` (the schema wants its type).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// [`present`] for a string, borrowed from the body when it has no escapes: serde borrows
/// a `Cow` field only when it reads it itself, and `Cow::deserialize` always copies.
fn present_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Text;
    impl<'de> serde::de::Visitor<'de> for Text {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
    }
    d.deserialize_str(Text).map(Some)
}

/// One accepted event, ready for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastEvent {
    /// Canonical JSON (sorted keys), exactly as `dedup::canonical_json` writes it.
    pub canonical: String,
    /// Byte range of `"timestamp":…,` inside `canonical` (left out of the payload hash).
    pub time_range: std::ops::Range<usize>,
    pub event_time_ms: i64,
    pub id_cliente: String,
    pub evento: String,
}

/// Parses and checks a body (one event or an array). `None` means "let the generic path
/// decide", never "invalid".
pub fn accept(body: &[u8], max_items: usize) -> Option<(bool, Vec<FastEvent>)> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first == b'[' {
        let items: Vec<Conversion<'_>> = serde_json::from_slice(body).ok()?;
        if items.is_empty() || items.len() > max_items {
            return None;
        }
        let events = items.into_iter().map(check).collect::<Option<Vec<_>>>()?;
        Some((false, events))
    } else {
        let item: Conversion<'_> = serde_json::from_slice(body).ok()?;
        Some((true, vec![check(item)?]))
    }
}

fn check(c: Conversion<'_>) -> Option<FastEvent> {
    let amount = c.valore.to_string();
    let ok = valid_customer_id(&c.id_cliente)
        && EVENTS.contains(&c.evento.as_ref())
        && CHANNELS.contains(&c.canale.as_ref())
        && STATES.contains(&c.stato.as_ref())
        && valid_timestamp_text(&c.timestamp)
        && valid_amount(&c.valore, &amount)
        && c.metadati.as_ref().is_none_or(|m| {
            [&m.campagna, &m.dispositivo, &m.localita]
                .into_iter()
                .flatten()
                .all(|s| s.chars().count() <= MAX_METADATA_CHARS)
        });
    if !ok {
        return None;
    }
    let event_time_ms = parse_time_ms(&c.timestamp)?;

    // Keys in code-point order: canale, evento, id_cliente, metadati, stato, timestamp, valore.
    let mut out = String::with_capacity(320);
    out.push_str("{\"canale\":");
    write_string(&c.canale, &mut out);
    out.push_str(",\"evento\":");
    write_string(&c.evento, &mut out);
    out.push_str(",\"id_cliente\":");
    write_string(&c.id_cliente, &mut out);
    if let Some(m) = &c.metadati {
        out.push_str(",\"metadati\":{");
        let mut first = true;
        for (key, value) in [
            ("campagna", &m.campagna),
            ("dispositivo", &m.dispositivo),
            ("localita", &m.localita),
        ] {
            if let Some(value) = value {
                if !first {
                    out.push(',');
                }
                first = false;
                write_string(key, &mut out);
                out.push(':');
                write_string(value, &mut out);
            }
        }
        out.push('}');
    }
    out.push_str(",\"stato\":");
    write_string(&c.stato, &mut out);
    out.push(',');
    let time_start = out.len();
    out.push_str("\"timestamp\":");
    write_string(&c.timestamp, &mut out);
    out.push(',');
    let time_end = out.len();
    out.push_str("\"valore\":");
    out.push_str(&amount);
    out.push('}');
    Some(FastEvent {
        canonical: out,
        time_range: time_start..time_end,
        event_time_ms,
        id_cliente: c.id_cliente.into_owned(),
        evento: c.evento.into_owned(),
    })
}

/// `^CLIENTE-[A-Z]{2,12}-[0-9]{6}$`
fn valid_customer_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("CLIENTE-") else {
        return false;
    };
    let Some((region, number)) = rest.split_once('-') else {
        return false;
    };
    (2..=12).contains(&region.len())
        && region.bytes().all(|b| b.is_ascii_uppercase())
        && number.len() == 6
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// `^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$`
/// (the calendar and clock ranges are then checked by parsing).
fn valid_timestamp_text(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    if b.len() < 20
        || !(digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && b[10] == b'T')
        || !(digits(11..13) && b[13] == b':' && digits(14..16) && b[16] == b':' && digits(17..19))
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z'] => true,
        [sign, h1, h2, b':', m1, m2] => {
            (*sign == b'+' || *sign == b'-') && [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit())
        }
        _ => false,
    }
}

/// `minimum: 0` and at most two decimals in the shortest round-trip text.
/// `text`: the number as serde_json writes it.
fn valid_amount(n: &Number, text: &str) -> bool {
    if let Some(u) = n.as_u64() {
        return u < (1 << 53); // beyond that the schema's float check is not exact either way
    }
    if n.as_i64().is_some() {
        return false; // negative integer
    }
    let Some(f) = n.as_f64() else { return false };
    if !(0.0..9.0e15).contains(&f) {
        return false;
    }
    if text.contains(['e', 'E']) {
        return false;
    }
    match text.find('.') {
        Some(dot) => text.len() - dot - 1 <= 2,
        None => true,
    }
}

/// Epoch ms of an RFC 3339 date-time (sub-millisecond digits are truncated).
pub fn parse_time_ms(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::{
        BusinessKeySpec, bucket_start, business_key, business_key_from_parts, canonical_json,
    };
    use crate::schema::EventSchema;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// What the generic path makes of one item, if it accepts it.
    fn generic(item: &Value) -> Option<(String, i64)> {
        let schema = EventSchema::conversion();
        let mut errors = Vec::new();
        if schema.validate(item, "", &mut errors) > 0 {
            return None;
        }
        let time = parse_time_ms(item["timestamp"].as_str()?)?;
        Some((canonical_json(item), time))
    }

    fn fast_key(e: &FastEvent) -> raccordo_core::DedupKey {
        let bytes = e.canonical.as_bytes();
        business_key_from_parts(
            "s",
            &[Some(e.id_cliente.as_bytes()), Some(e.evento.as_bytes())],
            bucket_start(e.event_time_ms, 300_000),
            &[&bytes[..e.time_range.start], &bytes[e.time_range.end..]],
        )
    }

    fn field_values() -> impl Strategy<Value = (String, Value)> {
        let text = prop_oneof![
            Just(json!("CLIENTE-IT-000001")),
            Just(json!("CLIENTE-ITALIA-789456")),
            Just(json!("CLIENTE-it-000001")),
            Just(json!("CLIENTE-ABCDEFGHIJKLM-000001")),
            Just(json!("CLIENTE-IT-00001")),
            Just(json!("CLIENTE-IT-0000011")),
            Just(json!("acquisto_concluso")),
            Just(json!("richiesta_demo")),
            Just(json!("email")),
            Just(json!("sms")),
            Just(json!("completato")),
            Just(json!("fallito")),
            Just(json!("x")),
            Just(json!("")),
            Just(json!("2026-11-22T10:15:30Z")),
            Just(json!("2026-11-22T10:15:30.123456+01:00")),
            Just(json!("2026-11-22T10:15:60Z")),
            Just(json!("2026-02-30T10:15:30Z")),
            Just(json!("2026-11-22t10:15:30z")),
            Just(json!("2026-11-22T10:15:30.Z")),
            Just(json!("2026-11-22T10:15:30+0100")),
            Just(json!("2026-11-22T24:00:00Z")),
            Just(json!("2026-11-22T10:15:30-23:59")),
            Just(json!("2026-11-22T10:15:30+24:00")),
            Just(Value::Null),
            Just(json!(true)),
            Just(json!(0)),
            Just(json!(-0.0)),
            Just(json!(-1)),
            Just(json!(19.99)),
            Just(json!(0.07)),
            Just(json!(1.005)),
            Just(json!(1e21)),
            Just(json!(12345678.9)),
            Just(json!(9007199254740993u64)),
            Just(json!({})),
            Just(json!({"campagna": "promo"})),
            Just(json!({"campagna": null})),
            Just(json!({"altro": "x"})),
            Just(json!({"localita": "Città di Castello", "dispositivo": "mobile"})),
            Just(json!({"campagna": "é".repeat(200)})),
            Just(json!({"campagna": "é".repeat(201)})),
            Just(json!([1])),
            (0u64..10_000_000).prop_map(|c| serde_json::from_str(&format!(
                "{}.{:02}",
                c / 100,
                c % 100
            ))
            .unwrap()),
            "[ -~]{0,20}".prop_map(Value::String),
        ];
        let field = prop_oneof![
            Just("id_cliente"),
            Just("evento"),
            Just("timestamp"),
            Just("valore"),
            Just("canale"),
            Just("stato"),
            Just("metadati"),
            Just("extra"),
        ];
        (field.prop_map(str::to_string), text)
    }

    fn base() -> Value {
        json!({"id_cliente":"CLIENTE-IT-123456","evento":"acquisto_concluso","timestamp":"2026-11-22T10:15:30.123+01:00",
               "valore":149.99,"canale":"email","stato":"completato","metadati":{"campagna":"q4","localita":"Roma"}})
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Whatever the fast path accepts, the generic path accepts with the same canonical
        /// text, time and business key.
        #[test]
        fn fast_accepts_only_what_generic_accepts(edits in prop::collection::vec(field_values(), 0..4), drop in prop::option::of(0usize..7)) {
            let mut item = base();
            for (field, value) in edits {
                item[field.as_str()] = value;
            }
            if let Some(i) = drop {
                let key = ["id_cliente","evento","timestamp","valore","canale","stato","metadati"][i];
                item.as_object_mut().unwrap().remove(key);
            }
            let body = serde_json::to_vec(&item).unwrap();
            if let Some((single, events)) = accept(&body, 1000) {
                prop_assert!(single);
                let (canonical, time) = generic(&item).expect("fast path accepted what the schema rejects");
                prop_assert_eq!(&events[0].canonical, &canonical);
                prop_assert_eq!(events[0].event_time_ms, time);
                let generic_key = business_key("s", &BusinessKeySpec::default(), &item, time);
                prop_assert_eq!(fast_key(&events[0]), generic_key);
            }
        }
    }

    #[test]
    fn typical_events_take_the_fast_path() {
        let body = serde_json::to_vec(&json!([base(), base()])).unwrap();
        let (single, events) = accept(&body, 1000).expect("valid batch");
        assert!(!single);
        assert_eq!(events.len(), 2);
        assert!(
            accept(&body, 1).is_none(),
            "over the batch limit: the generic path answers"
        );
        assert!(accept(b"[]", 1000).is_none());
        assert!(accept(b"{\"id_cliente\":1", 1000).is_none());
        // Duplicate keys are legal JSON (last wins); the fast path leaves them to the generic one.
        let dup = br#"{"id_cliente":"CLIENTE-IT-123456","id_cliente":"CLIENTE-IT-123457","evento":"acquisto_concluso","timestamp":"2026-11-22T10:15:30Z","valore":1,"canale":"email","stato":"completato"}"#;
        assert!(accept(dup, 1000).is_none());
    }
}
