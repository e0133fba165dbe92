//! The inbound L7 request path without sockets: the first bytes of a tunnelled stream are sniffed,
//! parsed as an HTTP/1 request the way hyper does (httparse, then `http` types), and taken
//! through the steps `serve_l7` runs on each request: the authority, the policy decision, and
//! for allowed requests the request sent to the pod. Each input is also replayed as the h2c
//! request an HTTP/2 client would send for it (`:authority` from `Host`, version 2).
//!
//! Input: raw bytes of the stream (seeds in `fuzz/seeds/l7_request/` are plain requests).
//!
//! Checked: the sniffer's verdict never changes once given, as more bytes arrive; refusals are
//! `bad request` answers; and what the pod receives is what the policy decided on: its path is
//! normalized, deciding the upstream request again (its own authority, its own headers) gives
//! the same verdict and policy, its `Host`/`:authority` equals the authority the policy
//! matched, and no hop-by-hop header (or one named in `Connection`) reaches it.

#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, LazyLock};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use nodemesh_identity::SpiffeId;
use nodemesh_policy::load::load_texts;
use nodemesh_policy::path::normalize;
use nodemesh_policy::{EngineOptions, HttpRequest, PolicySet, Reason, Verdict};
use nodemesh_proxy::l7::fuzzing::{is_websocket_upgrade, raw_path, request_authority, to_upstream};
use nodemesh_proxy::l7::{
    HttpProtocol, L7Context, L7Destination, L7Source, RequestDecision, Sniffed, classify,
};

/// Paths, hosts, methods and a header condition, in ALLOW and DENY.
const POLICY: &str = "\
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET, POST], paths: ['/api/*', '/public'], hosts: ['web.shop', '*.example.com']}}]
  - to: [{operation: {notPaths: ['/api/*', '/admin*'], methods: [GET]}}]
---
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ['/api/admin*', '*/secret']}}]
  - when: [{key: 'request.headers[x-user]', values: [blocked, 'evil*']}]
";

static CTX: LazyLock<L7Context> = LazyLock::new(|| {
    let policies = load_texts(&[("l7.yaml".to_owned(), POLICY.to_owned())]).expect("policy loads");
    let set = Arc::new(PolicySet::new(policies, EngineOptions::default()));
    let destination = L7Destination {
        namespace: "shop".into(),
        labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)),
        port: 8080,
    };
    let source = L7Source {
        principal: SpiffeId::new("spiffe://cluster.local/ns/shop/sa/client").ok(),
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)),
    };
    L7Context::new(set, destination, source)
});

/// The request hyper would hand the service for `data`, if it parses.
fn parse_h1(data: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = req.parse(data).ok()? else {
        return None;
    };
    let mut b = Request::builder()
        .method(Method::from_bytes(req.method?.as_bytes()).ok()?)
        .uri(Uri::try_from(req.path?).ok()?)
        .version(if req.version? == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        });
    for h in req.headers.iter() {
        b = b.header(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    b.body(()).ok()
}

/// The same request as an h2c client would send it: `:authority` from `Host`.
fn as_h2(mut req: Request<()>) -> Request<()> {
    *req.version_mut() = Version::HTTP_2;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    if let Some(host) = host
        && req.uri().authority().is_none()
        && let Ok(uri) = Uri::try_from(format!("http://{host}{}", raw_path(req.uri())))
    {
        *req.uri_mut() = uri;
        req.headers_mut().remove(header::HOST);
    }
    req
}

fn decide(req: &Request<()>, host: &str) -> RequestDecision {
    CTX.decide_request(&HttpRequest {
        method: req.method().as_str(),
        path: raw_path(req.uri()),
        host,
        headers: req.headers(),
    })
}

fn serve(req: Request<()>, protocol: HttpProtocol) {
    let authority = match request_authority(&req) {
        Ok(a) => a,
        Err(body) => {
            assert!(body.starts_with("bad request: "), "{body}");
            return;
        }
    };
    let decision = decide(&req, &authority);
    if matches!(decision.reason, Reason::InvalidPath(_)) {
        assert!(normalize(raw_path(req.uri()), decision.path).is_err());
    }
    if decision.verdict == Verdict::Deny {
        return;
    }
    let websocket = protocol == HttpProtocol::Http1 && is_websocket_upgrade(req.headers());
    let named: Vec<HeaderName> = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let Some(up) = to_upstream(req, protocol, websocket, &authority, &CTX, decision.path) else {
        return;
    };
    let sent = raw_path(up.uri());
    assert_eq!(
        normalize(sent, decision.path).as_deref(),
        Ok(up.uri().path()),
        "{sent}"
    );
    let up_authority = request_authority(&up).expect("the upstream request is well-formed");
    if !authority.is_empty() {
        assert!(
            up_authority.eq_ignore_ascii_case(&authority),
            "{up_authority} vs {authority}"
        );
        assert_eq!(decide(&up, &up_authority), decision, "{up:?}");
    } else if protocol == HttpProtocol::H2c {
        assert_eq!(up_authority, "10.0.2.2:8080", "the pod's address stands in");
    }
    let h = up.headers();
    for name in [
        header::TRANSFER_ENCODING,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        assert!(!h.contains_key(&name), "{name} reaches the pod");
    }
    assert!(
        h.get(header::TE)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    );
    if websocket {
        assert_eq!(h.get_all(header::CONNECTION).iter().count(), 1);
        assert!(h.contains_key(header::UPGRADE));
    } else {
        assert!(!h.contains_key(header::CONNECTION) && !h.contains_key(header::UPGRADE));
    }
    for name in named {
        let kept = websocket && (name == header::UPGRADE || name == header::CONNECTION);
        assert!(
            kept || !h.contains_key(&name),
            "{name}, named in Connection, reaches the pod"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let sniffed = classify(data);
    for n in 0..data.len().min(64) {
        let early = classify(&data[..n]);
        assert!(
            early == Sniffed::NeedMore || early == sniffed,
            "{early:?} at {n}, then {sniffed:?}"
        );
    }
    let Some(req) = parse_h1(data) else {
        return;
    };
    if sniffed == Sniffed::Http1 {
        serve(req.clone(), HttpProtocol::Http1);
    }
    serve(as_h2(req), HttpProtocol::H2c);
});
