//! Whether a connection may reach a local pod, decided without I/O from one state snapshot.

use nodemesh_identity::SpiffeId;
use nodemesh_policy::netpol::Protocol;
use nodemesh_policy::{Connection, Destination, Peer, PolicySet, Verdict};
use nodemesh_state::{FlowSource, MeshState};

use crate::conns::{AdmittedOn, Arrival, Carried};
use crate::flow::Refused;
use crate::observe::RefusalReason;
use crate::pending::PendingPods;

/// An arrival the destination side lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The destination workload's identity.
    pub destination: SpiffeId,
    /// The destination's policies need per-request (L7) decisions; the connection is decided
    /// request by request.
    pub needs_l7: bool,
    /// The policy that allowed it at L4, when one decided.
    pub policy: Option<String>,
}

/// Decides an arrival: the destination must be a local mesh workload with a certificate
/// (`certified`), plaintext must be allowed (PERMISSIVE), and the L4 policy must allow it unless
/// the destination needs L7. Plaintext from an address the state does not know inside the pod
/// network or among the node's `pending` captured pods is refused (`unknown_source`). A
/// [`RefusalReason::Policy`] refusal carries the deciding policy.
pub fn decide(
    state: &MeshState,
    arrival: &Arrival,
    pending: &PendingPods,
    certified: impl Fn(&SpiffeId) -> bool,
) -> Result<Admission, Refused> {
    let Some(dst) = state
        .workload(arrival.target.ip())
        .filter(|w| state.is_local(w) && state.in_mesh(w))
    else {
        return Err(Refused::new(RefusalReason::UnknownDestination));
    };
    if arrival.peer.is_none() && !state.is_permissive(dst) {
        return Err(Refused::new(RefusalReason::StrictMtls));
    }
    let src = arrival.src.ip();
    if arrival.peer.is_none()
        && state.workload(src).is_none()
        && (state.in_pod_network(src) || pending.contains(src))
    {
        return Err(Refused::new(RefusalReason::UnknownSource));
    }
    if !certified(&dst.identity) {
        return Err(Refused::new(RefusalReason::NoCertificate));
    }
    network_policy(state, arrival)?;
    let destination = Destination {
        namespace: &dst.namespace,
        labels: &dst.labels,
        ip: Some(arrival.target.ip()),
        port: arrival.target.port(),
    };
    let policies = state.policies();
    if policies.needs_l7(&destination) {
        return Ok(Admission {
            destination: dst.identity.clone(),
            needs_l7: true,
            policy: None,
        });
    }
    let policy = decide_l4(policies, arrival, destination)?;
    Ok(Admission {
        destination: dst.identity.clone(),
        needs_l7: false,
        policy,
    })
}

/// The network policies' decision on `arrival`, both directions (the source side decided
/// egress too, but only this side knows a mesh source's verified identity, and a plaintext
/// source on this node was seen by no one else). A mesh source is the pod at its address only
/// if the pod has the identity its certificate proves.
fn network_policy(state: &MeshState, arrival: &Arrival) -> Result<(), Refused> {
    if state.network_policies().is_empty() {
        return Ok(());
    }
    let ip = arrival.src.ip();
    let source = match &arrival.peer {
        Some(identity) => FlowSource::Verified { ip, identity },
        None => FlowSource::Address(ip),
    };
    let port = arrival.target.port();
    let decision = state.decide_network(source, arrival.target.ip(), Protocol::Tcp, port);
    match decision.verdict {
        Verdict::Allow => Ok(()),
        Verdict::Deny => Err(Refused::by_network_policy(&decision, port)),
    }
}

/// The L4 decision for `arrival` to `destination` (for a destination that needs L7: the one
/// that stands for a stream that is not HTTP). The deciding policy, or a policy refusal.
fn decide_l4(
    policies: &PolicySet,
    arrival: &Arrival,
    destination: Destination<'_>,
) -> Result<Option<String>, Refused> {
    let connection = Connection {
        source: Peer {
            principal: arrival.peer.as_ref().map(|p| p.principal()),
            namespace: None,
            ip: Some(arrival.src.ip()),
        },
        destination,
    };
    let decision = policies.decide_connection(&connection);
    let policy = decision.deciding_policy.as_ref().map(|p| p.to_string());
    match decision.verdict {
        Verdict::Deny => Err(Refused::by_policy(policy)),
        Verdict::Allow => Ok(policy),
    }
}

/// Decides an open connection again, against a newer `state`, with [`decide`]: it stays only
/// while the same arrival would be admitted to the same destination identity, a source the
/// state vouched for still is a workload of the peer's identity, and an [opaque](Carried::Opaque)
/// stream to a destination that needs L7 is allowed at L4. A refusal says why (the caller
/// reports it as `policy_changed`).
pub fn recheck(
    state: &MeshState,
    open: &AdmittedOn,
    pending: &PendingPods,
    certified: impl Fn(&SpiffeId) -> bool,
) -> Result<(), Refused> {
    let arrival = &open.arrival;
    let admission = decide(state, arrival, pending, certified)?;
    if admission.destination != open.destination {
        return Err(Refused::new(RefusalReason::UnknownDestination));
    }
    if open.source_vouched && !vouched(state, arrival) {
        return Err(Refused::new(RefusalReason::UnknownSource));
    }
    if admission.needs_l7 && open.carried == Carried::Opaque {
        let Some(dst) = state.workload(arrival.target.ip()) else {
            return Err(Refused::new(RefusalReason::UnknownDestination));
        };
        let destination = Destination {
            namespace: &dst.namespace,
            labels: &dst.labels,
            ip: Some(arrival.target.ip()),
            port: arrival.target.port(),
        };
        decide_l4(state.policies(), arrival, destination)?;
    }
    Ok(())
}

/// Whether the arrival's source address is, in `state`, a workload of its peer's identity.
pub fn vouched(state: &MeshState, arrival: &Arrival) -> bool {
    arrival.peer.as_ref().is_some_and(|peer| {
        state
            .workload(arrival.src.ip())
            .is_some_and(|w| w.identity == *peer)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;

    use nodemesh_config::Config;

    use super::*;
    use crate::addr::{ClientAddr, OrigDstAddr};

    const YAML: &str = r#"
nodes:
  - {name: node-a, address: 10.0.0.1, podCIDR: 10.1.0.0/24}
  - {name: node-b, address: 10.0.0.2, podCIDR: 10.2.0.0/24}
namespaces:
  - {name: shop, labels: {nodemesh.io/mesh: enabled}}
  - {name: open, labels: {nodemesh.io/mesh: enabled, nodemesh.io/mtls-mode: permissive}}
workloads:
  - {name: web-1, namespace: shop, serviceAccount: web, ip: 10.1.0.11, node: node-a, labels: {app: web}}
  - {name: db-1, namespace: shop, serviceAccount: db, ip: 10.1.0.21, node: node-a, labels: {app: db}}
  - {name: api-1, namespace: shop, serviceAccount: api, ip: 10.1.0.31, node: node-a, labels: {app: api}}
  - {name: open-1, namespace: open, serviceAccount: open, ip: 10.1.0.41, node: node-a}
  - {name: plain-1, namespace: legacy, ip: 10.1.0.51, node: node-a}
  - {name: db-2, namespace: shop, serviceAccount: db, ip: 10.2.0.21, node: node-b, labels: {app: db}}
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: web-to-db, namespace: shop}
    spec:
      action: ALLOW
      selector: {matchLabels: {app: db}}
      rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}], to: [{operation: {ports: ["5432"]}}]}]
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: api-public, namespace: shop}
    spec:
      action: ALLOW
      selector: {matchLabels: {app: api}}
      rules: [{to: [{operation: {methods: ["GET"], paths: ["/public/*"]}}]}]
"#;

    fn state() -> MeshState {
        MeshState::new(Config::from_yaml_str(YAML, "/").unwrap(), "node-a").unwrap()
    }

    fn id(sa: &str, ns: &str) -> SpiffeId {
        SpiffeId::new(&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")).unwrap()
    }

    fn arrival(peer: Option<SpiffeId>, target: &str) -> Arrival {
        Arrival {
            peer,
            // db-2 on node-b: a known source.
            src: ClientAddr("10.2.0.21:40000".parse::<SocketAddr>().unwrap()),
            target: OrigDstAddr(target.parse().unwrap()),
        }
    }

    fn none() -> PendingPods {
        PendingPods::default()
    }

    fn reason(result: Result<Admission, Refused>) -> RefusalReason {
        result.unwrap_err().reason
    }

    #[test]
    fn allowed_by_policy_names_the_policy() {
        let web = Some(id("web", "shop"));
        let admission =
            decide(&state(), &arrival(web, "10.1.0.21:5432"), &none(), |_| true).unwrap();
        assert_eq!(
            admission,
            Admission {
                destination: id("db", "shop"),
                needs_l7: false,
                policy: Some("shop/web-to-db".into()),
            }
        );
    }

    #[test]
    fn denied_by_policy_at_l4() {
        let other = Some(id("other", "shop"));
        let refused = decide(&state(), &arrival(other, "10.1.0.21:5432"), &none(), |_| {
            true
        })
        .unwrap_err();
        assert_eq!(refused.reason, RefusalReason::Policy);
        let web = Some(id("web", "shop"));
        let wrong_port = decide(&state(), &arrival(web, "10.1.0.21:80"), &none(), |_| true);
        assert_eq!(reason(wrong_port), RefusalReason::Policy);
    }

    #[test]
    fn destinations_needing_l7_are_decided_per_request() {
        let anyone = Some(id("other", "shop"));
        let admission = decide(
            &state(),
            &arrival(anyone, "10.1.0.31:8080"),
            &none(),
            |_| true,
        )
        .unwrap();
        assert!(admission.needs_l7);
        assert_eq!(admission.policy, None);
    }

    #[test]
    fn only_local_mesh_workloads_are_destinations() {
        let web = Some(id("web", "shop"));
        for target in [
            "10.2.0.21:5432",
            "10.1.0.51:80",
            "10.1.0.99:80",
            "192.0.2.1:80",
        ] {
            let result = decide(&state(), &arrival(web.clone(), target), &none(), |_| true);
            assert_eq!(
                reason(result),
                RefusalReason::UnknownDestination,
                "{target}"
            );
        }
    }

    #[test]
    fn plaintext_is_refused_by_strict_and_let_in_by_permissive() {
        let strict = decide(&state(), &arrival(None, "10.1.0.11:80"), &none(), |_| true);
        assert_eq!(reason(strict), RefusalReason::StrictMtls);
        let permissive =
            decide(&state(), &arrival(None, "10.1.0.41:80"), &none(), |_| true).unwrap();
        assert_eq!(permissive.destination, id("open", "open"));
    }

    #[test]
    fn plaintext_from_an_unknown_pod_address_is_refused() {
        let from = |src: &str| Arrival {
            src: ClientAddr(src.parse().unwrap()),
            ..arrival(None, "10.1.0.41:80")
        };
        // Inside node-b's podCIDR, no workload: refused even by a permissive destination.
        let unknown = decide(&state(), &from("10.2.0.99:1"), &none(), |_| true);
        assert_eq!(reason(unknown), RefusalReason::UnknownSource);
        // Outside every podCIDR: outside the mesh, let in by permissive, unless captured here
        // (a pod the CNI plugin added that the state does not know yet).
        assert!(decide(&state(), &from("192.0.2.7:1"), &none(), |_| true).is_ok());
        let pending = PendingPods::default();
        pending.replace(["192.0.2.7".parse().unwrap()].into());
        let captured = decide(&state(), &from("192.0.2.7:1"), &pending, |_| true);
        assert_eq!(reason(captured), RefusalReason::UnknownSource);
        // With a verified peer the address is the peer's node's business, not a refusal.
        let peer = Arrival {
            peer: Some(id("web", "shop")),
            ..from("10.2.0.99:1")
        };
        assert!(decide(&state(), &peer, &none(), |_| true).is_ok());
    }

    #[test]
    fn a_destination_without_certificate_is_refused() {
        let web = Some(id("web", "shop"));
        let db = id("db", "shop");
        let result = decide(&state(), &arrival(web, "10.1.0.21:5432"), &none(), |i| {
            *i != db
        });
        assert_eq!(reason(result), RefusalReason::NoCertificate);
    }

    #[test]
    fn the_decision_is_the_snapshot_s() {
        // The same arrival against two snapshots: each answer follows its own snapshot only.
        let open = YAML.replace("nodemesh.io/mtls-mode: permissive", "x: y");
        let strict = MeshState::new(Config::from_yaml_str(&open, "/").unwrap(), "node-a").unwrap();
        let plain = arrival(None, "10.1.0.41:80");
        assert!(decide(&state(), &plain, &none(), |_| true).is_ok());
        assert_eq!(
            reason(decide(&strict, &plain, &none(), |_| true)),
            RefusalReason::StrictMtls
        );
    }

    fn open(arrival: Arrival, destination: SpiffeId, carried: Carried) -> AdmittedOn {
        AdmittedOn {
            source_vouched: vouched(&state(), &arrival),
            arrival,
            destination,
            carried,
        }
    }

    fn with(policies: &str) -> MeshState {
        let yaml = format!("{}{policies}", YAML.split("policies:").next().unwrap());
        MeshState::new(Config::from_yaml_str(&yaml, "/").unwrap(), "node-a").unwrap()
    }

    #[test]
    fn an_open_connection_is_decided_again_by_the_new_snapshot() {
        let web = arrival(Some(id("web", "shop")), "10.1.0.21:5432");
        let on = open(web, id("db", "shop"), Carried::Opaque);
        assert_eq!(recheck(&state(), &on, &none(), |_| true), Ok(()));
        // The ALLOW is gone and another one applies: refused, naming no allowing policy.
        let other = r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: api-only, namespace: shop}
    spec:
      action: ALLOW
      selector: {matchLabels: {app: db}}
      rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/api"]}}]}]
"#;
        let refused = recheck(&with(other), &on, &none(), |_| true).unwrap_err();
        assert_eq!(refused.reason, RefusalReason::Policy);
        // The destination's certificate is gone, or another identity owns its address.
        let gone = recheck(&state(), &on, &none(), |_| false).unwrap_err();
        assert_eq!(gone.reason, RefusalReason::NoCertificate);
        let moved = YAML.replace(
            "serviceAccount: db, ip: 10.1.0.21",
            "serviceAccount: x, ip: 10.1.0.21",
        );
        let moved = MeshState::new(Config::from_yaml_str(&moved, "/").unwrap(), "node-a").unwrap();
        let moved = recheck(&moved, &on, &none(), |_| true).unwrap_err();
        assert_eq!(moved.reason, RefusalReason::UnknownDestination);
    }

    #[test]
    fn an_opaque_stream_to_a_destination_that_now_needs_l7_is_decided_at_l4() {
        // api-1 needs L7 (GET /public/*): HTTP stays, an opaque stream is denied at L4.
        let anyone = arrival(Some(id("web", "shop")), "10.1.0.31:8080");
        let http = open(anyone.clone(), id("api", "shop"), Carried::Http);
        assert_eq!(recheck(&state(), &http, &none(), |_| true), Ok(()));
        let opaque = open(anyone, id("api", "shop"), Carried::Opaque);
        let refused = recheck(&state(), &opaque, &none(), |_| true).unwrap_err();
        assert_eq!(refused.reason, RefusalReason::Policy);
    }

    #[test]
    fn a_vouched_source_must_stay_a_workload_of_its_identity() {
        // db-2 (node-b) calls with its own identity: the state vouches for its address.
        let db2 = arrival(Some(id("db", "shop")), "10.1.0.41:80");
        let on = open(db2, id("open", "open"), Carried::Opaque);
        assert!(on.source_vouched);
        assert_eq!(recheck(&state(), &on, &none(), |_| true), Ok(()));
        let deleted = YAML.replace(
            "  - {name: db-2, namespace: shop, serviceAccount: db, ip: 10.2.0.21, node: node-b, labels: {app: db}}\n",
            "",
        );
        assert_ne!(deleted, YAML);
        let deleted =
            MeshState::new(Config::from_yaml_str(&deleted, "/").unwrap(), "node-a").unwrap();
        let refused = recheck(&deleted, &on, &none(), |_| true).unwrap_err();
        assert_eq!(refused.reason, RefusalReason::UnknownSource);
    }

    /// The state with a NetworkPolicy on web-1 (no AuthorizationPolicy selects it) admitting
    /// only pods `app: db` on TCP 8080.
    fn with_network_policy() -> MeshState {
        let yaml = format!(
            "{YAML}networkPolicies:\n  - {{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: web-8080, namespace: shop}}, spec: {{podSelector: {{matchLabels: {{app: web}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{app: db}}}}}}], ports: [{{port: 8080}}]}}]}}}}\n"
        );
        MeshState::new(Config::from_yaml_str(&yaml, "/").unwrap(), "node-a").unwrap()
    }

    #[test]
    fn network_policy_filters_the_original_port_and_names_the_policy() {
        let state = with_network_policy();
        let db = Some(id("db", "shop"));
        assert!(
            decide(
                &state,
                &arrival(db.clone(), "10.1.0.11:8080"),
                &none(),
                |_| true
            )
            .is_ok()
        );
        let refused =
            decide(&state, &arrival(db, "10.1.0.11:9090"), &none(), |_| true).unwrap_err();
        assert_eq!(refused.reason, RefusalReason::NetworkPolicy);
        assert_eq!(
            refused.policy.as_deref(),
            Some("NetworkPolicy/shop/web-8080")
        );
        // Other pods are not selected.
        let db = Some(id("db", "shop"));
        assert!(decide(&state, &arrival(db, "10.1.0.31:9090"), &none(), |_| true).is_ok());
    }

    #[test]
    fn a_mesh_source_is_matched_by_its_verified_identity_not_its_address() {
        let state = with_network_policy();
        // The address is db-2's, but the certificate says api: not the pod at that address.
        let forged = arrival(Some(id("api", "shop")), "10.1.0.11:8080");
        assert_eq!(
            reason(decide(&state, &forged, &none(), |_| true)),
            RefusalReason::NetworkPolicy
        );
    }

    #[test]
    fn network_policy_off_admits_what_it_would_deny() {
        let state = with_network_policy().without_network_policies();
        let db = Some(id("db", "shop"));
        assert!(decide(&state, &arrival(db, "10.1.0.11:9090"), &none(), |_| true).is_ok());
    }
}
