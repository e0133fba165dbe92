//! One outcome per connection: whatever path a connection takes through the in-process mesh
//! (allowed, refused by policy, refused by STRICT, pod unreachable, reset by the pod), each proxy
//! that saw it writes exactly one flow-log line and counts it exactly once (an opened Istio TCP
//! series, or a refusal); and HTTP requests carry their real response flags to `/metrics`.
#![allow(clippy::unwrap_used)]

use nodemesh_test_support::mesh as support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use nodemesh_proxy::ProxyHandle;
use nodemesh_proxy::observe::FlowLogTarget;
use serde_json::Value;
use support::{ECHO, Mesh, NAME, dial, echo_roundtrip, read_all};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Nothing listens here on any pod.
const CLOSED: u16 = 7777;
/// db-1's listener that resets every connection it accepts.
const RESET: u16 = 7001;

const DENY_NAME_PORT: &str = r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: no-name-port, namespace: shop}
    spec:
      action: DENY
      selector: {matchLabels: {app: db}}
      rules: [{to: [{operation: {ports: ["9090"]}}]}]
"#;

fn log_file(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("flows-{node}.json"))
}

/// A mesh whose proxies write their flow logs into the returned folder. The L7 sniff waits long
/// enough for a request that a loaded machine delays (200 ms by default, after which a silent
/// client counts as a server-first protocol and is decided at L4).
async fn start(policies: &str) -> (Mesh, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mesh = Mesh::start_with(policies, move |o| {
        o.flow_log = FlowLogTarget::File(log_file(&path, &o.node));
        o.l7_limits.sniff_timeout = Duration::from_secs(5);
    })
    .await;
    (mesh, dir)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What one proxy has counted: Istio TCP series opened and closed, and refusals, by reason.
#[derive(Debug, Default, Clone, PartialEq)]
struct Counts {
    opened: u64,
    closed: u64,
    refused: Vec<(String, u64)>,
}

fn counts(proxy: &ProxyHandle) -> Counts {
    let text = proxy.metrics().render();
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let refused = text
        .lines()
        .filter_map(|l| l.strip_prefix("nodemesh_connections_refused_total{reason=\""))
        .filter_map(|l| {
            let (reason, value) = l.split_once("\"} ")?;
            let n: u64 = value.parse().ok()?;
            (n > 0).then(|| (reason.to_owned(), n))
        })
        .collect();
    Counts {
        opened: sum("istio_tcp_connections_opened_total"),
        closed: sum("istio_tcp_connections_closed_total"),
        refused,
    }
}

/// Waits until `proxy`'s flow log holds `want` lines and its closed count has caught up with
/// its opened count, then a little longer, so a second line would show.
async fn settle(path: &Path, proxy: &ProxyHandle, want: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = counts(proxy);
        if lines(path).len() >= want && c.opened == c.closed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path:?} never reached {want} lines"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    lines(path)
}

/// Checks, per connection, that each proxy wrote one more line with `verdict` and `reason`, and
/// counted it once (opened, or refused with `reason`).
struct Step {
    dir: PathBuf,
}

impl Step {
    async fn expect(
        &self,
        proxy: &ProxyHandle,
        node: &str,
        before: (usize, Counts),
        verdict: &str,
        reason: Option<&str>,
    ) {
        let path = log_file(&self.dir, node);
        let (lines_before, counts_before) = before;
        let all = settle(&path, proxy, lines_before + 1).await;
        assert_eq!(
            all.len(),
            lines_before + 1,
            "{node}: one line per connection: {all:#?}"
        );
        let line = &all[lines_before];
        assert_eq!(line["verdict"], verdict, "{node}: {line}");
        assert_eq!(
            line["reason"],
            reason.map_or(Value::Null, Value::from),
            "{node}: {line}"
        );
        let after = counts(proxy);
        let refusals = |c: &Counts| c.refused.iter().map(|(_, n)| n).sum::<u64>();
        let opened = after.opened - counts_before.opened;
        let refused = refusals(&after) - refusals(&counts_before);
        match reason {
            None => assert_eq!((opened, refused), (1, 0), "{node}: {after:?}"),
            Some(r) => {
                assert_eq!(refused, 1, "{node}: {after:?}");
                let of = |c: &Counts| {
                    c.refused
                        .iter()
                        .find(|(x, _)| x == r)
                        .map_or(0, |(_, n)| *n)
                };
                assert_eq!(
                    of(&after) - of(&counts_before),
                    1,
                    "{node}: counted as {r}: {after:?}"
                );
            }
        }
    }

    fn before(&self, proxy: &ProxyHandle, node: &str) -> (usize, Counts) {
        (lines(&log_file(&self.dir, node)).len(), counts(proxy))
    }
}

async fn reset_every_connection(ip: &str) {
    let listener = TcpListener::bind((ip, RESET)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let mut buf = [0u8; 16];
            let mut s = s;
            let _ = s.read(&mut buf).await;
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(s);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_path_is_reported_exactly_once() {
    let (mesh, logs) = start(DENY_NAME_PORT).await;
    let step = Step {
        dir: logs.path().to_path_buf(),
    };
    reset_every_connection(&mesh.ip("2.21")).await;
    let (a, b) = (&mesh.a, &mesh.b);
    let web = mesh.web();

    // Allowed: web-1 (node-a) -> db-1:8080 (node-b) over HBONE.
    let (ba, bb) = (step.before(a, "node-a"), step.before(b, "node-b"));
    let s = dial(a, &web, mesh.addr("2.21", ECHO)).await;
    assert_eq!(echo_roundtrip(s, b"hello").await, b"hello");
    step.expect(a, "node-a", ba, "allow", None).await;
    step.expect(b, "node-b", bb, "allow", None).await;

    // Refused by policy: node-b answers 401, node-a counts the refusal as policy too.
    let (ba, bb) = (step.before(a, "node-a"), step.before(b, "node-b"));
    assert!(
        read_all(dial(a, &web, mesh.addr("2.21", NAME)).await)
            .await
            .is_empty()
    );
    step.expect(a, "node-a", ba, "deny", Some("policy")).await;
    step.expect(b, "node-b", bb, "deny", Some("policy")).await;

    // Refused by STRICT: plaintext straight to db-1 on node-b's inbound plaintext path.
    let bb = step.before(b, "node-b");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    b.inbound_plaintext_entry(accepted, mesh.addr("2.21", ECHO));
    assert!(read_all(client).await.is_empty());
    step.expect(b, "node-b", bb, "refused", Some("strict_mtls"))
        .await;

    // Pod unreachable: nothing listens on db-1:7777.
    let (ba, bb) = (step.before(a, "node-a"), step.before(b, "node-b"));
    assert!(
        read_all(dial(a, &web, mesh.addr("2.21", CLOSED)).await)
            .await
            .is_empty()
    );
    step.expect(a, "node-a", ba, "refused", Some("upstream_connect"))
        .await;
    step.expect(b, "node-b", bb, "refused", Some("upstream_connect"))
        .await;

    // Reset by the pod mid-connection: served, then ended; still one line each.
    let (ba, bb) = (step.before(a, "node-a"), step.before(b, "node-b"));
    let mut s = dial(a, &web, mesh.addr("2.21", RESET)).await;
    s.write_all(b"x").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    drop(s);
    step.expect(a, "node-a", ba, "allow", None).await;
    step.expect(b, "node-b", bb, "allow", None).await;
}

const L7_ON_DB: &str = r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: db-http, namespace: shop}
    spec:
      action: ALLOW
      selector: {matchLabels: {app: db}}
      rules: [{to: [{operation: {methods: ["GET"], paths: ["/*"]}}]}]
"#;

/// One HTTP/1.1 request with `Connection: close`; the whole answer.
async fn http_get(mut s: TcpStream, path: &str) -> String {
    let head = format!("GET {path} HTTP/1.1\r\nhost: db.shop\r\nconnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_their_response_flags_to_metrics() {
    let (mesh, _logs) = start(L7_ON_DB).await;
    let web = mesh.web();
    let ok = http_get(
        dial(&mesh.a, &web, mesh.addr("2.21", support::HTTP)).await,
        "/a",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // About one run in six on a loaded machine, this tunnel closes without an answer (seen
    // before this test existed; not root-caused yet): try again, the flags below stay exact.
    let mut down = String::new();
    for _ in 0..5 {
        down = http_get(dial(&mesh.a, &web, mesh.addr("2.21", CLOSED)).await, "/b").await;
        if !down.is_empty() {
            break;
        }
    }
    assert!(down.starts_with("HTTP/1.1 503"), "{down}");

    let local = "127.0.0.1:0".parse().unwrap();
    let admin = mesh.b.serve_admin(local, local, local).unwrap();
    let mut s = TcpStream::connect(admin.metrics_addr()).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    let flags_of = |code: &str| -> Vec<&str> {
        requests
            .iter()
            .filter(|l| l.contains(&format!("response_code=\"{code}\"")))
            .filter_map(|l| l.split("response_flags=\"").nth(1)?.split('"').next())
            .collect()
    };
    assert_eq!(flags_of("200"), ["-"], "{requests:#?}");
    assert_eq!(flags_of("503"), ["UF"], "{requests:#?}");
}
