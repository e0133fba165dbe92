//! Admin, metrics and readiness over real loopback HTTP on port 0.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use nodemesh_proxy::admin::{AdminHandle, AdminResponse, AdminServer, AdminState, CertInfo};
use nodemesh_proxy::observe::drain;
use nodemesh_proxy::observe::{Metrics, RefusalReason};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

struct TestState {
    metrics: Metrics,
    quits: AtomicUsize,
    quit_tx: mpsc::UnboundedSender<()>,
    /// When set, `/metrics` reports that it started and then blocks the admin thread.
    slow_scrape: Option<(
        mpsc::UnboundedSender<()>,
        tokio::sync::Mutex<std_mpsc::Receiver<()>>,
    )>,
}

impl AdminState for TestState {
    fn config_dump(&self) -> Value {
        json!({"node": "node-a", "workloads": 2})
    }

    fn certs(&self) -> Vec<CertInfo> {
        vec![CertInfo {
            identity: "spiffe://cluster.local/ns/shop/sa/web".into(),
            serial: "0a1b".into(),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_787_045),
        }]
    }

    fn policy_explain(&self, query: &str) -> AdminResponse {
        let params = nodemesh_proxy::admin::parse_query(query);
        if params.is_empty() {
            return AdminResponse::text(StatusCode::BAD_REQUEST, "no parameters\n");
        }
        let params: serde_json::Map<String, Value> = params
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        AdminResponse::json(StatusCode::OK, &json!({"query": query, "params": params}))
    }

    fn metrics(&self) -> String {
        if let Some((started, release)) = &self.slow_scrape {
            started.send(()).expect("test listens");
            let release = release.try_lock().expect("one scrape at a time");
            release
                .recv_timeout(Duration::from_secs(10))
                .expect("test releases the scrape");
        }
        self.metrics.render()
    }

    fn quit(&self) {
        self.quits.fetch_add(1, Ordering::SeqCst);
        let _ = self.quit_tx.send(());
    }
}

fn any_port() -> AdminServer {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    AdminServer {
        admin_addr: loopback,
        metrics_addr: loopback,
        readiness_addr: loopback,
        ..AdminServer::default()
    }
}

fn state(metrics: Metrics) -> (Arc<TestState>, mpsc::UnboundedReceiver<()>) {
    let (quit_tx, quit_rx) = mpsc::unbounded_channel();
    let state = Arc::new(TestState {
        metrics,
        quits: AtomicUsize::new(0),
        quit_tx,
        slow_scrape: None,
    });
    (state, quit_rx)
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

async fn request(addr: SocketAddr, method: &str, target: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("reply in time")
        .expect("read reply");
    let raw = String::from_utf8(raw).expect("UTF-8 reply");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, target: &str) -> Reply {
    request(addr, "GET", target).await
}

fn spawn(state: Arc<TestState>, ready: watch::Receiver<bool>) -> AdminHandle {
    let handle = any_port().spawn(state, ready).expect("admin servers start");
    for addr in [
        handle.admin_addr(),
        handle.metrics_addr(),
        handle.readiness_addr(),
    ] {
        assert_ne!(addr.port(), 0);
    }
    handle
}

#[tokio::test]
async fn admin_endpoints_answer_from_the_state() {
    let (state, mut quit_rx) = state(Metrics::new());
    let (_ready_tx, ready_rx) = watch::channel(false);
    let handle = spawn(state.clone(), ready_rx);
    let admin = handle.admin_addr();

    let dump = get(admin, "/config_dump").await;
    assert_eq!(dump.status, 200);
    assert!(dump.headers.contains("content-type: application/json"));
    assert_eq!(
        serde_json::from_str::<Value>(&dump.body).unwrap(),
        json!({"node": "node-a", "workloads": 2})
    );

    let certs = get(admin, "/certs").await;
    assert_eq!(certs.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&certs.body).unwrap(),
        json!([{
            "identity": "spiffe://cluster.local/ns/shop/sa/web",
            "serial": "0a1b",
            "not_after": "2025-01-02T03:04:05.000Z",
        }])
    );

    let query =
        "namespace=shop&principal=spiffe%3A%2F%2Fcluster.local%2Fns%2Fshop%2Fsa%2Fclient&port=8080";
    let explain = get(admin, &format!("/policy/explain?{query}")).await;
    assert_eq!(explain.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&explain.body).unwrap(),
        json!({"query": query, "params": {
            "namespace": "shop",
            "principal": "spiffe://cluster.local/ns/shop/sa/client",
            "port": "8080",
        }})
    );
    let bad = get(admin, "/policy/explain").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body, "no parameters\n");

    assert_eq!(get(admin, "/nope").await.status, 404);
    assert_eq!(
        get(admin, "/metrics").await.status,
        404,
        "metrics are not on the admin port"
    );
    assert_eq!(get(admin, "/healthz/ready").await.status, 404);

    // /quitquitquit must be a POST; GET neither quits nor succeeds.
    let wrong = get(admin, "/quitquitquit").await;
    assert_eq!(wrong.status, 405);
    assert!(wrong.headers.contains("allow: post"), "{}", wrong.headers);
    assert_eq!(state.quits.load(Ordering::SeqCst), 0);
    assert!(quit_rx.try_recv().is_err());

    let quit = request(admin, "POST", "/quitquitquit").await;
    assert_eq!(quit.status, 200);
    tokio::time::timeout(Duration::from_secs(5), quit_rx.recv())
        .await
        .expect("quit callback called")
        .unwrap();
    assert_eq!(state.quits.load(Ordering::SeqCst), 1);

    handle.shutdown();
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn quitquitquit_can_drive_a_drain() {
    // The proxy's wiring: quit() signals a task that owns the trigger and drains.
    let (state, mut quit_rx) = state(Metrics::new());
    let (trigger, watch) = drain::channel();
    let (_ready_tx, ready_rx) = watch::channel(true);
    let handle = spawn(state, ready_rx);
    let drainer = tokio::spawn(async move {
        quit_rx.recv().await.unwrap();
        trigger.drain(Duration::from_secs(5)).await
    });
    let guard = watch.guard();
    assert!(!watch.is_draining());

    assert_eq!(
        request(handle.admin_addr(), "POST", "/quitquitquit")
            .await
            .status,
        200
    );
    tokio::time::timeout(Duration::from_secs(5), watch.signaled())
        .await
        .expect("drain signaled");
    drop(guard);
    assert!(drainer.await.unwrap().is_clean());
}

#[tokio::test]
async fn metrics_endpoint_serves_prometheus_text() {
    let metrics = Metrics::new();
    metrics.refused(RefusalReason::NoEndpoint);
    let (state, _quit_rx) = state(metrics.clone());
    let (_ready_tx, ready_rx) = watch::channel(false);
    let handle = spawn(state, ready_rx);

    let reply = get(handle.metrics_addr(), "/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .headers
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        reply.headers
    );
    assert!(
        reply
            .body
            .contains("nodemesh_connections_refused_total{reason=\"no_endpoint\"} 1\n"),
        "{}",
        reply.body
    );
    // Live: a later scrape sees later counts.
    metrics.refused(RefusalReason::NoEndpoint);
    assert!(
        get(handle.metrics_addr(), "/metrics")
            .await
            .body
            .contains("nodemesh_connections_refused_total{reason=\"no_endpoint\"} 2\n")
    );
    assert_eq!(get(handle.metrics_addr(), "/config_dump").await.status, 404);
    assert_eq!(
        request(handle.metrics_addr(), "POST", "/metrics")
            .await
            .status,
        405
    );
}

#[tokio::test]
async fn readiness_follows_the_watch() {
    let (state, _quit_rx) = state(Metrics::new());
    let (ready_tx, ready_rx) = watch::channel(false);
    let handle = spawn(state, ready_rx);
    let addr = handle.readiness_addr();

    assert_eq!(get(addr, "/healthz/ready").await.status, 503);
    ready_tx.send_replace(true);
    let ready = get(addr, "/healthz/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(get(addr, "/healthz/other").await.status, 404);
    // And back, e.g. while draining.
    ready_tx.send_replace(false);
    assert_eq!(get(addr, "/healthz/ready").await.status, 503);
    drop(handle);
    assert!(TcpStream::connect(addr).await.is_err(), "stopped on drop");
}

#[tokio::test]
async fn a_slow_scrape_does_not_stall_the_callers_runtime_or_other_admin_ports() {
    // This test runs on a single-threaded runtime: were the admin servers on it, the blocked
    // scrape would stall everything below.
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = std_mpsc::channel();
    let (quit_tx, _quit_rx) = mpsc::unbounded_channel();
    let state = Arc::new(TestState {
        metrics: Metrics::new(),
        quits: AtomicUsize::new(0),
        quit_tx,
        slow_scrape: Some((started_tx, tokio::sync::Mutex::new(release_rx))),
    });
    let (_ready_tx, ready_rx) = watch::channel(true);
    let handle = spawn(state, ready_rx);

    let metrics_addr = handle.metrics_addr();
    let scrape = tokio::spawn(async move { get(metrics_addr, "/metrics").await });
    tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
        .await
        .expect("scrape started")
        .unwrap();

    // The admin thread is blocked inside the scrape; this runtime is not.
    let start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(start.elapsed() < Duration::from_secs(1));

    release_tx.send(()).unwrap();
    let reply = scrape.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        get(handle.readiness_addr(), "/healthz/ready").await.status,
        200
    );
}

#[test]
fn a_taken_port_is_a_bind_error_naming_the_listener() {
    let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let (state, _quit_rx) = state(Metrics::new());
    let (_ready_tx, ready_rx) = watch::channel(false);
    let server = AdminServer {
        metrics_addr: taken.local_addr().unwrap(),
        ..any_port()
    };
    let err = server.spawn(state, ready_rx).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("metrics"), "{text}");
    assert!(
        text.contains(&taken.local_addr().unwrap().to_string()),
        "{text}"
    );
}

#[tokio::test]
async fn readiness_answers_while_metrics_holds_every_slot() {
    let (state, _quit_rx) = state(Metrics::new());
    let (_ready_tx, ready_rx) = watch::channel(true);
    let server = AdminServer {
        max_connections: 8,
        idle_timeout: Duration::from_secs(600),
        ..any_port()
    };
    let handle = server.spawn(state, ready_rx).expect("admin servers start");
    // The cap's worth of connections that never send a request, plus more queued behind them.
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(
            TcpStream::connect(handle.metrics_addr())
                .await
                .expect("connect"),
        );
    }
    // Several probes in a row: each needs a fresh slot, which a shared bound would hand to the
    // queued metrics connections instead.
    for _ in 0..3 {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            get(handle.readiness_addr(), "/healthz/ready"),
        )
        .await
        .expect("readiness answers while metrics is saturated");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    drop(idle);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let (state, _quit_rx) = state(Metrics::new());
    let (_ready_tx, ready_rx) = watch::channel(true);
    let server = AdminServer {
        idle_timeout: Duration::from_millis(200),
        ..any_port()
    };
    let handle = server.spawn(state, ready_rx).expect("admin servers start");
    let mut stream = TcpStream::connect(handle.readiness_addr())
        .await
        .expect("connect");
    // A keep-alive request: the server would keep the connection open for the next one.
    stream
        .write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("the idle connection is closed well before the header read timeout")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}
