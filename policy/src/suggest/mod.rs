//! `policy suggest`: from observed flows to the least NetworkPolicies and AuthorizationPolicies
//! that admit exactly them. No I/O: flows and a workload directory in, JSON documents out
//! ([`to_yaml`] makes them one multi-document YAML for `kubectl apply`).
//!
//! ```text
//! flow-log lines --(Flow::parse_line)--> Flow... --(Suggester::add)--> edges
//!     edges --(Suggester::finish)--> Suggestion { documents, stats, warnings } --(to_yaml)--> YAML
//! ```
//!
//! Which flows count: those in the window (`since` inclusive, `until` exclusive) with verdict
//! `allow` or `passthrough`, plus `deny` with [`SuggestOptions::include_denied`] (to open what a
//! default-deny refused). `refused` never counts: those failed before any policy (TLS, no
//! endpoint, overload). A destination is grouped by its labels minus [`POD_UNIQUE_LABELS`]; one
//! without other labels cannot be selected alone and gets no policy (a warning says so).

mod flow;
mod render;
mod workloads;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub use flow::{
    Flow, FlowEndpoint, FlowVerdict, LineError, format_time, parse_flow_log, parse_time,
};
pub use render::to_yaml;
pub use workloads::{Directory, Group, POD_UNIQUE_LABELS, Workload, Workloads, group_names};

use time::OffsetDateTime;

/// Which kinds of policy to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kinds {
    /// Kubernetes NetworkPolicies only.
    Network,
    /// nodemesh AuthorizationPolicies only.
    Authorization,
    /// Both.
    #[default]
    Both,
}

impl Kinds {
    fn network(self) -> bool {
        matches!(self, Kinds::Network | Kinds::Both)
    }

    fn authorization(self) -> bool {
        matches!(self, Kinds::Authorization | Kinds::Both)
    }
}

/// What to suggest, from which flows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuggestOptions {
    /// Flows before this time are left out.
    pub since: Option<OffsetDateTime>,
    /// Flows at or after this time are left out.
    pub until: Option<OffsetDateTime>,
    /// Count denied flows too (verdict `deny`).
    pub include_denied: bool,
    /// Which kinds of policy to write.
    pub kinds: Kinds,
    /// Also write an egress NetworkPolicy per source group.
    pub egress: bool,
    /// With `egress`, leave out the rule that lets every source group resolve names (UDP and
    /// TCP 53 to `kube-system` pods labelled `k8s-app: kube-dns`; flow logs never show DNS).
    pub no_egress_dns: bool,
    /// Also write a default-deny NetworkPolicy per namespace that gets a policy.
    pub default_deny: bool,
    /// Mark the AuthorizationPolicies `nodemesh.io/dry-run: "true"` (evaluated and logged,
    /// not enforced).
    pub dry_run: bool,
}

/// What happened to the flows given to a [`Suggester`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Flows given.
    pub flows: u64,
    /// Flows that count (see the module documentation).
    pub admitted: u64,
    /// Left out: outside the window.
    pub outside_window: u64,
    /// Left out: verdict `deny` (without `include_denied`).
    pub denied: u64,
    /// Left out: verdict `refused`.
    pub refused: u64,
    /// Counted flows without a destination port, left out.
    pub no_port: u64,
    /// Counted flows whose source is neither a workload nor an address, left out.
    pub unknown_source: u64,
    /// Counted flows whose destination is no workload of the directory: no ingress policy
    /// (only egress, with `egress`).
    pub outside_destination: u64,
}

/// Where a NetworkPolicy peer is: a group of workloads, or an address outside them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum NetPeer {
    Group(Group),
    Address(IpAddr),
}

/// Who an AuthorizationPolicy source is: a verified principal (`td/ns/x/sa/y`) or, for a
/// plaintext peer, its address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum AuthSource {
    Principal(String),
    Address(IpAddr),
}

/// Peers and the ports they used, per group.
type Edges<P> = BTreeMap<Group, BTreeMap<P, BTreeSet<u16>>>;

/// The result: documents in apply order, what happened to the flows, and what could not be
/// expressed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Suggestion {
    /// NetworkPolicy and AuthorizationPolicy objects, allows first, default-denies last.
    pub documents: Vec<serde_json::Value>,
    /// Counts of the flows.
    pub stats: Stats,
    /// One line each, sorted: workloads no selector can pick, and the like.
    pub warnings: Vec<String>,
}

/// Takes flows one at a time (a flow log need not fit in memory) and keeps only the distinct
/// edges; [`finish`](Self::finish) writes the policies.
#[derive(Debug)]
pub struct Suggester<'a, W> {
    directory: &'a W,
    options: &'a SuggestOptions,
    ingress: Edges<NetPeer>,
    egress: Edges<NetPeer>,
    authz: Edges<AuthSource>,
    stats: Stats,
    warnings: BTreeSet<String>,
}

/// The policies that admit exactly `flows` (see the module documentation); the documents of
/// [`Suggester::finish`].
pub fn suggest(
    flows: &[Flow],
    directory: &impl Workloads,
    options: &SuggestOptions,
) -> Vec<serde_json::Value> {
    let mut s = Suggester::new(directory, options);
    for f in flows {
        s.add(f);
    }
    s.finish().documents
}

impl<'a, W: Workloads> Suggester<'a, W> {
    /// A suggester that looks endpoints up in `directory`.
    pub fn new(directory: &'a W, options: &'a SuggestOptions) -> Self {
        Suggester {
            directory,
            options,
            ingress: BTreeMap::new(),
            egress: BTreeMap::new(),
            authz: BTreeMap::new(),
            stats: Stats::default(),
            warnings: BTreeSet::new(),
        }
    }

    /// Takes one flow into account.
    pub fn add(&mut self, flow: &Flow) {
        self.stats.flows += 1;
        let o = self.options;
        if o.since.is_some_and(|t| flow.time < t) || o.until.is_some_and(|t| flow.time >= t) {
            self.stats.outside_window += 1;
            return;
        }
        match flow.verdict {
            FlowVerdict::Allow | FlowVerdict::Passthrough => {}
            FlowVerdict::Deny if o.include_denied => {}
            FlowVerdict::Deny => {
                self.stats.denied += 1;
                return;
            }
            FlowVerdict::Refused => {
                self.stats.refused += 1;
                return;
            }
        }
        self.stats.admitted += 1;
        let Some(port) = flow.dst.port.filter(|p| *p != 0) else {
            self.stats.no_port += 1;
            return;
        };
        let src = self.lookup(&flow.src);
        let dst = self.lookup(&flow.dst);
        let src_ip = flow
            .src
            .ip
            .or_else(|| src.and_then(|w| w.ips.first().copied()));
        let src_group = src.and_then(|w| self.group(w, "source"));
        let net_src = match (&src_group, src_ip) {
            (Some(g), _) => NetPeer::Group(g.clone()),
            (None, Some(ip)) => NetPeer::Address(ip),
            (None, None) => {
                self.stats.unknown_source += 1;
                return;
            }
        };
        let dst_group = dst.and_then(|w| self.group(w, "destination"));
        if dst.is_none() {
            self.stats.outside_destination += 1;
        }
        if let Some(g) = &dst_group {
            add_edge(&mut self.ingress, g, net_src, port);
            // A plaintext peer (no identity, or a workload outside the mesh) has no principal.
            let principal = flow
                .src
                .identity
                .as_deref()
                .filter(|_| src.is_none_or(|w| w.in_mesh))
                .map(|id| id.strip_prefix("spiffe://").unwrap_or(id).to_owned());
            let auth = match (principal, src_ip) {
                (Some(p), _) => Some(AuthSource::Principal(p)),
                (None, Some(ip)) => Some(AuthSource::Address(ip)),
                (None, None) => None,
            };
            if let Some(a) = auth {
                add_edge(&mut self.authz, g, a, port);
            }
        }
        if let Some(sg) = &src_group {
            let peer = match (dst_group, dst, flow.dst.ip) {
                (Some(g), _, _) => Some(NetPeer::Group(g)),
                // A workload without labels: only its address picks it.
                (None, Some(w), ip) => ip.or_else(|| w.ips.first().copied()).map(NetPeer::Address),
                (None, None, ip) => ip.map(NetPeer::Address),
            };
            if let Some(p) = peer {
                add_edge(&mut self.egress, sg, p, port);
            }
        }
    }

    /// The workload at the endpoint's address, else the one it names.
    fn lookup(&self, e: &FlowEndpoint) -> Option<&'a Workload> {
        let dir: &'a W = self.directory;
        e.ip.and_then(|ip| dir.by_ip(ip))
            .or_else(|| match (&e.namespace, &e.workload) {
                (Some(ns), Some(name)) => dir.by_name(ns, name),
                _ => None,
            })
    }

    fn group(&mut self, w: &Workload, role: &str) -> Option<Group> {
        let g = Group::of(w);
        if g.is_none() {
            let what = if role == "destination" {
                "no policy selects it"
            } else {
                "peers name it by address"
            };
            self.warnings.insert(format!(
                "{}/{}: no labels besides pod-unique ones, so no selector picks it alone ({role}: {what}); label it and suggest again",
                w.namespace, w.name
            ));
        }
        g
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Writes the policies.
    pub fn finish(self) -> Suggestion {
        let mut warnings: Vec<String> = self.warnings.into_iter().collect();
        let documents = render::documents(
            self.directory,
            self.options,
            &self.ingress,
            &self.egress,
            &self.authz,
            &mut warnings,
        );
        Suggestion {
            documents,
            stats: self.stats,
            warnings,
        }
    }
}

impl Suggestion {
    /// The comment lines `to_yaml` puts on top: the flows read and counted, the window, the
    /// `skipped_lines` that could not be read, and every warning.
    pub fn header(&self, options: &SuggestOptions, skipped_lines: usize) -> Vec<String> {
        let s = &self.stats;
        let window = match (options.since, options.until) {
            (None, None) => "every flow (no --since or --until)".to_owned(),
            (since, until) => format!(
                "from {} to {}",
                since.map_or_else(|| "the first flow".to_owned(), format_time),
                until.map_or_else(|| "the last flow".to_owned(), format_time)
            ),
        };
        let mut lines = vec![
            "Suggested by `nodemesh policy suggest`: review before applying.".to_owned(),
            format!(
                "flows read: {}, counted: {}, skipped lines: {skipped_lines}",
                s.flows, s.admitted
            ),
            format!("window: {window} (outside it: {})", s.outside_window),
            format!(
                "left out: {} denied{}, {} refused, {} without destination port, {} without source; {} to destinations outside the config",
                s.denied,
                if options.include_denied {
                    ""
                } else {
                    " (--include-denied counts them)"
                },
                s.refused,
                s.no_port,
                s.unknown_source,
                s.outside_destination
            ),
        ];
        lines.extend(self.warnings.iter().map(|w| format!("warning: {w}")));
        lines
    }
}

fn add_edge<P: Ord>(edges: &mut Edges<P>, group: &Group, peer: P, port: u16) {
    edges
        .entry(group.clone())
        .or_default()
        .entry(peer)
        .or_default()
        .insert(port);
}
