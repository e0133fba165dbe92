//! Istio's ztunnel beside nodemesh, for the side-by-side columns: two pods outside the mesh
//! (nodemesh does not capture them), each with a ztunnel in dedicated mode in its own network
//! namespace, as a sidecar would run. ztunnel reads its workloads from a local xDS file, signs
//! its certificates with its built-in fake CA (`FAKE_CA`, a `--features testing` build), marks
//! its own sockets with 1337, and the client pod's outbound TCP is `REDIRECT`ed to its 15001.
//! The ztunnel binary is built outside this repository (`scripts/bench-netns --ztunnel PATH`).

use std::path::Path;
use std::time::{Duration, Instant};

use nodemesh_testbed::{ClusterSpec, PodSpec, Testbed};

/// The client pod (node-a) and the server pod (node-b) of the ztunnel path.
pub const CLIENT: &str = "zclient-a";
pub const SERVER: &str = "zserver-b";
const NAMESPACE: &str = "legacy";
/// Each ztunnel pod: (pod, node, service account).
const PODS: [(&str, &str, &str); 2] =
    [(CLIENT, "node-a", "zclient"), (SERVER, "node-b", "zserver")];
const MARK: &str = "1337";

/// Adds the two ztunnel pods to `spec` (outside the mesh, in the legacy namespace).
pub fn add_pods(spec: &mut ClusterSpec) {
    for (pod, node, sa) in PODS {
        let node = spec.nodes.iter_mut().find(|n| n.name == node).unwrap();
        node.pods.push(PodSpec::new(pod, NAMESPACE, sa));
    }
}

/// Starts a ztunnel in each pod with `workers` worker threads, redirects the client pod's
/// outbound TCP into its ztunnel, and waits until both are ready.
pub fn start(bed: &mut Testbed, binary: &Path, workers: usize) {
    let xds = bed.dir().join("ztunnel-xds.yaml");
    std::fs::write(&xds, xds_yaml(bed)).unwrap();
    for (pod, node, sa) in PODS {
        let ns = bed.pod(pod).unwrap().clone();
        let env = [
            "FAKE_CA=true".to_owned(),
            "XDS_ADDRESS=".to_owned(),
            format!("LOCAL_XDS_PATH={}", xds.display()),
            "PROXY_MODE=dedicated".to_owned(),
            format!("PROXY_WORKLOAD_INFO={NAMESPACE}/{pod}/{sa}"),
            format!("ZTUNNEL_WORKER_THREADS={workers}"),
            format!("PACKET_MARK={MARK}"),
            "ENABLE_ORIG_SRC=false".to_owned(),
            "IPV6_ENABLED=false".to_owned(),
            format!("NODE_NAME={node}"),
            "RUST_LOG=warn".to_owned(),
        ];
        let mut argv: Vec<&str> = vec!["env"];
        argv.extend(env.iter().map(String::as_str));
        argv.push(binary.to_str().expect("the ztunnel path is UTF-8"));
        bed.start_process(&format!("ztunnel/{pod}"), &ns, &argv)
            .unwrap();
    }
    let client = bed.pod(CLIENT).unwrap();
    client
        .exec(&[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "!",
            "-d",
            "127.0.0.0/8",
            "-m",
            "mark",
            "!",
            "--mark",
            MARK,
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ])
        .unwrap();
    for (pod, _, _) in PODS {
        wait_ready(bed, pod);
    }
}

/// TCP connections ztunnel in `pod` has opened (its `istio_tcp_connections_opened_total`): the
/// proof that the ztunnel path's traffic went through it.
pub fn connections_opened(bed: &Testbed, pod: &str) -> f64 {
    let body = crate::http_get(bed.pod(pod).unwrap(), 15020, "/metrics").1;
    body.lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The pids of both ztunnels.
pub fn pids(bed: &Testbed) -> Vec<u32> {
    PODS.iter()
        .map(|(pod, _, _)| bed.pid(&format!("ztunnel/{pod}")).unwrap())
        .collect()
}

fn wait_ready(bed: &Testbed, pod: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = crate::http_get(bed.pod(pod).unwrap(), 15021, "/healthz/ready");
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ztunnel in {pod} not ready after 30 s (status {status}); see its log in {}",
            bed.dir().display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn xds_yaml(bed: &Testbed) -> String {
    let mut yaml = String::from("workloads:\n");
    for (pod, node, sa) in PODS {
        let ip = bed.pod_ip(pod).unwrap();
        yaml.push_str(&format!(
            "- uid: Kubernetes//Pod/{NAMESPACE}/{pod}\n  name: {pod}\n  namespace: {NAMESPACE}\n  \
             serviceAccount: {sa}\n  workloadIps: [\"{ip}\"]\n  protocol: HBONE\n  node: {node}\n  \
             network: \"\"\n  services: {{}}\n"
        ));
    }
    yaml
}
