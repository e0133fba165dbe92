//! kube-proxy's rules for one testbed node, rendered from the plan's Services (no I/O), so pods
//! call Services through the same DNAT a real node does.
//!
//! The layout follows kube-proxy's own proxiers (facts read from `pkg/proxy/iptables` and
//! `pkg/proxy/nftables`, no code): in iptables mode `nat PREROUTING`/`OUTPUT` jump (prepended)
//! to `KUBE-SERVICES`, which matches each ClusterIP port into `KUBE-SVC-*`, picks an endpoint
//! at random into `KUBE-SEP-*` (DNAT) and ends with `KUBE-NODEPORTS` for local addresses
//! (`KUBE-EXT-*`, masquerade-marked); `KUBE-POSTROUTING` masquerades what carries `0x4000`;
//! `filter FORWARD` jumps to `KUBE-FORWARD`. In nftables mode one table `ip kube-proxy` with
//! the sets `cluster-ips`/`nodeport-ips`, the verdict maps `service-ips`/`service-nodeports`,
//! chains `services`, `service-*`, `endpoint-*`, `external-*` and base chains at `dstnat`
//! (nat prerouting and output) and `srcnat` (masquerading).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::plan::{NodePlan, Plan, ServicePlan};

/// Which of kube-proxy's modes writes a node's Service rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeProxyMode {
    /// `--proxy-mode=iptables`: `iptables-restore` input for `nat` and `filter`.
    Iptables,
    /// `--proxy-mode=nftables`: an `nft -f` script for the table `ip kube-proxy`.
    Nftables,
}

impl KubeProxyMode {
    /// The mode that goes with a capture backend: iptables capture with kube-proxy's iptables
    /// mode, nftables capture with its nftables mode (the iptables backend cannot stop an
    /// nftables NAT chain; SECURITY.md).
    pub fn matching(backend: nodemesh_redirect::Backend) -> Self {
        match backend {
            nodemesh_redirect::Backend::Iptables => Self::Iptables,
            nodemesh_redirect::Backend::Nftables => Self::Nftables,
        }
    }
}

/// kube-proxy's `--cluster-cidr`: traffic from outside it to a ClusterIP is masqueraded.
pub const CLUSTER_CIDR: &str = "10.200.0.0/16";
/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000";

/// One Service port with the endpoints it DNATs to.
struct Port<'a> {
    service: &'a ServicePlan,
    /// `ns/name:p<port>`, kube-proxy's service port name.
    name: String,
    endpoints: Vec<Ipv4Addr>,
}

fn ports(plan: &Plan) -> Vec<Port<'_>> {
    plan.services
        .iter()
        .map(|service| Port {
            service,
            name: format!("{}/{}:p{}", service.namespace, service.name, service.port),
            endpoints: plan.service_endpoints(service),
        })
        .collect()
}

/// `iptables-restore --noflush` input with kube-proxy's `nat` and `filter` rules for `node`.
pub fn render_iptables(plan: &Plan) -> String {
    let ports = ports(plan);
    let svc = |p: &Port| format!("KUBE-SVC-{}", hash(&p.name, 16));
    let ext = |p: &Port| format!("KUBE-EXT-{}", hash(&p.name, 16));
    let sep = |p: &Port, ip: Ipv4Addr| format!("KUBE-SEP-{}", hash(&format!("{}{ip}", p.name), 16));
    let mut out = String::from("*nat\n");
    let mut chains = vec![
        "KUBE-SERVICES".to_owned(),
        "KUBE-NODEPORTS".into(),
        "KUBE-POSTROUTING".into(),
        "KUBE-MARK-MASQ".into(),
    ];
    for p in &ports {
        chains.push(svc(p));
        if p.service.node_port.is_some() {
            chains.push(ext(p));
        }
        chains.extend(p.endpoints.iter().map(|ip| sep(p, *ip)));
    }
    for chain in &chains {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let portals = "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";
    let _ = writeln!(out, "-I PREROUTING 1 {portals}");
    let _ = writeln!(out, "-I OUTPUT 1 {portals}");
    let _ = writeln!(
        out,
        "-I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
    );
    let _ = writeln!(
        out,
        "-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}"
    );
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -j MARK --set-xmark {MASQ_MARK}/0x0"
    );
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully"
    );
    for p in &ports {
        let s = p.service;
        let cluster_ip = format!(
            "-d {}/32 -p tcp -m comment --comment \"{} cluster IP\" -m tcp --dport {}",
            s.vip, p.name, s.port
        );
        let _ = writeln!(out, "-A KUBE-SERVICES {cluster_ip} -j {}", svc(p));
        if let Some(node_port) = s.node_port {
            let _ = writeln!(
                out,
                "-A KUBE-NODEPORTS -p tcp -m comment --comment \"{}\" -m tcp --dport {node_port} -j {}",
                p.name,
                ext(p)
            );
            let _ = writeln!(
                out,
                "-A {} -m comment --comment \"masquerade traffic for {} external destinations\" \
                 -j KUBE-MARK-MASQ",
                ext(p),
                p.name
            );
            let _ = writeln!(out, "-A {} -j {}", ext(p), svc(p));
        }
        let _ = writeln!(
            out,
            "-A {} ! -s {CLUSTER_CIDR} {cluster_ip} -j KUBE-MARK-MASQ",
            svc(p)
        );
        let n = p.endpoints.len();
        for (i, ip) in p.endpoints.iter().enumerate() {
            let comment = format!(
                "-m comment --comment \"{} -> {ip}:{}\"",
                p.name, s.target_port
            );
            let pick = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.11}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(out, "-A {} {comment}{pick} -j {}", svc(p), sep(p, *ip));
            let _ = writeln!(
                out,
                "-A {} -s {ip}/32 -m comment --comment \"{}\" -j KUBE-MARK-MASQ",
                sep(p, *ip),
                p.name
            );
            let _ = writeln!(
                out,
                "-A {} -p tcp -m comment --comment \"{}\" -m tcp -j DNAT --to-destination {ip}:{}",
                sep(p, *ip),
                p.name,
                s.target_port
            );
        }
    }
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be \
         the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    out.push_str("COMMIT\n*filter\n:KUBE-FORWARD - [0:0]\n");
    let forwarding = "-m comment --comment \"kubernetes forwarding rules\"";
    let _ = writeln!(out, "-I FORWARD 1 {forwarding} -j KUBE-FORWARD");
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
    );
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD {forwarding} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" \
         -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    out.push_str("COMMIT\n");
    out
}

/// An `nft -f` script that (re)creates kube-proxy's table `ip kube-proxy` for `node`.
pub fn render_nft(plan: &Plan, node: &NodePlan) -> String {
    let ports = ports(plan);
    let t = "ip kube-proxy";
    let chain_name = |kind: &str, p: &Port| {
        let s = p.service;
        format!(
            "{kind}-{}-{}/{}/tcp/p{}",
            hash(&p.name, 8),
            s.namespace,
            s.name,
            s.port
        )
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}"
    );
    let _ = writeln!(out, "delete table {t}");
    let _ = writeln!(
        out,
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}"
    );
    for (name, kind) in [
        (
            "cluster-ips",
            "type ipv4_addr ; comment \"Active ClusterIPs\"",
        ),
        (
            "nodeport-ips",
            "type ipv4_addr ; comment \"IPs that accept NodePort traffic\"",
        ),
    ] {
        let _ = writeln!(out, "add set {t} {name} {{ {kind} ; }}");
    }
    let _ = writeln!(
        out,
        "add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
         comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );
    let _ = writeln!(
        out,
        "add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; \
         comment \"NodePort traffic\" ; }}"
    );
    let _ = writeln!(out, "add chain {t} mark-for-masquerade");
    let _ = writeln!(
        out,
        "add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}"
    );
    let _ = writeln!(out, "add chain {t} masquerading");
    let _ = writeln!(
        out,
        "add rule {t} masquerading mark and {MASQ_MARK} == 0 return"
    );
    let _ = writeln!(
        out,
        "add rule {t} masquerading mark set mark xor {MASQ_MARK}"
    );
    let _ = writeln!(out, "add rule {t} masquerading masquerade fully-random");
    let _ = writeln!(out, "add chain {t} services");
    for (chain, hook, priority, jump) in [
        // kube-proxy says `dstnat`/`srcnat`; Debian 12's nft only takes the numbers for output.
        ("nat-prerouting", "prerouting", "-100", "services"),
        ("nat-output", "output", "-100", "services"),
        ("nat-postrouting", "postrouting", "100", "masquerading"),
    ] {
        let _ = writeln!(
            out,
            "add chain {t} {chain} {{ type nat hook {hook} priority {priority} ; }}"
        );
        let _ = writeln!(out, "add rule {t} {chain} jump {jump}");
    }
    let _ = writeln!(
        out,
        "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips"
    );
    let _ = writeln!(
        out,
        "add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
    );
    let _ = writeln!(out, "add element {t} nodeport-ips {{ {} }}", node.address);
    for p in &ports {
        let s = p.service;
        let service = chain_name("service", p);
        let _ = writeln!(out, "add chain {t} {service}");
        let _ = writeln!(
            out,
            "add rule {t} {service} ip daddr {} tcp dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
            s.vip, s.port
        );
        let mut picks = Vec::new();
        for (i, ip) in p.endpoints.iter().enumerate() {
            let endpoint = format!(
                "endpoint-{}-{}/{}/tcp/p{}__{ip}/{}",
                hash(&format!("{}{ip}", p.name), 8),
                s.namespace,
                s.name,
                s.port,
                s.target_port
            );
            let _ = writeln!(out, "add chain {t} {endpoint}");
            let _ = writeln!(
                out,
                "add rule {t} {endpoint} ip saddr {ip} jump mark-for-masquerade"
            );
            let _ = writeln!(
                out,
                "add rule {t} {endpoint} meta l4proto tcp dnat to {ip}:{}",
                s.target_port
            );
            picks.push(format!("{i} : goto {endpoint}"));
        }
        if !picks.is_empty() {
            let _ = writeln!(
                out,
                "add rule {t} {service} numgen random mod {} vmap {{ {} }}",
                picks.len(),
                picks.join(" , ")
            );
        }
        let _ = writeln!(out, "add element {t} cluster-ips {{ {} }}", s.vip);
        let _ = writeln!(
            out,
            "add element {t} service-ips {{ {} . tcp . {} : goto {service} }}",
            s.vip, s.port
        );
        if let Some(node_port) = s.node_port {
            let external = chain_name("external", p);
            let _ = writeln!(out, "add chain {t} {external}");
            let _ = writeln!(out, "add rule {t} {external} jump mark-for-masquerade");
            let _ = writeln!(out, "add rule {t} {external} goto {service}");
            let _ = writeln!(
                out,
                "add element {t} service-nodeports {{ tcp . {node_port} : goto {external} }}"
            );
        }
    }
    out
}

/// An uppercase base32 digest of `text`, `len` characters long, in the shape of kube-proxy's
/// chain-name hashes (which are sha256-based; any stable digest serves a testbed).
fn hash(text: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(len);
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    while out.len() < len {
        let mut h = seed;
        for b in text.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        for i in 0..12 {
            if out.len() < len {
                out.push(char::from(ALPHABET[((h >> (i * 5)) & 31) as usize]));
            }
        }
        seed = h;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ClusterSpec, Labels, NodeSpec, PodSpec, ServiceSpec};

    fn plan() -> Plan {
        let app: Labels = [("app".to_owned(), "web".to_owned())].into();
        Plan::new(&ClusterSpec {
            nodes: vec![NodeSpec {
                name: "node-a".into(),
                pods: vec![
                    PodSpec::new("web-1", "shop", "web").label("app", "web"),
                    PodSpec::new("web-2", "shop", "web").label("app", "web"),
                ],
            }],
            services: vec![ServiceSpec {
                node_port: Some(30080),
                ..ServiceSpec::new("web", "shop", 80, 8080, app)
            }],
            ..ClusterSpec::default()
        })
        .unwrap()
    }

    #[test]
    fn iptables_mode_dnats_cluster_ips_and_node_ports() {
        let plan = plan();
        let text = render_iptables(&plan);
        let svc = format!("KUBE-SVC-{}", hash("shop/web:p80", 16));
        assert!(text.contains(&format!(
            "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"shop/web:p80 cluster IP\" -m tcp --dport 80 -j {svc}"
        )));
        assert!(text.contains("--probability 0.50000000000 -j KUBE-SEP-"));
        assert!(text.contains("-j DNAT --to-destination 10.200.1.11:8080"));
        assert!(text.contains("-j DNAT --to-destination 10.200.1.12:8080"));
        assert!(text.contains("-m tcp --dport 30080 -j KUBE-EXT-"));
        let last_services_rule = text
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES"))
            .unwrap();
        assert!(last_services_rule.ends_with("-j KUBE-NODEPORTS"));
    }

    #[test]
    fn nft_mode_fills_kube_proxys_maps() {
        let plan = plan();
        let text = render_nft(&plan, &plan.nodes[0]);
        assert!(text.contains("add element ip kube-proxy cluster-ips { 10.96.0.10 }"));
        assert!(text.contains(
            "add element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 : goto service-"
        ));
        assert!(text.contains(
            "add element ip kube-proxy service-nodeports { tcp . 30080 : goto external-"
        ));
        assert!(text.contains("add element ip kube-proxy nodeport-ips { 10.200.0.1 }"));
        assert!(text.contains("numgen random mod 2 vmap"));
        assert!(text.contains("meta l4proto tcp dnat to 10.200.1.12:8080"));
    }

    #[test]
    fn hashes_are_stable_and_shaped() {
        assert_eq!(hash("a", 16), hash("a", 16));
        assert_ne!(hash("a", 16), hash("b", 16));
        assert_eq!(hash("a", 8).len(), 8);
        assert!(
            hash("x", 16)
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
    }
}
