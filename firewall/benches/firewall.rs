//! The node firewall at scale: 1,000 pods (half on this node) and 1,000 NetworkPolicies.
//!
//! Criterion measures rendering and the transaction script (from scratch, and the delta of one
//! pod added). Then, when root with `nft`, the real `nft -f` of the whole table and of the
//! one-pod delta in a throwaway network namespace is timed and printed (skipped with a message
//! otherwise). Goal (issue 15): one transaction under a second.
#![allow(missing_docs, clippy::unwrap_used)] // A bench: a panic is a failed run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use nodemesh_firewall::{Firewall, Ruleset, transaction};

const PODS: usize = 1_000;
const POLICIES: usize = 1_000;

fn scale(
    extra_pod: bool,
) -> (
    nodemesh_config::Config,
    nodemesh_policy::netpol::NetworkPolicySet,
) {
    let config = common::config_from(&common::scale_yaml(PODS, POLICIES, extra_pod));
    let policies = common::policies(&config);
    (config, policies)
}

fn bench(c: &mut Criterion) {
    let (config, policies) = scale(false);
    let (more, more_policies) = scale(true);
    let full = Ruleset::render(&config, &policies, "node-a");
    let plus = Ruleset::render(&more, &more_policies, "node-a");
    let mut g = c.benchmark_group("firewall 1000 pods 1000 policies");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("render", |b| {
        b.iter(|| Ruleset::render(&config, &policies, "node-a"))
    });
    g.bench_function("transaction from scratch", |b| {
        b.iter(|| transaction(None, &full))
    });
    g.bench_function("transaction one pod added", |b| {
        b.iter(|| transaction(Some(&full), &plus))
    });
    g.bench_function("render + transaction one pod added", |b| {
        b.iter(|| {
            transaction(
                Some(&full),
                &Ruleset::render(&more, &more_policies, "node-a"),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);

/// The real `nft -f` of the whole table and of a one-pod delta, in a namespace of its own.
fn nft_apply() {
    if !nix::unistd::geteuid().is_root() || Command::new("nft").arg("-v").output().is_err() {
        eprintln!("skip nft apply: needs root and nft");
        return;
    }
    let ns = format!("nm-fw-bench-{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    let (config, policies) = scale(false);
    let (more, more_policies) = scale(true);
    let full = Ruleset::render(&config, &policies, "node-a");
    let plus = Ruleset::render(&more, &more_policies, "node-a");
    let (script, delta) = transaction(None, &full).unwrap();
    let (one, one_delta) = transaction(Some(&full), &plus).unwrap();
    println!(
        "nft apply: {} sets, {} chains, {} rules, {} elements; script {} KiB; one-pod delta: {} lines ({:?})",
        full.sets.len(),
        full.chains.len(),
        full.chains.iter().map(|c| c.rules.len()).sum::<usize>(),
        delta.elements_added,
        script.len() / 1024,
        one.lines().count(),
        one_delta,
    );
    let mut scratch = Vec::new();
    let mut deltas = Vec::new();
    for _ in 0..5 {
        let mut fw = Firewall::in_netns("nft", &ns);
        let t = Instant::now();
        fw.apply(full.clone()).unwrap();
        scratch.push(t.elapsed());
        let t = Instant::now();
        let outcome = fw.apply(plus.clone()).unwrap();
        deltas.push(t.elapsed());
        assert!(!outcome.recovered);
    }
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    scratch.sort();
    deltas.sort();
    println!(
        "nft apply: whole table (from scratch, replacing the previous): median {:?}, min {:?}; one-pod delta: median {:?}, min {:?} (5 runs, incl. process start of `ip netns exec nft`)",
        scratch[2], scratch[0], deltas[2], deltas[0]
    );
}

fn main() {
    benches();
    nft_apply();
    Criterion::default().configure_from_args().final_summary();
}
