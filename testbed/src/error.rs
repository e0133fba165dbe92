//! [`TestbedError`]: what went wrong building, running or tearing down a testbed.

use std::path::PathBuf;

/// An error of the testbed, naming the command or object that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestbedError {
    /// The spec cannot be built.
    #[error("bad testbed spec: {0}")]
    Spec(String),
    /// A prerequisite is missing (not root, a tool not installed).
    #[error("prerequisite missing: {0}")]
    Prerequisite(String),
    /// A command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A file could not be written or read.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A network-namespace operation failed.
    #[error("network namespace {netns}: {what}: {source}")]
    Netns {
        /// The namespace.
        netns: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A process did not become ready in time.
    #[error("{what} not ready after {waited_ms} ms; its log: {log}")]
    NotReady {
        /// Which process.
        what: String,
        /// How long we waited.
        waited_ms: u128,
        /// The tail of its log.
        log: String,
    },
}
