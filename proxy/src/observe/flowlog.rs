//! The flow log: one JSON line per connection (and per HTTP request under L7).
//!
//! [`FlowLog::record`] never blocks: records go through a bounded channel to a writer thread that
//! serializes and writes them; when the channel is full the record is dropped and counted
//! (`nodemesh_flow_log_dropped_total`, [`FlowLog::dropped`]).
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

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use metrics::Counter;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::metrics::{Metrics, RefusalReason};

/// Records that may wait for the writer before new ones are dropped.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Where flow-log lines go: `stdout`, a file path, or `off` (parsed by [`FromStr`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowLogTarget {
    /// Standard output.
    Stdout,
    /// A file, appended to (created if missing).
    File(PathBuf),
    /// No flow log.
    Off,
}

impl FromStr for FlowLogTarget {
    type Err = FlowLogError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err(FlowLogError::EmptyTarget),
            "stdout" => Ok(FlowLogTarget::Stdout),
            "off" => Ok(FlowLogTarget::Off),
            path => Ok(FlowLogTarget::File(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for FlowLogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowLogTarget::Stdout => f.write_str("stdout"),
            FlowLogTarget::File(path) => write!(f, "{}", path.display()),
            FlowLogTarget::Off => f.write_str("off"),
        }
    }
}

/// What went wrong setting up the flow log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowLogError {
    /// `--flow-log` was given an empty value.
    #[error("flow-log target is empty: expected `stdout`, `off` or a file path")]
    EmptyTarget,
    /// The flow-log file could not be opened.
    #[error("cannot open flow-log file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the flow-log writer thread: {0}")]
    Thread(#[source] io::Error),
    /// The capacity was zero.
    #[error("flow-log capacity must be at least 1")]
    ZeroCapacity,
}

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
    /// Denied by policy.
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

enum Message {
    Record(Box<FlowRecord>),
    Flush(oneshot::Sender<()>),
}

/// The flow-log sender. Cheap to clone; the writer thread ends (after writing what is queued)
/// when the last clone is dropped.
#[derive(Clone)]
pub struct FlowLog {
    inner: Option<Arc<Shared>>,
}

struct Shared {
    tx: mpsc::Sender<Message>,
    dropped: AtomicU64,
    dropped_metric: Counter,
}

impl fmt::Debug for FlowLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowLog")
            .field("enabled", &self.is_enabled())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl FlowLog {
    /// Starts the flow log for `target` with [`DEFAULT_CAPACITY`]; drops are counted in `metrics`.
    pub fn start(target: &FlowLogTarget, metrics: &Metrics) -> Result<FlowLog, FlowLogError> {
        match target {
            FlowLogTarget::Off => Ok(FlowLog::off()),
            FlowLogTarget::Stdout => FlowLog::with_writer(io::stdout(), DEFAULT_CAPACITY, metrics),
            FlowLogTarget::File(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| FlowLogError::Open {
                        path: path.clone(),
                        source,
                    })?;
                FlowLog::with_writer(file, DEFAULT_CAPACITY, metrics)
            }
        }
    }

    /// A flow log that records nothing.
    pub fn off() -> FlowLog {
        FlowLog { inner: None }
    }

    /// Starts a writer thread writing lines to `writer`, with room for `capacity` queued records.
    pub fn with_writer<W: Write + Send + 'static>(
        writer: W,
        capacity: usize,
        metrics: &Metrics,
    ) -> Result<FlowLog, FlowLogError> {
        if capacity == 0 {
            return Err(FlowLogError::ZeroCapacity);
        }
        let (tx, rx) = mpsc::channel(capacity);
        std::thread::Builder::new()
            .name("nodemesh-flow-log".into())
            .spawn(move || write_loop(rx, writer))
            .map_err(FlowLogError::Thread)?;
        Ok(FlowLog {
            inner: Some(Arc::new(Shared {
                tx,
                dropped: AtomicU64::new(0),
                dropped_metric: metrics.flow_log_dropped(),
            })),
        })
    }

    /// Whether records go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues a record; never blocks. When the writer is behind, the record is dropped and counted.
    pub fn record(&self, record: FlowRecord) {
        let Some(shared) = &self.inner else { return };
        if shared
            .tx
            .try_send(Message::Record(Box::new(record)))
            .is_err()
        {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            shared.dropped_metric.increment(1);
        }
    }

    /// Records dropped so far because the writer was behind (or gone).
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }

    /// Waits until every record queued before this call is written and flushed (for shutdown).
    pub async fn flush(&self) {
        let Some(shared) = &self.inner else { return };
        let (done_tx, done_rx) = oneshot::channel();
        if shared.tx.send(Message::Flush(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    }
}

fn write_loop<W: Write>(mut rx: mpsc::Receiver<Message>, writer: W) {
    let mut out = BufWriter::new(writer);
    let mut failed = false;
    let report = |result: io::Result<()>, failed: &mut bool| {
        if let Err(error) = result
            && !*failed
        {
            // Said once: a full disk must not turn into a log storm.
            tracing::warn!(%error, "flow log: write failed; later lines may be lost");
            *failed = true;
        }
    };
    while let Some(message) = rx.blocking_recv() {
        let mut next = Some(message);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => {
                    let mut line = record.to_json();
                    line.push('\n');
                    report(out.write_all(line.as_bytes()), &mut failed);
                }
                Message::Flush(done) => {
                    report(out.flush(), &mut failed);
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        // Nothing queued: push what we have to the target.
        report(out.flush(), &mut failed);
    }
    report(out.flush(), &mut failed);
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

    #[test]
    fn parses_targets() {
        assert_eq!(
            "stdout".parse::<FlowLogTarget>().unwrap(),
            FlowLogTarget::Stdout
        );
        assert_eq!("off".parse::<FlowLogTarget>().unwrap(), FlowLogTarget::Off);
        assert_eq!(
            "/var/log/flows.json".parse::<FlowLogTarget>().unwrap(),
            FlowLogTarget::File("/var/log/flows.json".into())
        );
        assert!(matches!(
            "".parse::<FlowLogTarget>(),
            Err(FlowLogError::EmptyTarget)
        ));
        for s in ["stdout", "off", "/tmp/x"] {
            assert_eq!(s.parse::<FlowLogTarget>().unwrap().to_string(), s);
        }
    }
}
