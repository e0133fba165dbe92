//! Every wait of the data path has a deadline: a dial to a peer proxy that drops SYNs fails
//! within the connect deadline and resets the client (and every tunnel that waited for the same
//! dial), the restarted peer is reached on the next attempt, a client that resets while the
//! dial is pending gets nothing sent for it, and under L7 a pod that does not answer gets 504
//! `UT`, a client that stalls in its body 408 `SI`. In-process mesh on loopback; a "dead" node
//! is a listener whose accept queue is full, so the kernel drops SYNs as a down node's network
//! does.
#![allow(clippy::unwrap_used)]

use nodemesh_test_support::mesh as support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nodemesh_proxy::{ProxyHandle, ProxyOptions, StateSource};
use socket2::{Domain, Socket, Type};
use support::{ECHO, HTTP, Mesh, dial, echo_roundtrip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A listener at `addr` that never accepts, its accept queue full: further SYNs are dropped.
struct Silent {
    _listener: Socket,
    _fillers: Vec<std::net::TcpStream>,
}

fn silent(addr: SocketAddr) -> std::io::Result<Silent> {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    listener.set_reuse_address(true)?;
    listener.bind(&addr.into())?;
    listener.listen(0)?;
    let mut fillers = Vec::new();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("filling {addr}: {e}"),
        }
        assert!(fillers.len() < 16, "{addr} keeps accepting");
    }
    Ok(Silent {
        _listener: listener,
        _fillers: fillers,
    })
}

/// The in-process mesh with node-b's proxy stopped: db-1's HBONE address drops SYNs until
/// [`DeadB::restart`].
struct DeadB {
    n: u8,
    config: std::path::PathBuf,
    a: ProxyHandle,
    silent: Option<Silent>,
    connect_timeout: Duration,
    _keep: (tempfile::TempDir, Option<nodemesh_ca::RunningCa>),
}

impl DeadB {
    async fn start(connect_timeout: Duration) -> DeadB {
        let mesh = Mesh::start_with("", |o| o.connect_timeout = connect_timeout).await;
        let Mesh {
            n,
            dir,
            config,
            ca,
            a,
            b,
            ..
        } = mesh;
        let _ = b.drain().await;
        let hbone = support::addr(&format!("127.{n}.2.21"), 15008);
        // The drained proxy's listeners close as its aborted tasks are dropped.
        let deadline = Instant::now() + Duration::from_secs(5);
        let silent = loop {
            match silent(hbone) {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    assert!(Instant::now() < deadline, "{hbone} stays bound");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{hbone}: {e}"),
            }
        };
        DeadB {
            n,
            config,
            a,
            silent: Some(silent),
            connect_timeout,
            _keep: (dir, ca),
        }
    }

    fn ip(&self, host: &str) -> String {
        format!("127.{}.{host}", self.n)
    }

    /// node-b's proxy again, on the address that was silent.
    async fn restart(&mut self) -> ProxyHandle {
        self.silent = None;
        let opts = ProxyOptions {
            inbound_addr: "0.0.0.0:15008".parse().unwrap(),
            inbound_plaintext_addr: "0.0.0.0:15006".parse().unwrap(),
            inbound_binds: vec![
                self.ip("2.21").parse().unwrap(),
                self.ip("2.22").parse().unwrap(),
            ],
            connect_timeout: self.connect_timeout,
            ..support::proxy_options(StateSource::File(self.config.clone()), "node-b")
        };
        let b = ProxyHandle::start(opts).await.unwrap();
        let mut ready = b.ready();
        tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
            .await
            .unwrap()
            .unwrap();
        b
    }

    /// A connection from web-1 to db-1's echo port through node-a's outbound path.
    async fn call_db(&self) -> TcpStream {
        dial(
            &self.a,
            &self.ip("1.11"),
            support::addr(&self.ip("2.21"), ECHO),
        )
        .await
    }
}

fn refused(proxy: &ProxyHandle, reason: &str) -> u64 {
    let prefix = format!("nodemesh_connections_refused_total{{reason=\"{reason}\"}} ");
    proxy
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok())
        .unwrap_or(0)
}

fn opened(proxy: &ProxyHandle) -> u64 {
    proxy
        .metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Reads until the proxy ends the connection; the error kind it ended with, if any.
async fn end_of(mut s: TcpStream) -> Option<std::io::ErrorKind> {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(e.kind()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_to_a_silent_peer_is_reset_within_the_connect_deadline_and_the_restarted_peer_answers()
 {
    let mut mesh = DeadB::start(Duration::from_millis(800)).await;
    let started = Instant::now();
    let mut client = mesh.call_db().await;
    client.write_all(b"hello").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), end_of(client))
        .await
        .expect("the proxy gave up the dial");
    let took = started.elapsed();
    assert_eq!(
        ended,
        Some(std::io::ErrorKind::ConnectionReset),
        "RST, not FIN"
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "failed after {took:?}, want about the 800 ms deadline"
    );
    assert_eq!(refused(&mesh.a, "connect_timeout"), 1);

    let _b = mesh.restart().await;
    let started = Instant::now();
    let echoed = echo_roundtrip(mesh.call_db().await, b"again").await;
    assert_eq!(echoed, b"again");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the restarted peer took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_waiting_for_one_dial_fail_with_it_not_one_deadline_after_another() {
    let mesh = DeadB::start(Duration::from_millis(800)).await;
    let started = Instant::now();
    let mut ends = Vec::new();
    for _ in 0..4 {
        let client = mesh.call_db().await;
        ends.push(tokio::spawn(end_of(client)));
    }
    for end in ends {
        let ended = tokio::time::timeout(Duration::from_secs(10), end)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ended, Some(std::io::ErrorKind::ConnectionReset));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the four took {took:?}");
    assert_eq!(refused(&mesh.a, "connect_timeout"), 4);
}

/// Without abandonment the pending connect's next SYN (1 s, then 3 s after the first) reaches
/// the restarted proxy and the tunnel carries the reset client's bytes to the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_during_the_dial_gets_nothing_sent() {
    let mut mesh = DeadB::start(Duration::from_secs(20)).await;
    let mut client = mesh.call_db().await;
    client.write_all(b"do not deliver").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = mesh.restart().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        opened(&b),
        0,
        "a tunnel reached node-b after its client left"
    );
    assert_eq!(opened(&mesh.a), 0);
    // And the pool is not stuck: a new client gets through.
    let echoed = echo_roundtrip(mesh.call_db().await, b"fresh").await;
    assert_eq!(echoed, b"fresh");
}

const L7_ON_DB: &str = r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: db-http, namespace: shop}
    spec:
      action: ALLOW
      selector: {matchLabels: {app: db}}
      rules: [{to: [{operation: {methods: ["GET", "POST"], paths: ["/*"]}}]}]
"#;

/// A port on db-1 that reads requests and never answers.
const MUTE: u16 = 8099;

async fn start_mute_pod(ip: &str) {
    let listener = TcpListener::bind((ip, MUTE)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
}

/// Sends `request`, returns the answer's status line (what arrived before the proxy closed).
async fn answer(mut s: TcpStream, request: &[u8]) -> String {
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn flags_of(proxy: &ProxyHandle, code: &str) -> Vec<String> {
    proxy
        .metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| l.contains(&format!("response_code=\"{code}\"")))
        .filter_map(|l| {
            Some(
                l.split("response_flags=\"")
                    .nth(1)?
                    .split('"')
                    .next()?
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_does_not_answer_gets_504_ut_and_a_stalled_body_408_si() {
    let mesh = Mesh::start_with(L7_ON_DB, |o| {
        o.l7_limits.sniff_timeout = Duration::from_secs(5);
        o.l7_limits.upstream_timeout = Duration::from_millis(600);
        o.l7_limits.body_timeout = Duration::from_millis(300);
    })
    .await;
    let db = mesh.ip("2.21");
    start_mute_pod(&db).await;
    let web = mesh.web();

    let started = Instant::now();
    let get = b"GET /slow HTTP/1.1\r\nhost: db.shop\r\nconnection: close\r\n\r\n";
    let status = answer(dial(&mesh.a, &web, support::addr(&db, MUTE)).await, get).await;
    assert!(status.starts_with("HTTP/1.1 504"), "{status}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(flags_of(&mesh.b, "504"), ["UT"]);

    // Ten of a hundred promised bytes, then silence: the body deadline fires first.
    let post = b"POST /upload HTTP/1.1\r\nhost: db.shop\r\ncontent-length: 100\r\n\r\n0123456789";
    let status = answer(dial(&mesh.a, &web, support::addr(&db, MUTE)).await, post).await;
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert_eq!(flags_of(&mesh.b, "408"), ["SI"]);

    // A pod that answers is unaffected.
    let ok = answer(dial(&mesh.a, &web, support::addr(&db, HTTP)).await, get).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}
