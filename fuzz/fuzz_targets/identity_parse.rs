//! Arbitrary bytes as a SPIFFE ID, a trust domain and a leaf certificate: parsing must never panic,
//! and an accepted ID must print back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemesh_identity::{SpiffeId, TrustDomain, inspect_leaf};
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = SpiffeId::new(text) {
            assert_eq!(id.as_str(), text);
            assert!(text.len() <= nodemesh_identity::MAX_SPIFFE_ID_LEN);
            let _ = id.workload_parts();
        }
        let _ = TrustDomain::new(text);
    }
    let _ = inspect_leaf(&CertificateDer::from(data));
});
