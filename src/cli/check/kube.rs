//! Kubernetes mode's I/O: the CRDs, the proxy DaemonSet, the CA Deployment and the Nodes, read
//! once through the in-cluster environment or the kubeconfig (as untyped JSON, for
//! [`super::cluster`] to judge).

use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::Value;

use super::cluster;

/// How long the API may take for all of it.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the chart's objects are.
#[derive(Debug, Clone)]
pub struct Names {
    /// The release namespace.
    pub namespace: String,
    /// The proxy DaemonSet.
    pub daemonset: String,
    /// The CA Deployment.
    pub deployment: String,
}

/// What was read; each field an object (`None`: not found) or why it could not be read.
#[derive(Debug, Clone)]
pub struct ClusterFacts {
    /// The AuthorizationPolicy CRD.
    pub policy_crd: Result<Option<Value>, String>,
    /// The ClusterNetworkPolicy CRD.
    pub cluster_network_policy_crd: Result<Option<Value>, String>,
    /// The proxy DaemonSet.
    pub daemonset: Result<Option<Value>, String>,
    /// The CA Deployment.
    pub deployment: Result<Option<Value>, String>,
    /// Every Node.
    pub nodes: Result<Vec<Value>, String>,
}

impl ClusterFacts {
    fn unreadable(why: &str) -> Self {
        Self {
            policy_crd: Err(why.to_owned()),
            cluster_network_policy_crd: Err(why.to_owned()),
            daemonset: Err(why.to_owned()),
            deployment: Err(why.to_owned()),
            nodes: Err(why.to_owned()),
        }
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

async fn get(api: &Api<DynamicObject>, name: &str) -> Result<Option<Value>, String> {
    match api.get_opt(name).await {
        Ok(found) => found
            .map(|o| serde_json::to_value(o).map_err(|e| e.to_string()))
            .transpose(),
        Err(e) => Err(e.to_string()),
    }
}

async fn read(names: &Names) -> Result<ClusterFacts, String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("connecting to the Kubernetes API (in-cluster or kubeconfig): {e}"))?;
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &resource(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        ),
    );
    let daemonsets: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &names.namespace,
        &resource("apps", "v1", "DaemonSet", "daemonsets"),
    );
    let deployments: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &names.namespace,
        &resource("apps", "v1", "Deployment", "deployments"),
    );
    let nodes: Api<DynamicObject> = Api::all_with(client, &resource("", "v1", "Node", "nodes"));
    let listed = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())
        .and_then(|l| {
            l.items
                .into_iter()
                .map(|o| serde_json::to_value(o).map_err(|e| e.to_string()))
                .collect()
        });
    Ok(ClusterFacts {
        policy_crd: get(&crds, cluster::POLICY_CRD).await,
        cluster_network_policy_crd: get(&crds, cluster::CLUSTER_NETWORK_POLICY_CRD).await,
        daemonset: get(&daemonsets, &names.daemonset).await,
        deployment: get(&deployments, &names.deployment).await,
        nodes: listed,
    })
}

/// Reads the cluster's objects (blocking, on a runtime of its own, within [`TIMEOUT`]).
pub fn observe(names: &Names) -> ClusterFacts {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return ClusterFacts::unreadable(&format!("cannot start a runtime: {e}")),
    };
    let facts = runtime.block_on(async { tokio::time::timeout(TIMEOUT, read(names)).await });
    match facts {
        Ok(Ok(facts)) => facts,
        Ok(Err(why)) => ClusterFacts::unreadable(&why),
        Err(_) => ClusterFacts::unreadable(&format!("the API did not answer within {TIMEOUT:?}")),
    }
}
