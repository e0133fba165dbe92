//! Prometheus metrics with Istio's standard names and labels, plus `nodemesh_*` metrics.
//!
//! Each [`Metrics`] owns its own recorder (nothing global), so several proxies can run in one
//! process. The data path touches only pre-registered counter handles: [`Metrics::connection_opened`]
//! registers a connection's counters once and returns a [`ConnectionMetrics`] whose
//! [`add_sent`](ConnectionMetrics::add_sent) / [`add_received`](ConnectionMetrics::add_received)
//! are atomic adds, called as bytes flow.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

const CONNECTIONS_OPENED: &str = "istio_tcp_connections_opened_total";
const CONNECTIONS_CLOSED: &str = "istio_tcp_connections_closed_total";
const SENT_BYTES: &str = "istio_tcp_sent_bytes_total";
const RECEIVED_BYTES: &str = "istio_tcp_received_bytes_total";
const REQUESTS: &str = "istio_requests_total";
const POLICY_DECISIONS: &str = "nodemesh_policy_decisions_total";
const CERTIFICATE_EXPIRY: &str = "nodemesh_certificate_expiry_timestamp_seconds";
const CONNECTIONS_REFUSED: &str = "nodemesh_connections_refused_total";
const POLICY_COMPILE_ERRORS: &str = "nodemesh_policy_compile_errors";
const FLOW_LOG_DROPPED: &str = "nodemesh_flow_log_dropped_total";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

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

/// Istio's `response_flags` label (the subset a node proxy reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    /// Nothing special: `-`.
    None,
    /// Denied by an authorization policy: `DENY`.
    Denied,
    /// The upstream connection failed: `CONNECT`.
    ConnectFailure,
}

impl ResponseFlags {
    /// `"-"`, `"DENY"` or `"CONNECT"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::Denied => "DENY",
            ResponseFlags::ConnectFailure => "CONNECT",
        }
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
    /// The original destination is one of the proxy's own listeners.
    Loop,
    /// Connecting to the upstream (pod or peer proxy) failed.
    UpstreamConnect,
    /// A malformed request (for example a CONNECT authority that is not the local IP).
    BadRequest,
    /// The TLS handshake failed.
    TlsHandshake,
}

impl RefusalReason {
    /// Every reason, in declaration order.
    pub const ALL: [RefusalReason; 10] = [
        RefusalReason::Policy,
        RefusalReason::StrictMtls,
        RefusalReason::NoCertificate,
        RefusalReason::UnknownSource,
        RefusalReason::UnknownDestination,
        RefusalReason::NoEndpoint,
        RefusalReason::Loop,
        RefusalReason::UpstreamConnect,
        RefusalReason::BadRequest,
        RefusalReason::TlsHandshake,
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
            RefusalReason::Loop => "loop",
            RefusalReason::UpstreamConnect => "upstream_connect",
            RefusalReason::BadRequest => "bad_request",
            RefusalReason::TlsHandshake => "tls_handshake",
        }
    }

    fn index(self) -> usize {
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
    fn to_labels(&self, response_code: Option<u16>) -> Vec<Label> {
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
            self.response_flags.as_str(),
        ));
        labels
    }
}

/// The metrics of one proxy. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    refused: [Counter; RefusalReason::ALL.len()],
    policy_compile_errors: Gauge,
    flow_log_dropped: Counter,
    /// Kept out of the recorder because the recorder cannot forget a series; rendered by hand.
    certificate_expiry: ArcSwap<BTreeMap<String, f64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh, independent set of metrics (no global recorder is installed).
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let refused = RefusalReason::ALL.map(|reason| {
            let key = Key::from_parts(
                CONNECTIONS_REFUSED,
                vec![Label::from_static_parts("reason", reason.as_str())],
            );
            recorder.register_counter(&key, &METADATA)
        });
        let policy_compile_errors =
            recorder.register_gauge(&Key::from_static_name(POLICY_COMPILE_ERRORS), &METADATA);
        policy_compile_errors.set(0.0);
        let flow_log_dropped =
            recorder.register_counter(&Key::from_static_name(FLOW_LOG_DROPPED), &METADATA);
        Metrics {
            inner: Arc::new(Inner {
                recorder,
                handle,
                refused,
                policy_compile_errors,
                flow_log_dropped,
                certificate_expiry: ArcSwap::from_pointee(BTreeMap::new()),
            }),
        }
    }

    /// Counts a connection as opened and registers its counters; bump bytes on the returned
    /// handle as they flow. The connection counts as closed when the handle is dropped (or
    /// [`ConnectionMetrics::closed`] is called).
    pub fn connection_opened(&self, labels: &ConnectionLabels) -> ConnectionMetrics {
        let labels = labels.to_labels(None);
        let recorder = &self.inner.recorder;
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        let opened = counter(CONNECTIONS_OPENED, labels.clone());
        opened.increment(1);
        ConnectionMetrics {
            closed: counter(CONNECTIONS_CLOSED, labels.clone()),
            sent: counter(SENT_BYTES, labels.clone()),
            received: counter(RECEIVED_BYTES, labels),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
        }
    }

    /// Counts one HTTP request (`istio_requests_total`) with its response status.
    pub fn request(&self, labels: &ConnectionLabels, status: u16) {
        let key = Key::from_parts(REQUESTS, labels.to_labels(Some(status)));
        self.inner
            .recorder
            .register_counter(&key, &METADATA)
            .increment(1);
    }

    /// Counts a refused connection.
    pub fn refused(&self, reason: RefusalReason) {
        self.inner.refused[reason.index()].increment(1);
    }

    /// Counts a policy decision, e.g. `("deny", Some("shop/deny-admin"))`. Without a deciding
    /// policy the `policy` label is empty.
    pub fn policy_decision(&self, verdict: &str, policy: Option<&str>) {
        let key = Key::from_parts(
            POLICY_DECISIONS,
            vec![
                Label::new("verdict", verdict.to_owned()),
                Label::new("policy", policy.unwrap_or_default().to_owned()),
            ],
        );
        self.inner
            .recorder
            .register_counter(&key, &METADATA)
            .increment(1);
    }

    /// Sets when `identity`'s certificate expires (seconds since the Unix epoch).
    pub fn certificate_expiry(&self, identity: &str, unix_seconds: f64) {
        self.inner.certificate_expiry.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            next.insert(identity.to_owned(), unix_seconds);
            next
        });
    }

    /// Forgets `identity`'s certificate expiry (the workload left this node).
    pub fn remove_certificate(&self, identity: &str) {
        self.inner.certificate_expiry.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            next.remove(identity);
            next
        });
    }

    /// Sets how many policies failed to compile in the current state.
    pub fn policy_compile_errors(&self, count: usize) {
        self.inner.policy_compile_errors.set(count as f64);
    }

    /// The counter of flow-log lines dropped because the writer fell behind.
    pub fn flow_log_dropped(&self) -> Counter {
        self.inner.flow_log_dropped.clone()
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = self.inner.handle.render();
        let expiry = self.inner.certificate_expiry.load();
        if !expiry.is_empty() {
            let _ = writeln!(
                out,
                "# HELP {CERTIFICATE_EXPIRY} When the workload certificate expires (Unix seconds)."
            );
            let _ = writeln!(out, "# TYPE {CERTIFICATE_EXPIRY} gauge");
            for (identity, seconds) in expiry.iter() {
                let _ = writeln!(
                    out,
                    "{CERTIFICATE_EXPIRY}{{identity=\"{}\"}} {seconds}",
                    escape_label_value(identity)
                );
            }
            out.push('\n');
        }
        out
    }
}

fn describe(recorder: &PrometheusRecorder) {
    let counters = [
        (CONNECTIONS_OPENED, "TCP connections opened."),
        (CONNECTIONS_CLOSED, "TCP connections closed."),
        (SENT_BYTES, "Bytes sent to the client (response direction)."),
        (
            RECEIVED_BYTES,
            "Bytes received from the client (request direction).",
        ),
        (REQUESTS, "HTTP requests seen under L7 enforcement."),
        (POLICY_DECISIONS, "Authorization policy decisions."),
        (CONNECTIONS_REFUSED, "Connections refused, by reason."),
        (
            FLOW_LOG_DROPPED,
            "Flow-log lines dropped because the writer fell behind.",
        ),
    ];
    for (name, help) in counters {
        recorder.describe_counter(name.into(), None, help.into());
    }
    recorder.describe_gauge(
        POLICY_COMPILE_ERRORS.into(),
        None,
        "Policies that failed to compile in the current state.".into(),
    );
}

/// Escapes a Prometheus label value (backslash, double quote, newline).
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The counters of one open connection. Bumping them is an atomic add: no look-up, no allocation.
/// Dropping it counts the connection as closed.
pub struct ConnectionMetrics {
    closed: Counter,
    sent: Counter,
    received: Counter,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

impl ConnectionMetrics {
    /// Adds bytes sent to the client (`istio_tcp_sent_bytes_total`, the response direction).
    pub fn add_sent(&self, bytes: u64) {
        self.sent.increment(bytes);
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds bytes received from the client (`istio_tcp_received_bytes_total`, the request
    /// direction).
    pub fn add_received(&self, bytes: u64) {
        self.received.increment(bytes);
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes sent so far on this connection (for the flow log).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// Bytes received so far on this connection (for the flow log).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    /// Counts the connection as closed (same as dropping the handle).
    pub fn closed(self) {}
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        self.closed.increment(1);
    }
}

impl fmt::Debug for ConnectionMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionMetrics")
            .field("bytes_sent", &self.bytes_sent())
            .field("bytes_received", &self.bytes_received())
            .finish()
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

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
