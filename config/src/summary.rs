//! What a valid config holds, in one line: `2 nodes, 5 workloads, 1 service, 3 policies`.

use std::fmt;

use crate::config::Config;

/// How many nodes, workloads, services and policies a config has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// `nodes[]`.
    pub nodes: usize,
    /// `workloads[]`.
    pub workloads: usize,
    /// `services[]`.
    pub services: usize,
    /// `policies[]`.
    pub policies: usize,
}

impl Config {
    /// The counts of the config's sections.
    pub fn summary(&self) -> Summary {
        Summary {
            nodes: self.nodes().len(),
            workloads: self.workloads().len(),
            services: self.services().len(),
            policies: self.policies().len(),
        }
    }
}

impl fmt::Display for Summary {
    /// `1 node, 2 workloads, 0 services, 1 policy`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        write!(
            f,
            "{}, {}, {}, {}",
            count(self.nodes, "node", "nodes"),
            count(self.workloads, "workload", "workloads"),
            count(self.services, "service", "services"),
            count(self.policies, "policy", "policies"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_section_with_its_plural() {
        let config = Config::from_yaml_str(
            "nodes: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2}]\n\
             workloads: [{name: w, namespace: n, ip: 10.1.0.1, node: a}]\n",
            std::path::Path::new("."),
        )
        .expect("valid");
        let s = config.summary();
        assert_eq!(
            s,
            Summary {
                nodes: 2,
                workloads: 1,
                services: 0,
                policies: 0
            }
        );
        assert_eq!(s.to_string(), "2 nodes, 1 workload, 0 services, 0 policies");
        let one = Summary {
            nodes: 1,
            workloads: 0,
            services: 1,
            policies: 1,
        };
        assert_eq!(one.to_string(), "1 node, 0 workloads, 1 service, 1 policy");
    }
}
