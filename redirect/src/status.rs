//! [`Status`]: what is installed compared with a desired [`RuleSet`], part by part (pure).

use std::collections::BTreeSet;
use std::fmt;
use std::fmt::Display;

use crate::iptables::IptablesTable;
use crate::ipv6::{IPSET6_NAME, IPSET6_STAGING};
use crate::observe::{Firewall, IptablesState, NftState, Observed, TableState};
use crate::rules::{
    Backend, CHAIN_DNAT, CHAIN_FORWARD, CHAIN_NAT, CHAIN_PREROUTING, IPSET_NAME, IPSET_STAGING,
    NFT_SET, NFT_TABLE, RuleSet,
};

/// The state of one part of the capture rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemState {
    /// Installed and as desired.
    InSync,
    /// Not installed at all.
    Missing,
    /// Installed but different from the desired rules; says how.
    Drift(String),
}

/// One part of the capture rules and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What it is, as printed: `ip_forward`, `ip rule pref 100`, `route table 133`, ...
    pub name: String,
    /// Its state.
    pub state: ItemState,
}

impl Item {
    fn new(name: impl Into<String>, state: ItemState) -> Self {
        Self {
            name: name.into(),
            state,
        }
    }

    /// Whether this part is installed as desired.
    pub fn in_sync(&self) -> bool {
        self.state == ItemState::InSync
    }
}

/// What is installed on a host compared with a desired [`RuleSet`], one field per part (in
/// install order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The backend looked at.
    pub backend: Backend,
    /// `net.ipv4.ip_forward`, which capture needs on.
    pub ip_forward: Item,
    /// The `ip rule` sending TPROXY-marked packets to our table.
    pub ip_rule: Item,
    /// The local route of our table.
    pub route: Item,
    /// The pod set: the ipset or the nft set.
    pub pod_set: Item,
    /// Capture: the `mangle` chains and the jump to them, or the nft prerouting chains.
    pub capture: Item,
    /// Captured flows skip NAT (kube-proxy keeps its hands off their Service VIP).
    pub nat: Item,
    /// The forward guard: TCP to or from a mesh pod that no proxy socket owns is dropped.
    pub forward: Item,
    /// The IPv6 pod set; `None` when the host has no IPv6.
    pub ipv6_pod_set: Option<Item>,
    /// The IPv6 guard: IPv6 forwarded to or from a mesh pod is dropped; `None` when the host
    /// has no IPv6.
    pub ipv6_forward: Option<Item>,
}

impl Status {
    /// Every part, in install order.
    pub fn items(&self) -> Vec<&Item> {
        let v4 = [
            &self.ip_forward,
            &self.ip_rule,
            &self.route,
            &self.pod_set,
            &self.capture,
            &self.nat,
            &self.forward,
        ];
        let v6 = [&self.ipv6_pod_set, &self.ipv6_forward];
        v4.into_iter().chain(v6.into_iter().flatten()).collect()
    }

    /// Whether everything is installed as desired.
    pub fn in_sync(&self) -> bool {
        self.items().iter().all(|i| i.in_sync())
    }

    /// Whether none of our rules, sets, ip rules or routes is installed (`ip_forward` aside).
    pub fn nothing_installed(&self) -> bool {
        self.items()[1..]
            .iter()
            .all(|i| i.state == ItemState::Missing)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "backend: {}", self.backend)?;
        for item in self.items() {
            match &item.state {
                ItemState::InSync => writeln!(f, "{}: in sync", item.name)?,
                ItemState::Missing => writeln!(f, "{}: missing", item.name)?,
                ItemState::Drift(how) => writeln!(f, "{}: drift: {how}", item.name)?,
            }
        }
        let summary = if self.in_sync() {
            "in sync"
        } else if self.nothing_installed() {
            "not installed"
        } else {
            "drift"
        };
        write!(f, "capture: {summary}")
    }
}

/// Compares what is installed with the desired rules. Pure: reads nothing, changes nothing.
pub fn compare(observed: &Observed, desired: &RuleSet) -> Status {
    let ip_forward = Item::new(
        "ip_forward",
        if observed.ip_forward == "1" {
            ItemState::InSync
        } else {
            ItemState::Drift(format!("is {}, capture needs 1", observed.ip_forward))
        },
    );
    let want_rule = desired.ip_rule_line();
    let ip_rule = Item::new(
        ip_rule_part(desired),
        match observed.ip_rules.as_slice() {
            [] => ItemState::Missing,
            [one] if *one == want_rule => ItemState::InSync,
            other => ItemState::Drift(format!("found {other:?}, want [{want_rule:?}]")),
        },
    );
    let want_route = desired.route_line();
    let route = Item::new(
        route_part(desired),
        match observed.routes.as_deref() {
            None | Some([]) => ItemState::Missing,
            Some([one]) if one == want_route => ItemState::InSync,
            Some(other) => ItemState::Drift(format!("found {other:?}, want [{want_route:?}]")),
        },
    );
    let [pod_set, capture, nat, forward] = match &observed.firewall {
        Firewall::Iptables(installed) => compare_iptables(installed, desired),
        Firewall::Nftables(installed) => compare_nft(installed, desired),
    };
    let [ipv6_pod_set, ipv6_forward] = if observed.ipv6 {
        match &observed.firewall {
            Firewall::Iptables(installed) => compare_iptables6(installed, desired),
            Firewall::Nftables(installed) => compare_nft6(installed, desired),
        }
        .map(Some)
    } else {
        [None, None]
    };
    Status {
        backend: desired.backend,
        ip_forward,
        ip_rule,
        route,
        pod_set,
        capture,
        nat,
        forward,
        ipv6_pod_set,
        ipv6_forward,
    }
}

/// The name of the ip rule part: `ip rule pref 100`.
pub(crate) fn ip_rule_part(rules: &RuleSet) -> String {
    format!("ip rule pref {}", rules.rule_pref)
}

/// The name of the route part: `route table 133`.
pub(crate) fn route_part(rules: &RuleSet) -> String {
    format!("route table {}", rules.table)
}

/// The name of one table's part: `chains mangle NODEMESH-PREROUTING NODEMESH-DIVERT`.
pub(crate) fn iptables_part(table: IptablesTable) -> String {
    let mut chains = table.chains().to_vec();
    chains.sort_by_key(|c| std::cmp::Reverse(*c == table.hook().1));
    format!("chains {} {}", table.label(), chains.join(" "))
}

/// The IPv6 pod set, then the IPv6 guard's chain.
fn compare_iptables6(installed: &IptablesState, desired: &RuleSet) -> [Item; 2] {
    let mut state = members_state(installed.members6.as_ref(), desired.pods6());
    if installed.sets.iter().any(|s| s == IPSET6_STAGING) && state != ItemState::Missing {
        state = ItemState::Drift(format!("leftover staging set {IPSET6_STAGING}"));
    }
    let table = IptablesTable::Filter6;
    [
        Item::new(format!("ipset {IPSET6_NAME}"), state),
        Item::new(
            iptables_part(table),
            compare_table(table, installed.table(table), desired),
        ),
    ]
}

/// The IPv6 pod set, then the IPv6 guard's chain (table `ip6 nodemesh`).
fn compare_nft6(installed: &NftState, desired: &RuleSet) -> [Item; 2] {
    let pod_set = Item::new(
        format!("nft set ip6 {NFT_TABLE} {NFT_SET}"),
        members_state(installed.members6.as_ref(), desired.pods6()),
    );
    let want = desired.nft6_chain();
    let state = match installed.chains6.as_ref().and_then(|c| c.get(want.name)) {
        None => ItemState::Missing,
        Some(c) if c.is_empty() => ItemState::Missing,
        Some(c) if *c == want.lines => ItemState::InSync,
        Some(c) => ItemState::Drift(format!("{}: {}", want.name, diff_lines(c, &want.lines))),
    };
    let forward = Item::new(format!("nft chain ip6 {NFT_TABLE} {}", want.name), state);
    [pod_set, forward]
}

/// The pod set, then the capture, nat and forward parts.
fn compare_iptables(installed: &IptablesState, desired: &RuleSet) -> [Item; 4] {
    let mut state = members_state(installed.members.as_ref(), desired.pods());
    if installed.sets.iter().any(|s| s == IPSET_STAGING) && state != ItemState::Missing {
        state = ItemState::Drift(format!("leftover staging set {IPSET_STAGING}"));
    }
    let pod_set = Item::new(format!("ipset {IPSET_NAME}"), state);
    let [mangle, nat, filter] = IptablesTable::ALL.map(|table| {
        Item::new(
            iptables_part(table),
            compare_table(table, installed.table(table), desired),
        )
    });
    [pod_set, mangle, nat, filter]
}

fn compare_table(table: IptablesTable, installed: &TableState, desired: &RuleSet) -> ItemState {
    let TableState {
        chains,
        rules,
        jumps,
    } = installed;
    let (builtin, _) = table.hook();
    let want = desired.iptables_rules(table);
    if chains.is_empty() && jumps.is_empty() {
        ItemState::Missing
    } else if jumps.len() != 1 {
        ItemState::Drift(format!(
            "{} jumps from {} {builtin}, want 1",
            jumps.len(),
            table.label()
        ))
    } else if jumps[0] != 0 {
        // In nat, KUBE-SERVICES before us would DNAT captured flows; in filter, an ACCEPT
        // before us would forward what the guard must drop.
        ItemState::Drift(format!(
            "the jump is rule {} of {} {builtin}, want it first",
            jumps[0] + 1,
            table.label()
        ))
    } else if *rules != want {
        ItemState::Drift(diff_lines(rules, &want))
    } else if *chains != table.chains() {
        ItemState::Drift(format!("chains {chains:?}"))
    } else {
        ItemState::InSync
    }
}

/// The name of one group of our nft chains: `nft chains ip nodemesh NODEMESH-PREROUTING ...`.
pub(crate) fn nft_part(names: &[&str]) -> String {
    let noun = if names.len() == 1 { "chain" } else { "chains" };
    format!("nft {noun} ip {NFT_TABLE} {}", names.join(" "))
}

/// Our nft chains grouped as the parts of a [`Status`]: capture, nat, forward.
pub(crate) const NFT_PARTS: [&[&str]; 3] = [
    &[CHAIN_PREROUTING, CHAIN_DNAT],
    &[CHAIN_NAT],
    &[CHAIN_FORWARD],
];

/// The pod set, then the capture, nat and forward parts.
fn compare_nft(installed: &NftState, desired: &RuleSet) -> [Item; 4] {
    let pod_set = Item::new(
        format!("nft set ip {NFT_TABLE} {NFT_SET}"),
        members_state(installed.members.as_ref(), desired.pods()),
    );
    let want = desired.nft_chains();
    let [capture, nat, forward] = NFT_PARTS.map(|names| {
        let mut state = ItemState::InSync;
        let mut missing = 0;
        for name in names {
            let wanted = &want
                .iter()
                .find(|c| c.name == *name)
                .expect("a chain of ours")
                .lines;
            match installed.chains.as_ref().and_then(|c| c.get(*name)) {
                None => missing += 1,
                Some(c) if c.is_empty() => missing += 1,
                Some(c) if c == wanted => {}
                Some(c) => state = ItemState::Drift(format!("{name}: {}", diff_lines(c, wanted))),
            }
        }
        if missing == names.len() {
            state = ItemState::Missing;
        } else if missing > 0 && state == ItemState::InSync {
            state = ItemState::Drift(format!("{missing} chain(s) missing"));
        }
        Item::new(nft_part(names), state)
    });
    [pod_set, capture, nat, forward]
}

/// How many rules are missing and unexpected, each followed by the rules themselves (the first
/// [`SHOWN_RULES`]) in parentheses.
fn diff_lines(installed: &[String], desired: &[String]) -> String {
    let missing: Vec<&String> = desired.iter().filter(|l| !installed.contains(l)).collect();
    let extra: Vec<&String> = installed.iter().filter(|l| !desired.contains(l)).collect();
    if missing.is_empty() && extra.is_empty() {
        return "rules in another order".to_owned();
    }
    let named = |rules: &[&String]| {
        if rules.is_empty() {
            return String::new();
        }
        let mut shown: Vec<&str> = rules.iter().take(SHOWN_RULES).map(|r| r.trim()).collect();
        if rules.len() > SHOWN_RULES {
            shown.push("...");
        }
        format!(" ({})", shown.join("; "))
    };
    format!(
        "{} rule(s) missing{}, {} unexpected{}",
        missing.len(),
        named(&missing),
        extra.len(),
        named(&extra)
    )
}

/// How many missing or unexpected rules a drift names.
const SHOWN_RULES: usize = 3;

fn members_state<A: Ord + Display>(
    members: Option<&BTreeSet<A>>,
    desired: &BTreeSet<A>,
) -> ItemState {
    match members {
        None => ItemState::Missing,
        Some(m) if m == desired => ItemState::InSync,
        Some(m) => {
            let missing: Vec<_> = desired.difference(m).map(ToString::to_string).collect();
            let extra: Vec<_> = m.difference(desired).map(ToString::to_string).collect();
            ItemState::Drift(format!(
                "missing [{}], unexpected [{}]",
                missing.join(", "),
                extra.join(", ")
            ))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    pub(crate) fn rules(backend: Backend) -> RuleSet {
        RuleSet::new(
            backend,
            [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)],
        )
        .with_pods6([Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)])
    }

    /// What a successful apply of `rules` leaves installed.
    pub(crate) fn installed(rules: &RuleSet) -> Observed {
        let firewall = match rules.backend {
            Backend::Iptables => {
                let [mangle, nat, filter] = IptablesTable::ALL.map(|table| TableState {
                    chains: table.chains().iter().map(|c| c.to_string()).collect(),
                    rules: rules.iptables_rules(table),
                    jumps: vec![0],
                });
                let table = IptablesTable::Filter6;
                let filter6 = TableState {
                    chains: table.chains().iter().map(|c| c.to_string()).collect(),
                    rules: rules.iptables_rules(table),
                    jumps: vec![0],
                };
                Firewall::Iptables(Box::new(IptablesState {
                    mangle,
                    nat,
                    filter,
                    filter6,
                    sets: vec![IPSET_NAME.into(), IPSET6_NAME.into()],
                    members: Some(rules.pods().clone()),
                    members6: Some(rules.pods6().clone()),
                }))
            }
            Backend::Nftables => Firewall::Nftables(NftState {
                chains: Some(
                    rules
                        .nft_chains()
                        .into_iter()
                        .map(|c| (c.name.to_owned(), c.lines))
                        .collect(),
                ),
                members: Some(rules.pods().clone()),
                chains6: Some(
                    [rules.nft6_chain()]
                        .into_iter()
                        .map(|c| (c.name.to_owned(), c.lines))
                        .collect(),
                ),
                members6: Some(rules.pods6().clone()),
            }),
        };
        Observed {
            ip_forward: "1".into(),
            ip_rules: vec![rules.ip_rule_line()],
            routes: Some(vec![rules.route_line().into()]),
            ipv6: true,
            firewall,
        }
    }

    /// A host with nothing of ours and forwarding off.
    pub(crate) fn bare(backend: Backend) -> Observed {
        Observed {
            ip_forward: "0".into(),
            ip_rules: vec![],
            routes: None,
            ipv6: true,
            firewall: Firewall::empty(backend),
        }
    }

    #[test]
    fn what_apply_installs_is_in_sync() {
        for backend in [Backend::Iptables, Backend::Nftables] {
            let r = rules(backend);
            let st = compare(&installed(&r), &r);
            assert!(st.in_sync(), "{st}");
            assert!(!st.nothing_installed());
        }
    }

    #[test]
    fn a_bare_host_has_nothing_installed() {
        for backend in [Backend::Iptables, Backend::Nftables] {
            let st = compare(&bare(backend), &rules(backend));
            assert!(st.nothing_installed(), "{st}");
            assert!(!st.in_sync());
            assert!(st.to_string().ends_with("capture: not installed"), "{st}");
        }
    }

    #[test]
    fn parts_are_named_fields() {
        let st = compare(
            &installed(&rules(Backend::Iptables)),
            &rules(Backend::Iptables),
        );
        assert_eq!(st.ip_forward.name, "ip_forward");
        assert_eq!(st.ip_rule.name, "ip rule pref 100");
        assert_eq!(st.route.name, "route table 133");
        assert_eq!(st.pod_set.name, "ipset nodemesh-pods");
        assert_eq!(
            st.capture.name,
            "chains mangle NODEMESH-PREROUTING NODEMESH-DIVERT"
        );
        assert_eq!(st.nat.name, "chains nat NODEMESH-NAT");
        assert_eq!(st.forward.name, "chains filter NODEMESH-FORWARD");
        let st = compare(
            &installed(&rules(Backend::Nftables)),
            &rules(Backend::Nftables),
        );
        assert_eq!(st.pod_set.name, "nft set ip nodemesh pods");
        assert_eq!(
            st.capture.name,
            "nft chains ip nodemesh NODEMESH-PREROUTING NODEMESH-DNAT"
        );
        assert_eq!(st.nat.name, "nft chain ip nodemesh NODEMESH-NAT");
    }

    #[test]
    fn drift_is_named() {
        let r = rules(Backend::Iptables);
        let mut seen = installed(&r);
        seen.ip_forward = "0".into();
        if let Firewall::Iptables(fw) = &mut seen.firewall {
            fw.mangle.jumps = vec![0, 3];
            fw.nat.jumps = vec![1];
            fw.members
                .as_mut()
                .unwrap()
                .insert(Ipv4Addr::new(10, 0, 0, 9));
        }
        let st = compare(&seen, &r);
        let text = st.to_string();
        assert!(text.contains("ip_forward: drift: is 0"), "{text}");
        assert!(text.contains("2 jumps from mangle PREROUTING"), "{text}");
        assert!(
            text.contains("the jump is rule 2 of nat PREROUTING, want it first"),
            "{text}"
        );
        assert!(text.contains("unexpected [10.0.0.9]"), "{text}");
        assert!(text.ends_with("capture: drift"), "{text}");
    }

    #[test]
    fn drift_names_the_rules() {
        let want: Vec<String> = (1..=5).map(|i| format!("-A C rule{i}")).collect();
        let seen = vec!["-A C rule1".to_owned(), "-A C stray".to_owned()];
        assert_eq!(
            diff_lines(&seen, &want),
            "4 rule(s) missing (-A C rule2; -A C rule3; -A C rule4; ...), 1 unexpected (-A C stray)"
        );
    }

    #[test]
    fn a_missing_nft_rule_is_drift() {
        let r = rules(Backend::Nftables);
        let mut seen = installed(&r);
        let mut removed = String::new();
        if let Firewall::Nftables(NftState {
            chains: Some(c), ..
        }) = &mut seen.firewall
        {
            removed = c.get_mut(CHAIN_PREROUTING).unwrap().pop().unwrap();
            c.remove(CHAIN_FORWARD);
        }
        let st = compare(&seen, &r);
        assert_eq!(
            st.capture.state,
            ItemState::Drift(format!(
                "NODEMESH-PREROUTING: 1 rule(s) missing ({}), 0 unexpected",
                removed.trim()
            )),
            "{st}"
        );
        assert_eq!(st.forward.state, ItemState::Missing);
        assert!(st.nat.in_sync());
    }

    #[test]
    fn the_ipv6_guard_is_a_part_where_the_host_has_ipv6() {
        for backend in [Backend::Iptables, Backend::Nftables] {
            let r = rules(backend);
            let mut seen = installed(&r);
            let more = r.with_pods6([Ipv6Addr::LOCALHOST]);
            let st = compare(&seen, &more);
            assert!(!st.in_sync());
            let set = st.ipv6_pod_set.as_ref().unwrap();
            assert!(
                matches!(&set.state, ItemState::Drift(d) if d.contains("missing [::1]")),
                "{st}"
            );
            assert!(st.ipv6_forward.as_ref().unwrap().in_sync(), "{st}");
            seen.ipv6 = false;
            let st = compare(&seen, &more);
            assert!(
                st.in_sync() && st.ipv6_forward.is_none(),
                "no IPv6, nothing to guard: {st}"
            );
        }
        let st = compare(
            &installed(&rules(Backend::Iptables)),
            &rules(Backend::Iptables),
        );
        assert_eq!(
            st.ipv6_forward.unwrap().name,
            "chains ip6 filter NODEMESH-FORWARD"
        );
        let st = compare(
            &installed(&rules(Backend::Nftables)),
            &rules(Backend::Nftables),
        );
        assert_eq!(st.ipv6_pod_set.unwrap().name, "nft set ip6 nodemesh pods");
    }

    #[test]
    fn a_leftover_staging_set_is_drift() {
        let r = rules(Backend::Iptables);
        let mut seen = installed(&r);
        if let Firewall::Iptables(fw) = &mut seen.firewall {
            fw.sets.push(IPSET_STAGING.into());
        }
        let st = compare(&seen, &r);
        assert_eq!(
            st.pod_set.state,
            ItemState::Drift(format!("leftover staging set {IPSET_STAGING}"))
        );
    }
}
