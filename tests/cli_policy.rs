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

const SUGGEST_CONFIG: &str = "\
nodes: [{name: node-a, address: 10.200.0.1, podCIDR: 10.200.1.0/24}]
namespaces:
- {name: shop, labels: {nodemesh.io/mesh: enabled}}
- {name: front, labels: {nodemesh.io/mesh: enabled}}
workloads:
- {name: web-1, namespace: shop, ip: 10.200.1.11, node: node-a, serviceAccount: web,
   labels: {app: web, pod-template-hash: aaa}}
- {name: web-2, namespace: shop, ip: 10.200.1.12, node: node-a, serviceAccount: web,
   labels: {app: web, pod-template-hash: bbb}}
- {name: client, namespace: shop, ip: 10.200.1.13, node: node-a, serviceAccount: client,
   labels: {app: client}}
- {name: ui, namespace: front, ip: 10.200.1.21, node: node-a, serviceAccount: ui, labels: {app: ui}}
";

/// A flow-log line as the proxy writes it (`proxy/src/observe/record.rs`).
fn flow_line(time: &str, src: (&str, &str), dst: (&str, u16), verdict: &str) -> String {
    let (src_ip, src_id) = src;
    let (dst_ip, dst_port) = dst;
    let identity = (!src_id.is_empty()).then(|| format!("spiffe://cluster.local/{src_id}"));
    serde_json::json!({
        "time": time, "direction": "inbound",
        "src": {"workload": null, "namespace": null, "identity": identity, "ip": src_ip, "port": 40312},
        "dst": {"workload": null, "namespace": null, "identity": null, "ip": dst_ip, "port": dst_port},
        "service": null, "verdict": verdict, "policy": null, "reason": null,
        "bytes_sent": 512, "bytes_received": 128, "duration_ms": 12,
    })
    .to_string()
}

#[test]
fn suggest_writes_network_and_authorization_policies_that_load() {
    use std::io::Write as _;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, SUGGEST_CONFIG).unwrap();
    let t = "2025-01-02T03:04:05.678Z";
    let ui = ("10.200.1.21", "ns/front/sa/ui");
    let client = ("10.200.1.13", "ns/shop/sa/client");
    let log = [
        flow_line(t, ui, ("10.200.1.11", 8080), "allow"),
        flow_line(t, client, ("10.200.1.12", 9090), "allow"),
        "{\"time\": truncated".to_owned(),
        flow_line(t, ("192.0.2.9", ""), ("10.200.1.11", 8080), "allow"),
        flow_line(t, ui, ("10.200.1.12", 7070), "deny"),
        flow_line("2025-01-01T00:00:00Z", ui, ("10.200.1.12", 6060), "allow"),
    ]
    .join("\n");
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(&flows, log).unwrap();
    let out_file = dir.path().join("suggested.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodemesh"))
        .args(["policy", "suggest", "--config", config.to_str().unwrap()])
        .args([flows.to_str().unwrap(), "-"])
        .args(["--since", "2025-01-02T00:00:00Z", "--default-deny"])
        .args(["--output", out_file.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Standard input: one more flow (web calls ui), and a second malformed line.
    let stdin_log = flow_line(
        t,
        ("10.200.1.11", "ns/shop/sa/web"),
        ("10.200.1.21", 3000),
        "allow",
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{stdin_log}\nnot json\n").as_bytes())
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("flows.jsonl:3: skipped: "), "{stderr}");
    assert!(stderr.contains("-:2: skipped: expected ident"), "{stderr}");

    let yaml = std::fs::read_to_string(&out_file).unwrap();
    assert!(
        yaml.starts_with("# Suggested by `nodemesh policy suggest`"),
        "{yaml}"
    );
    assert!(
        yaml.contains("# flows read: 6, counted: 4, skipped lines: 2\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains("# window: from 2025-01-02T00:00:00Z to the last flow (outside it: 1)\n"),
        "{yaml}"
    );
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    let docs: Vec<_> = docs.into_iter().filter(|d| !d.is_null()).collect();
    let names: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{} {}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["namespace"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "NetworkPolicy front/ui-ingress-suggested",
            "NetworkPolicy shop/web-ingress-suggested",
            "AuthorizationPolicy front/ui-ingress-suggested",
            "AuthorizationPolicy shop/web-ingress-suggested",
            "NetworkPolicy front/default-deny-suggested",
            "NetworkPolicy shop/default-deny-suggested",
        ]
    );

    // Every NetworkPolicy is a Kubernetes NetworkPolicy: it deserializes into the API type and
    // serializes back to the same object (no unknown or mistyped field).
    for doc in docs.iter().filter(|d| d["kind"] == "NetworkPolicy") {
        let np: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(&serde_json::to_value(&np).unwrap(), doc);
    }
    let web = &docs[1]["spec"];
    assert_eq!(
        web["podSelector"],
        serde_json::json!({"matchLabels": {"app": "web"}})
    );
    assert_eq!(
        web["ingress"],
        serde_json::json!([
            {"from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "front"}},
                 "podSelector": {"matchLabels": {"app": "ui"}}},
                {"ipBlock": {"cidr": "192.0.2.9/32"}}],
             "ports": [{"protocol": "TCP", "port": 8080}]},
            {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
             "ports": [{"protocol": "TCP", "port": 9090}]},
        ])
    );

    // The AuthorizationPolicies lint clean and admit exactly what was observed.
    let authz: Vec<&str> = yaml
        .split("\n---\n")
        .filter(|d| d.contains("kind: AuthorizationPolicy"))
        .collect();
    let authz_file = dir.path().join("authz.yaml");
    std::fs::write(&authz_file, authz.join("\n---\n")).unwrap();
    let authz_file = authz_file.to_str().unwrap();
    let out = nodemesh(&["lint", authz_file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = std::fs::read_to_string(authz_file).unwrap();
    let policies = nodemesh_policy::load::load_texts(&[("authz.yaml".to_owned(), text)]).unwrap();
    assert_eq!(policies.len(), 2);
    let decide = |principal: &str, port: &str| {
        let out = nodemesh(&[
            "check",
            "--policies",
            authz_file,
            "--destination-namespace",
            "shop",
            "--destination-labels",
            "app=web",
            "--destination-port",
            port,
            "--source-principal",
            principal,
        ]);
        out.status.code()
    };
    assert_eq!(decide("cluster.local/ns/front/sa/ui", "8080"), Some(0));
    assert_eq!(decide("cluster.local/ns/shop/sa/client", "9090"), Some(0));
    // Denied and out-of-window flows were left out; so is anything never seen.
    assert_eq!(decide("cluster.local/ns/front/sa/ui", "7070"), Some(1));
    assert_eq!(decide("cluster.local/ns/front/sa/ui", "6060"), Some(1));
    assert_eq!(decide("cluster.local/ns/shop/sa/client", "8080"), Some(1));
}

#[test]
fn suggest_needs_the_config_and_a_valid_window() {
    let out = nodemesh(&["suggest", "-"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--config <FILE>"),
        "{out:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, SUGGEST_CONFIG).unwrap();
    let config = config.to_str().unwrap();
    let out = nodemesh(&[
        "suggest",
        "--config",
        config,
        "--since",
        "yesterday",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("error: --since: \"yesterday\" is not an RFC 3339 time"),
        "{out:?}"
    );
    let out = nodemesh(&["suggest", "--config", config, "/nonexistent/flows.jsonl"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("error: cannot read /nonexistent/flows.jsonl"),
        "{out:?}"
    );
}
