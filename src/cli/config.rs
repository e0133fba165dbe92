//! `nodemesh config`: work with the standalone config file.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nodemesh_config::Config;

/// Work with the standalone config: the one YAML file, shared by all nodes, that lists the
/// nodes, namespaces, workloads, Services and AuthorizationPolicies of a cluster run without
/// Kubernetes.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate a standalone config file and print every mistake in it at once.
    ///
    /// Errors go to stdout, one line each, as `FILE: path: reason` (for example
    /// `cluster.yaml: workloads[3].node: no node "node-z"`). A valid file prints one summary
    /// line, `FILE: ok (2 nodes, 5 workloads, 1 service, 3 policies)`.
    ///
    /// Exit status: 0 when the file is valid, 2 when it is not or cannot be read.
    Check {
        /// The standalone YAML file to check.
        file: PathBuf,
    },
}

/// Runs a `nodemesh config` subcommand and returns the process's exit status.
pub fn run(cmd: ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Check { file } => {
            let (report, valid) = check(&file);
            // A closed stdout (`| head`) must not turn into a panic; the exit status still tells.
            let _ = std::io::stdout().lock().write_all(report.as_bytes());
            if valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
    }
}

/// The report on `file`, one line per error or a one-line summary, and whether it is valid.
fn check(file: &Path) -> (String, bool) {
    let name = file.display();
    let mut out = String::new();
    match Config::from_file(file) {
        Ok(config) => {
            let _ = writeln!(out, "{name}: ok ({})", config.summary());
            (out, true)
        }
        Err(e) => {
            for line in e.lines() {
                let _ = writeln!(out, "{name}: {line}");
            }
            (out, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(yaml: &str) -> (String, bool, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cluster.yaml");
        std::fs::write(&file, yaml).expect("write");
        let (report, valid) = check(&file);
        (report, valid, file)
    }

    #[test]
    fn valid_file_prints_a_summary() {
        let (report, valid, file) = check_text(
            "nodes: [{name: a, address: 10.0.0.1}]\nworkloads: [{name: w, namespace: n, ip: 10.1.0.1, node: a}]\n",
        );
        assert!(valid);
        assert_eq!(
            report,
            format!(
                "{}: ok (1 node, 1 workload, 0 services, 0 policies)\n",
                file.display()
            )
        );
    }

    #[test]
    fn every_error_gets_a_line_naming_the_file() {
        let (report, valid, file) = check_text(
            "nodes: [{name: a, address: 10.0.0.1}]\nworkloads: [{name: w, namespace: n, ip: 10.1.0.1, node: z}]\nextra: 1\n",
        );
        assert!(!valid);
        let f = file.display();
        assert_eq!(
            report,
            format!(
                "{f}: extra: unknown key (expected one of: trustDomain, rootNamespace, ca, nodes, namespaces, workloads, services, policies, networkPolicies, clusterNetworkPolicies)\n{f}: workloads[0].node: no node \"z\"\n"
            )
        );
    }

    #[test]
    fn unreadable_file_is_an_error_line() {
        let (report, valid) = check(Path::new("/nonexistent/cluster.yaml"));
        assert!(!valid);
        assert!(
            report.starts_with("/nonexistent/cluster.yaml: cannot read: "),
            "{report}"
        );
    }

    #[test]
    fn shipped_example_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/standalone.yaml");
        let (report, valid) = check(&example);
        assert!(valid, "{report}");
        assert!(report.ends_with(": ok (2 nodes, 5 workloads, 2 services, 2 policies)\n"));
    }
}
