//! The Istio series that carry per-pod labels (`istio_tcp_*`, `istio_requests_total`), kept in
//! a table of our own rather than in the recorder, which can never forget a series: under pod
//! churn those would grow without bound. A series is held (an `Arc`) by the open connections
//! using it and can be pruned once none holds it and its source or destination workload is gone
//! from the state ([`SeriesTable::prune`]). Rendered by hand in the Prometheus text format.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::labels::{ConnectionLabels, ResponseFlags, UNKNOWN};

pub(super) const CONNECTIONS_OPENED: &str = "istio_tcp_connections_opened_total";
pub(super) const CONNECTIONS_CLOSED: &str = "istio_tcp_connections_closed_total";
pub(super) const SENT_BYTES: &str = "istio_tcp_sent_bytes_total";
pub(super) const RECEIVED_BYTES: &str = "istio_tcp_received_bytes_total";
pub(super) const REQUESTS: &str = "istio_requests_total";

/// The four TCP counters of one label set.
#[derive(Debug, Default)]
pub(super) struct TcpSeries {
    pub(super) opened: AtomicU64,
    pub(super) closed: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) received: AtomicU64,
}

/// A TCP family: its name, its help, and which counter of a series it shows.
type TcpFamily = (&'static str, &'static str, fn(&TcpSeries) -> &AtomicU64);

/// A request series: the connection's labels with the request's flags, and its status.
type RequestKey = (ConnectionLabels, u16);

/// Every per-connection and per-request Istio series of one proxy.
#[derive(Debug, Default)]
pub(super) struct SeriesTable {
    // Read once per connection open or request to find its series; written only for a new
    // label set and by pruning. Bytes go on the `Arc`'d counters without touching it.
    tcp: RwLock<HashMap<ConnectionLabels, Arc<TcpSeries>>>,
    requests: RwLock<HashMap<RequestKey, Arc<AtomicU64>>>,
}

fn find_or_insert<K, V>(map: &RwLock<HashMap<K, Arc<V>>>, key: K) -> Arc<V>
where
    K: std::hash::Hash + Eq,
    V: Default,
{
    if let Some(found) = map.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
        return Arc::clone(found);
    }
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(map.entry(key).or_default())
}

impl SeriesTable {
    /// The TCP series of `labels` (created if new), held by the caller while it uses it.
    pub(super) fn tcp(&self, labels: &ConnectionLabels) -> Arc<TcpSeries> {
        find_or_insert(&self.tcp, labels.clone())
    }

    /// Counts one request under `labels` with its own `flags` and `status`.
    pub(super) fn request(&self, labels: &ConnectionLabels, status: u16, flags: ResponseFlags) {
        let labels = ConnectionLabels {
            response_flags: flags,
            ..labels.clone()
        };
        find_or_insert(&self.requests, (labels, status)).fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets every series no open connection holds whose source or destination workload
    /// (`alive(namespace, name)` false) is gone. A side labelled `unknown` never counts as gone.
    pub(super) fn prune(&self, alive: &dyn Fn(&str, &str) -> bool) {
        let gone = |l: &ConnectionLabels| {
            let side_gone = |namespace: &str, workload: &str| {
                workload != UNKNOWN && !alive(namespace, workload)
            };
            side_gone(&l.source_workload_namespace, &l.source_workload)
                || side_gone(&l.destination_workload_namespace, &l.destination_workload)
        };
        self.tcp
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|labels, series| Arc::strong_count(series) > 1 || !gone(labels));
        self.requests
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(labels, _), count| Arc::strong_count(count) > 1 || !gone(labels));
    }

    /// How many label sets the table holds (TCP and request series).
    pub(super) fn len(&self) -> usize {
        let tcp = self
            .tcp
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let requests = self
            .requests
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        tcp + requests
    }

    /// Appends every family that has a series, with its HELP and TYPE lines.
    pub(super) fn render(&self, out: &mut String) {
        let tcp: Vec<(String, Arc<TcpSeries>)> = self
            .tcp
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(labels, series)| (label_text(labels, None), Arc::clone(series)))
            .collect();
        let families: [TcpFamily; 4] = [
            (CONNECTIONS_OPENED, "TCP connections opened.", |s| &s.opened),
            (CONNECTIONS_CLOSED, "TCP connections closed.", |s| &s.closed),
            (
                SENT_BYTES,
                "Bytes sent to the client (response direction).",
                |s| &s.sent,
            ),
            (
                RECEIVED_BYTES,
                "Bytes received from the client (request direction).",
                |s| &s.received,
            ),
        ];
        if !tcp.is_empty() {
            for (name, help, counter) in families {
                header(out, name, help);
                for (labels, series) in &tcp {
                    let value = counter(series).load(Ordering::Relaxed);
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
                out.push('\n');
            }
        }
        let requests: Vec<(String, u64)> = self
            .requests
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((labels, status), count)| {
                (
                    label_text(labels, Some(*status)),
                    count.load(Ordering::Relaxed),
                )
            })
            .collect();
        if !requests.is_empty() {
            header(out, REQUESTS, "HTTP requests seen under L7 enforcement.");
            for (labels, value) in requests {
                let _ = writeln!(out, "{REQUESTS}{{{labels}}} {value}");
            }
            out.push('\n');
        }
    }
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
}

/// `key="value",...` in Istio's order, values escaped.
fn label_text(labels: &ConnectionLabels, response_code: Option<u16>) -> String {
    let mut out = String::with_capacity(256);
    for (i, label) in labels.to_labels(response_code).iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{}=\"{}\"",
            label.key(),
            escape_label_value(label.value())
        );
    }
    out
}

/// Escapes a Prometheus label value (backslash, double quote, newline).
pub(super) fn escape_label_value(value: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Reporter;

    fn labels(src: &str, dst: &str) -> ConnectionLabels {
        ConnectionLabels {
            source_workload: src.into(),
            source_workload_namespace: "ns".into(),
            destination_workload: dst.into(),
            destination_workload_namespace: "ns".into(),
            ..ConnectionLabels::new(Reporter::Source)
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn held_series_stay_and_released_ones_of_gone_pods_go() {
        let table = SeriesTable::default();
        let held = table.tcp(&labels("a", "gone-1"));
        drop(table.tcp(&labels("a", "gone-2")));
        drop(table.tcp(&labels("a", "b")));
        drop(table.tcp(&labels("a", UNKNOWN)));
        table.request(&labels("gone-3", "b"), 200, ResponseFlags::None);
        table.request(&labels("a", "b"), 200, ResponseFlags::None);
        assert_eq!(table.len(), 6);
        table.prune(&|_, w| !w.starts_with("gone"));
        // Kept: the held one, a->b (TCP and request), a->unknown.
        assert_eq!(table.len(), 4);
        drop(held);
        table.prune(&|_, w| !w.starts_with("gone"));
        assert_eq!(table.len(), 3);
    }
}
