//! What the API server sends the watchers, converted into the proxy's state: arbitrary JSON is
//! deserialized into the k8s-openapi type its `kind` names (Pod, Namespace, Node, Service,
//! EndpointSlice, or an AuthorizationPolicy as a `DynamicObject`), converted as a watch event
//! would be, applied to a `MeshView` and assembled into a `MeshState`. Nothing may panic.
//!
//! Input: a JSON list of objects (seeds in `fuzz/seeds/kube_objects/` are small clusters).
//!
//! Checked: conversion is deterministic; a believed workload's IP lies in its node's podCIDR
//! (the check is on) and its identity is `spiffe://cluster.local/ns/<namespace>/sa/<account>`;
//! a policy with compile errors is reported (a problem, and an `Accepted: False` condition on
//! ours), one without none; only our API gets status written.

#![no_main]

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DynamicObject;
use libfuzzer_sys::fuzz_target;
use nodemesh_config::Ca;
use nodemesh_identity::TrustDomain;
use nodemesh_kube::convert::{self, object_key};
use nodemesh_kube::mesh::{Kind, MeshSettings, MeshView, Object};
use nodemesh_kube::pod;
use nodemesh_kube::policy::{self, PolicyApi};
use serde::de::DeserializeOwned;
use serde_json::Value;

fn parse<T: DeserializeOwned>(v: &Value) -> Option<T> {
    serde_json::from_value(v.clone()).ok()
}

/// The watch event's conversion of `v`, with the kind and key it is stored under.
fn convert(v: &Value, td: &TrustDomain) -> Option<(Kind, String, Option<Object>)> {
    let object = match v.get("kind")?.as_str()? {
        "Pod" => {
            let p: Pod = parse(v)?;
            let c = pod::claim(&p, td);
            assert_eq!(c, pod::claim(&p, td));
            (
                Kind::Pods,
                object_key(&p.metadata),
                c.map(|c| Object::Pod(Box::new(c))),
            )
        }
        "Namespace" => {
            let n: Namespace = parse(v)?;
            let c = convert::namespace(&n);
            assert_eq!(c, convert::namespace(&n));
            (
                Kind::Namespaces,
                object_key(&n.metadata),
                c.map(Object::Namespace),
            )
        }
        "Node" => {
            let n: Node = parse(v)?;
            let c = convert::node(&n);
            assert_eq!(c, convert::node(&n));
            (Kind::Nodes, object_key(&n.metadata), c.map(Object::Node))
        }
        "Service" => {
            let s: Service = parse(v)?;
            let c = convert::service(&s);
            assert_eq!(c, convert::service(&s));
            (
                Kind::Services,
                object_key(&s.metadata),
                c.map(Object::Service),
            )
        }
        "EndpointSlice" => {
            let s: EndpointSlice = parse(v)?;
            let c = convert::endpoint_slice(&s);
            assert_eq!(c, convert::endpoint_slice(&s));
            (
                Kind::EndpointSlices,
                object_key(&s.metadata),
                c.map(Object::Slice),
            )
        }
        "AuthorizationPolicy" => {
            let api = match v.get("apiVersion").and_then(Value::as_str) {
                Some("security.istio.io/v1") => PolicyApi::IstioV1,
                Some("security.istio.io/v1beta1") => PolicyApi::IstioV1beta1,
                _ => PolicyApi::Nodemesh,
            };
            let o: DynamicObject = parse(v)?;
            let entry = policy::compile(api, &o);
            if let Some(e) = &entry {
                let failed = e.problem.is_some();
                if let Some(update) = &e.status_update {
                    assert_eq!(api, PolicyApi::Nodemesh, "status written on a foreign API");
                    assert_eq!(
                        update.condition.status,
                        if failed { "False" } else { "True" }
                    );
                }
                if let Some(p) = &e.problem {
                    assert!(!p.errors.is_empty());
                }
            }
            (
                Kind::Policies(api),
                object_key(&o.metadata),
                entry.map(|e| Object::Policy(Box::new(e))),
            )
        }
        _ => return None,
    };
    Some(object)
}

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Array(objects)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let td = TrustDomain::default();
    let settings = MeshSettings {
        node: "node-a".into(),
        trust_domain: td.clone(),
        root_namespace: "nodemesh-system".into(),
        ca: Ca::new(
            "https://10.0.0.1:15012".parse().expect("a URL"),
            "/ca.pem".into(),
        ),
        default_permissive: false,
        pod_cidr_check: true,
    };
    let mut view = MeshView::default();
    let mut claims = Vec::new();
    for v in &objects {
        let Some((kind, key, object)) = convert(v, &td) else {
            continue;
        };
        if let Some(Object::Pod(c)) = &object {
            claims.push(c.as_ref().clone());
        }
        view.apply(kind, key, object);
    }
    let Ok(state) = view.assemble(&settings) else {
        return;
    };
    for c in &claims {
        let Some(w) = state.workload(c.ip.into()) else {
            continue;
        };
        let cidr = state.config().node(&w.node).and_then(|n| n.pod_cidr);
        assert!(
            cidr.is_some_and(|net| net.contains(&w.ip)),
            "{w:?} outside {cidr:?}"
        );
        let id = format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            w.namespace, w.service_account
        );
        assert_eq!(w.identity.as_str(), id);
    }
});
