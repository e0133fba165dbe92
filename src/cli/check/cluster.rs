//! Kubernetes mode's cluster items, from the objects as the API returns them (JSON): the CRDs
//! installed and established, the proxy DaemonSet ready on every node it is scheduled on, the
//! CA Deployment ready, and Nodes carrying WireGuard keys. Pure: [`super::kube`] fetches.

use nodemesh_config::WireguardPublicKey;
use serde_json::Value;

use super::report::Item;

/// The AuthorizationPolicy CRD, which the proxies watch.
pub const POLICY_CRD: &str = "authorizationpolicies.security.nodemesh.io";
/// The ClusterNetworkPolicy CRD: optional (the chart installs it on request, a CNI may ship it).
pub const CLUSTER_NETWORK_POLICY_CRD: &str = "clusternetworkpolicies.policy.networking.k8s.io";
/// The Node annotation holding a node's WireGuard public key.
pub const WIREGUARD_KEY: &str = "nodemesh.io/wireguard-public-key";

/// The Nodes item's name.
pub const NODES: &str = "Nodes carry WireGuard keys";

fn number(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// A CRD item: installed and `Established`. An optional CRD that is absent is fine.
pub fn crd(name: &str, object: &Result<Option<Value>, String>, required: bool) -> Item {
    let item = format!("CRD {name}");
    let hint = "install the chart's CRDs: `helm upgrade --install` applies crds/, or `nodemesh crd | kubectl apply -f -`";
    match object {
        Err(e) => Item::fail(
            item,
            format!("cannot read: {e}"),
            "check the kubeconfig and RBAC (get customresourcedefinitions)",
        ),
        Ok(None) if required => Item::fail(item, "not installed", hint),
        Ok(None) => Item::ok(item, "not installed (optional: no ClusterNetworkPolicies)"),
        Ok(Some(crd)) => {
            let established = crd
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            if established {
                Item::ok(item, "installed, established")
            } else {
                Item::fail(
                    item,
                    "installed but not established",
                    "see `kubectl describe crd` for why the API server refuses it",
                )
            }
        }
    }
}

/// The object, or the failed item `item` when it could not be read (RBAC on `resource`) or
/// does not exist (`flag` names it).
fn found<'a>(
    item: &str,
    object: &'a Result<Option<Value>, String>,
    resource: &str,
    flag: &str,
) -> Result<&'a Value, Item> {
    match object {
        Ok(Some(o)) => Ok(o),
        Err(e) => Err(Item::fail(
            item,
            format!("cannot read: {e}"),
            format!("check the kubeconfig and RBAC (get {resource})"),
        )),
        Ok(None) => Err(Item::fail(
            item,
            "not found",
            format!(
                "install the chart (`helm install nodemesh charts/nodemesh`), or pass --namespace/{flag}"
            ),
        )),
    }
}

/// The proxy DaemonSet item: a ready, up-to-date pod on every node it is scheduled on.
pub fn daemonset(name: &str, object: &Result<Option<Value>, String>) -> Item {
    let item = format!("DaemonSet {name} ready");
    let ds = match found(&item, object, "daemonsets", "--daemonset") {
        Ok(ds) => ds,
        Err(failed) => return failed,
    };
    let desired = number(ds, "/status/desiredNumberScheduled");
    let ready = number(ds, "/status/numberReady");
    let updated = number(ds, "/status/updatedNumberScheduled");
    let detail = format!("{ready} of {desired} nodes ready, {updated} up to date");
    if desired == 0 {
        Item::fail(
            item,
            "scheduled on no node",
            "check the DaemonSet's nodeSelector and tolerations against the Nodes' labels and taints",
        )
    } else if ready < desired {
        Item::fail(
            item,
            detail,
            "`kubectl -n <namespace> get pods -o wide` shows which node's proxy is not ready; its log says why",
        )
    } else if updated < desired {
        Item::warn(
            item,
            detail,
            "a rollout is in progress (`kubectl rollout status daemonset`)",
        )
    } else {
        Item::ok(item, detail)
    }
}

/// The CA Deployment item: every replica ready.
pub fn deployment(name: &str, object: &Result<Option<Value>, String>) -> Item {
    let item = format!("Deployment {name} ready");
    let d = match found(&item, object, "deployments", "--ca-deployment") {
        Ok(d) => d,
        Err(failed) => return failed,
    };
    let wanted = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let ready = number(d, "/status/readyReplicas");
    let detail = format!("{ready} of {wanted} replicas ready");
    if wanted == 0 {
        Item::fail(
            item,
            "scaled to 0: no certificates are issued",
            "`kubectl scale deployment --replicas 1`",
        )
    } else if ready == 0 {
        Item::fail(
            item,
            detail,
            "the CA's pod log says why it is not ready; proxies cannot renew meanwhile",
        )
    } else if ready < wanted {
        Item::warn(
            item,
            detail,
            "some CA replicas are not ready: see their pods",
        )
    } else {
        Item::ok(item, detail)
    }
}

/// A Node's name and its WireGuard key, or why it has none.
pub type NodeKey = (String, Result<WireguardPublicKey, String>);

/// Every Node's WireGuard key, parsed.
pub fn node_keys(nodes: &[Value]) -> Vec<NodeKey> {
    nodes
        .iter()
        .map(|n| {
            let name = n
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            let key = match n
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(WIREGUARD_KEY))
            {
                None => Err("no key".to_owned()),
                Some(v) => v
                    .as_str()
                    .ok_or_else(|| "not a string".to_owned())
                    .and_then(|s| s.parse::<WireguardPublicKey>().map_err(|e| e.to_string())),
            };
            (name, key)
        })
        .collect()
}

/// The Nodes item: with WireGuard in use (`required`, or some Node has a key), every Node
/// carries a valid key.
pub fn nodes(keys: &Result<Vec<NodeKey>, String>, required: bool) -> Item {
    let keys = match keys {
        Err(e) => {
            return Item::fail(
                NODES,
                format!("cannot list Nodes: {e}"),
                "check the kubeconfig and RBAC (list nodes)",
            );
        }
        Ok(k) => k,
    };
    let with = keys.iter().filter(|(_, k)| k.is_ok()).count();
    if with == 0 && !required {
        return Item::ok(
            NODES,
            format!(
                "WireGuard not in use: none of {} Nodes has a key",
                keys.len()
            ),
        );
    }
    let without: Vec<String> = keys
        .iter()
        .filter_map(|(n, k)| k.as_ref().err().map(|e| format!("{n} ({e})")))
        .collect();
    if without.is_empty() {
        Item::ok(NODES, format!("all {with} Nodes"))
    } else {
        Item::fail(
            NODES,
            format!(
                "{with} of {} Nodes; without: {}",
                keys.len(),
                without.join(", ")
            ),
            format!(
                "the proxy with --wireguard publishes its node's key as the annotation {WIREGUARD_KEY}: is it running there?"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cli::check::report::Status;

    #[test]
    fn crds_must_be_established_unless_optional_and_absent() {
        let established =
            json!({"status": {"conditions": [{"type": "Established", "status": "True"}]}});
        assert_eq!(
            crd(POLICY_CRD, &Ok(Some(established)), true).status,
            Status::Ok
        );
        let pending =
            json!({"status": {"conditions": [{"type": "Established", "status": "False"}]}});
        assert_eq!(
            crd(POLICY_CRD, &Ok(Some(pending)), true).status,
            Status::Fail
        );
        let absent = crd(POLICY_CRD, &Ok(None), true);
        assert_eq!(absent.status, Status::Fail);
        assert!(absent.hint.unwrap().contains("nodemesh crd"));
        assert_eq!(
            crd(CLUSTER_NETWORK_POLICY_CRD, &Ok(None), false).status,
            Status::Ok
        );
    }

    #[test]
    fn daemonset_ready_on_every_node() {
        let ds = |ready, updated| {
            Ok(Some(
                json!({"status": {"desiredNumberScheduled": 3, "numberReady": ready, "updatedNumberScheduled": updated}}),
            ))
        };
        let ok = daemonset("nodemesh-proxy", &ds(3, 3));
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(ok.detail, "3 of 3 nodes ready, 3 up to date");
        assert_eq!(daemonset("nodemesh-proxy", &ds(2, 3)).status, Status::Fail);
        assert_eq!(daemonset("nodemesh-proxy", &ds(3, 1)).status, Status::Warn);
        assert_eq!(daemonset("nodemesh-proxy", &Ok(None)).status, Status::Fail);
    }

    #[test]
    fn deployment_replicas_ready() {
        let d = |ready| {
            Ok(Some(
                json!({"spec": {"replicas": 2}, "status": {"readyReplicas": ready}}),
            ))
        };
        assert_eq!(deployment("nodemesh-ca", &d(2)).status, Status::Ok);
        assert_eq!(deployment("nodemesh-ca", &d(1)).status, Status::Warn);
        let none = deployment("nodemesh-ca", &d(0));
        assert_eq!(none.status, Status::Fail);
        assert_eq!(none.detail, "0 of 2 replicas ready");
    }

    #[test]
    fn nodes_carry_keys_once_wireguard_is_in_use() {
        let key = WireguardPublicKey::from_bytes([7; 32]).to_string();
        let node = |name: &str, key: Option<&str>| match key {
            Some(k) => json!({"metadata": {"name": name, "annotations": {WIREGUARD_KEY: k}}}),
            None => json!({"metadata": {"name": name}}),
        };
        let all = node_keys(&[node("a", Some(&key)), node("b", Some(&key))]);
        assert_eq!(nodes(&Ok(all), true).status, Status::Ok);
        let some = node_keys(&[
            node("a", Some(&key)),
            node("b", None),
            node("c", Some("bad")),
        ]);
        let item = nodes(&Ok(some), false);
        assert_eq!(item.status, Status::Fail);
        assert!(
            item.detail
                .starts_with("1 of 3 Nodes; without: b (no key), c ("),
            "{item:?}"
        );
        let none = node_keys(&[node("a", None)]);
        assert_eq!(nodes(&Ok(none.clone()), false).status, Status::Ok);
        assert_eq!(nodes(&Ok(none), true).status, Status::Fail);
    }
}
