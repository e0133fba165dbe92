//! A flow-log line: one per connection (and per HTTP request under L7), and its JSON form.
//!
//! A line looks like this (`method`, `path` and `status` only on HTTP records):
//!
//! ```json
//! {"time":"2025-01-02T03:04:05.678Z","direction":"inbound",
//!  "src":{"workload":"client","namespace":"shop","identity":"spiffe://cluster.local/ns/shop/sa/client","ip":"10.0.1.5","port":40312},
//!  "dst":{"workload":"web","namespace":"shop","identity":"spiffe://cluster.local/ns/shop/sa/web","ip":"10.0.2.7","port":8080},
//!  "service":"web.shop.svc.cluster.local","verdict":"allow","policy":"shop/allow-client","reason":null,
//!  "bytes_sent":512,"bytes_received":128,"duration_ms":12}
//! ```
//!
//! `bytes_sent` is what went to the client, `bytes_received` what came from it (as in Istio's
//! `istio_tcp_sent_bytes_total` / `istio_tcp_received_bytes_total`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::labels::RefusalReason;

/// Which way the connection went through this proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards a local workload.
    Inbound,
    /// From a local workload.
    Outbound,
}

/// What happened to the connection or request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowVerdict {
    /// Allowed (by policy, or no policy applies).
    Allow,
    /// Denied by an AuthorizationPolicy or a NetworkPolicy (see `reason`).
    Deny,
    /// Refused before policy (see `reason`).
    Refused,
    /// Plain TCP to a destination outside the mesh.
    Passthrough,
}

/// One side of a flow; every field may be unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowEndpoint {
    /// Workload name.
    pub workload: Option<Arc<str>>,
    /// Namespace.
    pub namespace: Option<Arc<str>>,
    /// SPIFFE ID.
    pub identity: Option<Arc<str>>,
    /// IP address.
    pub ip: Option<IpAddr>,
    /// Port.
    pub port: Option<u16>,
}

/// The HTTP part of a per-request record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpFlow {
    /// Request method.
    pub method: String,
    /// Request path (as received).
    pub path: String,
    /// Response status sent to the client.
    pub status: u16,
}

/// One flow-log line.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowRecord {
    /// When the connection (or request) started.
    pub time: SystemTime,
    /// Inbound or outbound.
    pub direction: Direction,
    /// The client.
    pub src: FlowEndpoint,
    /// The server.
    pub dst: FlowEndpoint,
    /// The Service host called, if any.
    pub service: Option<Arc<str>>,
    /// What happened.
    pub verdict: FlowVerdict,
    /// The deciding policy (`namespace/name`), if any.
    pub policy: Option<Arc<str>>,
    /// Why it was refused, if it was.
    pub reason: Option<RefusalReason>,
    /// Bytes sent to the client.
    pub bytes_sent: u64,
    /// Bytes received from the client.
    pub bytes_received: u64,
    /// How long it lasted.
    pub duration: Duration,
    /// Method, path and status for a per-request record.
    pub http: Option<HttpFlow>,
}

impl FlowRecord {
    /// A record starting now with unknown endpoints and zero bytes.
    pub fn new(direction: Direction, verdict: FlowVerdict) -> Self {
        FlowRecord {
            time: SystemTime::now(),
            direction,
            src: FlowEndpoint::default(),
            dst: FlowEndpoint::default(),
            service: None,
            verdict,
            policy: None,
            reason: None,
            bytes_sent: 0,
            bytes_received: 0,
            duration: Duration::ZERO,
            http: None,
        }
    }

    /// The JSON line (without the newline).
    pub fn to_json(&self) -> String {
        let line = Line::from(self);
        serde_json::to_string(&line).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    direction: Direction,
    src: EndpointLine<'a>,
    dst: EndpointLine<'a>,
    service: Option<&'a str>,
    verdict: FlowVerdict,
    policy: Option<&'a str>,
    reason: Option<&'static str>,
    bytes_sent: u64,
    bytes_received: u64,
    duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
}

#[derive(Serialize)]
struct EndpointLine<'a> {
    workload: Option<&'a str>,
    namespace: Option<&'a str>,
    identity: Option<&'a str>,
    ip: Option<IpAddr>,
    port: Option<u16>,
}

impl<'a> From<&'a FlowEndpoint> for EndpointLine<'a> {
    fn from(e: &'a FlowEndpoint) -> Self {
        EndpointLine {
            workload: e.workload.as_deref(),
            namespace: e.namespace.as_deref(),
            identity: e.identity.as_deref(),
            ip: e.ip,
            port: e.port,
        }
    }
}

impl<'a> From<&'a FlowRecord> for Line<'a> {
    fn from(r: &'a FlowRecord) -> Self {
        Line {
            time: rfc3339_millis(r.time),
            direction: r.direction,
            src: (&r.src).into(),
            dst: (&r.dst).into(),
            service: r.service.as_deref(),
            verdict: r.verdict,
            policy: r.policy.as_deref(),
            reason: r.reason.map(RefusalReason::as_str),
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
            method: r.http.as_ref().map(|h| h.method.as_str()),
            path: r.http.as_ref().map(|h| h.path.as_str()),
            status: r.http.as_ref().map(|h| h.status),
        }
    }
}

/// Formats `t` as RFC 3339 in UTC with milliseconds, e.g. `2025-01-02T03:04:05.678Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time_with_millis_in_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_735_787_045_678);
        assert_eq!(rfc3339_millis(t), "2025-01-02T03:04:05.678Z");
        assert_eq!(
            rfc3339_millis(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
