//! The prober: from pods to pods on TCP and UDP, every probe from one source on a thread inside
//! its network namespace, every source at once, each source's probes concurrent (bounded), each
//! with a timeout. A probe is [`Outcome::Connected`] only when the pod it meant answered.
//!
//! Denials are REJECTs, so a refused probe ends quickly: a TCP RST or an ICMP
//! port/admin-prohibited error (`ECONNREFUSED`, `EHOSTUNREACH`), or, through the mesh, the
//! proxy closing a connection it had accepted before an answer came.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use super::model::{PodId, PortProtocol, Protocol};
use crate::cluster::Testbed;
use crate::error::TestbedError;

/// One cell of the matrix: from, to, port.
pub type Cell = (PodId, PodId, PortProtocol);

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination pod answered.
    Connected,
    /// Refused: reset, ICMP error, or closed before an answer (the text says which).
    Refused(String),
    /// Nothing happened within the timeout (a silent drop, or a very slow path).
    TimedOut,
    /// Something no enforcement explains: the wrong pod answered, a local error.
    Unexpected(String),
}

impl Outcome {
    /// Whether the probe connected.
    pub fn connected(&self) -> bool {
        matches!(self, Self::Connected)
    }

    /// One character for truth tables: `.` connected, `X` refused, `T` timed out, `?`
    /// unexpected.
    pub fn symbol(&self) -> char {
        match self {
            Self::Connected => '.',
            Self::Refused(_) => 'X',
            Self::TimedOut => 'T',
            Self::Unexpected(_) => '?',
        }
    }
}

/// How probes run.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// How long one probe may take.
    pub timeout: Duration,
    /// Probes in flight at once per source pod.
    pub concurrency: usize,
}

impl Default for ProbeOptions {
    /// 3 s per probe (the first mesh connection includes an mTLS handshake on a busy machine),
    /// 16 in flight per source.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
            concurrency: 16,
        }
    }
}

/// Probes every cell of `cells` (targets are the pods' IPs in `bed`) and returns each outcome.
pub(crate) fn probe_all(
    bed: &Testbed,
    cells: &[Cell],
    opts: ProbeOptions,
) -> Result<BTreeMap<Cell, Outcome>, TestbedError> {
    let mut by_source: BTreeMap<PodId, Vec<(Cell, SocketAddr)>> = BTreeMap::new();
    for &cell in cells {
        let (from, to, pp) = cell;
        let ip = bed.pod_ip(&to.testbed_name())?;
        by_source
            .entry(from)
            .or_default()
            .push((cell, SocketAddr::from((ip, pp.port))));
    }
    let mut tasks = Vec::new();
    for (from, probes) in by_source {
        let ns = bed.pod(&from.testbed_name())?;
        tasks.push(ns.spawn(move || run_source(probes, opts))?);
    }
    let mut outcomes = BTreeMap::new();
    for task in tasks {
        for (cell, outcome) in task.join()? {
            outcomes.insert(cell, outcome);
        }
    }
    Ok(outcomes)
}

fn run_source(probes: Vec<(Cell, SocketAddr)>, opts: ProbeOptions) -> Vec<(Cell, Outcome)> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let why = format!("no runtime: {e}");
            return probes
                .into_iter()
                .map(|(cell, _)| (cell, Outcome::Unexpected(why.clone())))
                .collect();
        }
    };
    rt.block_on(async move {
        let limit = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for (cell, target) in probes {
            let limit = Arc::clone(&limit);
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (cell, probe(cell, target, opts.timeout).await)
            });
        }
        let mut out = Vec::new();
        while let Some(done) = set.join_next().await {
            if let Ok(result) = done {
                out.push(result);
            }
        }
        out
    })
}

/// Probes one cell at `target` (from inside the source pod).
pub(crate) async fn probe(cell: Cell, target: SocketAddr, timeout: Duration) -> Outcome {
    let (from, to, pp) = cell;
    let token = format!("probe {from}->{to} {pp}");
    let expect = format!(
        "{to} {}/{} {token}",
        pp.protocol.as_str().to_ascii_lowercase(),
        pp.port
    );
    let attempt = async {
        match pp.protocol {
            Protocol::Tcp => tcp(target, &token, &expect).await,
            Protocol::Udp => udp(target, &token, &expect, timeout).await,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Outcome::TimedOut)
}

async fn tcp(target: SocketAddr, token: &str, expect: &str) -> Outcome {
    let stream = match tokio::net::TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => return io_outcome("connect", &e),
    };
    let (r, mut w) = stream.into_split();
    if let Err(e) = w.write_all(format!("{token}\n").as_bytes()).await {
        return io_outcome("send", &e);
    }
    let mut line = String::new();
    match tokio::io::BufReader::new(r).read_line(&mut line).await {
        Err(e) => io_outcome("receive", &e),
        Ok(0) => Outcome::Refused("closed before answering".into()),
        Ok(_) => answer(line.trim_end(), expect),
    }
}

async fn udp(target: SocketAddr, token: &str, expect: &str, timeout: Duration) -> Outcome {
    let socket = match tokio::net::UdpSocket::bind("0.0.0.0:0").await {
        Ok(s) => s,
        Err(e) => return Outcome::Unexpected(format!("bind: {e}")),
    };
    if let Err(e) = socket.connect(target).await {
        return io_outcome("connect", &e);
    }
    // Resent a few times within the timeout: a datagram may wait on neighbour resolution.
    let resend = timeout / 4;
    let mut buf = vec![0u8; 1024];
    loop {
        if let Err(e) = socket.send(token.as_bytes()).await {
            return io_outcome("send", &e);
        }
        match tokio::time::timeout(resend, socket.recv(&mut buf)).await {
            Err(_) => continue,
            Ok(Err(e)) => return io_outcome("receive", &e),
            Ok(Ok(n)) => return answer(&String::from_utf8_lossy(&buf[..n]), expect),
        }
    }
}

fn answer(got: &str, expect: &str) -> Outcome {
    if got == expect {
        Outcome::Connected
    } else {
        Outcome::Unexpected(format!("answered {got:?}, expected {expect:?}"))
    }
}

/// A socket error as an outcome: what a REJECT or a closing proxy produces is
/// [`Outcome::Refused`], anything else [`Outcome::Unexpected`].
fn io_outcome(what: &str, e: &std::io::Error) -> Outcome {
    use nix::errno::Errno;
    let refused = [
        Errno::ECONNREFUSED,
        Errno::ECONNRESET,
        Errno::ECONNABORTED,
        Errno::EHOSTUNREACH,
        Errno::ENETUNREACH,
        Errno::EHOSTDOWN,
        Errno::EPIPE,
        Errno::EACCES,
        Errno::EPERM,
    ];
    let errno = e.raw_os_error().map(Errno::from_raw);
    if errno.is_some_and(|n| refused.contains(&n)) || e.kind() == std::io::ErrorKind::UnexpectedEof
    {
        Outcome::Refused(format!("{what}: {e}"))
    } else {
        Outcome::Unexpected(format!("{what}: {e}"))
    }
}
