//! Policies accepted: every AuthorizationPolicy, NetworkPolicy and ClusterNetworkPolicy of the
//! config compiles, as the proxy compiles them (a policy that does not fails closed: it denies).

use nodemesh_config::Config;
use nodemesh_state::{MeshState, PolicyProblem};

use super::report::Item;

/// The item's name.
pub const NAME: &str = "policies accepted";

/// What compiling the config's policies gave.
#[derive(Debug, Clone)]
pub enum Compiled {
    /// The state was built; `problems` lists the policies that did not compile.
    Built {
        /// How many policies of the three kinds there are.
        policies: usize,
        /// The ones that failed, with their errors.
        problems: Vec<PolicyProblem>,
    },
    /// The config or a policy document was refused as a whole; why.
    Refused(String),
}

/// Compiles the policies of `config` for `node` as the proxy does.
pub fn compile(config: &Config, node: &str) -> Compiled {
    let policies = config.policies().len()
        + config.network_policies().len()
        + config.cluster_network_policies().len();
    match MeshState::new(config.clone(), node) {
        Ok(state) => Compiled::Built {
            policies,
            problems: state.policy_problems().to_vec(),
        },
        Err(e) => Compiled::Refused(e.to_string()),
    }
}

/// The item, with every compile error.
pub fn evaluate(compiled: &Compiled, source: &str) -> Item {
    match compiled {
        Compiled::Built { policies, problems } if problems.is_empty() => {
            Item::ok(NAME, format!("{policies} policies compile"))
        }
        Compiled::Built { policies, problems } => {
            let errors: Vec<String> = problems
                .iter()
                .map(|p| format!("{}: {}", p.policy, p.errors.join(", ")))
                .collect();
            Item::fail(
                NAME,
                format!(
                    "{} of {policies} policies do not compile (they deny everything they select): {}",
                    problems.len(),
                    errors.join("; ")
                ),
                format!(
                    "fix the fields named in {source}; `nodemesh policy lint` explains each policy"
                ),
            )
        }
        Compiled::Refused(why) => Item::fail(
            NAME,
            format!("refused: {why}"),
            format!(
                "fix {source} (`nodemesh config check` lists every mistake); the proxy keeps its last good state meanwhile"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::report::Status;

    const YAML: &str = r#"
nodes: [{name: node-a, address: 10.0.0.1}]
namespaces: [{name: shop, labels: {nodemesh.io/mesh: enabled}}]
workloads: [{name: web-1, namespace: shop, ip: 10.1.0.11, node: node-a}]
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: good, namespace: shop}
    spec: {action: ALLOW, rules: [{from: [{source: {namespaces: [shop]}}]}]}
POLICY
"#;

    fn compiled(extra: &str) -> Compiled {
        let text = YAML.replace("POLICY", extra);
        let config = Config::from_yaml_str(&text, "/").expect("valid config");
        compile(&config, "node-a")
    }

    #[test]
    fn compiling_policies_are_ok() {
        let item = evaluate(&compiled(""), "c.yaml");
        assert_eq!(item.status, Status::Ok, "{item:?}");
        assert_eq!(item.detail, "1 policies compile");
    }

    #[test]
    fn a_policy_that_does_not_compile_is_named_with_its_errors() {
        let bad = r#"  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: bad, namespace: shop}
    spec: {action: ALLOW, rules: [{to: [{operation: {methods: ["GET"], ports: ["not-a-port"]}}]}]}"#;
        let item = evaluate(&compiled(bad), "c.yaml");
        assert_eq!(item.status, Status::Fail, "{item:?}");
        assert!(
            item.detail.starts_with("1 of 2 policies do not compile"),
            "{item:?}"
        );
        assert!(item.detail.contains("shop/bad: "), "{item:?}");
        assert!(item.hint.unwrap().contains("c.yaml"));
    }

    #[test]
    fn a_refused_config_fails() {
        let item = evaluate(
            &Compiled::Refused("policies[1]: invalid type".into()),
            "c.yaml",
        );
        assert_eq!(item.status, Status::Fail);
        assert!(item.detail.contains("policies[1]"));
    }
}
