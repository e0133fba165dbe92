//! Loading and linting policy files: multi-document YAML, problems that name file, policy and
//! field, and the JSON/text output of decisions and explanations.

mod support;

use nodemesh_policy::lint::lint_texts;
use nodemesh_policy::load::{ProblemKind, Subject, load_texts, parse_file};
use nodemesh_policy::{CompileErrorKind, PolicyRef, PolicySet};
use support::Traffic;

fn texts(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
        .collect()
}

fn lint(files: &[(&str, &str)]) -> Vec<String> {
    lint_texts(&texts(files))
        .iter()
        .map(ToString::to_string)
        .collect()
}

const GOOD: &str = "\
# two policies
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-web
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  rules:
  - from:
    - source: {principals: [cluster.local/ns/client/sa/curl]}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ['/admin*']}}]}]
...
";

#[test]
fn multi_document_file_loads() {
    let policies = load_texts(&texts(&[("good.yaml", GOOD)])).expect("loads");
    let ids: Vec<String> = policies.iter().map(|p| p.id().to_string()).collect();
    assert_eq!(ids, ["shop/allow-web", "shop/deny-admin"]);
    assert!(policies[1].needs_l7());
    assert!(!policies[0].needs_l7());
}

#[test]
fn comments_only_file_holds_no_policy() {
    let (docs, problems) = parse_file("empty.yaml", "# nothing here\n---\n# nor here\n");
    assert!(docs.is_empty());
    assert!(problems.is_empty(), "{problems:?}");
    let (docs, problems) = parse_file("empty.yaml", "");
    assert!(docs.is_empty() && problems.is_empty());
}

#[test]
fn unknown_field_names_policy_and_path() {
    let yaml = "\
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: shop}
spec:
  rules:
  - to:
    - operation: {portz: ['80']}
";
    let problems = lint(&[("typo.yaml", yaml)]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert!(
        p.starts_with("typo.yaml: shop/typo: spec.rules[0].to[0].operation.portz: "),
        "{p}"
    );
    assert!(p.contains("unknown field `portz`"), "{p}");
    assert!(p.contains("line 7"), "{p}");
}

#[test]
fn one_bad_document_does_not_hide_the_others() {
    let yaml = "\
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: shop}
spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm, namespace: shop}
---
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: nons}
spec: {}
---
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: b, namespace: shop}
spec:
  action: CUSTOM
  rules:
  - to: [{operation: {ports: ['70000'], paths: ['/{**}/x']}}]
    when: [{key: source.labels, values: [x]}, {key: source.ip}]
  - from: [{source: {serviceAccounts: [a/b], principals: ['*']}}, {}]
";
    let problems = lint(&[("all.yaml", yaml)]);
    let expected = [
        "all.yaml: shop/cm: apiVersion: apiVersion \"v1\" is not one of",
        "all.yaml: shop/cm: kind: kind \"ConfigMap\" is not AuthorizationPolicy",
        "all.yaml: document 3: metadata.namespace: missing namespace",
        "all.yaml: shop/a: spec.rules[0].from[0].source.ipBlocks[0]: invalid IP address or CIDR \"10.0.0.0/33\"",
        "all.yaml: shop/b: spec.action: action CUSTOM is not supported",
        "all.yaml: shop/b: spec.rules[0].to[0].operation.ports[0]: invalid port \"70000\"",
        "all.yaml: shop/b: spec.rules[0].to[0].operation.paths[0]: invalid path \"/{**}/x\": `{**}` must be the last segment",
        "all.yaml: shop/b: spec.rules[0].when[0].key: unknown condition key \"source.labels\"",
        "all.yaml: shop/b: spec.rules[0].when[1]: values and notValues are both empty",
        "all.yaml: shop/b: spec.rules[1].from[0].source.serviceAccounts: serviceAccounts cannot be mixed with principals",
        "all.yaml: shop/b: spec.rules[1].from[1].source: source is missing or sets no field",
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for e in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(e)),
            "missing {e:?} in {problems:#?}"
        );
    }
    // `check` refuses the whole set.
    assert!(load_texts(&texts(&[("all.yaml", yaml)])).is_err());
}

#[test]
fn yaml_syntax_error_is_reported_with_file() {
    let problems = lint_texts(&texts(&[("bad.yaml", "metadata: {name: [\n")]));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].file, "bad.yaml");
    assert_eq!(problems[0].subject, Subject::Document(1));
    assert!(matches!(problems[0].kind, ProblemKind::Yaml(_)));
}

#[test]
fn duplicates_across_files() {
    let problems = lint(&[("a.yaml", GOOD), ("b.yaml", GOOD)]);
    assert_eq!(
        problems,
        [
            "b.yaml: shop/allow-web: metadata.name: duplicate policy (first defined in a.yaml)",
            "b.yaml: shop/deny-admin: metadata.name: duplicate policy (first defined in a.yaml)",
        ]
    );
}

#[test]
fn lint_warns_about_deny_without_rules() {
    let yaml = "apiVersion: security.nodemesh.io/v1\nkind: AuthorizationPolicy\n\
                metadata: {name: d, namespace: shop}\nspec: {action: DENY}\n";
    let problems = lint_texts(&texts(&[("d.yaml", yaml)]));
    assert_eq!(problems.len(), 1);
    assert!(problems[0].kind.is_warning());
    assert_eq!(
        problems[0].to_string(),
        "d.yaml: shop/d: spec.rules: DENY policy without rules never matches"
    );
    // A clean file has no problem at all.
    assert!(lint(&[("good.yaml", GOOD)]).is_empty());
}

#[test]
fn compile_error_names_policy_field_and_reason() {
    let yaml = support::expand(
        "metadata: {name: p, namespace: shop}\nspec: {rules: [{}, {}, {to: [{operation: {paths: ['/a', '/b*c']}}]}]}",
    );
    let (docs, problems) = parse_file("p.yaml", &yaml);
    assert!(problems.is_empty());
    let err = docs[0].document.compile().expect_err("bad path");
    assert_eq!(err.0.len(), 1);
    let e = &err.0[0];
    assert_eq!(e.policy, PolicyRef::new("shop", "p"));
    assert_eq!(e.field, "spec.rules[2].to[0].operation.paths[1]");
    assert!(matches!(e.kind, CompileErrorKind::BadPath { .. }));
    assert_eq!(
        e.to_string(),
        "shop/p: spec.rules[2].to[0].operation.paths[1]: invalid path \"/b*c\": `*` is only allowed as the first or last character"
    );
}

#[test]
fn too_many_rules() {
    let rules = vec!["{}"; 513].join(", ");
    let yaml = support::expand(&format!(
        "metadata: {{name: big, namespace: shop}}\nspec: {{rules: [{rules}]}}"
    ));
    let problems = lint(&[("big.yaml", &yaml)]);
    assert_eq!(
        problems,
        ["big.yaml: shop/big: spec.rules: 513 rules; at most 512 are allowed"]
    );
}

#[test]
fn decision_json_shape() {
    let yaml = support::expand(
        "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {methods: [GET]}}]}]}\n---\n\
         metadata: {name: dry, namespace: shop, annotations: {nodemesh.io/dry-run: 'true'}}\nspec: {action: DENY, rules: [{}]}\n---\n\
         metadata: {name: au, namespace: nodemesh-system}\nspec: {action: AUDIT, rules: [{}]}",
    );
    let set = PolicySet::new(support::policies(&yaml), Default::default());
    let t = Traffic::parse("");
    let json = t.decide(&set).to_json();
    assert_eq!(
        json,
        serde_json::json!({
            "verdict": "deny",
            "policy": null,
            "reason": "no_allow_matched",
            "needsL7": true,
            "dryRun": [{"policy": "shop/dry", "wouldBe": "deny"}],
            "audit": ["nodemesh-system/au"],
        })
    );
    let t = Traffic::parse("method=get");
    assert_eq!(
        t.decide(&set).to_json(),
        serde_json::json!({
            "verdict": "allow",
            "policy": "shop/a",
            "reason": "allow_matched",
            "needsL7": true,
            "dryRun": [{"policy": "shop/dry", "wouldBe": "deny"}],
            "audit": ["nodemesh-system/au"],
        })
    );
}

#[test]
fn explain_says_why_not() {
    let yaml = support::expand(
        "metadata: {name: allow-front, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/front/sa/web]}}]\n    to: [{operation: {ports: ['8080']}}]\n---\n\
         metadata: {name: db-only, namespace: shop}\nspec: {selector: {matchLabels: {app: db}}}\n---\n\
         metadata: {name: broken, namespace: nodemesh-system}\nspec: {action: DENY, selector: {matchLabels: {app: web}}, rules: [{to: [{operation: {ports: [x]}}]}]}",
    );
    let set = PolicySet::new(support::policies(&yaml), Default::default());
    let t = Traffic::parse("");
    let e = set.explain(&t.connection(), None);
    let text = e.to_string();
    for want in [
        "stream: not HTTP",
        "[no match] policy shop/allow-front ALLOW, selector app=web",
        "[fails] spec.rules[0].from[0].source.principals: source principal \"cluster.local/ns/client/sa/curl\" matches none of [\"cluster.local/ns/front/sa/web\"]",
        "[holds] spec.rules[0].to[0].operation.ports: destination port 8080 matches one of [8080]",
        "[match]    policy nodemesh-system/broken DENY, selector app=web",
        "invalid, fails closed (denies everything it selects):",
        "spec.rules[0].to[0].operation.ports[0]: invalid port \"x\"",
        "not applied: shop/db-only (selector app=db does not match)",
        "verdict: DENY: a DENY policy that does not compile denies everything it selects (policy nodemesh-system/broken)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert_eq!(e.policies.len(), 2);
    assert!(!e.policies[0].rules[0].matched);
}

#[test]
fn explain_l7_on_a_stream() {
    let yaml = support::expand(
        "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {methods: [GET], notPaths: [/admin]}}]}]}",
    );
    let set = PolicySet::new(support::policies(&yaml), Default::default());
    let text = set
        .explain(&Traffic::parse("").connection(), None)
        .to_string();
    assert!(
        text.contains("not an HTTP stream: an L7 field never holds in an ALLOW rule"),
        "{text}"
    );
    let t = Traffic::parse("method=GET path=/x/../admin");
    let req = t.request().expect("request");
    let e = set.explain(&t.connection(), Some(&req));
    let text = e.to_string();
    assert_eq!(e.normalized_path.as_deref(), Some("/admin"));
    assert!(
        text.contains("[fails] spec.rules[0].to[0].operation.notPaths: normalized path \"/admin\" matches one of the excluded [\"/admin\"]"),
        "{text}"
    );
    let t = Traffic::parse("method=GET path=/a%2fb");
    let req = t.request().expect("request");
    let text = set.explain(&t.connection(), Some(&req)).to_string();
    assert!(text.contains("path refused before any policy"), "{text}");
    assert!(
        text.contains("verdict: DENY: invalid path: path contains an escaped slash"),
        "{text}"
    );
}
