//! The delta between two rulesets as one `nft -f` script: nft applies a script as one
//! transaction, so the table is never seen half updated.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::render::{Chain, Ruleset, TABLE, join};

/// How much a transaction changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Set elements added.
    pub elements_added: usize,
    /// Set elements deleted.
    pub elements_deleted: usize,
    /// Sets created or deleted.
    pub sets_changed: usize,
    /// Chains created, flushed and refilled, or deleted.
    pub chains_changed: usize,
    /// The table is created from scratch (replacing any stale one).
    pub from_scratch: bool,
}

/// The script that turns `old` (what was applied; `None`: unknown) into `new`, and what it
/// changes; `None` when nothing changes.
///
/// With `old`, in order: new sets (with elements) and new chains (empty) are added, so every
/// reference resolves; elements are deleted and added; changed chains are flushed and refilled
/// and new chains filled; gone chains are flushed and deleted, then gone sets. Pod churn only
/// changes elements; a policy change only its own chains (and the dispatch chain when a policy
/// comes or goes). Without `old`: `add table`, `delete table`, then the whole table, so a stale
/// table is replaced atomically.
pub fn transaction(old: Option<&Ruleset>, new: &Ruleset) -> Option<(String, Delta)> {
    let Some(old) = old else {
        return Some(from_scratch(new));
    };
    if old == new {
        return None;
    }
    let t = format!("inet {TABLE}");
    let mut delta = Delta::default();
    let mut out = String::new();
    // A set's name determines its kind (the names carry the kind's prefix): sets are only added,
    // changed in their elements, or deleted.
    for (name, set) in &new.sets {
        if old.sets.contains_key(name) {
            continue;
        }
        let _ = writeln!(out, "add set {t} {name} {{ {} }}", set.kind.declaration());
        if !set.elements.is_empty() {
            let _ = writeln!(out, "add element {t} {name} {{ {} }}", join(&set.elements));
        }
        delta.sets_changed += 1;
        delta.elements_added += set.elements.len();
    }
    let old_chains: BTreeSet<&str> = old.chains.iter().map(|c| c.name.as_str()).collect();
    let new_chains: BTreeSet<&str> = new.chains.iter().map(|c| c.name.as_str()).collect();
    for c in &new.chains {
        if !old_chains.contains(c.name.as_str()) {
            let _ = writeln!(out, "{}", add_chain(&t, c));
        }
    }
    for (name, set) in &new.sets {
        let Some(o) = old.sets.get(name) else {
            continue;
        };
        let gone: Vec<_> = o.elements.difference(&set.elements).collect();
        let came: Vec<_> = set.elements.difference(&o.elements).collect();
        if !gone.is_empty() {
            let _ = writeln!(
                out,
                "delete element {t} {name} {{ {} }}",
                join(gone.iter().copied())
            );
            delta.elements_deleted += gone.len();
        }
        if !came.is_empty() {
            let _ = writeln!(
                out,
                "add element {t} {name} {{ {} }}",
                join(came.iter().copied())
            );
            delta.elements_added += came.len();
        }
    }
    for c in &new.chains {
        match old.chain(&c.name) {
            Some(o) if o.rules == c.rules && o.hook == c.hook => continue,
            Some(_) => {
                let _ = writeln!(out, "flush chain {t} {}", c.name);
            }
            None => {}
        }
        for rule in &c.rules {
            let _ = writeln!(out, "add rule {t} {} {rule}", c.name);
        }
        delta.chains_changed += 1;
    }
    for c in &old.chains {
        if !new_chains.contains(c.name.as_str()) {
            let _ = writeln!(out, "flush chain {t} {}", c.name);
        }
    }
    for c in &old.chains {
        if !new_chains.contains(c.name.as_str()) {
            let _ = writeln!(out, "delete chain {t} {}", c.name);
            delta.chains_changed += 1;
        }
    }
    for name in old.sets.keys() {
        if !new.sets.contains_key(name) {
            let _ = writeln!(out, "delete set {t} {name}");
            delta.sets_changed += 1;
        }
    }
    Some((out, delta))
}

/// The script that replaces any table of ours with `new` in one transaction.
pub(crate) fn from_scratch(new: &Ruleset) -> (String, Delta) {
    let mut out = format!("add table inet {TABLE}\ndelete table inet {TABLE}\n");
    out.push_str(&new.to_nft());
    let delta = Delta {
        elements_added: new.sets.values().map(|s| s.elements.len()).sum(),
        elements_deleted: 0,
        sets_changed: new.sets.len(),
        chains_changed: new.chains.len(),
        from_scratch: true,
    };
    (out, delta)
}

fn add_chain(t: &str, c: &Chain) -> String {
    match c.hook {
        Some(hook) => format!("add chain {t} {} {{ {hook} }}", c.name),
        None => format!("add chain {t} {}", c.name),
    }
}
