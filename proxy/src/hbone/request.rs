//! What an HBONE CONNECT request must look like, checked without I/O.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};

/// Why a CONNECT request is refused, with the status it is answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadRequest {
    /// Not a CONNECT.
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    /// The authority is not `ip:port`.
    #[error("authority {0:?} is not <ip>:<port>")]
    BadAuthority(String),
    /// The authority's IP is not the address the connection arrived on.
    #[error("authority IP {authority} differs from the connection's destination {local}")]
    WrongDestination {
        /// From `:authority`.
        authority: IpAddr,
        /// The accepted socket's local IP.
        local: IpAddr,
    },
}

impl BadRequest {
    /// Always `400 Bad Request`.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

/// Checks a CONNECT request that arrived on a connection to `local`: returns the target
/// `pod-ip:port`.
pub fn check_connect<B>(req: &Request<B>, local: IpAddr) -> Result<SocketAddr, BadRequest> {
    if req.method() != Method::CONNECT {
        return Err(BadRequest::NotConnect(req.method().to_string()));
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .unwrap_or_default();
    let target: SocketAddr = authority
        .parse()
        .map_err(|_| BadRequest::BadAuthority(authority.to_owned()))?;
    if target.port() == 0 {
        return Err(BadRequest::BadAuthority(authority.to_owned()));
    }
    if target.ip() != local {
        return Err(BadRequest::WrongDestination {
            authority: target.ip(),
            local,
        });
    }
    Ok(target)
}

/// The client's address from `forwarded: for="ip:port"`, if present and well-formed.
pub fn forwarded_for(headers: &HeaderMap) -> Option<SocketAddr> {
    let value = headers.get("forwarded")?.to_str().ok()?;
    value.split([';', ',']).find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"').parse().ok())?
    })
}

/// Who is calling, for the CONNECT's metadata headers.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The client pod's address.
    pub addr: SocketAddr,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its pod name.
    pub workload: &'a str,
}

/// Builds the CONNECT request for `target` with ztunnel's headers.
pub fn connect_request(
    target: SocketAddr,
    caller: &Caller<'_>,
) -> Result<Request<()>, http::Error> {
    let mut builder = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .version(http::Version::HTTP_2);
    if let Ok(v) = HeaderValue::from_str(&format!("for=\"{}\"", caller.addr)) {
        builder = builder.header("forwarded", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "k8s.namespace.name={},k8s.pod.name={}",
        caller.namespace, caller.workload
    )) {
        builder = builder.header("baggage", v);
    }
    let trace: u128 = rand::random();
    let span: u64 = rand::random();
    if let Ok(v) = HeaderValue::from_str(&format!("00-{trace:032x}-{span:016x}-01")) {
        builder = builder.header("traceparent", v);
    }
    builder.body(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    #[test]
    fn connect_checks() {
        let local: IpAddr = "10.0.1.5".parse().unwrap();
        assert_eq!(
            check_connect(&req(Method::CONNECT, "10.0.1.5:8080"), local),
            Ok("10.0.1.5:8080".parse().unwrap())
        );
        assert!(matches!(
            check_connect(&req(Method::GET, "/x"), local),
            Err(BadRequest::NotConnect(_))
        ));
        assert!(matches!(
            check_connect(&req(Method::CONNECT, "web.shop:80"), local),
            Err(BadRequest::BadAuthority(_))
        ));
        assert!(matches!(
            check_connect(&req(Method::CONNECT, "10.0.1.5:0"), local),
            Err(BadRequest::BadAuthority(_))
        ));
        assert!(matches!(
            check_connect(&req(Method::CONNECT, "10.0.1.6:80"), local),
            Err(BadRequest::WrongDestination { .. })
        ));
    }

    #[test]
    fn connect_request_carries_ztunnel_headers() {
        let caller = Caller {
            addr: "10.0.1.7:4000".parse().unwrap(),
            namespace: "shop",
            workload: "web-1",
        };
        let r = connect_request("10.0.2.5:80".parse().unwrap(), &caller).unwrap();
        assert_eq!(r.method(), Method::CONNECT);
        assert_eq!(r.uri().authority().unwrap().as_str(), "10.0.2.5:80");
        assert_eq!(forwarded_for(r.headers()), Some(caller.addr));
        assert_eq!(
            r.headers()["baggage"],
            "k8s.namespace.name=shop,k8s.pod.name=web-1"
        );
        assert_eq!(r.headers()["traceparent"].len(), 55);
    }
}
