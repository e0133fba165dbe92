//! The fake Kubernetes API for a testbed, shared by the Kubernetes-mode tests.

use std::net::SocketAddr;

use nodemesh_test_support::kube::FakeApi;
use nodemesh_test_support::kube::objects::*;
use nodemesh_testbed::{Testbed, scenario};
use serde_json::json;

/// Starts the fake API inside `bed`'s first node, on its underlay address, and fills it with
/// the testbed's nodes, namespaces, pods, the `web` Service and the shop's policies.
pub fn fake_api_for(bed: &Testbed) -> FakeApi {
    let node_a = &bed.plan().nodes[0];
    let addr = SocketAddr::from((node_a.address, 6443));
    let (tx, rx) = std::sync::mpsc::channel();
    // The server lives on a thread inside node-a's namespace for the rest of the test.
    let _server = bed.node(&node_a.name).unwrap().spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tx.send(FakeApi::start_on(addr).await).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let api = rx.recv().unwrap();
    for node in &bed.plan().nodes {
        api.put(
            NODES,
            self::node(
                &node.name,
                &node.address.to_string(),
                &format!("{}/24", node.pod_cidr),
            ),
        );
        for pod in &node.pods {
            api.put(
                PODS,
                self::pod(
                    &pod.namespace,
                    &pod.name,
                    &pod.service_account,
                    &pod.ip.to_string(),
                    &node.name,
                    json!(pod.labels),
                ),
            );
        }
    }
    for ns in &bed.spec().namespaces {
        api.put(NAMESPACES, namespace(&ns.name, json!(ns.labels)));
    }
    let web = bed.plan().service("web").unwrap();
    let web_ip = bed.pod_ip("web-b").unwrap().to_string();
    api.put(
        SERVICES,
        service(
            "shop",
            "web",
            &web.vip.to_string(),
            web.port,
            web.target_port,
        ),
    );
    api.put(
        SLICES,
        slice("shop", "web", &[&web_ip], &[], web.target_port),
    );
    for p in scenario::shop_policies() {
        let name = p["metadata"]["name"].as_str().unwrap().to_owned();
        api.put(POLICIES, policy("shop", &name, p["spec"].clone()));
    }
    api
}
