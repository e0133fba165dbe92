//! `nodemesh policy` as a user runs it: real process, real files, exit status 0/1/2.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

const POLICIES: &str = "\
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: shop}
spec:
  rules:
  - from: [{source: {namespaces: [client]}}]
---
# an Istio object in the same file
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
";

fn nodemesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodemesh"))
        .arg("policy")
        .args(args)
        .output()
        .unwrap()
}

fn check(file: &str, extra: &[&str]) -> Output {
    let base = [
        "check",
        "--policies",
        file,
        "--destination-namespace",
        "shop",
        "--destination-port",
        "8080",
    ];
    nodemesh(&[&base[..], extra].concat())
}

#[test]
fn check_exit_status_is_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    std::fs::write(&file, POLICIES).unwrap();
    let file = file.to_str().unwrap();
    let client = ["--source-principal", "cluster.local/ns/client/sa/curl"];

    let out = check(file, &[&client[..], &["--method", "GET"]].concat());
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let out = check(
        file,
        &[&client[..], &["--method", "delete", "--output", "json"]].concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verdict"], "deny");
    assert_eq!(json["policy"], "shop/deny-delete");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("{\"verdict\":\"deny\",\"policy\""));

    // Bad input of every kind exits 2, never 1.
    let out = check(file, &["--destination-port", "http"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = check("/nonexistent/policies.yaml", &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        POLICIES.replace("namespaces: [client]", "ipBlocks: [300.1.1.1]"),
    )
    .unwrap();
    let out = check(bad.to_str().unwrap(), &client);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml: shop/allow-client: spec.rules[0].from[0].source.ipBlocks[0]: invalid IP address or CIDR \"300.1.1.1\""),
        "{stderr}"
    );
}

#[test]
fn explain_and_lint() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    std::fs::write(&file, POLICIES).unwrap();
    let file = file.to_str().unwrap();
    let out = nodemesh(&[
        "explain",
        "--policies",
        file,
        "--destination-namespace",
        "shop",
        "--destination-port",
        "80",
        "--source-namespace",
        "batch",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("source namespace \"batch\" matches none of [\"client\"]"),
        "{text}"
    );
    assert!(text.contains("verdict: DENY"), "{text}");

    let out = nodemesh(&["lint", file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        POLICIES.replace("action: DENY", "action: DENY\n  selectr: {}"),
    )
    .unwrap();
    let out = nodemesh(&["lint", file, bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad.yaml: shop/deny-delete: spec.selectr: unknown field `selectr`"),
        "{text}"
    );
}

/// Policies for [`explain_agrees_with_the_proxy_admin`], as JSON objects: one file for the CLI,
/// the same objects in the proxy's config.
const SHARED_POLICIES: [&str; 3] = [
    r#"{"apiVersion": "security.nodemesh.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-client", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "rules": [{"from": [{"source": {"namespaces": ["client"]}}],
                            "to": [{"operation": {"paths": ["/api/*"]}}],
                            "when": [{"key": "request.headers[x-user]", "values": ["alice"]}]}]}}"#,
    r#"{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-admin", "namespace": "shop"},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}}"#,
    r#"{"apiVersion": "security.nodemesh.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "mesh-deny-batch", "namespace": "nodemesh-system"},
        "spec": {"action": "DENY",
                 "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/batch/sa/*"]}}]}]}}"#,
];

/// A running `nodemesh proxy` (no capture, no CA reachable: `/policy/explain` needs neither),
/// killed on drop.
struct Proxy {
    child: std::process::Child,
    admin: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn start(dir: &std::path::Path) -> Proxy {
        use std::io::{BufRead, BufReader, Read};
        nodemesh_ca::RootSource::state_dir(dir.join("ca"))
            .init(
                &"cluster.local".parse().unwrap(),
                std::time::SystemTime::now(),
            )
            .unwrap();
        let config = dir.join("mesh.yaml");
        std::fs::write(
            &config,
            format!(
                "ca: {{address: \"https://127.0.0.1:1\", rootCert: ca/trust-bundle.pem}}\n\
                 nodes: [{{name: node-a, address: 127.200.0.1, podCIDR: 127.200.1.0/24}}]\n\
                 workloads: [{{name: web-1, namespace: shop, ip: 127.200.1.11, node: node-a}}]\n\
                 policies: [{}]\n",
                SHARED_POLICIES.join(", ")
            ),
        )
        .unwrap();
        let token = dir.join("ca-token");
        std::fs::write(&token, "token-of-node-a-0123456789\n").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodemesh"))
            .args([
                "proxy",
                "--node",
                "node-a",
                "--no-capture",
                "--flow-log",
                "off",
            ])
            .args(["--outbound-addr", "127.0.0.1:0"])
            .args(["--inbound-addr", "127.0.0.1:0"])
            .args(["--inbound-plaintext-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--readiness-addr", "127.0.0.1:0"])
            .arg("--config")
            .arg(&config)
            .arg("--ca-token-file")
            .arg(&token)
            .arg("--state-dir")
            .arg(dir)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut proxy = Proxy {
            child,
            admin: String::new(),
        };
        let mut line = String::new();
        while !line.contains("nodemesh proxy:") {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "proxy exited early"
            );
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = stderr.read_to_string(&mut sink);
        });
        let rest = &line[line.find("admin ").unwrap() + "admin ".len()..];
        proxy.admin = rest.split([',', ' ']).next().unwrap().to_owned();
        proxy
    }

    /// `GET /policy/explain?<pairs>`: the status and body.
    fn explain(&self, pairs: &[(&str, &str)]) -> (u16, String) {
        use std::io::{Read, Write};
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        let mut s = std::net::TcpStream::connect(&self.admin).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        write!(
            s,
            "GET /policy/explain?{} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            query.join("&")
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head[9..12].parse().unwrap(), body.to_owned())
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The same query as `nodemesh policy explain` flags.
fn explain_flags(policies: &str, pairs: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "explain".to_owned(),
        "--policies".to_owned(),
        policies.to_owned(),
        "--output".to_owned(),
        "json".to_owned(),
    ];
    for (k, v) in pairs {
        args.push(format!("--{k}"));
        args.push((*v).to_owned());
    }
    Command::new(env!("CARGO_BIN_EXE_nodemesh"))
        .arg("policy")
        .args(&args)
        .output()
        .unwrap()
}

#[test]
fn explain_agrees_with_the_proxy_admin() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    std::fs::write(&file, SHARED_POLICIES.join("\n---\n")).unwrap();
    let file = file.to_str().unwrap();
    let proxy = Proxy::start(dir.path());
    let web = [
        ("destination-namespace", "shop"),
        ("destination-labels", "app=web,tier=front"),
        ("destination-port", "8080"),
    ];
    let queries: Vec<Vec<(&str, &str)>> = vec![
        // Not HTTP, plaintext.
        web.to_vec(),
        // HTTP from client, header name in another case, principal with spiffe://, the
        // namespace taken from it: allowed.
        [
            &web[..],
            &[
                (
                    "source-principal",
                    "spiffe://cluster.local/ns/client/sa/curl",
                ),
                ("source-ip", "10.1.0.7"),
                ("destination-ip", "10.1.0.11"),
                ("method", "GET"),
                ("path", "/api/orders?x=1"),
                ("host", "web.shop:8080"),
                ("header", "X-User: alice"),
            ],
        ]
        .concat(),
        // The default path `/` is not under /api/.
        [
            &web[..],
            &[
                ("source-principal", "cluster.local/ns/client/sa/curl"),
                ("method", "GET"),
                ("header", "x-user:alice"),
            ],
        ]
        .concat(),
        // Denied by the DENY (merged slashes) and by the root namespace's policy.
        [
            &web[..],
            &[
                ("source-principal", "cluster.local/ns/batch/sa/job"),
                ("method", "POST"),
                ("path", "//admin/x"),
            ],
        ]
        .concat(),
    ];
    for query in &queries {
        let cli = explain_flags(file, query);
        assert!(
            matches!(cli.status.code(), Some(0 | 1)),
            "{query:?}: {cli:?}"
        );
        let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
        let (status, body) = proxy.explain(query);
        assert_eq!(status, 200, "{query:?}: {body}");
        let admin: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(cli, admin, "{query:?}");
    }
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&explain_flags(file, &queries[1]).stdout)
            .unwrap()["verdict"],
        "allow",
        "the queries cover an allow too"
    );

    // Bad queries: the same refusal from both.
    for bad in [
        &[
            ("source-principal", "cluster.local/ns/client"),
            ("method", "GET"),
        ][..],
        &[
            ("source-principal", "td/ns/a/sa/b"),
            ("source-namespace", "b"),
        ],
        &[("header", "X-User: alice")],
        &[("destination-labels", "app")],
    ] {
        let query = [&web[..], bad].concat();
        let cli = explain_flags(file, &query);
        assert_eq!(cli.status.code(), Some(2), "{query:?}: {cli:?}");
        let cli = String::from_utf8(cli.stderr).unwrap();
        let (status, body) = proxy.explain(&query);
        assert_eq!(status, 400, "{query:?}: {body}");
        assert_eq!(cli, format!("error: {body}"), "{query:?}");
    }
}
