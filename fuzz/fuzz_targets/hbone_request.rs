//! Arbitrary method, authority and `forwarded` header on an HBONE request: the checks must never
//! panic, and an accepted CONNECT targets the connection's own address.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nodemesh_proxy::hbone::request::{check_connect, forwarded_for};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    method: &'a str,
    uri: &'a str,
    forwarded: &'a [u8],
    local: [u8; 4],
}

fuzz_target!(|input: Input<'_>| {
    let local = std::net::IpAddr::from(input.local);
    let Ok(req) = http::Request::builder().method(input.method).uri(input.uri).body(()) else {
        return;
    };
    if let Ok(target) = check_connect(&req, local) {
        assert_eq!(target.ip(), local);
        assert_ne!(target.port(), 0);
    }
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(input.forwarded) {
        headers.insert("forwarded", v);
        let _ = forwarded_for(&headers);
    }
});
