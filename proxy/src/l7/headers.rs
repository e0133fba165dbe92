//! The HTTP parts of forwarding a request to the pod: its target and authority as sent, the
//! WebSocket upgrade test, hop-by-hop headers, the upstream request.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Version};
use nodemesh_policy::path::normalize;

use super::context::L7Context;
use super::sniff::HttpProtocol;

/// The request target's path and query as sent (empty for authority-form).
pub fn raw_path(uri: &Uri) -> &str {
    uri.path_and_query().map_or("", PathAndQuery::as_str)
}

/// `:authority` / the absolute-form authority, else `Host`. Refused (with the reason, the body
/// of the `400`): an HTTP/1.1 request without `Host` (RFC 9112 §3.2), several `Host` headers, an
/// unreadable one, or one that differs from the authority (the policy and the pod would then
/// read different hosts).
pub fn request_authority<B>(req: &Request<B>) -> Result<String, &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("bad request: several Host headers");
    }
    let host = match host {
        Some(v) => Some(v.to_str().map_err(|_| "bad request: invalid Host")?),
        None if req.version() == Version::HTTP_11 => {
            return Err("bad request: HTTP/1.1 request without Host");
        }
        None => None,
    };
    match (req.uri().authority(), host) {
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h) => {
            Err("bad request: Host differs from the request target's authority")
        }
        (Some(a), _) => Ok(a.as_str().to_owned()),
        (None, Some(h)) => Ok(h.to_owned()),
        (None, None) => Ok(String::new()),
    }
}

/// Whether `value` (a comma-separated header) lists `token`, case-insensitively.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An HTTP/1 WebSocket upgrade request. Other upgrades (h2c above all, which would carry
/// requests past policy) are not honoured: their headers are stripped.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket")
}

/// Removes hop-by-hop headers; with `keep_upgrade`, keeps what a WebSocket upgrade needs.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(keep_upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The request as sent to the pod: the normalized path (so the pod acts on what the policy
/// decided on), hop-by-hop headers removed, origin-form for HTTP/1 and absolute for h2.
pub fn to_upstream<B>(
    req: Request<B>,
    protocol: HttpProtocol,
    websocket: bool,
    authority: &str,
    ctx: &L7Context,
    path_options: nodemesh_policy::PathOptions,
) -> Option<Request<B>> {
    let (mut parts, body) = req.into_parts();
    let normalized = normalize(raw_path(&parts.uri), path_options).ok()?;
    // Reused only in origin-form: an absolute-form target without a path keeps an empty path,
    // which an origin-form URI would write as an empty request target.
    let path_and_query = if normalized == parts.uri.path() && parts.uri.scheme().is_none() {
        parts.uri.path_and_query().cloned()?
    } else {
        let rebuilt = match parts.uri.query() {
            Some(q) => format!("{normalized}?{q}"),
            None => normalized.into_owned(),
        };
        PathAndQuery::try_from(rebuilt).ok()?
    };
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(path_and_query);
    match protocol {
        HttpProtocol::Http1 => {
            if !parts.headers.contains_key(header::HOST) && !authority.is_empty() {
                parts
                    .headers
                    .insert(header::HOST, HeaderValue::from_str(authority).ok()?);
            }
        }
        HttpProtocol::H2c => {
            uri.scheme = Some(parts.uri.scheme().cloned().unwrap_or(Scheme::HTTP));
            uri.authority = Some(match parts.uri.authority() {
                Some(a) => a.clone(),
                None if !authority.is_empty() => Authority::try_from(authority).ok()?,
                None => {
                    // No authority and an empty (or no) Host: the pod's address stands in, and
                    // an empty Host would contradict it.
                    parts.headers.remove(header::HOST);
                    let d = &ctx.destination;
                    Authority::try_from(std::net::SocketAddr::new(d.ip, d.port).to_string()).ok()?
                }
            });
        }
    }
    parts.uri = Uri::from_parts(uri).ok()?;
    strip_hop_by_hop(&mut parts.headers, websocket);
    Some(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn websocket_upgrade_needs_both_headers() {
        assert!(is_websocket_upgrade(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket")
        ])));
        assert!(!is_websocket_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!is_websocket_upgrade(&headers(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c")
        ])));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);

        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get("connection").map(HeaderValue::as_bytes),
            Some(&b"upgrade"[..])
        );
        assert_eq!(
            h.get("upgrade").map(HeaderValue::as_bytes),
            Some(&b"websocket"[..])
        );
        assert!(h.contains_key("te"));
    }

    fn request(uri: &str, hosts: &[&str]) -> Request<()> {
        request_in(Version::HTTP_11, uri, hosts)
    }

    fn request_in(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn authority_comes_from_the_uri_or_the_single_host() {
        assert_eq!(
            request_authority(&request("/x", &["web.shop"])).as_deref(),
            Ok("web.shop")
        );
        assert_eq!(
            request_authority(&request("http://web.shop/x", &["WEB.shop"])).as_deref(),
            Ok("web.shop")
        );
        assert_eq!(
            request_authority(&request("/x", &["a", "b"])),
            Err("bad request: several Host headers")
        );
        assert_eq!(
            request_authority(&request("http://a/x", &["b"])),
            Err("bad request: Host differs from the request target's authority")
        );
    }

    fn context() -> L7Context {
        let set = std::sync::Arc::new(nodemesh_policy::PolicySet::new(
            Vec::new(),
            nodemesh_policy::EngineOptions::default(),
        ));
        let destination = super::super::L7Destination {
            namespace: "shop".into(),
            labels: std::collections::BTreeMap::new(),
            ip: std::net::Ipv4Addr::new(10, 0, 2, 2).into(),
            port: 8080,
        };
        let source = super::super::L7Source {
            principal: None,
            ip: std::net::Ipv4Addr::new(10, 0, 1, 1).into(),
        };
        L7Context::new(set, destination, source)
    }

    /// Found by the `l7_request` fuzz target: an h2c request with an empty `Host` and no
    /// `:authority` reached the pod with the pod's address as `:authority` and `Host: ""`.
    #[test]
    fn h2c_without_authority_sends_the_pod_one_authority() {
        let req = request_in(Version::HTTP_2, "/chat", &[""]);
        assert_eq!(request_authority(&req).as_deref(), Ok(""));
        let up = to_upstream(
            req,
            HttpProtocol::H2c,
            false,
            "",
            &context(),
            Default::default(),
        )
        .expect("forwarded");
        assert_eq!(up.uri().to_string(), "http://10.0.2.2:8080/chat");
        assert!(!up.headers().contains_key(header::HOST));
        assert_eq!(request_authority(&up).as_deref(), Ok("10.0.2.2:8080"));
    }

    /// Found by the `l7_request` fuzz target: `GET http://web.shop#top HTTP/1.1` (no path,
    /// only a fragment) was decided as `/` but sent to the pod with an empty request target.
    #[test]
    fn absolute_form_without_a_path_is_sent_as_slash() {
        let req = request("http://web.shop#top", &["web.shop"]);
        let up = to_upstream(
            req,
            HttpProtocol::Http1,
            false,
            "web.shop",
            &context(),
            Default::default(),
        )
        .expect("forwarded");
        assert_eq!(up.uri().to_string(), "/");
    }

    #[test]
    fn http_1_1_needs_a_host_and_others_do_not() {
        let missing = Err("bad request: HTTP/1.1 request without Host");
        assert_eq!(request_authority(&request("/x", &[])), missing);
        assert_eq!(request_authority(&request("http://a/x", &[])), missing);
        let old = request_in(Version::HTTP_10, "/x", &[]);
        assert_eq!(request_authority(&old).as_deref(), Ok(""));
        let h2 = request_in(Version::HTTP_2, "http://web.shop/x", &[]);
        assert_eq!(request_authority(&h2).as_deref(), Ok("web.shop"));
    }
}
