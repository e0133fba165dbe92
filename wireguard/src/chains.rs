//! Our mangle chains (`NMWG-*`; the capture crate owns every `NODEMESH-*` chain), pure: what
//! they hold, as `iptables-restore` takes it.
//!
//! - `NMWG-OUTPUT`: the HBONE exemption. Only the node's own HBONE is marked `0x222/0xfff`
//!   (`ip rule pref 105 fwmark 0x222/0xfff lookup main` keeps it out of the tunnel): TCP to port
//!   15008 of a remote pod from a socket of the proxy (mark `0x539`), and the answers of a
//!   connection made to port 15008 here (the proxy's HBONE listener). Forwarded traffic of pods
//!   is never exempt, whatever its ports: a pod's TCP to port 15008 of a remote pod goes through
//!   WireGuard.
//! - `NMWG-INPUT`, `NMWG-FORWARD`: anti-spoofing. A packet to this node's pod network whose
//!   source is a remote pod network (or a pod the tunnel routes) and that did not come out of the
//!   tunnel device is dropped; except, on the way to the node's own sockets (the proxy), HBONE:
//!   TCP to port 15008 and answers from port 15008, which mTLS authenticates and which leave from
//!   pod addresses outside the tunnel.
//! - `NMWG-POSTROUTING`: TCP MSS clamped to the tunnel's path MTU on the way into the device.
//!
//! Older versions marked every TCP to or from port 15008 in `NMWG-PREROUTING`, forwarded or
//! not: that chain is [`RETIRED`], deleted when found.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use ipnet::Ipv4Net;
use nodemesh_net::{marks, ports};

/// Our mangle chains and the built-in chain each is jumped to from.
pub const CHAINS: [(&str, &str); 4] = [
    ("OUTPUT", "NMWG-OUTPUT"),
    ("INPUT", "NMWG-INPUT"),
    ("FORWARD", "NMWG-FORWARD"),
    ("POSTROUTING", "NMWG-POSTROUTING"),
];

/// Chains of older versions, and the built-in chain each was jumped to from: deleted.
pub const RETIRED: [(&str, &str); 1] = [("PREROUTING", "NMWG-PREROUTING")];

/// The chain of `builtin` among [`CHAINS`] and [`RETIRED`].
pub fn chain_of(builtin: &str) -> Option<&'static str> {
    CHAINS
        .iter()
        .chain(&RETIRED)
        .find(|(b, _)| *b == builtin)
        .map(|(_, c)| *c)
}

/// What the chains are rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec<'a> {
    /// The WireGuard interface.
    pub dev: &'a str,
    /// This node's pod network.
    pub local: Ipv4Net,
    /// What the tunnel routes: the remote pod networks (also those of nodes that left) and the
    /// dropped pods of nodes without one.
    pub remote: &'a BTreeSet<Ipv4Net>,
}

impl ChainSpec<'_> {
    /// The rules of our chains, in order.
    pub fn rules(&self) -> Vec<String> {
        let [(_, out), (_, input), (_, forward), (_, post)] = CHAINS;
        let (hbone, proxy, port) = (marks::HBONE, marks::PROXY, ports::HBONE);
        let (dev, local) = (self.dev, self.local);
        let mark = format!("-j MARK --set-xmark {hbone}");
        let answer = format!("-p tcp -m tcp --sport {port} -m conntrack --ctdir REPLY");
        let mut rules = Vec::new();
        for net in self.remote {
            rules.push(format!(
                "-A {out} -d {net} -p tcp -m tcp --dport {port} -m mark --mark {proxy} {mark}"
            ));
            rules.push(format!("-A {out} -d {net} {answer} {mark}"));
        }
        rules.push(format!("-A {input} -i {dev} -j RETURN"));
        rules.push(format!("-A {input} -p tcp -m tcp --dport {port} -j RETURN"));
        rules.push(format!("-A {input} {answer} -j RETURN"));
        rules.extend(
            self.remote
                .iter()
                .map(|net| format!("-A {input} -s {net} -d {local} -j DROP")),
        );
        rules.push(format!("-A {forward} -i {dev} -j RETURN"));
        rules.extend(
            self.remote
                .iter()
                .map(|net| format!("-A {forward} -s {net} -d {local} -j DROP")),
        );
        rules.push(format!(
            "-A {post} -o {dev} -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
        ));
        rules
    }

    /// `iptables-restore --noflush` input (re)creating our chains in one commit (declaring a
    /// chain flushes it), adding the `missing_jumps` to them and deleting the retired jumps and
    /// chains found.
    pub fn render(&self, missing_jumps: &[&str], retired: &Found) -> String {
        let mut out = String::from("*mangle\n");
        for (_, chain) in CHAINS {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for (builtin, chain) in CHAINS {
            if missing_jumps.contains(&builtin) {
                let _ = writeln!(out, "-A {builtin} -j {chain}");
            }
        }
        for rule in self.rules() {
            let _ = writeln!(out, "{rule}");
        }
        out.push_str(&retired.removal());
        out.push_str("COMMIT\n");
        out
    }
}

/// Jumps and chains of ours found in `mangle`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Built-in chains that jump to ours.
    pub jumps: Vec<String>,
    /// Our chains that exist.
    pub chains: Vec<String>,
}

impl Found {
    /// Reads `iptables-save -t mangle`: the jumps to and the declarations of every chain of
    /// ours, retired ones too.
    pub fn parse(save: &str) -> Self {
        let mut found = Self::default();
        for line in save.lines().map(str::trim_end) {
            for (builtin, chain) in CHAINS.iter().chain(&RETIRED) {
                if line == format!("-A {builtin} -j {chain}") {
                    found.jumps.push((*builtin).to_owned());
                }
                if line
                    .strip_prefix(':')
                    .is_some_and(|d| d.split(' ').next() == Some(*chain))
                {
                    found.chains.push((*chain).to_owned());
                }
            }
        }
        found
    }

    /// Only what of this belongs to [`RETIRED`].
    pub fn retired(&self) -> Self {
        let is_retired = |name: &String| {
            RETIRED
                .iter()
                .any(|(builtin, chain)| name == builtin || name == chain)
        };
        Self {
            jumps: self
                .jumps
                .iter()
                .filter(|j| is_retired(j))
                .cloned()
                .collect(),
            chains: self
                .chains
                .iter()
                .filter(|c| is_retired(c))
                .cloned()
                .collect(),
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.jumps.is_empty() && self.chains.is_empty()
    }

    /// `iptables-restore` lines deleting the jumps, then flushing and deleting the chains.
    pub fn removal(&self) -> String {
        let mut out = String::new();
        for builtin in &self.jumps {
            if let Some(chain) = chain_of(builtin) {
                let _ = writeln!(out, "-D {builtin} -j {chain}");
            }
        }
        for chain in &self.chains {
            let _ = writeln!(out, "-F {chain}");
        }
        for chain in &self.chains {
            let _ = writeln!(out, "-X {chain}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn spec(remote: &BTreeSet<Ipv4Net>) -> ChainSpec<'_> {
        ChainSpec {
            dev: "nodemesh-wg0",
            local: net("10.1.0.0/24"),
            remote,
        }
    }

    #[test]
    fn only_the_proxys_hbone_to_remote_pods_is_exempt() {
        let remote = [net("10.2.0.0/24")].into();
        let rules = spec(&remote).rules();
        let out: Vec<_> = rules
            .iter()
            .filter(|r| r.starts_with("-A NMWG-OUTPUT"))
            .collect();
        assert_eq!(
            out,
            [
                "-A NMWG-OUTPUT -d 10.2.0.0/24 -p tcp -m tcp --dport 15008 -m mark --mark 0x539 -j MARK --set-xmark 0x222/0xfff",
                "-A NMWG-OUTPUT -d 10.2.0.0/24 -p tcp -m tcp --sport 15008 -m conntrack --ctdir REPLY -j MARK --set-xmark 0x222/0xfff",
            ]
        );
        // Nothing forwarded is marked: no rule before routing, none in FORWARD but drops.
        assert!(!rules.iter().any(|r| r.contains("PREROUTING")));
        assert!(
            rules
                .iter()
                .filter(|r| r.starts_with("-A NMWG-FORWARD"))
                .all(
                    |r| (r.ends_with("-j RETURN") && r.contains(" -i nodemesh-wg0 "))
                        || r.ends_with("-j DROP")
                )
        );
    }

    #[test]
    fn remote_sources_to_local_pods_must_come_from_the_tunnel() {
        let remote = [net("10.2.0.0/24"), net("10.9.0.5/32")].into();
        let rules = spec(&remote).rules();
        let of = |chain: &str| -> Vec<&str> {
            rules
                .iter()
                .filter(|r| r.starts_with(&format!("-A {chain} ")))
                .map(String::as_str)
                .collect()
        };
        assert_eq!(
            of("NMWG-INPUT"),
            [
                "-A NMWG-INPUT -i nodemesh-wg0 -j RETURN",
                "-A NMWG-INPUT -p tcp -m tcp --dport 15008 -j RETURN",
                "-A NMWG-INPUT -p tcp -m tcp --sport 15008 -m conntrack --ctdir REPLY -j RETURN",
                "-A NMWG-INPUT -s 10.2.0.0/24 -d 10.1.0.0/24 -j DROP",
                "-A NMWG-INPUT -s 10.9.0.5/32 -d 10.1.0.0/24 -j DROP",
            ]
        );
        // Forwarded to a pod, HBONE is no exception: the proxy terminates it.
        assert_eq!(
            of("NMWG-FORWARD"),
            [
                "-A NMWG-FORWARD -i nodemesh-wg0 -j RETURN",
                "-A NMWG-FORWARD -s 10.2.0.0/24 -d 10.1.0.0/24 -j DROP",
                "-A NMWG-FORWARD -s 10.9.0.5/32 -d 10.1.0.0/24 -j DROP",
            ]
        );
    }

    #[test]
    fn render_adds_jumps_and_retires_the_old_chain() {
        let remote = BTreeSet::new();
        let save = "*mangle\n:PREROUTING ACCEPT [0:0]\n:NMWG-PREROUTING - [0:0]\n:NMWG-OUTPUT - [0:0]\n-A PREROUTING -j NMWG-PREROUTING\n-A OUTPUT -j NMWG-OUTPUT\nCOMMIT\n";
        let found = Found::parse(save);
        assert_eq!(found.jumps, ["PREROUTING", "OUTPUT"]);
        assert_eq!(found.chains, ["NMWG-PREROUTING", "NMWG-OUTPUT"]);
        let text = spec(&remote).render(&["INPUT"], &found.retired());
        assert!(
            text.starts_with("*mangle\n:NMWG-OUTPUT - [0:0]\n"),
            "{text}"
        );
        assert!(text.contains("\n-A INPUT -j NMWG-INPUT\n"), "{text}");
        assert!(!text.contains("-A OUTPUT -j"), "{text}");
        assert!(text.contains("-A NMWG-POSTROUTING -o nodemesh-wg0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu\n"), "{text}");
        assert!(
            text.ends_with(
                "-D PREROUTING -j NMWG-PREROUTING\n-F NMWG-PREROUTING\n-X NMWG-PREROUTING\nCOMMIT\n"
            ),
            "{text}"
        );
        assert!(!text.contains(":NMWG-PREROUTING"), "{text}");
        assert!(CHAINS.iter().all(|(_, c)| !c.starts_with("NODEMESH-")));
    }
}
