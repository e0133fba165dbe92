//! Arbitrary text as a CSR and as a tokens file: the CA's checks must never panic, and a CSR they
//! accept must name a workload of the CA's trust domain.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemesh_ca::authz::Tokens;
use nodemesh_ca::csr::check_csr;
use nodemesh_identity::TrustDomain;

fuzz_target!(|text: &str| {
    let td = TrustDomain::default();
    if let Ok(csr) = check_csr(text, &td) {
        assert_eq!(csr.identity.trust_domain_str(), "cluster.local");
        assert!(csr.identity.workload_parts().is_ok());
    }
    // Also as the body of a PEM block, so the parser gets past the armour.
    let _ = check_csr(&format!("-----BEGIN CERTIFICATE REQUEST-----\n{text}\n-----END CERTIFICATE REQUEST-----\n"), &td);
    if let Ok(tokens) = Tokens::parse(text) {
        let _ = tokens.authenticate(text);
    }
});
