//! The matrix pods' servers: in each pod's network namespace a thread (entered with `setns`)
//! serving TCP and UDP 80 and 81. A TCP connection gets one answer line per line it sends, a
//! UDP datagram one answer datagram; an answer is `<pod> <proto>/<port> <what was sent>`, so a
//! probe knows it reached the pod it meant. They stop when [`Servers`] is dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use super::model::{ALL_PORTS, PodId, Protocol};
use crate::cluster::Testbed;
use crate::error::TestbedError;
use crate::netns::NetnsTask;

/// Largest datagram a server reads.
const MAX_LINE: usize = 512;
/// Most bytes a TCP client may send on one connection.
const MAX_CONNECTION_BYTES: u64 = 1 << 20;
/// How long a server waits for a client's next line.
const IDLE: Duration = Duration::from_secs(60);

/// The running servers of every pod.
#[derive(Debug)]
pub(crate) struct Servers {
    stop: watch::Sender<bool>,
    tasks: Vec<NetnsTask<()>>,
}

impl Servers {
    /// Starts every pod's servers and returns once all are bound.
    pub(crate) fn start(bed: &Testbed) -> Result<Self, TestbedError> {
        let (stop, _) = watch::channel(false);
        let mut servers = Self {
            stop,
            tasks: Vec::new(),
        };
        for pod in PodId::all() {
            let ns = bed.pod(&pod.testbed_name())?.clone();
            let (bound_tx, bound_rx) = std::sync::mpsc::channel();
            let stop = servers.stop.subscribe();
            let name = pod.to_string();
            let task = ns.spawn(move || {
                let sockets = bind_all();
                let sockets = match sockets {
                    Ok(s) => {
                        let _ = bound_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(serve(name, sockets, stop));
                }
            })?;
            servers.tasks.push(task);
            match bound_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    return Err(TestbedError::Netns {
                        netns: ns.name().to_owned(),
                        what: "bind the matrix servers",
                        source,
                    });
                }
                Err(_) => {
                    return Err(TestbedError::Netns {
                        netns: ns.name().to_owned(),
                        what: "bind the matrix servers",
                        source: std::io::Error::other("the server thread ended early"),
                    });
                }
            }
        }
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for task in self.tasks.drain(..) {
            let _ = task.join();
        }
    }
}

/// The bound sockets of one pod: `(protocol, port, socket)`.
enum Bound {
    Tcp(u16, std::net::TcpListener),
    Udp(u16, std::net::UdpSocket),
}

fn bind_all() -> std::io::Result<Vec<Bound>> {
    ALL_PORTS
        .iter()
        .map(|pp| {
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, pp.port));
            Ok(match pp.protocol {
                Protocol::Tcp => {
                    let l = std::net::TcpListener::bind(addr)?;
                    l.set_nonblocking(true)?;
                    Bound::Tcp(pp.port, l)
                }
                Protocol::Udp => {
                    let s = std::net::UdpSocket::bind(addr)?;
                    s.set_nonblocking(true)?;
                    Bound::Udp(pp.port, s)
                }
            })
        })
        .collect()
}

async fn serve(name: String, sockets: Vec<Bound>, mut stop: watch::Receiver<bool>) {
    let name: std::sync::Arc<str> = name.into();
    let mut tasks = tokio::task::JoinSet::new();
    for bound in sockets {
        let name = name.clone();
        match bound {
            Bound::Tcp(port, l) => {
                if let Ok(l) = tokio::net::TcpListener::from_std(l) {
                    tasks.spawn(serve_tcp(name, port, l));
                }
            }
            Bound::Udp(port, s) => {
                if let Ok(s) = tokio::net::UdpSocket::from_std(s) {
                    tasks.spawn(serve_udp(name, port, s));
                }
            }
        }
    }
    let _ = stop.wait_for(|stop| *stop).await;
    tasks.abort_all();
}

async fn serve_tcp(name: std::sync::Arc<str>, port: u16, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            // A client never sends more than a few lines: a cap on what a connection may send.
            let mut lines = tokio::io::BufReader::new(r.take(MAX_CONNECTION_BYTES));
            loop {
                let mut line = String::new();
                let read = tokio::time::timeout(IDLE, lines.read_line(&mut line)).await;
                match read {
                    Ok(Ok(n)) if n > 0 && line.ends_with('\n') => {
                        let answer = format!("{name} tcp/{port} {line}");
                        if w.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
    }
}

async fn serve_udp(name: std::sync::Arc<str>, port: u16, socket: tokio::net::UdpSocket) {
    let mut buf = vec![0u8; MAX_LINE];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        let got = String::from_utf8_lossy(&buf[..n]);
        let answer = format!("{name} udp/{port} {got}");
        let _ = socket.send_to(answer.as_bytes(), from).await;
    }
}
