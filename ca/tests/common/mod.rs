//! A CA on loopback with a two-node standalone config, for the gRPC tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nodemesh_ca::{CaClient, LifetimePolicy, RootSource, RunningCa, ServeOptions};
use nodemesh_identity::{SpiffeId, SystemClock};

pub const TOKEN_A: &str = "token-of-node-a-0123456789";
pub const TOKEN_B: &str = "token-of-node-b-0123456789";
pub const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
pub const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub opts: ServeOptions,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mesh.yaml");
        std::fs::write(
            &config,
            r#"
nodes:
  - {name: node-a, address: 10.0.0.1}
  - {name: node-b, address: 10.0.0.2}
namespaces:
  - {name: shop, labels: {nodemesh.io/mesh: enabled}}
workloads:
  - {name: web-1, namespace: shop, serviceAccount: web, ip: 10.1.0.11, node: node-a}
  - {name: db-1, namespace: shop, serviceAccount: db, ip: 10.1.0.21, node: node-b}
"#,
        )
        .unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            format!("# node tokens\n{TOKEN_A} node-a\n\n{TOKEN_B} node-b\n"),
        )
        .unwrap();
        let opts = ServeOptions {
            root: RootSource::state_dir(dir.path().join("state")),
            callers: nodemesh_ca::Callers::Files {
                config_file: config,
                tokens_file: tokens,
            },
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            serving_names: vec!["localhost".into(), "127.0.0.1".into()],
            lifetimes: LifetimePolicy::default(),
            reload_interval: Duration::from_millis(100),
        };
        Self { dir, opts }
    }

    pub fn state(&self, file: &str) -> PathBuf {
        self.opts.root.state_dir.join(file)
    }

    pub fn bundle_pem(&self) -> String {
        std::fs::read_to_string(self.state("trust-bundle.pem")).unwrap()
    }

    pub async fn start(&self) -> RunningCa {
        nodemesh_identity::install_default_provider();
        nodemesh_ca::start(self.opts.clone(), Arc::new(SystemClock))
            .await
            .unwrap()
    }

    pub fn client(&self, ca: &RunningCa, token: &str) -> CaClient {
        CaClient::new(
            &format!("https://127.0.0.1:{}", ca.grpc_addr.port()),
            &self.bundle_pem(),
            token,
        )
        .unwrap()
    }
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}
