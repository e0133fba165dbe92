//! `nodemesh policy suggest`: read flow logs, write the NetworkPolicies and AuthorizationPolicies
//! that admit exactly the observed flows (the core is `nodemesh_policy::suggest`).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nodemesh_config::Config;
use nodemesh_policy::suggest::{
    Directory, Flow, Kinds, SuggestOptions, Suggester, Workload, parse_time, to_yaml,
};

use super::Outcome;

/// Malformed lines printed one by one before the rest are only counted.
const MAX_REPORTED_LINES: usize = 20;

/// Which policies to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Kubernetes NetworkPolicies (`networking.k8s.io/v1`).
    Network,
    /// nodemesh AuthorizationPolicies (`security.nodemesh.io/v1`).
    Authorization,
    /// Both.
    Both,
}

/// How the AuthorizationPolicies take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Enforced once applied.
    Enforce,
    /// Annotated `nodemesh.io/dry-run: "true"`: evaluated and logged, never enforced (stage them
    /// first, watch the logs, then apply with `--mode enforce`).
    DryRun,
}

/// The flow logs, the window and what to write.
#[derive(Debug, clap::Args)]
pub struct SuggestArgs {
    /// Flow logs (JSON lines, as `nodemesh proxy --flow-log` writes them); `-` is standard input.
    #[arg(required = true, value_name = "FLOW_LOG")]
    flow_logs: Vec<PathBuf>,
    /// The standalone config whose workloads' labels become the selectors (required: a flow log
    /// names workloads but not their labels).
    #[arg(long, value_name = "FILE", required = true)]
    config: PathBuf,
    /// Leave out flows that started before this RFC 3339 time (e.g. 2025-01-02T03:00:00Z).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Leave out flows that started at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Count denied flows too, to open what a policy refused (refused flows never count).
    #[arg(long)]
    include_denied: bool,
    /// Which policies to write.
    #[arg(long, value_enum, default_value_t = Kind::Both)]
    kind: Kind,
    /// `dry-run` stages the AuthorizationPolicies (NetworkPolicies have no dry run).
    #[arg(long, value_enum, default_value_t = Mode::Enforce)]
    mode: Mode,
    /// Also write an egress NetworkPolicy per source group.
    #[arg(long)]
    egress: bool,
    /// With --egress, leave out the rule that admits DNS (UDP and TCP 53 to kube-system
    /// k8s-app=kube-dns), which flow logs never show.
    #[arg(long, requires = "egress")]
    no_egress_dns: bool,
    /// Also write a default-deny NetworkPolicy (ingress; egress too with --egress) in every
    /// namespace that gets a policy, after the allows.
    #[arg(long)]
    default_deny: bool,
    /// Write the YAML to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// The workloads of the standalone config, with their labels and whether they are in the mesh.
pub fn directory(config: &Config) -> Directory {
    Directory::new(config.workloads().iter().map(|w| {
        Workload {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            ips: std::iter::once(IpAddr::V4(w.ip))
                .chain(w.ipv6.map(IpAddr::V6))
                .collect(),
            labels: w.labels.clone(),
            in_mesh: config.in_mesh(w),
        }
    }))
}

fn options(args: &SuggestArgs) -> Result<SuggestOptions, String> {
    let time = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(parse_time)
            .transpose()
            .map_err(|e| format!("error: --{flag}: {e}\n"))
    };
    let since = time("since", &args.since)?;
    let until = time("until", &args.until)?;
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        return Err("error: --since must be before --until\n".to_owned());
    }
    Ok(SuggestOptions {
        since,
        until,
        include_denied: args.include_denied,
        kinds: match args.kind {
            Kind::Network => Kinds::Network,
            Kind::Authorization => Kinds::Authorization,
            Kind::Both => Kinds::Both,
        },
        egress: args.egress,
        no_egress_dns: args.no_egress_dns,
        default_deny: args.default_deny,
        dry_run: args.mode == Mode::DryRun,
    })
}

/// Malformed lines: how many, and the first few as `FILE:LINE: reason`.
#[derive(Default)]
struct Skipped {
    count: usize,
    report: String,
}

/// Feeds every line of `input` to `suggester`, counting the lines that are not flows.
fn read_flows(
    name: &str,
    mut input: impl BufRead,
    suggester: &mut Suggester<'_, Directory>,
    skipped: &mut Skipped,
) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        number += 1;
        let parsed = match std::str::from_utf8(&buf) {
            Ok(line) => Flow::parse_line(line),
            Err(e) => Err(format!("not UTF-8 ({e})")),
        };
        match parsed {
            Ok(Some(flow)) => suggester.add(&flow),
            Ok(None) => {}
            Err(message) => {
                skipped.count += 1;
                if skipped.count <= MAX_REPORTED_LINES {
                    let _ = writeln!(skipped.report, "{name}:{number}: skipped: {message}");
                }
            }
        }
    }
}

/// Runs `policy suggest`, reading `-` from `stdin`.
pub fn suggest(args: &SuggestArgs, stdin: impl BufRead) -> Outcome {
    let options = match options(args) {
        Ok(o) => o,
        Err(e) => return Outcome::bad_input(e),
    };
    let config = match Config::from_file(&args.config) {
        Ok(c) => c,
        Err(e) => return Outcome::bad_input(format!("error: --config: {e}\n")),
    };
    let directory = directory(&config);
    let mut suggester = Suggester::new(&directory, &options);
    let mut skipped = Skipped::default();
    let mut stdin = Some(stdin);
    for path in &args.flow_logs {
        let name = path.display().to_string();
        let read = if path == Path::new("-") {
            match stdin.take() {
                Some(input) => read_flows("-", input, &mut suggester, &mut skipped),
                None => Ok(()),
            }
        } else {
            File::open(path)
                .and_then(|f| read_flows(&name, BufReader::new(f), &mut suggester, &mut skipped))
        };
        if let Err(e) = read {
            return Outcome::bad_input(format!("error: cannot read {name}: {e}\n"));
        }
    }
    let suggestion = suggester.finish();
    let yaml = match to_yaml(
        &suggestion.header(&options, skipped.count),
        &suggestion.documents,
    ) {
        Ok(y) => y,
        Err(e) => return Outcome::bad_input(format!("error: cannot write YAML: {e}\n")),
    };
    let mut stderr = skipped.report;
    if skipped.count > MAX_REPORTED_LINES {
        let more = skipped.count - MAX_REPORTED_LINES;
        let _ = writeln!(stderr, "... and {more} more malformed lines skipped");
    }
    for w in &suggestion.warnings {
        let _ = writeln!(stderr, "warning: {w}");
    }
    let s = suggestion.stats;
    let target = args
        .output
        .as_ref()
        .map_or_else(|| "standard output".to_owned(), |p| p.display().to_string());
    let _ = writeln!(
        stderr,
        "{} policies from {} of {} flows ({} lines skipped) to {target}",
        suggestion.documents.len(),
        s.admitted,
        s.flows,
        skipped.count
    );
    let stdout = match &args.output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &yaml) {
                let message = format!("error: --output: cannot write {}: {e}\n", path.display());
                return Outcome::bad_input(message);
            }
            String::new()
        }
        None => yaml,
    };
    Outcome {
        stdout,
        stderr,
        code: 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: SuggestArgs,
    }

    #[test]
    fn reports_the_first_malformed_lines_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            "nodes: [{name: node-a, address: 10.200.0.1}]\n\
             workloads: [{name: web-1, namespace: shop, ip: 10.200.0.11, node: node-a, labels: {app: web}}]\n",
        )
        .unwrap();
        let args = Cli::try_parse_from(["suggest", "--config", config.to_str().unwrap(), "-"])
            .unwrap()
            .args;
        let good = r#"{"time":"2025-01-02T03:04:05Z","src":{"ip":"192.0.2.1"},"dst":{"ip":"10.200.0.11","port":80},"verdict":"allow"}"#;
        let mut input = format!("{good}\n");
        for n in 0..25 {
            input.push_str(&format!("bad {n}\n"));
        }
        input.push_str("\u{fffd}\n");
        let mut bytes = input.into_bytes();
        bytes.extend_from_slice(b"\xff\xfe\n");
        let o = suggest(&args, bytes.as_slice());
        assert_eq!(o.code, 0, "{o:?}");
        let lines: Vec<&str> = o.stderr.lines().collect();
        assert_eq!(lines[0], "-:2: skipped: expected value at line 1 column 1");
        assert_eq!(
            lines[19],
            "-:21: skipped: expected value at line 1 column 1"
        );
        assert_eq!(lines[20], "... and 7 more malformed lines skipped");
        assert!(
            o.stdout
                .contains("# flows read: 1, counted: 1, skipped lines: 27\n"),
            "{}",
            o.stdout
        );
        assert!(o.stdout.contains("cidr: 192.0.2.1/32"), "{}", o.stdout);
    }
}
