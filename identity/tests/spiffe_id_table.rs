//! SPIFFE ID parsing against the rules of the SPIFFE ID specification.
#![allow(clippy::unwrap_used)]

use nodemesh_identity::{SpiffeId, SpiffeIdError as E, TrustDomain};

#[test]
fn valid_ids_parse() {
    let valid = [
        "spiffe://cluster.local/ns/default/sa/default",
        "spiffe://example.org",
        "spiffe://example.org/workload",
        "spiffe://a/b/c/d/e/f",
        "spiffe://my-domain_1.example/path",
        "spiffe://1.2.3.4/ip-looking-domain",
        "spiffe://td/Path.With-Upper_And.dots",
        "spiffe://td/...",
        "spiffe://td/.hidden",
        "spiffe://td/a..b",
        "spiffe://x/ns/a/sa/b",
    ];
    for id in valid {
        let parsed = SpiffeId::new(id).unwrap_or_else(|e| panic!("{id} rejected: {e}"));
        assert_eq!(parsed.as_str(), id);
    }
}

#[test]
fn invalid_ids_are_rejected_with_their_reason() {
    let long_path = format!("spiffe://td/{}", "a".repeat(2048));
    let long_td = format!("spiffe://{}/x", "a".repeat(256));
    let invalid: Vec<(&str, E)> = vec![
        ("", E::Empty),
        ("cluster.local/ns/a/sa/b", E::WrongScheme),
        ("http://cluster.local/ns/a", E::WrongScheme),
        ("SPIFFE://cluster.local/ns/a", E::WrongScheme),
        ("spiffe:/cluster.local/ns/a", E::WrongScheme),
        ("spiffe://", E::MissingTrustDomain),
        ("spiffe:///path", E::MissingTrustDomain),
        ("spiffe://Cluster.local/ns/a", E::BadTrustDomainChar('C')),
        (
            "spiffe://cluster.local:8080/ns/a",
            E::BadTrustDomainChar(':'),
        ),
        (
            "spiffe://user@cluster.local/ns/a",
            E::BadTrustDomainChar('@'),
        ),
        (
            "spiffe://user:pw@cluster.local/ns/a",
            E::BadTrustDomainChar(':'),
        ),
        ("spiffe://clu%41ster/ns/a", E::BadTrustDomainChar('%')),
        ("spiffe://td?query/x", E::BadTrustDomainChar('?')),
        ("spiffe://td#frag", E::BadTrustDomainChar('#')),
        ("spiffe://tö/x", E::BadTrustDomainChar('ö')),
        ("spiffe://td/", E::EmptySegment),
        ("spiffe://td//a", E::EmptySegment),
        ("spiffe://td/a//b", E::EmptySegment),
        ("spiffe://td/a/", E::EmptySegment),
        ("spiffe://td/./a", E::DotSegment),
        ("spiffe://td/a/..", E::DotSegment),
        ("spiffe://td/a/../b", E::DotSegment),
        ("spiffe://td/a%20b", E::BadPathChar('%')),
        ("spiffe://td/a%2Fb", E::BadPathChar('%')),
        ("spiffe://td/a?x=1", E::BadPathChar('?')),
        ("spiffe://td/a#frag", E::BadPathChar('#')),
        ("spiffe://td/a b", E::BadPathChar(' ')),
        ("spiffe://td/a:b", E::BadPathChar(':')),
        ("spiffe://td/ä", E::BadPathChar('ä')),
        ("spiffe://td/a\\b", E::BadPathChar('\\')),
        (&long_path, E::TooLong),
        (&long_td, E::TrustDomainTooLong),
    ];
    assert!(invalid.len() >= 30);
    for (id, want) in invalid {
        assert_eq!(SpiffeId::new(id), Err(want.clone()), "{id:?}");
    }
}

#[test]
fn istio_form_accessors() {
    let id = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    assert_eq!(id.trust_domain_str(), "cluster.local");
    assert_eq!(id.namespace(), Some("shop"));
    assert_eq!(id.service_account(), Some("web"));
    assert_eq!(id.principal(), "cluster.local/ns/shop/sa/web");
    assert_eq!(id.path(), "/ns/shop/sa/web");
    let td = TrustDomain::new("cluster.local").unwrap();
    assert_eq!(SpiffeId::workload(&td, "shop", "web").unwrap(), id);
    for not_workload in [
        "spiffe://td/ns/a",
        "spiffe://td/ns/a/sa/b/c",
        "spiffe://td/sa/a/ns/b",
        "spiffe://td",
    ] {
        let id = SpiffeId::new(not_workload).unwrap();
        assert_eq!(
            id.workload_parts(),
            Err(E::NotWorkloadForm),
            "{not_workload}"
        );
        assert_eq!(id.namespace(), None);
    }
    assert_eq!(SpiffeId::workload(&td, "a/b", "c"), Err(E::NotWorkloadForm));
    assert_eq!(SpiffeId::workload(&td, "", "c"), Err(E::EmptySegment));
}

#[test]
fn trust_domains_parse_bare_or_as_ids() {
    assert_eq!(
        TrustDomain::new("spiffe://example.org").unwrap().as_str(),
        "example.org"
    );
    assert_eq!(TrustDomain::default().as_str(), "cluster.local");
    assert_eq!(
        TrustDomain::new("Example.org"),
        Err(E::BadTrustDomainChar('E'))
    );
    assert_eq!(TrustDomain::new(""), Err(E::MissingTrustDomain));
    assert_eq!(TrustDomain::new("td/path"), Err(E::BadTrustDomainChar('/')));
}
