//! Metrics: exact Istio names, label sets (in order) and values in the Prometheus text; two
//! proxies in one process stay independent.

use std::sync::Arc;

use nodemesh_proxy::observe::{
    ConnectionLabels, Metrics, RefusalReason, Reporter, RequestProtocol, ResponseFlags,
    SecurityPolicy,
};

/// One sample line: name, labels in rendered order, value.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: String,
}

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            let labels = split_labels(labels);
            Sample {
                name: name.to_owned(),
                labels,
                value: value.to_owned(),
            }
        })
        .collect()
}

/// Splits `a="x",b="y"` (values may contain escaped quotes and commas).
fn split_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label key");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("dangling escape"),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.expect("closing quote");
        out.push((key.to_owned(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    out
}

/// Samples of `name` having `label`; an empty label name matches samples without labels.
fn find<'a>(all: &'a [Sample], name: &str, label: (&str, &str)) -> Vec<&'a Sample> {
    all.iter()
        .filter(|s| {
            s.name == name
                && if label.0.is_empty() {
                    s.labels.is_empty()
                } else {
                    s.labels.iter().any(|(k, v)| k == label.0 && v == label.1)
                }
        })
        .collect()
}

fn one<'a>(all: &'a [Sample], name: &str, label: (&str, &str)) -> &'a Sample {
    let found = find(all, name, label);
    assert_eq!(found.len(), 1, "{name} with {label:?}: {found:?}");
    found[0]
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn outbound_labels() -> ConnectionLabels {
    ConnectionLabels {
        source_workload: "client".into(),
        source_workload_namespace: "shop".into(),
        source_principal: "spiffe://cluster.local/ns/shop/sa/client".into(),
        source_app: "client-app".into(),
        destination_workload: "web".into(),
        destination_workload_namespace: "shop".into(),
        destination_principal: "spiffe://cluster.local/ns/shop/sa/web".into(),
        destination_app: "web-app".into(),
        destination_service: "web.shop.svc.cluster.local".into(),
        ..ConnectionLabels::new(Reporter::Source)
    }
}

const OUTBOUND_TCP: &[(&str, &str)] = &[
    ("reporter", "source"),
    ("source_workload", "client"),
    ("source_workload_namespace", "shop"),
    (
        "source_principal",
        "spiffe://cluster.local/ns/shop/sa/client",
    ),
    ("source_app", "client-app"),
    ("destination_workload", "web"),
    ("destination_workload_namespace", "shop"),
    (
        "destination_principal",
        "spiffe://cluster.local/ns/shop/sa/web",
    ),
    ("destination_app", "web-app"),
    ("destination_service", "web.shop.svc.cluster.local"),
    ("request_protocol", "tcp"),
    ("connection_security_policy", "mutual_tls"),
    ("response_flags", "-"),
];

#[test]
fn tcp_connection_counters_have_istio_names_labels_and_byte_counts() {
    let metrics = Metrics::new();
    let labels = outbound_labels();

    let conn = metrics.connection_opened(&labels);
    conn.add_received(100);
    conn.add_received(28);
    conn.add_sent(512);
    // Bytes are visible while the connection is still open (bumped as they flow).
    let open = samples(&metrics.render());
    let sent = one(&open, "istio_tcp_sent_bytes_total", ("reporter", "source"));
    assert_eq!(sent.labels, pairs(OUTBOUND_TCP));
    assert_eq!(sent.value, "512");
    assert_eq!(
        one(
            &open,
            "istio_tcp_received_bytes_total",
            ("reporter", "source")
        )
        .value,
        "128"
    );
    assert_eq!(
        one(
            &open,
            "istio_tcp_connections_opened_total",
            ("reporter", "source")
        )
        .value,
        "1"
    );
    assert_eq!(
        one(
            &open,
            "istio_tcp_connections_closed_total",
            ("reporter", "source")
        )
        .value,
        "0"
    );
    assert_eq!((conn.bytes_sent(), conn.bytes_received()), (512, 128));
    conn.closed();

    // A second connection with the same labels shares the series; dropping counts as closed.
    let second = metrics.connection_opened(&labels);
    second.add_sent(1);
    drop(second);

    let text = metrics.render();
    let all = samples(&text);
    for (name, value) in [
        ("istio_tcp_connections_opened_total", "2"),
        ("istio_tcp_connections_closed_total", "2"),
        ("istio_tcp_sent_bytes_total", "513"),
        ("istio_tcp_received_bytes_total", "128"),
    ] {
        let s = one(&all, name, ("reporter", "source"));
        assert_eq!(s.labels, pairs(OUTBOUND_TCP), "{name}");
        assert_eq!(s.value, value, "{name}");
        assert!(
            text.contains(&format!("# TYPE {name} counter\n")),
            "{name} type line in\n{text}"
        );
    }
}

#[test]
fn inbound_plaintext_connection_uses_its_own_series() {
    let metrics = Metrics::new();
    let inbound = ConnectionLabels {
        destination_workload: "web".into(),
        connection_security_policy: SecurityPolicy::None,
        response_flags: ResponseFlags::Denied,
        ..ConnectionLabels::new(Reporter::Destination)
    };
    metrics.connection_opened(&outbound_labels()).closed();
    metrics.connection_opened(&inbound).closed();

    let all = samples(&metrics.render());
    let s = one(
        &all,
        "istio_tcp_connections_opened_total",
        ("reporter", "destination"),
    );
    assert_eq!(
        s.labels,
        pairs(&[
            ("reporter", "destination"),
            ("source_workload", "unknown"),
            ("source_workload_namespace", "unknown"),
            ("source_principal", "unknown"),
            ("source_app", "unknown"),
            ("destination_workload", "web"),
            ("destination_workload_namespace", "unknown"),
            ("destination_principal", "unknown"),
            ("destination_app", "unknown"),
            ("destination_service", "unknown"),
            ("request_protocol", "tcp"),
            ("connection_security_policy", "none"),
            ("response_flags", "DENY"),
        ])
    );
    assert_eq!(s.value, "1");
    assert_eq!(
        find(
            &all,
            "istio_tcp_connections_opened_total",
            ("reporter", "source")
        )
        .len(),
        1
    );
}

#[test]
fn requests_carry_response_code_after_request_protocol() {
    let metrics = Metrics::new();
    let http = ConnectionLabels {
        request_protocol: RequestProtocol::Http,
        ..outbound_labels()
    };
    metrics.request(&http, 200, ResponseFlags::None);
    metrics.request(&http, 403, ResponseFlags::None);
    metrics.request(&http, 403, ResponseFlags::None);

    let all = samples(&metrics.render());
    let denied = one(&all, "istio_requests_total", ("response_code", "403"));
    let mut expected = pairs(OUTBOUND_TCP);
    expected[10].1 = "http".into();
    expected.insert(11, ("response_code".into(), "403".into()));
    assert_eq!(denied.labels, expected);
    assert_eq!(denied.value, "2");
    assert_eq!(
        one(&all, "istio_requests_total", ("response_code", "200")).value,
        "1"
    );
    // Requests do not open connections.
    assert!(
        find(
            &all,
            "istio_tcp_connections_opened_total",
            ("reporter", "source")
        )
        .is_empty()
    );
}

#[test]
fn refusals_are_counted_by_reason_and_every_reason_is_exported_from_the_start() {
    let metrics = Metrics::new();
    let reasons = [
        (RefusalReason::Policy, "policy"),
        (RefusalReason::StrictMtls, "strict_mtls"),
        (RefusalReason::NoCertificate, "no_certificate"),
        (RefusalReason::UnknownSource, "unknown_source"),
        (RefusalReason::UnknownDestination, "unknown_destination"),
        (RefusalReason::NoEndpoint, "no_endpoint"),
        (RefusalReason::Loop, "loop"),
        (RefusalReason::UpstreamConnect, "upstream_connect"),
        (RefusalReason::BadRequest, "bad_request"),
        (RefusalReason::TlsHandshake, "tls_handshake"),
    ];
    let fresh = samples(&metrics.render());
    for (reason, name) in reasons {
        assert_eq!(reason.as_str(), name);
        assert_eq!(reason.to_string(), name);
        let s = one(
            &fresh,
            "nodemesh_connections_refused_total",
            ("reason", name),
        );
        assert_eq!(s.labels, pairs(&[("reason", name)]));
        assert_eq!(s.value, "0");
    }

    metrics.refused(RefusalReason::StrictMtls);
    metrics.refused(RefusalReason::StrictMtls);
    metrics.refused(RefusalReason::NoEndpoint);
    let all = samples(&metrics.render());
    for (_, name) in reasons {
        let expected = match name {
            "strict_mtls" => "2",
            "no_endpoint" => "1",
            _ => "0",
        };
        assert_eq!(
            one(&all, "nodemesh_connections_refused_total", ("reason", name)).value,
            expected,
            "{name}"
        );
    }
}

#[test]
fn policy_decisions_certificates_and_compile_errors() {
    let metrics = Metrics::new();
    metrics.policy_decision("deny", Some("shop/deny-admin"));
    metrics.policy_decision("deny", Some("shop/deny-admin"));
    metrics.policy_decision("allow", None);
    metrics.certificate_expiry("spiffe://cluster.local/ns/shop/sa/web", 1_700_000_000.0);
    metrics.certificate_expiry("spiffe://cluster.local/ns/shop/sa/client", 1_700_000_500.0);
    metrics.certificate_expiry("spiffe://cluster.local/ns/shop/sa/web", 1_700_086_400.0);
    metrics.policy_compile_errors(2);

    let text = metrics.render();
    let all = samples(&text);
    let deny = one(&all, "nodemesh_policy_decisions_total", ("verdict", "deny"));
    assert_eq!(
        deny.labels,
        pairs(&[("verdict", "deny"), ("policy", "shop/deny-admin")])
    );
    assert_eq!(deny.value, "2");
    let allow = one(
        &all,
        "nodemesh_policy_decisions_total",
        ("verdict", "allow"),
    );
    assert_eq!(allow.labels, pairs(&[("verdict", "allow"), ("policy", "")]));
    assert_eq!(allow.value, "1");

    let web = one(
        &all,
        "nodemesh_certificate_expiry_timestamp_seconds",
        ("identity", "spiffe://cluster.local/ns/shop/sa/web"),
    );
    assert_eq!(web.value, "1700086400");
    assert!(text.contains("# TYPE nodemesh_certificate_expiry_timestamp_seconds gauge\n"));
    assert_eq!(
        one(&all, "nodemesh_policy_compile_errors", ("", "")).value,
        "2"
    );

    // A workload that leaves takes its certificate gauge with it.
    metrics.remove_certificate("spiffe://cluster.local/ns/shop/sa/web");
    let all = samples(&metrics.render());
    assert!(
        find(
            &all,
            "nodemesh_certificate_expiry_timestamp_seconds",
            ("identity", "spiffe://cluster.local/ns/shop/sa/web"),
        )
        .is_empty()
    );
    assert_eq!(
        one(
            &all,
            "nodemesh_certificate_expiry_timestamp_seconds",
            ("identity", "spiffe://cluster.local/ns/shop/sa/client"),
        )
        .value,
        "1700000500"
    );
    metrics.remove_certificate("spiffe://cluster.local/ns/shop/sa/client");
    assert!(
        !metrics
            .render()
            .contains("nodemesh_certificate_expiry_timestamp_seconds")
    );
}

#[test]
fn label_values_are_escaped() {
    let metrics = Metrics::new();
    let odd = ConnectionLabels {
        destination_service: Arc::from("a\"b\\c"),
        ..ConnectionLabels::new(Reporter::Source)
    };
    metrics.connection_opened(&odd).closed();
    metrics.certificate_expiry("x\"y", 1.0);
    let text = metrics.render();
    assert!(text.contains(r#"destination_service="a\"b\\c""#), "{text}");
    assert!(text.contains(r#"identity="x\"y""#), "{text}");
    let all = samples(&text);
    assert_eq!(
        one(
            &all,
            "istio_tcp_connections_opened_total",
            ("destination_service", "a\"b\\c")
        )
        .value,
        "1"
    );
}

#[test]
fn two_proxies_in_one_process_are_independent() {
    let a = Metrics::new();
    let b = Metrics::new();
    let conn = a.connection_opened(&outbound_labels());
    conn.add_sent(7);
    a.refused(RefusalReason::Loop);
    a.certificate_expiry("spiffe://cluster.local/ns/a/sa/a", 5.0);

    let b_text = b.render();
    assert!(!b_text.contains("istio_tcp"), "{b_text}");
    assert!(!b_text.contains("nodemesh_certificate_expiry"), "{b_text}");
    let b_all = samples(&b_text);
    assert_eq!(
        one(
            &b_all,
            "nodemesh_connections_refused_total",
            ("reason", "loop")
        )
        .value,
        "0"
    );

    b.connection_opened(&outbound_labels()).add_sent(1000);
    let a_all = samples(&a.render());
    assert_eq!(
        one(&a_all, "istio_tcp_sent_bytes_total", ("reporter", "source")).value,
        "7"
    );
    assert_eq!(
        one(
            &a_all,
            "nodemesh_connections_refused_total",
            ("reason", "loop")
        )
        .value,
        "1"
    );
    // Clones share one set of metrics.
    let a2 = a.clone();
    a2.refused(RefusalReason::Loop);
    assert_eq!(
        one(
            &samples(&a.render()),
            "nodemesh_connections_refused_total",
            ("reason", "loop")
        )
        .value,
        "2"
    );
}
