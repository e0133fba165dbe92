//! Plan: the tool runs that take a host from what is [`Observed`] to a desired [`RuleSet`], or
//! to nothing of ours. Pure: the plans are computed and tested without a host.
//!
//! Each part is changed with one atomic tool run where the tools allow it (`iptables-restore`,
//! `ipset restore`, `nft -f`); a part already in sync is not touched, so planning again after
//! the plan ran yields nothing, and a changed pod set only replaces the set's members.

use crate::iptables::{IptablesTable, render_iptables_removal};
use crate::observe::{Firewall, IptablesState, NftState, Observed, TableState};
use crate::rules::{Backend, NFT_TABLE, RuleSet};
use crate::status::{Status, compare, ip_rule_part, iptables_part, route_part};

/// One tool run on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write `1` to `net.ipv4.ip_forward`; the value it had, for the error when that fails.
    EnableIpForward {
        /// The value read.
        was: String,
    },
    /// `ip -4 rule del ARGS`.
    DeleteIpRule(Vec<String>),
    /// `ip -4 rule add ARGS`.
    AddIpRule(Vec<String>),
    /// `ip -4 route flush table TABLE`.
    FlushRoutes {
        /// The routing table.
        table: u32,
    },
    /// `ip -4 route replace local 0.0.0.0/0 dev lo table TABLE`.
    AddLocalRoute {
        /// The routing table.
        table: u32,
    },
    /// `ipset restore` of this input: replace the pod set's members.
    ReplaceIpset(String),
    /// `ipset destroy NAME`.
    DestroyIpset(String),
    /// `iptables-restore --noflush` of this input: (re)create our chains.
    WriteChains(String),
    /// `iptables-restore --noflush` of this input: delete our chains and the jumps to them.
    DeleteChains(String),
    /// `nft -f -` of this script: replace our whole table.
    WriteNftTable(String),
    /// `nft -f -` of this script: replace the pod set's elements only.
    WriteNftSet(String),
    /// `nft delete table ip nodemesh`.
    DeleteNftTable,
    /// `ip6tables-restore --noflush` of this input: (re)create the IPv6 guard's chain.
    WriteChains6(String),
    /// `ip6tables-restore --noflush` of this input: delete the IPv6 guard's chain and jumps.
    DeleteChains6(String),
    /// `nft -f -` of this script: replace the table `ip6 nodemesh`.
    WriteNft6Table(String),
    /// `nft -f -` of this script: replace the IPv6 pod set's elements only.
    WriteNft6Set(String),
    /// `nft delete table ip6 nodemesh`.
    DeleteNft6Table,
}

/// What to run, and the parts it changes (named as in [`Status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The tool runs, in order.
    pub actions: Vec<Action>,
    /// The names of the parts the actions change, in order; empty when all is in sync.
    pub changed: Vec<String>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    fn change(&mut self, part: &str, actions: impl IntoIterator<Item = Action>) {
        self.actions.extend(actions);
        self.changed.push(part.to_owned());
    }
}

/// The plan that installs `desired` over what is `observed`: every part not in sync is
/// rewritten whole, the others are left alone.
pub fn plan(observed: &Observed, desired: &RuleSet) -> Plan {
    let status = compare(observed, desired);
    let mut plan = Plan::default();
    if !status.ip_forward.in_sync() {
        let was = observed.ip_forward.clone();
        plan.change(&status.ip_forward.name, [Action::EnableIpForward { was }]);
    }
    if !status.ip_rule.in_sync() {
        let pref = desired.rule_pref.to_string();
        let delete = observed
            .ip_rules
            .iter()
            .map(|_| Action::DeleteIpRule(vec!["pref".into(), pref.clone()]));
        let add = Action::AddIpRule(desired.ip_rule_args());
        plan.change(&status.ip_rule.name, delete.chain([add]));
    }
    if !status.route.in_sync() {
        let table = desired.table;
        let flush = observed
            .routes
            .as_ref()
            .is_some_and(|r| !r.is_empty())
            .then_some(Action::FlushRoutes { table });
        let add = Action::AddLocalRoute { table };
        plan.change(&status.route.name, flush.into_iter().chain([add]));
    }
    match &observed.firewall {
        Firewall::Iptables(installed) => plan_iptables(&mut plan, &status, installed, desired),
        Firewall::Nftables(_) => plan_nft(&mut plan, &status, desired),
    }
    if let (Some(set), Some(forward)) = (&status.ipv6_pod_set, &status.ipv6_forward) {
        match &observed.firewall {
            Firewall::Iptables(installed) => {
                if !set.in_sync() {
                    plan.change(&set.name, [Action::ReplaceIpset(desired.render_ipset6())]);
                }
                if !forward.in_sync() {
                    let table = IptablesTable::Filter6;
                    let jumps = installed.table(table).jumps.len();
                    let input = desired.render_iptables(table, jumps);
                    plan.change(&forward.name, [Action::WriteChains6(input)]);
                }
            }
            Firewall::Nftables(_) => {
                if !forward.in_sync() {
                    plan.actions
                        .push(Action::WriteNft6Table(desired.render_nft6()));
                    let set = (!set.in_sync()).then_some(set);
                    plan.changed
                        .extend(set.into_iter().chain([forward]).map(|p| p.name.clone()));
                } else if !set.in_sync() {
                    plan.change(&set.name, [Action::WriteNft6Set(desired.render_nft6_set())]);
                }
            }
        }
    }
    plan
}

fn plan_iptables(plan: &mut Plan, status: &Status, installed: &IptablesState, desired: &RuleSet) {
    if !status.pod_set.in_sync() {
        plan.change(
            &status.pod_set.name,
            [Action::ReplaceIpset(desired.render_ipset())],
        );
    }
    let parts = [&status.capture, &status.nat, &status.forward];
    for (table, part) in IptablesTable::ALL.into_iter().zip(parts) {
        if !part.in_sync() {
            let jumps = installed.table(table).jumps.len();
            let input = desired.render_iptables(table, jumps);
            plan.change(&part.name, [Action::WriteChains(input)]);
        }
    }
}

fn plan_nft(plan: &mut Plan, status: &Status, desired: &RuleSet) {
    let chains = [&status.capture, &status.nat, &status.forward];
    let stale: Vec<_> = chains.into_iter().filter(|c| !c.in_sync()).collect();
    if !stale.is_empty() {
        // The table is replaced whole, set included: one action changes every stale part.
        let set = (!status.pod_set.in_sync()).then_some(&status.pod_set);
        plan.actions
            .push(Action::WriteNftTable(desired.render_nft()));
        plan.changed
            .extend(set.into_iter().chain(stale).map(|p| p.name.clone()));
    } else if !status.pod_set.in_sync() {
        plan.change(
            &status.pod_set.name,
            [Action::WriteNftSet(desired.render_nft_set())],
        );
    }
}

/// The plan that deletes every chain, set, ip rule and route of ours that is `observed`, and
/// the `leftover` firewall of the other backend when it was read. `ip_forward` is left as it is.
pub fn plan_removal(observed: &Observed, leftover: Option<&Firewall>, rules: &RuleSet) -> Plan {
    let mut plan = Plan::default();
    for firewall in std::iter::once(&observed.firewall).chain(leftover) {
        plan_firewall_removal(&mut plan, firewall);
    }
    let want_rule = rules.ip_rule_line();
    for _ in observed.ip_rules.iter().filter(|l| **l == want_rule) {
        plan.change(
            &ip_rule_part(rules),
            [Action::DeleteIpRule(rules.ip_rule_args())],
        );
    }
    if observed.routes.as_ref().is_some_and(|r| !r.is_empty()) {
        let table = rules.table;
        plan.change(&route_part(rules), [Action::FlushRoutes { table }]);
    }
    plan
}

fn plan_firewall_removal(plan: &mut Plan, firewall: &Firewall) {
    match firewall {
        Firewall::Iptables(installed) => {
            for table in IptablesTable::ALL
                .into_iter()
                .chain([IptablesTable::Filter6])
            {
                let TableState { chains, jumps, .. } = installed.table(table);
                if !chains.is_empty() || !jumps.is_empty() {
                    let input = render_iptables_removal(table, chains, jumps.len());
                    let action = if table.is_ipv6() {
                        Action::DeleteChains6(input)
                    } else {
                        Action::DeleteChains(input)
                    };
                    plan.change(&iptables_part(table), [action]);
                }
            }
            for set in &installed.sets {
                plan.change(&format!("ipset {set}"), [Action::DestroyIpset(set.clone())]);
            }
        }
        Firewall::Nftables(NftState {
            chains, chains6, ..
        }) => {
            if chains.is_some() {
                plan.change(
                    &format!("nft table ip {NFT_TABLE}"),
                    [Action::DeleteNftTable],
                );
            }
            if chains6.is_some() {
                plan.change(
                    &format!("nft table ip6 {NFT_TABLE}"),
                    [Action::DeleteNft6Table],
                );
            }
        }
    }
}

/// The other backend, whose leftovers [`crate::remove`] deletes too.
pub(crate) fn other(backend: Backend) -> Backend {
    match backend {
        Backend::Iptables => Backend::Nftables,
        Backend::Nftables => Backend::Iptables,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::rules::{CHAIN_DIVERT, CHAIN_PREROUTING, IPSET_NAME, IPSET_STAGING};
    use crate::status::tests::{bare, installed, rules};

    #[test]
    fn from_nothing_iptables_installs_every_part_in_order() {
        let r = rules(Backend::Iptables);
        let plan = plan(&bare(Backend::Iptables), &r);
        assert_eq!(
            plan.actions,
            [
                Action::EnableIpForward { was: "0".into() },
                Action::AddIpRule(r.ip_rule_args()),
                Action::AddLocalRoute { table: 133 },
                Action::ReplaceIpset(r.render_ipset()),
                Action::WriteChains(r.render_iptables(IptablesTable::Mangle, 0)),
                Action::WriteChains(r.render_iptables(IptablesTable::Nat, 0)),
                Action::WriteChains(r.render_iptables(IptablesTable::Filter, 0)),
                Action::ReplaceIpset(r.render_ipset6()),
                Action::WriteChains6(r.render_iptables(IptablesTable::Filter6, 0)),
            ]
        );
        assert_eq!(
            plan.changed,
            [
                "ip_forward",
                "ip rule pref 100",
                "route table 133",
                "ipset nodemesh-pods",
                "chains mangle NODEMESH-PREROUTING NODEMESH-DIVERT",
                "chains nat NODEMESH-NAT",
                "chains filter NODEMESH-FORWARD",
                "ipset nodemesh-pods6",
                "chains ip6 filter NODEMESH-FORWARD",
            ]
        );
    }

    #[test]
    fn from_nothing_nft_writes_the_table_once() {
        let r = rules(Backend::Nftables);
        let plan = plan(&bare(Backend::Nftables), &r);
        assert_eq!(
            plan.actions[3..],
            [
                Action::WriteNftTable(r.render_nft()),
                Action::WriteNft6Table(r.render_nft6())
            ]
        );
        assert_eq!(
            plan.changed[3..],
            [
                "nft set ip nodemesh pods",
                "nft chains ip nodemesh NODEMESH-PREROUTING NODEMESH-DNAT",
                "nft chain ip nodemesh NODEMESH-NAT",
                "nft chain ip nodemesh NODEMESH-FORWARD",
                "nft set ip6 nodemesh pods",
                "nft chain ip6 nodemesh NODEMESH-FORWARD",
            ]
        );
    }

    #[test]
    fn in_sync_plans_nothing() {
        for backend in [Backend::Iptables, Backend::Nftables] {
            let r = rules(backend);
            let plan = plan(&installed(&r), &r);
            assert!(plan.is_empty(), "{plan:?}");
            assert!(plan.changed.is_empty());
        }
    }

    #[test]
    fn a_new_pod_only_replaces_the_set() {
        let r = rules(Backend::Iptables);
        let more = r.with_pods([Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 3)]);
        let plan = super::plan(&installed(&r), &more);
        assert_eq!(plan.actions, [Action::ReplaceIpset(more.render_ipset())]);
        assert_eq!(plan.changed, ["ipset nodemesh-pods"]);

        let r = rules(Backend::Nftables);
        let more = r.with_pods([Ipv4Addr::new(10, 0, 0, 3)]);
        let plan = super::plan(&installed(&r), &more);
        assert_eq!(plan.actions, [Action::WriteNftSet(more.render_nft_set())]);
        assert_eq!(plan.changed, ["nft set ip nodemesh pods"]);
    }

    #[test]
    fn a_new_ipv6_address_only_replaces_the_ipv6_set() {
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
        let r = rules(Backend::Iptables);
        let more = r.with_pods6([v6("fd00::1"), v6("fd00::9")]);
        let plan = super::plan(&installed(&r), &more);
        assert_eq!(plan.actions, [Action::ReplaceIpset(more.render_ipset6())]);
        assert_eq!(plan.changed, ["ipset nodemesh-pods6"]);
        let r = rules(Backend::Nftables);
        let more = r.with_pods6([v6("fd00::9")]);
        let plan = super::plan(&installed(&r), &more);
        assert_eq!(plan.actions, [Action::WriteNft6Set(more.render_nft6_set())]);
    }

    #[test]
    fn drift_rewrites_the_part_and_clears_what_is_in_the_way() {
        let r = rules(Backend::Iptables);
        let mut seen = installed(&r);
        seen.ip_rules.push("100:\tfrom all lookup 99".into());
        seen.routes = Some(vec!["unreachable default".into()]);
        if let Firewall::Iptables(fw) = &mut seen.firewall {
            fw.mangle.jumps = vec![0, 4, 7];
        }
        let plan = plan(&seen, &r);
        let delete = Action::DeleteIpRule(vec!["pref".into(), "100".into()]);
        let chains = r.render_iptables(IptablesTable::Mangle, 3);
        assert_eq!(
            plan.actions,
            [
                delete.clone(),
                delete,
                Action::AddIpRule(r.ip_rule_args()),
                Action::FlushRoutes { table: 133 },
                Action::AddLocalRoute { table: 133 },
                Action::WriteChains(chains),
            ]
        );
    }

    #[test]
    fn removal_deletes_what_is_there_of_both_backends() {
        let r = rules(Backend::Nftables);
        let seen = installed(&r);
        let leftover = Firewall::Iptables(Box::new(IptablesState {
            mangle: TableState {
                chains: vec![CHAIN_DIVERT.into(), CHAIN_PREROUTING.into()],
                jumps: vec![0],
                ..TableState::default()
            },
            sets: vec![IPSET_NAME.into(), IPSET_STAGING.into()],
            ..IptablesState::default()
        }));
        let plan = plan_removal(&seen, Some(&leftover), &r);
        let chains = "*mangle\n-D PREROUTING -j NODEMESH-PREROUTING\n-F NODEMESH-DIVERT\n\
                      -F NODEMESH-PREROUTING\n-X NODEMESH-DIVERT\n-X NODEMESH-PREROUTING\nCOMMIT\n";
        assert_eq!(
            plan.actions,
            [
                Action::DeleteNftTable,
                Action::DeleteNft6Table,
                Action::DeleteChains(chains.into()),
                Action::DestroyIpset(IPSET_NAME.into()),
                Action::DestroyIpset(IPSET_STAGING.into()),
                Action::DeleteIpRule(r.ip_rule_args()),
                Action::FlushRoutes { table: 133 },
            ]
        );
        assert_eq!(
            plan.changed,
            [
                "nft table ip nodemesh",
                "nft table ip6 nodemesh",
                "chains mangle NODEMESH-PREROUTING NODEMESH-DIVERT",
                "ipset nodemesh-pods",
                "ipset nodemesh-pods-new",
                "ip rule pref 100",
                "route table 133"
            ]
        );
    }

    #[test]
    fn removal_of_nothing_plans_nothing_and_spares_others_rules() {
        let r = rules(Backend::Iptables);
        assert!(plan_removal(&bare(Backend::Iptables), None, &r).is_empty());
        let mut seen = bare(Backend::Iptables);
        // Someone else's rule at our priority is not ours to delete.
        seen.ip_rules = vec!["100:\tfrom all lookup 99".into()];
        assert!(plan_removal(&seen, Some(&Firewall::empty(Backend::Nftables)), &r).is_empty());
    }
}
