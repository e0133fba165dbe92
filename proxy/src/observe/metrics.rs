//! Prometheus metrics with Istio's standard names and labels, plus `nodemesh_*` metrics.
//!
//! Each [`Metrics`] owns its own recorder (nothing global), so several proxies can run in one
//! process. The data path touches only counters found once: [`Metrics::connection_opened`]
//! finds a connection's series once and returns a [`ConnectionMetrics`] whose
//! [`add_sent`](ConnectionMetrics::add_sent) / [`add_received`](ConnectionMetrics::add_received)
//! are atomic adds, called as bytes flow.
//!
//! The series with per-pod labels (`istio_tcp_*`, `istio_requests_total`) live in a table of our
//! own ([`super::series`]) because the recorder cannot forget a series;
//! [`Metrics::prune_workloads`] drops those of deleted pods.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::labels::{ConnectionLabels, RefusalReason, ResponseFlags};
use super::series::{SeriesTable, TcpSeries, escape_label_value};

const POLICY_DECISIONS: &str = "nodemesh_policy_decisions_total";
const CERTIFICATE_EXPIRY: &str = "nodemesh_certificate_expiry_timestamp_seconds";
const CONNECTIONS_REFUSED: &str = "nodemesh_connections_refused_total";
const POLICY_COMPILE_ERRORS: &str = "nodemesh_policy_compile_errors";
const FLOW_LOG_DROPPED: &str = "nodemesh_flow_log_dropped_total";
const IPV6_DROPPED: &str = "nodemesh_ipv6_dropped_packets_total";
const BUFFER_BYTES: &str = "nodemesh_buffer_bytes";
const BUFFER_BUDGET: &str = "nodemesh_buffer_budget_bytes";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

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
    ipv6_dropped: Counter,
    /// Kept out of the recorder because the recorder cannot forget a series; rendered by hand.
    certificate_expiry: ArcSwap<BTreeMap<String, f64>>,
    /// The per-connection and per-request Istio series; rendered by hand, pruned.
    series: SeriesTable,
    /// Reads the accounted buffer bytes and the budget, when rendering.
    buffers: ArcSwapOption<BufferGauge>,
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
        let ipv6_dropped =
            recorder.register_counter(&Key::from_static_name(IPV6_DROPPED), &METADATA);
        Metrics {
            inner: Arc::new(Inner {
                recorder,
                handle,
                refused,
                policy_compile_errors,
                flow_log_dropped,
                ipv6_dropped,
                certificate_expiry: ArcSwap::from_pointee(BTreeMap::new()),
                series: SeriesTable::default(),
                buffers: ArcSwapOption::empty(),
            }),
        }
    }

    /// Counts a connection as opened and finds its series (one look-up); bump bytes on the
    /// returned handle as they flow. The connection counts as closed when the handle is dropped
    /// (or [`ConnectionMetrics::closed`] is called); while it is open its series is never pruned.
    pub fn connection_opened(&self, labels: &ConnectionLabels) -> ConnectionMetrics {
        let series = self.inner.series.tcp(labels);
        series.opened.fetch_add(1, Ordering::Relaxed);
        ConnectionMetrics {
            series,
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
        }
    }

    /// Counts one HTTP request (`istio_requests_total`) with its response status and flags.
    pub fn request(&self, labels: &ConnectionLabels, status: u16, flags: ResponseFlags) {
        self.inner.series.request(labels, status, flags);
    }

    /// Forgets the Istio series of workloads that are gone: every series no open connection
    /// holds whose source or destination workload is not `alive(namespace, name)`. Called on
    /// every change of the state, so series do not grow with pod churn.
    pub fn prune_workloads(&self, alive: impl Fn(&str, &str) -> bool) {
        self.inner.series.prune(&alive);
    }

    /// How many per-connection and per-request Istio label sets are held (each renders one
    /// sample per family: four TCP families, or `istio_requests_total`).
    pub fn istio_series(&self) -> usize {
        self.inner.series.len()
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

    /// The counter of IPv6 packets the node's IPv6 guard dropped (set from the firewall's own
    /// counter with [`Counter::absolute`]).
    pub fn ipv6_dropped(&self) -> Counter {
        self.inner.ipv6_dropped.clone()
    }

    /// Renders the accounted buffer bytes (`nodemesh_buffer_bytes`) and the budget
    /// (`nodemesh_buffer_budget_bytes`), as `read` returns them at each render.
    pub fn watch_buffers(&self, read: impl Fn() -> (usize, usize) + Send + Sync + 'static) {
        self.inner
            .buffers
            .store(Some(Arc::new(BufferGauge(Box::new(read)))));
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = self.inner.handle.render();
        self.inner.series.render(&mut out);
        if let Some(gauge) = self.inner.buffers.load_full() {
            let (used, limit) = (gauge.0)();
            let gauges = [
                (
                    BUFFER_BYTES,
                    "Buffer bytes the proxy accounts for (relay and HBONE TLS read buffers).",
                    used,
                ),
                (
                    BUFFER_BUDGET,
                    "The buffer budget: past it, new connections are refused (overloaded).",
                    limit,
                ),
            ];
            for (name, help, value) in gauges {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} gauge");
                let _ = writeln!(out, "{name} {value}\n");
            }
        }
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
        (POLICY_DECISIONS, "Authorization policy decisions."),
        (CONNECTIONS_REFUSED, "Connections refused, by reason."),
        (
            FLOW_LOG_DROPPED,
            "Flow-log lines dropped because the writer fell behind.",
        ),
        (
            IPV6_DROPPED,
            "IPv6 packets to or from mesh pods dropped by the node (IPv6 is not meshed).",
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

/// Reads (accounted buffer bytes, budget).
type ReadBuffers = Box<dyn Fn() -> (usize, usize) + Send + Sync>;

struct BufferGauge(ReadBuffers);

/// The counters of one open connection. Bumping them is an atomic add: no look-up, no allocation.
/// Dropping it counts the connection as closed.
pub struct ConnectionMetrics {
    series: Arc<TcpSeries>,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

impl ConnectionMetrics {
    /// Adds bytes sent to the client (`istio_tcp_sent_bytes_total`, the response direction).
    pub fn add_sent(&self, bytes: u64) {
        self.series.sent.fetch_add(bytes, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds bytes received from the client (`istio_tcp_received_bytes_total`, the request
    /// direction).
    pub fn add_received(&self, bytes: u64) {
        self.series.received.fetch_add(bytes, Ordering::Relaxed);
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
        self.series.closed.fetch_add(1, Ordering::Relaxed);
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
