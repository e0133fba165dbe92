//! [`LocalCa`]: the real CA of `nodemesh-ca` on loopback, fed by files as `nodemesh ca serve`
//! is in standalone mode: a standalone YAML and a node-tokens file in a temporary directory,
//! its state (root, trust bundle) in `ca/` next to them.
//!
//! [`loopback_options`] and [`start`] are the pieces, for a CA fed otherwise (the Kubernetes
//! one in [`crate::kube`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nodemesh_ca::{CaClient, Callers, LifetimePolicy, RootSource, RunningCa, ServeOptions};
use nodemesh_identity::SystemClock;

/// The token node `node` presents to a [`LocalCa`] (`token-of-node-a-0123456789`).
pub fn node_token(node: &str) -> String {
    format!("token-of-{node}-0123456789")
}

/// Options of a CA on ephemeral loopback ports (gRPC and HTTP) whose serving certificate names
/// `localhost` and `127.0.0.1`, with default lifetimes and preface deadline, checking its files
/// every 100 ms.
pub fn loopback_options(root: RootSource, callers: Callers) -> ServeOptions {
    ServeOptions {
        root,
        callers,
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        serving_names: vec!["localhost".into(), "127.0.0.1".into()],
        lifetimes: LifetimePolicy::default(),
        reload_interval: Duration::from_millis(100),
        preface_timeout: nodemesh_ca::server::PREFACE_TIMEOUT,
    }
}

/// Starts a CA with the system clock (installing the process's default crypto provider).
pub async fn start(opts: ServeOptions) -> RunningCa {
    nodemesh_identity::install_default_provider();
    nodemesh_ca::start(opts, Arc::new(SystemClock))
        .await
        .unwrap()
}

/// The `ca:` line of a standalone YAML in the CA's parent directory, for a running `ca` whose
/// state directory is `ca/` (its bundle `ca/trust-bundle.pem`).
pub fn config_line(ca: &RunningCa) -> String {
    format!(
        "ca: {{address: \"https://127.0.0.1:{}\", rootCert: ca/trust-bundle.pem}}\n",
        ca.grpc_addr.port()
    )
}

/// A files-fed CA, not yet started: its directory, its standalone YAML and its options.
#[derive(Debug)]
pub struct LocalCa {
    /// The directory of its files; removed on drop.
    pub dir: tempfile::TempDir,
    /// The standalone YAML (`mesh.yaml`).
    pub config: PathBuf,
    /// How it is started; tests may change them before [`LocalCa::start`].
    pub opts: ServeOptions,
}

impl LocalCa {
    /// Writes `config` as `mesh.yaml` and a tokens file with a comment, a blank line and a
    /// [`node_token`] per node of `nodes`, in a new temporary directory.
    pub fn new(config: &str, nodes: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_file = dir.path().join("mesh.yaml");
        std::fs::write(&config_file, config).unwrap();
        let tokens = dir.path().join("tokens");
        let lines: Vec<String> = nodes
            .iter()
            .map(|n| format!("{} {n}\n", node_token(n)))
            .collect();
        std::fs::write(&tokens, format!("# node tokens\n{}", lines.join("\n"))).unwrap();
        let opts = loopback_options(
            RootSource::state_dir(dir.path().join("ca")),
            Callers::Files {
                config_file: config_file.clone(),
                tokens_file: tokens,
            },
        );
        Self {
            dir,
            config: config_file,
            opts,
        }
    }

    /// A file of its state directory (`root-cert.pem`, `trust-bundle.pem`, ...).
    pub fn state(&self, file: &str) -> PathBuf {
        self.opts.root.state_dir.join(file)
    }

    /// The trust bundle it has written (once started).
    pub fn bundle_pem(&self) -> String {
        std::fs::read_to_string(self.state("trust-bundle.pem")).unwrap()
    }

    /// Starts it.
    pub async fn start(&self) -> RunningCa {
        start(self.opts.clone()).await
    }

    /// A client of the running `ca` presenting `token`, trusting its bundle.
    pub fn client(&self, ca: &RunningCa, token: &str) -> CaClient {
        CaClient::new(
            &format!("https://127.0.0.1:{}", ca.grpc_addr.port()),
            &self.bundle_pem(),
            token,
        )
        .unwrap()
    }
}
