//! Arbitrary `Forwarded` / `X-Forwarded-For` headers from a trusted and an untrusted peer:
//! never a panic, and an untrusted peer's headers never change the client address.
#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use raccordo_ingest::network::{Networks, client_address};

fuzz_target!(|data: &[u8]| {
    let trusted = Networks::parse(&["10.0.0.0/8".to_string(), "2001:db8::/32".to_string()]).unwrap();
    let mut parts = data.split(|b| *b == 0xFF);
    let mut headers = HeaderMap::new();
    for name in ["forwarded", "x-forwarded-for", "x-forwarded-for"] {
        if let Some(value) = parts.next()
            && let Ok(value) = HeaderValue::from_bytes(value)
        {
            headers.append(name, value);
        }
    }
    let proxy: IpAddr = "10.1.2.3".parse().unwrap();
    let _ = client_address(proxy, &headers, &trusted);
    let stranger: IpAddr = "203.0.113.7".parse().unwrap();
    assert_eq!(client_address(stranger, &headers, &trusted), stranger);
});
