//! Arbitrary bytes as an HTML form body (`application/x-www-form-urlencoded`): never a
//! panic; what is read is a JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raccordo_ingest::browser::form_to_json;

fuzz_target!(|data: &[u8]| {
    let numbers = ["valore".to_string(), "amount".to_string()];
    if let Ok(value) = form_to_json(data, &numbers) {
        assert!(value.is_object());
    }
});
