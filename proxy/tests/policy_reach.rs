//! Policy reaches open connections (standalone YAML, reloaded): a new DENY, a removed ALLOW or
//! a deleted pod cuts a running transfer within a second of the destination's proxy taking the
//! change, as `policy_changed` in its metrics and flow log, while a connection the change still
//! allows keeps running; a keep-alive L7 connection's next request is decided against the new
//! policies.
#![allow(clippy::unwrap_used)]

use nodemesh_test_support::mesh as support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nodemesh_proxy::ProxyHandle;
use nodemesh_proxy::observe::FlowLogTarget;
use support::{ECHO, HTTP, Mesh, dial};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How soon after the change a cut must land.
const CUT_WITHIN: Duration = Duration::from_secs(1);

fn allow_db_from(principals: &str) -> String {
    format!(
        r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {{name: db-callers, namespace: shop}}
    spec:
      action: ALLOW
      selector: {{matchLabels: {{app: db}}}}
      rules: [{{from: [{{source: {{principals: [{principals}]}}}}]}}]
"#
    )
}

const DENY_WEB: &str = r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: no-web, namespace: shop}
    spec:
      action: DENY
      selector: {matchLabels: {app: db}}
      rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]}]
"#;

fn flow_log(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("flows-{node}.json"))
}

async fn start(policies: &str) -> (Mesh, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mesh = Mesh::start_with(policies, move |o| {
        o.flow_log = FlowLogTarget::File(flow_log(&path, &o.node));
        o.l7_limits.sniff_timeout = Duration::from_secs(5);
    })
    .await;
    (mesh, dir)
}

/// A transfer that runs until its connection is cut: echo rounds of 16 KiB, counted.
struct Transfer {
    rounds: Arc<AtomicU64>,
    ended: JoinHandle<Instant>,
}

fn transfer(mut s: TcpStream) -> Transfer {
    let rounds = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&rounds);
    let ended = tokio::spawn(async move {
        let data = vec![7u8; 16 * 1024];
        let mut back = vec![0u8; data.len()];
        loop {
            if s.write_all(&data).await.is_err() || s.read_exact(&mut back).await.is_err() {
                return Instant::now();
            }
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    Transfer { rounds, ended }
}

impl Transfer {
    /// Waits until it has moved `n` more rounds (it is running).
    async fn advances(&self, n: u64) {
        let from = self.rounds.load(Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.rounds.load(Ordering::Relaxed) < from + n {
                assert!(!self.ended.is_finished(), "the transfer was cut");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the transfer moves");
    }
}

/// Applies `change` and returns when `proxy` has taken it (its state was replaced).
async fn apply(proxy: &ProxyHandle, change: impl FnOnce()) -> Instant {
    let mut changes = proxy.store().subscribe();
    change();
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("the proxy reloads the file")
        .unwrap();
    Instant::now()
}

/// Asserts `t` ends within [`CUT_WITHIN`] of `applied`.
async fn cut_within(t: Transfer, applied: Instant) {
    let ended = tokio::time::timeout(Duration::from_secs(10), t.ended)
        .await
        .expect("the transfer is cut")
        .unwrap();
    let late = ended.saturating_duration_since(applied);
    assert!(late < CUT_WITHIN, "cut {late:?} after the change");
}

fn refused_policy_changed(proxy: &ProxyHandle) -> u64 {
    let metrics = proxy.metrics().render();
    metrics
        .lines()
        .find(|l| l.starts_with("nodemesh_connections_refused_total{reason=\"policy_changed\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

/// The flow-log lines of `node` with reason `policy_changed`, once some are written.
async fn policy_changed_lines(dir: &Path, node: &str) -> Vec<serde_json::Value> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let lines: Vec<serde_json::Value> = std::fs::read_to_string(flow_log(dir, node))
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .filter(|l: &serde_json::Value| l["reason"] == "policy_changed")
                .collect();
            if !lines.is_empty() {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a policy_changed flow-log line")
}

/// web-1 (node-a) and local-1 (node-a) each run a transfer to db-1 (node-b, over HBONE).
async fn two_transfers(mesh: &Mesh) -> (Transfer, Transfer) {
    let db = mesh.addr("2.21", ECHO);
    let web = transfer(dial(&mesh.a, &mesh.web(), db).await);
    let local = transfer(dial(&mesh.a, &mesh.ip("1.12"), db).await);
    web.advances(5).await;
    local.advances(5).await;
    (web, local)
}

#[tokio::test]
async fn a_new_deny_cuts_a_running_transfer_and_spares_the_allowed_one() {
    let (mesh, dir) = start("").await;
    let (web, local) = two_transfers(&mesh).await;
    assert_eq!(refused_policy_changed(&mesh.b), 0);

    let applied = apply(&mesh.b, || mesh.write_policies(DENY_WEB)).await;
    cut_within(web, applied).await;
    local.advances(20).await;

    assert_eq!(refused_policy_changed(&mesh.b), 1);
    let lines = policy_changed_lines(dir.path(), "node-b").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["verdict"], "deny");
    assert_eq!(lines[0]["policy"], "shop/no-web");
    // The verified peer identity (in-process, HBONE arrives from 127.0.0.1, on no node, so
    // `forwarded` is not believed and the source workload is not named).
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    assert_eq!(lines[0]["src"]["identity"], web, "{}", lines[0]);
}

#[tokio::test]
async fn a_removed_allow_cuts_the_transfer_it_allowed() {
    let both = r#""cluster.local/ns/shop/sa/web", "cluster.local/ns/shop/sa/local""#;
    let (mesh, _dir) = start(&allow_db_from(both)).await;
    let (web, local) = two_transfers(&mesh).await;

    let only_local = allow_db_from(r#""cluster.local/ns/shop/sa/local""#);
    let applied = apply(&mesh.b, || mesh.write_policies(&only_local)).await;
    cut_within(web, applied).await;
    local.advances(20).await;
    assert_eq!(refused_policy_changed(&mesh.b), 1);
}

#[tokio::test]
async fn a_deleted_pod_loses_its_connections() {
    let (mesh, dir) = start("").await;
    let db1 = transfer(dial(&mesh.a, &mesh.web(), mesh.addr("2.21", ECHO)).await);
    let db2 = transfer(dial(&mesh.a, &mesh.web(), mesh.addr("2.22", ECHO)).await);
    db1.advances(5).await;
    db2.advances(5).await;

    // db-1 leaves the file; its pod (the echo server) still answers, but is no workload.
    let db1_line = format!("ip: {}, node: node-b", mesh.ip("2.21"));
    let base = support::base(mesh.n);
    let without: String = base
        .lines()
        .filter(|l| !l.contains(&db1_line))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(without.len(), base.len());
    let applied = apply(&mesh.b, || {
        std::fs::write(&mesh.config, format!("{}{without}", mesh.ca_section)).unwrap();
    })
    .await;
    cut_within(db1, applied).await;
    db2.advances(20).await;
    let lines = policy_changed_lines(dir.path(), "node-b").await;
    assert_eq!(lines[0]["dst"]["ip"], mesh.ip("2.21"), "{lines:?}");
}

/// Sends a keep-alive HTTP/1.1 GET and reads one response; its status.
async fn get(s: &mut TcpStream, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nhost: db\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "connection closed");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.unwrap();
    head[9..12].parse().unwrap()
}

const L7_ALLOW: &str = r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: db-reads, namespace: shop}
    spec:
      action: ALLOW
      selector: {matchLabels: {app: db}}
      rules: [{to: [{operation: {methods: ["GET"], paths: ["/a", "/b"]}}]}]
"#;

#[tokio::test]
async fn a_keep_alive_connection_s_next_request_meets_the_new_policy() {
    let (mesh, _dir) = start(L7_ALLOW).await;
    let mut s = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", HTTP)).await;
    assert_eq!(get(&mut s, "/a").await, 200);
    assert_eq!(get(&mut s, "/b").await, 200);

    apply(&mesh.b, || {
        mesh.write_policies(&L7_ALLOW.replace(r#", "/b""#, ""))
    })
    .await;
    // The same connection: still admitted (its destination needs L7), each request decided now.
    assert_eq!(get(&mut s, "/b").await, 403);
    assert_eq!(get(&mut s, "/a").await, 200);
}
