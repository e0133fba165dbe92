//! The proxy's view of the mesh from its admin `GET /config_dump` (`{node, config,
//! policyProblems, certificates}`): in Kubernetes mode the node's items are judged against it,
//! since the mesh is what the proxy assembled from the API.

use nodemesh_config::Config;
use nodemesh_state::PolicyProblem;
use serde_json::Value;

use super::policy::Compiled;

/// The item's name when the view cannot be read.
pub const NAME: &str = "the proxy's view of the mesh";

/// What the proxy holds.
#[derive(Debug)]
pub struct View {
    /// Its config, read back (the dump is the config's own schema).
    pub config: Config,
    /// Its policies as it compiled them.
    pub compiled: Compiled,
}

/// Parses a `/config_dump` answer.
pub fn parse(body: &str) -> Result<View, String> {
    let dump: Value =
        serde_json::from_str(body).map_err(|e| format!("/config_dump is not JSON: {e}"))?;
    let config = dump
        .get("config")
        .ok_or("/config_dump has no config")?
        .to_string();
    // JSON is YAML: the config parser reads the dump back; paths in it are absolute.
    let config = Config::from_yaml_str(&config, "/")
        .map_err(|e| format!("/config_dump's config does not read back: {e}"))?;
    let problems = dump
        .get("policyProblems")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| PolicyProblem {
            policy: p["policy"].as_str().unwrap_or("?").to_owned(),
            errors: p["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect(),
        })
        .collect();
    let policies = config.policies().len()
        + config.network_policies().len()
        + config.cluster_network_policies().len();
    Ok(View {
        config,
        compiled: Compiled::Built { policies, problems },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_config_and_the_problems_back() {
        let config = Config::from_yaml_str(
            "nodes: [{name: node-a, address: 10.0.0.1}]\nworkloads: [{name: w, namespace: shop, ip: 10.1.0.9, node: node-a}]\n",
            "/",
        )
        .unwrap();
        let dump = serde_json::json!({
            "node": "node-a",
            "config": serde_json::to_value(&config).unwrap(),
            "policyProblems": [{"policy": "shop/bad", "errors": ["spec.rules[0]: empty"]}],
            "certificates": [],
        });
        let view = parse(&dump.to_string()).unwrap();
        assert_eq!(view.config, config);
        let Compiled::Built { problems, .. } = view.compiled else {
            panic!("built");
        };
        assert_eq!(problems[0].policy, "shop/bad");
        assert_eq!(problems[0].errors, ["spec.rules[0]: empty"]);
        assert!(parse("{}").is_err());
    }
}
