//! [`Reachability`]: the expected matrix (from pod × to pod × port → allowed), built as the
//! upstream suite builds it (everything allowed or denied, then rows, columns and cells
//! changed); [`Observed`]: what the prober saw; [`Comparison`]: the two side by side, printed
//! as truth tables per port, with denials that timed out (dropped, not rejected) flagged.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use super::model::{ALL_PORTS, PodId, PortProtocol};
use super::probe::{Cell, Outcome};

/// The expected matrix. Self-to-self is never probed and not part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    expected: BTreeMap<Cell, bool>,
}

impl Reachability {
    /// Every pod reaches (`allowed`) or does not reach every other pod on every port.
    pub fn new(allowed: bool) -> Self {
        let mut expected = BTreeMap::new();
        for from in PodId::all() {
            for to in PodId::all().filter(|to| *to != from) {
                for pp in ALL_PORTS {
                    expected.insert((from, to, pp), allowed);
                }
            }
        }
        Self { expected }
    }

    /// Sets every cell on `ports` that `which(from, to)` picks.
    pub fn expect_where(
        &mut self,
        ports: &[PortProtocol],
        allowed: bool,
        which: impl Fn(PodId, PodId) -> bool,
    ) -> &mut Self {
        for ((from, to, pp), v) in &mut self.expected {
            if ports.contains(pp) && which(*from, *to) {
                *v = allowed;
            }
        }
        self
    }

    /// Every pod to every other pod on `ports`.
    pub fn expect_all(&mut self, ports: &[PortProtocol], allowed: bool) -> &mut Self {
        self.expect_where(ports, allowed, |_, _| true)
    }

    /// Everything `from` sends on `ports` (its egress row).
    pub fn expect_from(&mut self, from: PodId, ports: &[PortProtocol], allowed: bool) -> &mut Self {
        self.expect_where(ports, allowed, |f, _| f == from)
    }

    /// Everything `to` receives on `ports` (its ingress column).
    pub fn expect_to(&mut self, to: PodId, ports: &[PortProtocol], allowed: bool) -> &mut Self {
        self.expect_where(ports, allowed, |_, t| t == to)
    }

    /// Everything pods of `namespace` receive on `ports`.
    pub fn expect_to_namespace(
        &mut self,
        namespace: &str,
        ports: &[PortProtocol],
        allowed: bool,
    ) -> &mut Self {
        self.expect_where(ports, allowed, |_, t| t.namespace() == namespace)
    }

    /// Everything pods of `namespace` send on `ports`.
    pub fn expect_from_namespace(
        &mut self,
        namespace: &str,
        ports: &[PortProtocol],
        allowed: bool,
    ) -> &mut Self {
        self.expect_where(ports, allowed, |f, _| f.namespace() == namespace)
    }

    /// `from` to `to` on `ports`.
    pub fn expect(
        &mut self,
        from: PodId,
        to: PodId,
        ports: &[PortProtocol],
        allowed: bool,
    ) -> &mut Self {
        self.expect_where(ports, allowed, |f, t| f == from && t == to)
    }

    /// Whether `cell` is expected to connect (`None` for self-to-self).
    pub fn expected(&self, cell: Cell) -> Option<bool> {
        self.expected.get(&cell).copied()
    }

    /// The expectation on `ports` alone (the other cells are neither probed nor compared).
    pub fn only(&self, ports: &[PortProtocol]) -> Self {
        let expected = self
            .expected
            .iter()
            .filter(|((_, _, pp), _)| ports.contains(pp))
            .map(|(cell, v)| (*cell, *v))
            .collect();
        Self { expected }
    }

    /// Every cell, in order.
    pub fn cells(&self) -> Vec<Cell> {
        self.expected.keys().copied().collect()
    }
}

/// What the prober saw for every cell.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The outcome of each cell's last probe.
    pub outcomes: BTreeMap<Cell, Outcome>,
    /// How many probes ran, retries included.
    pub probes: usize,
    /// Rounds of probing (1 when the first round matched).
    pub rounds: usize,
    /// How long probing took.
    pub elapsed: Duration,
}

/// Expected against observed.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The expectation.
    pub expected: Reachability,
    /// The observation.
    pub observed: Observed,
}

impl Comparison {
    /// Cells whose outcome differs from the expectation (connected where denied, not where
    /// allowed), with what was seen.
    pub fn mismatches(&self) -> Vec<(Cell, bool, &Outcome)> {
        self.cells()
            .filter(|(_, want, got)| {
                got.connected() != *want || matches!(got, Outcome::Unexpected(_))
            })
            .collect()
    }

    /// Denied cells whose probe timed out: the denial dropped instead of rejecting.
    pub fn dropped(&self) -> Vec<Cell> {
        self.cells()
            .filter(|(_, want, got)| !want && matches!(got, Outcome::TimedOut))
            .map(|(cell, _, _)| cell)
            .collect()
    }

    /// Whether everything matched and every denial was a reject.
    pub fn is_ok(&self) -> bool {
        self.mismatches().is_empty() && self.dropped().is_empty()
    }

    fn cells(&self) -> impl Iterator<Item = (Cell, bool, &Outcome)> {
        self.expected.expected.iter().map(|(cell, want)| {
            static MISSING: Outcome = Outcome::TimedOut;
            let got = self.observed.outcomes.get(cell).unwrap_or(&MISSING);
            (*cell, *want, got)
        })
    }

    /// The truth tables of `pp`: expected, observed, and the comparison.
    pub fn tables(&self, pp: PortProtocol) -> String {
        let mut out = String::new();
        let expected = table(|from, to| {
            self.expected
                .expected((from, to, pp))
                .map_or('-', |v| if v { '.' } else { 'X' })
        });
        let observed = table(|from, to| {
            self.observed
                .outcomes
                .get(&(from, to, pp))
                .map_or('-', Outcome::symbol)
        });
        let compared = table(|from, to| match self.expected.expected((from, to, pp)) {
            None => '-',
            Some(want) => match self.observed.outcomes.get(&(from, to, pp)) {
                None => '?',
                Some(Outcome::TimedOut) if !want => 'D',
                Some(got @ Outcome::Unexpected(_)) if got.connected() == want => '?',
                Some(got) if got.connected() == want => '.',
                Some(_) => 'X',
            },
        });
        let _ = writeln!(out, "{pp} expected (. connects, X denied):");
        out.push_str(&expected);
        let _ = writeln!(
            out,
            "{pp} observed (. connected, X refused, T timed out, ? unexpected):"
        );
        out.push_str(&observed);
        let _ = writeln!(
            out,
            "{pp} comparison (. as expected, X wrong, D denied by a drop instead of a reject):"
        );
        out.push_str(&compared);
        out
    }
}

impl fmt::Display for Comparison {
    /// A summary line, then for each port with a problem its truth tables, then every wrong
    /// cell with the raw outcome.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mismatches = self.mismatches();
        let dropped = self.dropped();
        writeln!(
            f,
            "{} cells, {} wrong, {} denials dropped instead of rejected ({} probes in {} rounds, {:?})",
            self.expected.expected.len(),
            mismatches.len(),
            dropped.len(),
            self.observed.probes,
            self.observed.rounds,
            self.observed.elapsed,
        )?;
        for pp in ALL_PORTS {
            let bad = mismatches.iter().any(|((_, _, p), _, _)| *p == pp)
                || dropped.iter().any(|(_, _, p)| *p == pp);
            if bad {
                f.write_str(&self.tables(pp))?;
            }
        }
        for ((from, to, pp), want, got) in &mismatches {
            let want = if *want { "connect" } else { "be denied" };
            writeln!(f, "  {from} -> {to} {pp}: should {want}, got {got:?}")?;
        }
        for (from, to, pp) in &dropped {
            writeln!(
                f,
                "  {from} -> {to} {pp}: denied by a drop (timed out), not a reject"
            )?;
        }
        Ok(())
    }
}

/// A 9×9 table, rows from, columns to, with `cell(from, to)`.
fn table(cell: impl Fn(PodId, PodId) -> char) -> String {
    let mut out = String::from("      ");
    for to in PodId::all() {
        let _ = write!(out, "{to:>4}");
    }
    out.push('\n');
    for from in PodId::all() {
        let _ = write!(out, "  {from:<4}");
        for to in PodId::all() {
            let c = if from == to { '-' } else { cell(from, to) };
            let _ = write!(out, "{c:>4}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::{TCP_80, TCP_PORTS, UDP_81, pod};
    use super::*;

    fn observed(outcome: impl Fn(Cell) -> Outcome) -> Observed {
        let cells = Reachability::new(true).cells();
        Observed {
            probes: cells.len(),
            outcomes: cells.into_iter().map(|c| (c, outcome(c))).collect(),
            rounds: 1,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn rows_columns_and_cells_change_only_their_ports() {
        let mut r = Reachability::new(true);
        r.expect_to(pod("x/a"), &TCP_PORTS, false);
        r.expect_from(pod("z/c"), &[UDP_81], false);
        r.expect(pod("y/b"), pod("x/a"), &[TCP_80], true);
        assert_eq!(r.expected((pod("x/b"), pod("x/a"), TCP_80)), Some(false));
        assert_eq!(r.expected((pod("y/b"), pod("x/a"), TCP_80)), Some(true));
        assert_eq!(r.expected((pod("x/b"), pod("x/a"), UDP_81)), Some(true));
        assert_eq!(r.expected((pod("z/c"), pod("x/a"), UDP_81)), Some(false));
        assert_eq!(r.expected((pod("x/a"), pod("x/a"), TCP_80)), None);
        assert_eq!(r.cells().len(), 9 * 8 * 4);
        let tcp = r.only(&TCP_PORTS);
        assert_eq!(tcp.cells().len(), 9 * 8 * 2);
        assert_eq!(tcp.expected((pod("x/b"), pod("x/a"), UDP_81)), None);
    }

    #[test]
    fn a_comparison_shows_wrong_cells_and_drops_in_truth_tables() {
        let mut want = Reachability::new(true);
        want.expect_to(pod("x/a"), &[TCP_80], false);
        let seen = observed(|(from, to, pp)| {
            if to == pod("x/a") && pp == TCP_80 {
                if from == pod("z/a") {
                    Outcome::TimedOut
                } else {
                    Outcome::Refused("connect: refused".into())
                }
            } else if from == pod("y/b") && to == pod("z/c") && pp == UDP_81 {
                Outcome::Refused("receive: refused".into())
            } else {
                Outcome::Connected
            }
        });
        let cmp = Comparison {
            expected: want.clone(),
            observed: seen,
        };
        assert!(!cmp.is_ok());
        assert_eq!(cmp.mismatches().len(), 1, "y/b -> z/c UDP/81");
        assert_eq!(cmp.dropped(), vec![(pod("z/a"), pod("x/a"), TCP_80)]);
        let text = cmp.to_string();
        assert!(text.contains("TCP/80 comparison"), "{text}");
        assert!(text.contains("UDP/81 observed"), "{text}");
        assert!(!text.contains("TCP/81 expected"), "{text}");
        assert!(text.contains("y/b -> z/c UDP/81: should connect"), "{text}");
        assert!(
            text.contains("z/a -> x/a TCP/80: denied by a drop"),
            "{text}"
        );
        let all_ok = Comparison {
            expected: Reachability::new(true),
            observed: observed(|_| Outcome::Connected),
        };
        assert!(all_ok.is_ok(), "{all_ok}");
    }
}
