//! Arbitrary bytes as a client certificate (DER) and as names to match: never a panic, and
//! an empty list of names never matches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raccordo_ingest::client_cert::{certificate_names, names_match};

fuzz_target!(|data: &[u8]| {
    let (der, wanted) = match data.iter().position(|b| *b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Some(names) = certificate_names(der) {
        let wanted: Vec<String> = String::from_utf8_lossy(wanted)
            .split('\n')
            .map(str::to_string)
            .collect();
        let _ = names_match(&names, &wanted);
        assert!(!names_match(&names, &[]));
    }
});
