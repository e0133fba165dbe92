//! The label vocabulary of Istio's metrics (and of the flow log's reasons): who reports, the
//! protocol, the security policy, response flags, refusal reasons, and a connection's labels.

use std::fmt;
use std::sync::Arc;

use metrics::{Label, SharedString};

/// The value Istio reports for a label it does not know.
pub const UNKNOWN: &str = "unknown";

/// Which side of the connection reports the metric (Istio's `reporter` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The proxy on the client's node (outbound).
    Source,
    /// The proxy on the server's node (inbound).
    Destination,
}

impl Reporter {
    /// `"source"` or `"destination"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// Istio's `request_protocol` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    /// Opaque TCP.
    Tcp,
    /// HTTP/1.1 or HTTP/2.
    Http,
    /// gRPC.
    Grpc,
}

impl RequestProtocol {
    /// `"tcp"`, `"http"` or `"grpc"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Tcp => "tcp",
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
        }
    }
}

/// Istio's `connection_security_policy` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// Carried inside mutual TLS (HBONE).
    MutualTls,
    /// Plain text (passthrough or permissive inbound).
    None,
}

impl SecurityPolicy {
    /// `"mutual_tls"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::None => "none",
        }
    }
}

/// Istio's `response_flags` label: one vocabulary for connections (L4, ztunnel's names) and HTTP
/// requests (L7, Envoy's short names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    /// Nothing special: `-`.
    None,
    /// L4: denied by an authorization policy: `DENY`.
    Denied,
    /// L4: connecting upstream failed: `CONNECT`.
    ConnectFailure,
    /// L7: connecting to the pod failed: `UF`.
    UpstreamConnectFailure,
    /// L7: the pod's connection failed mid-request: `UC`.
    UpstreamConnectionTermination,
    /// L7: the pod switched protocols without being asked: `UPE`.
    UpstreamProtocolError,
    /// L7: the client left before the response ended: `DC`.
    DownstreamConnectionTermination,
    /// L7: the pod did not answer within the upstream timeout (answered 504): `UT`.
    UpstreamRequestTimeout,
    /// L7: the client paused inside its request body past the body timeout: `SI`.
    StreamIdleTimeout,
}

impl ResponseFlags {
    /// The label value: `"-"`, `"DENY"`, `"CONNECT"`, `"UF"`, `"UC"`, `"UPE"`, `"DC"`, `"UT"` or `"SI"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::Denied => "DENY",
            ResponseFlags::ConnectFailure => "CONNECT",
            ResponseFlags::UpstreamConnectFailure => "UF",
            ResponseFlags::UpstreamConnectionTermination => "UC",
            ResponseFlags::UpstreamProtocolError => "UPE",
            ResponseFlags::DownstreamConnectionTermination => "DC",
            ResponseFlags::UpstreamRequestTimeout => "UT",
            ResponseFlags::StreamIdleTimeout => "SI",
        }
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ResponseFlags {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Why a connection was refused (`nodemesh_connections_refused_total{reason}` and the flow log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// An authorization policy denied it.
    Policy,
    /// Plain text to a workload in a STRICT namespace.
    StrictMtls,
    /// The workload's certificate is missing or expired.
    NoCertificate,
    /// The source is not a local mesh workload.
    UnknownSource,
    /// The destination is in a pod CIDR but is no known workload.
    UnknownDestination,
    /// A Service with no ready endpoint.
    NoEndpoint,
    /// A Service VIP on a port the Service does not declare.
    UndeclaredServicePort,
    /// The original destination is one of the proxy's own listeners.
    Loop,
    /// Connecting to the upstream (pod or peer proxy) failed.
    UpstreamConnect,
    /// A malformed request (for example a CONNECT authority that is not the local IP).
    BadRequest,
    /// The TLS handshake failed.
    TlsHandshake,
    /// The proxy failed itself (for example, it could not build a request).
    Internal,
    /// An open connection that a change of policy or workloads no longer allows was closed.
    PolicyChanged,
    /// Connecting to the upstream (pod or peer proxy) took longer than the connect deadline.
    ConnectTimeout,
    /// A connection cap (per listener, per source, handshakes, memory budget) was reached.
    Overloaded,
    /// A NetworkPolicy or ClusterNetworkPolicy denied it.
    NetworkPolicy,
}

impl RefusalReason {
    /// Every reason, in declaration order.
    pub const ALL: [RefusalReason; 16] = [
        RefusalReason::Policy,
        RefusalReason::StrictMtls,
        RefusalReason::NoCertificate,
        RefusalReason::UnknownSource,
        RefusalReason::UnknownDestination,
        RefusalReason::NoEndpoint,
        RefusalReason::UndeclaredServicePort,
        RefusalReason::Loop,
        RefusalReason::UpstreamConnect,
        RefusalReason::BadRequest,
        RefusalReason::TlsHandshake,
        RefusalReason::Internal,
        RefusalReason::PolicyChanged,
        RefusalReason::ConnectTimeout,
        RefusalReason::Overloaded,
        RefusalReason::NetworkPolicy,
    ];

    /// The label value, for example `"strict_mtls"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Policy => "policy",
            RefusalReason::StrictMtls => "strict_mtls",
            RefusalReason::NoCertificate => "no_certificate",
            RefusalReason::UnknownSource => "unknown_source",
            RefusalReason::UnknownDestination => "unknown_destination",
            RefusalReason::NoEndpoint => "no_endpoint",
            RefusalReason::UndeclaredServicePort => "undeclared_service_port",
            RefusalReason::Loop => "loop",
            RefusalReason::UpstreamConnect => "upstream_connect",
            RefusalReason::BadRequest => "bad_request",
            RefusalReason::TlsHandshake => "tls_handshake",
            RefusalReason::Internal => "internal",
            RefusalReason::PolicyChanged => "policy_changed",
            RefusalReason::ConnectTimeout => "connect_timeout",
            RefusalReason::Overloaded => "overloaded",
            RefusalReason::NetworkPolicy => "network_policy",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Istio labels of one connection. Text fields default to `"unknown"`; build with struct
/// update syntax: `ConnectionLabels { source_workload: "a".into(), ..ConnectionLabels::new(r) }`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionLabels {
    /// Which proxy reports.
    pub reporter: Reporter,
    /// The client's workload name.
    pub source_workload: Arc<str>,
    /// The client's namespace.
    pub source_workload_namespace: Arc<str>,
    /// The client's SPIFFE ID.
    pub source_principal: Arc<str>,
    /// The client's `app` label.
    pub source_app: Arc<str>,
    /// The server's workload name.
    pub destination_workload: Arc<str>,
    /// The server's namespace.
    pub destination_workload_namespace: Arc<str>,
    /// The server's SPIFFE ID.
    pub destination_principal: Arc<str>,
    /// The server's `app` label.
    pub destination_app: Arc<str>,
    /// The Service host called, e.g. `web.shop.svc.cluster.local`.
    pub destination_service: Arc<str>,
    /// TCP, HTTP or gRPC.
    pub request_protocol: RequestProtocol,
    /// Mutual TLS or none.
    pub connection_security_policy: SecurityPolicy,
    /// Istio response flags.
    pub response_flags: ResponseFlags,
}

impl ConnectionLabels {
    /// Labels with every text field `"unknown"`, TCP, mutual TLS and no response flags.
    pub fn new(reporter: Reporter) -> Self {
        let unknown: Arc<str> = Arc::from(UNKNOWN);
        ConnectionLabels {
            reporter,
            source_workload: unknown.clone(),
            source_workload_namespace: unknown.clone(),
            source_principal: unknown.clone(),
            source_app: unknown.clone(),
            destination_workload: unknown.clone(),
            destination_workload_namespace: unknown.clone(),
            destination_principal: unknown.clone(),
            destination_app: unknown.clone(),
            destination_service: unknown,
            request_protocol: RequestProtocol::Tcp,
            connection_security_policy: SecurityPolicy::MutualTls,
            response_flags: ResponseFlags::None,
        }
    }

    /// The labels in Istio's order, with `response_code` after `request_protocol` when given.
    pub(super) fn to_labels(&self, response_code: Option<u16>) -> Vec<Label> {
        self.to_labels_with(response_code, self.response_flags)
    }

    /// [`ConnectionLabels::to_labels`] with other response flags (a request's own).
    pub(super) fn to_labels_with(
        &self,
        response_code: Option<u16>,
        response_flags: ResponseFlags,
    ) -> Vec<Label> {
        fn shared(value: &Arc<str>) -> SharedString {
            SharedString::from(value.clone())
        }
        let mut labels = Vec::with_capacity(14);
        labels.push(Label::from_static_parts("reporter", self.reporter.as_str()));
        labels.push(Label::new("source_workload", shared(&self.source_workload)));
        labels.push(Label::new(
            "source_workload_namespace",
            shared(&self.source_workload_namespace),
        ));
        labels.push(Label::new(
            "source_principal",
            shared(&self.source_principal),
        ));
        labels.push(Label::new("source_app", shared(&self.source_app)));
        labels.push(Label::new(
            "destination_workload",
            shared(&self.destination_workload),
        ));
        labels.push(Label::new(
            "destination_workload_namespace",
            shared(&self.destination_workload_namespace),
        ));
        labels.push(Label::new(
            "destination_principal",
            shared(&self.destination_principal),
        ));
        labels.push(Label::new("destination_app", shared(&self.destination_app)));
        labels.push(Label::new(
            "destination_service",
            shared(&self.destination_service),
        ));
        labels.push(Label::from_static_parts(
            "request_protocol",
            self.request_protocol.as_str(),
        ));
        if let Some(code) = response_code {
            labels.push(Label::new("response_code", code.to_string()));
        }
        labels.push(Label::from_static_parts(
            "connection_security_policy",
            self.connection_security_policy.as_str(),
        ));
        labels.push(Label::from_static_parts(
            "response_flags",
            response_flags.as_str(),
        ));
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_reasons_index_matches_all() {
        for (i, reason) in RefusalReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }
}
