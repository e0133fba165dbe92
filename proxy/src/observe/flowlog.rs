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
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;
use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;
use super::record::FlowRecord;

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
