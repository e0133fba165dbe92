//! `nodemesh policy`: decide, explain and lint AuthorizationPolicies offline, with the same engine
//! the proxy runs, and suggest policies from flow logs.

mod suggest;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use nodemesh_policy::lint::lint_files;
use nodemesh_policy::{
    DEFAULT_ROOT_NAMESPACE, EngineOptions, PolicySet, TrafficField, TrafficQuery, Verdict,
    load_files,
};

/// Check, explain and lint AuthorizationPolicies (`security.nodemesh.io/v1`, and Istio's
/// `security.istio.io/v1` and `v1beta1`).
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Decide one connection, or one HTTP request with `--method`, against policy files.
    ///
    /// Prints the verdict, the deciding policy and the reason. Exit status: 0 allow, 1 deny,
    /// 2 bad input (unreadable file, a policy that does not compile, a bad flag).
    Check(TrafficArgs),
    /// Like `check`, but prints every applicable policy, rule and clause with whether it matched
    /// and why not, then the verdict: the answer to "why was I denied?". Same exit status.
    Explain(TrafficArgs),
    /// Print every problem of policy files, one per line as `FILE: ns/name: field: reason`.
    ///
    /// Exit status: 0 when every file is clean, 2 otherwise.
    Lint(LintArgs),
    /// Write the least NetworkPolicies and AuthorizationPolicies that admit exactly the flows
    /// of flow logs, as YAML for `kubectl apply`.
    ///
    /// Counts flows with verdict allow or passthrough (and deny with --include-denied) in the
    /// window; selectors are the labels of the config's workloads. Malformed lines are skipped
    /// and reported on stderr. Exit status: 0, or 2 on bad input (a flag, the config, an
    /// unreadable file).
    Suggest(suggest::SuggestArgs),
}

/// How to print a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON object.
    Json,
}

/// The policies, and the traffic to decide (checked by [`TrafficQuery`], as the proxy's
/// `/policy/explain` checks its query string).
#[derive(Debug, clap::Args)]
pub struct TrafficArgs {
    /// Multi-document YAML of AuthorizationPolicy objects (repeat the flag for more files).
    #[arg(
        long = "policies",
        value_name = "FILE",
        required_unless_present = "config"
    )]
    policies: Vec<PathBuf>,
    /// A standalone mesh config: its NetworkPolicies and ClusterNetworkPolicies decide the
    /// connection from --source-ip to --destination-ip with the pods' and namespaces' labels,
    /// beside the AuthorizationPolicies (the config's own `policies` unless --policies is given).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Namespace of the destination workload.
    #[arg(long, value_name = "NS")]
    destination_namespace: String,
    /// Labels of the destination workload (`k=v`, comma-separated or repeated).
    #[arg(long, value_name = "K=V")]
    destination_labels: Vec<String>,
    /// Destination port.
    #[arg(long, value_name = "PORT")]
    destination_port: String,
    /// Destination IP address.
    #[arg(long, value_name = "IP")]
    destination_ip: Option<String>,
    /// The caller's identity, `TRUST-DOMAIN/ns/NS/sa/SA` (with or without `spiffe://`); none
    /// means a plaintext caller.
    #[arg(long, value_name = "PRINCIPAL")]
    source_principal: Option<String>,
    /// The caller's namespace (default: the principal's).
    #[arg(long, value_name = "NS")]
    source_namespace: Option<String>,
    /// The caller's IP address.
    #[arg(long, value_name = "IP")]
    source_ip: Option<String>,
    /// HTTP method; without it the stream is not HTTP.
    #[arg(long)]
    method: Option<String>,
    /// HTTP request path, query included, normalized by the engine (needs --method) [default: /].
    #[arg(long)]
    path: Option<String>,
    /// HTTP Host (needs --method).
    #[arg(long)]
    host: Option<String>,
    /// HTTP header `Name: value`, names case-insensitive (needs --method; repeat for more).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, value_name = "NS", default_value = DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    /// DANGEROUS: decode %2F and %5C in paths instead of denying such requests.
    #[arg(long)]
    decode_escaped_slashes: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

impl TrafficArgs {
    /// The traffic flags as `(name, value)` pairs, named like the flags.
    fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        use TrafficField as F;
        let single = [
            (F::DestinationNamespace, Some(&self.destination_namespace)),
            (F::DestinationPort, Some(&self.destination_port)),
            (F::DestinationIp, self.destination_ip.as_ref()),
            (F::SourcePrincipal, self.source_principal.as_ref()),
            (F::SourceNamespace, self.source_namespace.as_ref()),
            (F::SourceIp, self.source_ip.as_ref()),
            (F::Method, self.method.as_ref()),
            (F::Path, self.path.as_ref()),
            (F::Host, self.host.as_ref()),
        ];
        let repeated = (self
            .destination_labels
            .iter()
            .map(|v| (F::DestinationLabels, v)))
        .chain(self.headers.iter().map(|v| (F::Header, v)));
        single
            .into_iter()
            .filter_map(|(f, v)| Some((f, v?)))
            .chain(repeated)
            .map(|(f, v)| (f.name(), v.as_str()))
    }
}

/// The files to lint.
#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Multi-document YAML files of AuthorizationPolicy objects.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// What a subcommand prints and its exit status.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    stdout: String,
    stderr: String,
    code: u8,
}

impl Outcome {
    fn bad_input(message: String) -> Self {
        Outcome {
            stdout: String::new(),
            stderr: message,
            code: 2,
        }
    }
}

/// Runs a `nodemesh policy` subcommand and returns the process's exit status.
pub fn run(cmd: PolicyCommand) -> ExitCode {
    let outcome = match cmd {
        PolicyCommand::Check(args) => decide(&args, false),
        PolicyCommand::Explain(args) => decide(&args, true),
        PolicyCommand::Lint(args) => lint(&args),
        PolicyCommand::Suggest(args) => suggest::suggest(&args, std::io::stdin().lock()),
    };
    // A closed pipe (`| head`) must not become a panic; the exit status still tells.
    let _ = std::io::stdout()
        .lock()
        .write_all(outcome.stdout.as_bytes());
    let _ = std::io::stderr()
        .lock()
        .write_all(outcome.stderr.as_bytes());
    ExitCode::from(outcome.code)
}

/// `check` (or `explain`): load, decide, print.
fn decide(args: &TrafficArgs, explain: bool) -> Outcome {
    let query = match TrafficQuery::from_pairs(args.pairs()) {
        Ok(q) => q,
        Err(e) => return Outcome::bad_input(format!("error: {e}\n")),
    };
    let state = match args.config.as_deref().map(mesh_state).transpose() {
        Ok(state) => state,
        Err(message) => return Outcome::bad_input(message),
    };
    let policies = if args.policies.is_empty()
        && let Some(state) = &state
    {
        state.policies().policies().to_vec()
    } else {
        match load_files(&args.policies) {
            Ok(p) => p,
            Err(problems) => {
                let mut stderr = String::new();
                for p in problems {
                    let _ = writeln!(stderr, "{p}");
                }
                return Outcome::bad_input(stderr);
            }
        }
    };
    let mut options = EngineOptions {
        root_namespace: args.root_namespace.clone(),
        ..EngineOptions::default()
    };
    options.path.decode_escaped_slashes = args.decode_escaped_slashes;
    let set = PolicySet::new(policies, options);
    let conn = query.connection();
    let network = match &state {
        Some(state) => match network_decision(state, &conn) {
            Ok(n) => Some(n),
            Err(message) => return Outcome::bad_input(message),
        },
        None => None,
    };
    let req = query.request();
    let (verdict, mut stdout) = if explain {
        let e = set.explain(&conn, req.as_ref());
        let out = match args.output {
            Output::Text => e.to_string(),
            Output::Json => json_line(serde_json::to_string(&e)),
        };
        (e.verdict, out)
    } else {
        let d = match &req {
            Some(r) => set.decide_request(&conn, r),
            None => set.decide_connection(&conn),
        };
        let out = match args.output {
            Output::Text => format!("{d}\n"),
            Output::Json => json_line(serde_json::to_string(&d)),
        };
        (d.verdict, out)
    };
    let mut verdict = verdict;
    if let Some((net_verdict, text, json)) = network {
        if net_verdict == Verdict::Deny {
            verdict = Verdict::Deny;
        }
        stdout = match args.output {
            Output::Text => format!("{text}authorization policy:\n{stdout}"),
            Output::Json => {
                let mut value: serde_json::Value =
                    serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
                value["network"] = json;
                value["verdict"] = verdict.as_str().into();
                json_line(serde_json::to_string(&value))
            }
        };
    }
    Outcome {
        stdout,
        stderr: String::new(),
        code: match verdict {
            Verdict::Allow => 0,
            Verdict::Deny => 1,
        },
    }
}

/// The state of a standalone config, for its network policies (any node: their decisions do
/// not depend on which node asks).
fn mesh_state(path: &std::path::Path) -> Result<nodemesh_state::MeshState, String> {
    let config = nodemesh_config::Config::from_file(path).map_err(|e| format!("{e}\n"))?;
    let node = config
        .nodes()
        .first()
        .map(|n| n.name.clone())
        .ok_or_else(|| format!("{}: no nodes\n", path.display()))?;
    nodemesh_state::MeshState::new(config, &node).map_err(|e| format!("{e}\n"))
}

/// The network policies' decision on `conn` (which must name both IPs), as (verdict, text,
/// JSON).
fn network_decision(
    state: &nodemesh_state::MeshState,
    conn: &nodemesh_policy::Connection<'_>,
) -> Result<(Verdict, String, serde_json::Value), String> {
    let (Some(ip), Some(destination)) = (conn.source.ip, conn.destination.ip) else {
        return Err("error: --config needs --source-ip and --destination-ip\n".to_owned());
    };
    let identity = conn
        .source
        .principal
        .map(|p| {
            let p = p.strip_prefix("spiffe://").unwrap_or(p);
            nodemesh_identity::SpiffeId::new(&format!("spiffe://{p}"))
                .map_err(|e| format!("error: --source-principal: {e}\n"))
        })
        .transpose()?;
    let source = match &identity {
        Some(identity) => nodemesh_state::FlowSource::Verified { ip, identity },
        None => nodemesh_state::FlowSource::Address(ip),
    };
    let protocol = nodemesh_policy::netpol::Protocol::Tcp;
    let port = conn.destination.port;
    let d = state.decide_network(source, destination, protocol, port);
    Ok((
        d.verdict,
        d.to_text(protocol, port),
        d.to_json(protocol, port),
    ))
}

fn json_line(json: serde_json::Result<String>) -> String {
    match json {
        Ok(s) => s + "\n",
        Err(e) => format!("{{\"error\":{:?}}}\n", e.to_string()),
    }
}

fn lint(args: &LintArgs) -> Outcome {
    let problems = lint_files(&args.files);
    let mut stdout = String::new();
    for p in &problems {
        let _ = writeln!(stdout, "{p}");
    }
    if problems.is_empty() {
        for f in &args.files {
            let _ = writeln!(stdout, "{}: ok", f.display());
        }
    }
    Outcome {
        stdout,
        stderr: String::new(),
        code: if problems.is_empty() { 0 } else { 2 },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: PolicyCommand,
    }

    const POLICIES: &str = "\
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {namespaces: [client]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ['/admin*']}}]}]
";

    fn outcome(dir: &tempfile::TempDir, args: &[&str]) -> Outcome {
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, POLICIES).unwrap();
        let file = file.display().to_string();
        let argv: Vec<String> = std::iter::once("policy".to_owned())
            .chain(args.iter().map(|a| a.replace("FILE", &file)))
            .collect();
        match Cli::try_parse_from(argv).unwrap().cmd {
            PolicyCommand::Check(a) => decide(&a, false),
            PolicyCommand::Explain(a) => decide(&a, true),
            PolicyCommand::Lint(a) => lint(&a),
            PolicyCommand::Suggest(a) => suggest::suggest(&a, std::io::empty()),
        }
    }

    const BASE: [&str; 8] = [
        "--policies",
        "FILE",
        "--destination-namespace",
        "shop",
        "--destination-labels",
        "app=web,tier=front",
        "--destination-port",
        "8080",
    ];

    fn with(extra: &[&'static str]) -> Vec<&'static str> {
        BASE.iter().copied().chain(extra.iter().copied()).collect()
    }

    #[test]
    fn check_allow_and_deny() {
        let dir = tempfile::tempdir().unwrap();
        let principal = ["--source-principal", "cluster.local/ns/client/sa/curl"];
        let http =
            |path: &'static str| [&principal[..], &["--method", "GET", "--path", path]].concat();
        let o = outcome(&dir, &[&["check"][..], &with(&http("/api"))].concat());
        assert_eq!(o.code, 0, "{o:?}");
        assert!(
            o.stdout
                .starts_with("ALLOW: rule 0 of an ALLOW policy matched (policy shop/allow-client)"),
            "{o:?}"
        );
        let o = outcome(&dir, &[&["check"][..], &with(&http("//admin/x"))].concat());
        assert_eq!(o.code, 1, "{o:?}");
        assert!(o.stdout.contains("shop/deny-admin"), "{o:?}");
        let o = outcome(&dir, &[&["check"][..], &with(&http("/a%2Fb"))].concat());
        assert_eq!(o.code, 1, "{o:?}");
        assert!(o.stdout.starts_with("DENY: invalid path"), "{o:?}");
        // Not HTTP: the DENY's path rule counts as matching (fail closed).
        let o = outcome(&dir, &[&["check"][..], &with(&principal)].concat());
        assert_eq!(o.code, 1, "{o:?}");
        assert!(o.stdout.contains("needs L7"), "{o:?}");
        // Plaintext caller: no namespace, the ALLOW does not match.
        let o = outcome(
            &dir,
            &[&["check"][..], &with(&["--method", "GET"])].concat(),
        );
        assert_eq!(o.code, 1, "{o:?}");
        assert!(
            o.stdout
                .starts_with("DENY: ALLOW policies apply and none matched"),
            "{o:?}"
        );
    }

    #[test]
    fn check_json() {
        let dir = tempfile::tempdir().unwrap();
        let args = with(&["--source-namespace", "client", "--output", "json"]);
        let o = outcome(&dir, &[&["check"][..], &args].concat());
        assert_eq!(o.code, 1, "{o:?}");
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"verdict": "deny", "policy": "shop/deny-admin",
                "reason": "deny_matched", "needsL7": true, "dryRun": [], "audit": []})
        );
        let args = with(&[
            "--source-namespace",
            "client",
            "--output",
            "json",
            "--method",
            "POST",
            "--path",
            "/api",
            "--header",
            "X-User: alice",
        ]);
        let o = outcome(&dir, &[&["check"][..], &args].concat());
        assert_eq!(o.code, 0, "{o:?}");
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["policy"], "shop/allow-client");
    }

    #[test]
    fn bad_input_exits_2() {
        let dir = tempfile::tempdir().unwrap();
        for extra in [
            &["--source-principal", "not-a-principal"][..],
            &[
                "--source-principal",
                "td/ns/a/sa/b",
                "--source-namespace",
                "b",
            ],
            &["--method", "GET", "--header", "no-colon"],
            &["--destination-labels", "novalue"],
            &["--path", "/api"],
            &["--destination-ip", "10.0.0"],
        ] {
            let o = outcome(&dir, &[&["check"][..], &with(extra)].concat());
            assert_eq!(o.code, 2, "{extra:?}: {o:?}");
            assert!(o.stderr.starts_with("error: "), "{o:?}");
        }
        // A policy that does not compile: file, policy, field and reason on stderr.
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: security.nodemesh.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {name: b, namespace: shop}\nspec: {rules: [{to: [{operation: {ports: [http]}}]}]}\n",
        )
        .unwrap();
        let bad = bad.display().to_string();
        let args = [
            "check",
            "--policies",
            &bad,
            "--destination-namespace",
            "shop",
            "--destination-port",
            "80",
        ];
        let args: Vec<String> = std::iter::once("policy")
            .chain(args)
            .map(str::to_owned)
            .collect();
        let PolicyCommand::Check(a) = Cli::try_parse_from(args).unwrap().cmd else {
            panic!("not check");
        };
        let o = decide(&a, false);
        assert_eq!(o.code, 2);
        assert_eq!(
            o.stderr,
            format!(
                "{bad}: shop/b: spec.rules[0].to[0].operation.ports[0]: invalid port \"http\": expected a number in 1..=65535\n"
            )
        );
        // A missing file is bad input too.
        let o = outcome(
            &dir,
            &[
                "check",
                "--policies",
                "/nonexistent.yaml",
                "--destination-namespace",
                "x",
                "--destination-port",
                "1",
            ],
        );
        assert_eq!(o.code, 2, "{o:?}");
    }

    #[test]
    fn explain_prints_every_clause() {
        let dir = tempfile::tempdir().unwrap();
        let args = with(&["--source-principal", "spiffe://cluster.local/ns/other/sa/x"]);
        let o = outcome(&dir, &[&["explain"][..], &args].concat());
        assert_eq!(o.code, 1, "{o:?}");
        assert!(o.stdout.contains("[fails] spec.rules[0].from[0].source.namespaces: source namespace \"other\" matches none of [\"client\"]"), "{}", o.stdout);
        assert!(o.stdout.contains("verdict: DENY"), "{}", o.stdout);
    }

    #[test]
    fn lint_lists_problems() {
        let dir = tempfile::tempdir().unwrap();
        let o = outcome(&dir, &["lint", "FILE"]);
        assert_eq!(o.code, 0, "{o:?}");
        assert!(o.stdout.ends_with("p.yaml: ok\n"), "{o:?}");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "apiVersion: security.nodemesh.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b, namespace: shop}\nspec: {actoin: DENY}\n").unwrap();
        let o = outcome(&dir, &["lint", "FILE", bad.to_str().unwrap()]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(
            o.stdout.starts_with(&format!(
                "{}: shop/b: spec.actoin: unknown field",
                bad.display()
            )),
            "{o:?}"
        );
    }

    const MESH: &str = "\
nodes: [{name: node-a, address: 10.0.0.1}]
namespaces: [{name: shop}, {name: client}]
workloads:
  - {name: web-1, namespace: shop, serviceAccount: web, ip: 10.1.0.11, node: node-a, labels: {app: web}}
  - {name: client-1, namespace: client, serviceAccount: client, ip: 10.1.0.21, node: node-a, labels: {app: client}}
networkPolicies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: web-8080, namespace: shop}
    spec:
      podSelector: {matchLabels: {app: web}}
      ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: client}}}], ports: [{port: 8080}]}]
";

    #[test]
    fn explain_with_a_config_shows_the_network_policy_decision() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = dir.path().join("mesh.yaml");
        std::fs::write(&mesh, MESH).unwrap();
        let mesh = mesh.display().to_string();
        let args = |port: &'static str| {
            vec![
                "policy".to_owned(),
                "explain".to_owned(),
                "--config".to_owned(),
                mesh.clone(),
                "--destination-namespace=shop".to_owned(),
                "--destination-labels=app=web".to_owned(),
                format!("--destination-port={port}"),
                "--destination-ip=10.1.0.11".to_owned(),
                "--source-ip=10.1.0.21".to_owned(),
                "--source-principal=cluster.local/ns/client/sa/client".to_owned(),
            ]
        };
        let run = |argv: Vec<String>| match Cli::try_parse_from(argv).unwrap().cmd {
            PolicyCommand::Explain(a) => decide(&a, true),
            _ => unreachable!(),
        };
        let allowed = run(args("8080"));
        assert_eq!(allowed.code, 0, "{allowed:?}");
        assert!(
            allowed.stdout.starts_with("network policy: allow\n"),
            "{}",
            allowed.stdout
        );
        let denied = run(args("9090"));
        assert_eq!(denied.code, 1, "{denied:?}");
        assert!(
            denied.stdout.contains(
                "denied by NetworkPolicy shop/web-8080 (ingress): no rule admits TCP port 9090"
            ),
            "{}",
            denied.stdout
        );
        let mut json = args("9090");
        json.push("--output=json".to_owned());
        let json: serde_json::Value = serde_json::from_str(&run(json).stdout).unwrap();
        assert_eq!(json["verdict"], "deny");
        assert_eq!(
            json["network"]["ingress"]["policy"],
            "NetworkPolicy/shop/web-8080"
        );
        // A certificate of another workload than the one at the source address matches no pod.
        let mut forged = args("8080");
        forged[9] = "--source-principal=cluster.local/ns/shop/sa/web".to_owned();
        assert_eq!(run(forged).code, 1);
    }
}
