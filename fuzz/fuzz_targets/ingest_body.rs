//! Arbitrary request bodies through everything the pipeline does before storage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raccordo_ingest::dedup::{BusinessKeySpec, business_key, canonical_json};
use raccordo_ingest::conversion::parse_time_ms;
use raccordo_ingest::EventSchema;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    thread_local! {
        static SCHEMA: EventSchema = EventSchema::conversion();
    }
    let Ok(parsed) = serde_json::from_slice::<Value>(body) else { return };
    let items = match parsed {
        Value::Array(items) => items,
        other => vec![other],
    };
    let spec = BusinessKeySpec::default();
    SCHEMA.with(|schema| {
        for (i, item) in items.iter().enumerate() {
            let mut errors = Vec::new();
            let failures = schema.validate(item, &format!("/{i}"), &mut errors);
            assert!(errors.len() <= failures);
            assert!(errors.iter().all(|e| e.pointer.starts_with(&format!("/{i}"))));
            let time = item.pointer("/timestamp").and_then(Value::as_str).and_then(parse_time_ms).unwrap_or(0);
            let canonical = canonical_json(item);
            let back: Value = serde_json::from_str(&canonical).expect("canonical JSON parses");
            assert_eq!(&back, item);
            let _ = business_key("fuzz", &spec, item, time);
        }
    });
});
