//! Who the endpoints of a flow are: the workloads of a directory (the standalone config, or a
//! test's list), and the groups their labels put them in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// Labels that differ between the pods of one workload and so never go into a selector.
pub const POD_UNIQUE_LABELS: [&str; 5] = [
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "pod-template-generation",
];

/// A workload (pod) as `policy suggest` needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Whether it is in the mesh: a workload outside it speaks plaintext, so it has no verified
    /// principal, whatever identity a flow log names for it.
    pub in_mesh: bool,
}

/// Looks workloads up by a flow's address or by its namespace and name.
pub trait Workloads {
    /// The workload with address `ip`.
    fn by_ip(&self, ip: IpAddr) -> Option<&Workload>;
    /// The workload `namespace/name`.
    fn by_name(&self, namespace: &str, name: &str) -> Option<&Workload>;
    /// Every workload (to keep a selector from picking workloads of another group).
    fn all(&self) -> impl Iterator<Item = &Workload>;
}

/// A list of workloads indexed by address and by name: the usual [`Workloads`].
#[derive(Clone, Debug, Default)]
pub struct Directory {
    workloads: Vec<Workload>,
    by_ip: HashMap<IpAddr, usize>,
    by_name: HashMap<(String, String), usize>,
}

impl Directory {
    /// Indexes `workloads`; of two with the same address or name, the first wins.
    pub fn new(workloads: impl IntoIterator<Item = Workload>) -> Self {
        let mut d = Directory::default();
        for w in workloads {
            let i = d.workloads.len();
            for ip in &w.ips {
                d.by_ip.entry(*ip).or_insert(i);
            }
            d.by_name
                .entry((w.namespace.clone(), w.name.clone()))
                .or_insert(i);
            d.workloads.push(w);
        }
        d
    }
}

impl Workloads for Directory {
    fn by_ip(&self, ip: IpAddr) -> Option<&Workload> {
        self.by_ip.get(&ip).map(|&i| &self.workloads[i])
    }

    fn by_name(&self, namespace: &str, name: &str) -> Option<&Workload> {
        self.by_name
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|&i| &self.workloads[i])
    }

    fn all(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.iter()
    }
}

/// Workloads that one selector picks: same namespace, same labels once the pod-unique ones
/// ([`POD_UNIQUE_LABELS`]) are dropped. Ordered by namespace, then labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Group {
    /// Namespace.
    pub namespace: String,
    /// The selector's `matchLabels` (never empty).
    pub labels: BTreeMap<String, String>,
}

impl Group {
    /// The group of `w`, or `None` when it has no labels besides pod-unique ones (then no
    /// selector picks it alone).
    pub fn of(w: &Workload) -> Option<Group> {
        let labels: BTreeMap<String, String> = w
            .labels
            .iter()
            .filter(|(k, _)| !POD_UNIQUE_LABELS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (!labels.is_empty()).then(|| Group {
            namespace: w.namespace.clone(),
            labels,
        })
    }

    /// The group's short name: the value of `app.kubernetes.io/name`, `app`, `k8s-app` or `name`
    /// (the first present), else every label value joined with `-`, as a DNS label.
    pub fn base_name(&self) -> String {
        let value = ["app.kubernetes.io/name", "app", "k8s-app", "name"]
            .iter()
            .find_map(|k| self.labels.get(*k).cloned())
            .unwrap_or_else(|| {
                self.labels
                    .values()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join("-")
            });
        dns_label(&value, 40)
    }

    /// A stable 8-hex-digit digest of the labels (FNV-1a), to tell apart groups of the same
    /// [`base_name`](Self::base_name).
    pub fn digest(&self) -> String {
        let mut h: u32 = 0x811c_9dc5;
        for (k, v) in &self.labels {
            for b in k.bytes().chain([b'=']).chain(v.bytes()).chain([b',']) {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
        }
        format!("{h:08x}")
    }
}

/// `text` lowercased, with every run of characters outside `[a-z0-9]` turned into one `-`,
/// trimmed of `-` at both ends and cut to `max` characters; `group` if nothing is left.
fn dns_label(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let cut: String = out.trim_matches('-').chars().take(max).collect();
    match cut.trim_end_matches('-') {
        "" => "group".to_owned(),
        s => s.to_owned(),
    }
}

/// Names every group of `groups` uniquely within its namespace: the base name, with the
/// digest appended where two groups of a namespace share a base name.
pub fn group_names<'a>(groups: impl IntoIterator<Item = &'a Group>) -> BTreeMap<&'a Group, String> {
    let groups: BTreeSet<&Group> = groups.into_iter().collect();
    let mut count: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for g in &groups {
        *count.entry((&g.namespace, g.base_name())).or_default() += 1;
    }
    groups
        .into_iter()
        .map(|g| {
            let base = g.base_name();
            let name = if count.get(&(g.namespace.as_str(), base.clone())) > Some(&1) {
                format!("{base}-{}", g.digest())
            } else {
                base
            };
            (g, name)
        })
        .collect()
}
