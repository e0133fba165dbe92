//! Table-driven conformance suite: Istio's AuthorizationPolicy semantics (and where nodemesh is
//! stricter), one row per behaviour.
//!
//! Each row: name, policies (YAML documents; `apiVersion`/`kind` added when absent), traffic
//! (`key=value` tokens, defaults: principal cluster.local/ns/client/sa/curl, srcip 10.0.1.1,
//! destination namespace shop with labels app=web, port 8080, dstip 10.0.2.2, not HTTP unless
//! `method=` is given), expectation (`allow|deny` and optional `by=`, `reason=`, `l7`/`l4`,
//! `dry=`, `audit=`).

mod support;

use nodemesh_policy::PolicySet;
use support::{Traffic, assert_expect, policies};

const ALLOW_ALL: &str = "metadata: {name: allow-all, namespace: shop}\nspec: {rules: [{}]}";
const DENY_ADMIN: &str = "metadata: {name: deny-admin, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {paths: ['/admin*']}}]}]}";

/// Policies written once, used by many rows.
fn fixture(name: &str) -> Option<String> {
    Some(match name {
        "@allow-all+deny-admin" => format!("{ALLOW_ALL}\n---\n{DENY_ADMIN}"),
        "@deny-admin" => DENY_ADMIN.to_owned(),
        _ => return None,
    })
}

#[rustfmt::skip]
const CASES: &[(&str, &str, &str, &str)] = &[
    // ---- evaluation order and empty policies ----
    ("no policy allows", "", "", "allow by=- reason=no_allow_policy l4"),
    ("empty spec denies all", "metadata: {name: deny-all, namespace: shop}\nspec: {}", "", "deny by=- reason=no_allow_matched"),
    ("spec absent denies all", "metadata: {name: deny-all, namespace: shop}", "", "deny reason=no_allow_matched"),
    ("rules [{}] allows all", ALLOW_ALL, "", "allow by=shop/allow-all reason=allow_matched"),
    ("DENY rules [{}] denies all", "metadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{}]}", "", "deny by=shop/d reason=deny_matched l4"),
    ("DENY without rules matches nothing", "metadata: {name: d, namespace: shop}\nspec: {action: DENY}", "", "allow reason=no_allow_policy"),
    ("DENY wins over ALLOW", "metadata: {name: a, namespace: shop}\nspec: {rules: [{}]}\n---\nmetadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{}]}", "", "deny by=shop/d"),
    ("ALLOW in another namespace does not apply", "metadata: {name: a, namespace: other}\nspec: {}", "", "allow reason=no_allow_policy"),
    ("ALLOW whose selector does not match does not apply", "metadata: {name: a, namespace: shop}\nspec: {selector: {matchLabels: {app: db}}}", "", "allow reason=no_allow_policy"),
    ("ALLOW selecting the workload, no rule matches", "metadata: {name: a, namespace: shop}\nspec: {selector: {matchLabels: {app: web}}, rules: [{from: [{source: {namespaces: [x]}}]}]}", "", "deny reason=no_allow_matched"),
    ("selector needs every label", "metadata: {name: a, namespace: shop}\nspec: {selector: {matchLabels: {app: web, tier: db}}}", "labels=app=web,tier=front", "allow reason=no_allow_policy"),
    ("any matching ALLOW allows", "metadata: {name: a1, namespace: shop}\nspec: {rules: [{from: [{source: {namespaces: [x]}}]}]}\n---\nmetadata: {name: a2, namespace: shop}\nspec: {rules: [{from: [{source: {namespaces: [client]}}]}]}", "", "allow by=shop/a2 reason=allow_matched"),
    ("second rule of a policy matches", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {namespaces: [x]}}]}, {to: [{operation: {ports: ['8080']}}]}]}", "", "allow by=shop/a"),
    ("AUDIT never changes the verdict", "metadata: {name: au, namespace: shop}\nspec: {action: AUDIT, rules: [{}]}", "", "allow reason=no_allow_policy audit=shop/au"),
    ("AUDIT does not make deny-by-default", "metadata: {name: au, namespace: shop}\nspec: {action: AUDIT, rules: [{from: [{source: {namespaces: [x]}}]}]}", "", "allow reason=no_allow_policy"),
    ("AUDIT reported with a deny", "metadata: {name: a, namespace: shop}\nspec: {}\n---\nmetadata: {name: au, namespace: shop}\nspec: {action: AUDIT, rules: [{}]}", "", "deny audit=shop/au"),

    // ---- root namespace ----
    ("root namespace ALLOW applies mesh-wide", "metadata: {name: mesh, namespace: nodemesh-system}\nspec: {rules: [{from: [{source: {namespaces: [x]}}]}]}", "", "deny reason=no_allow_matched"),
    ("root namespace DENY with matching selector", "metadata: {name: d, namespace: nodemesh-system}\nspec: {action: DENY, selector: {matchLabels: {app: web}}, rules: [{}]}", "", "deny by=nodemesh-system/d"),
    ("root namespace DENY with other selector", "metadata: {name: d, namespace: nodemesh-system}\nspec: {action: DENY, selector: {matchLabels: {app: db}}, rules: [{}]}", "", "allow"),
    ("root ALLOW plus namespace ALLOW: either allows", "metadata: {name: mesh, namespace: nodemesh-system}\nspec: {}\n---\nmetadata: {name: a, namespace: shop}\nspec: {rules: [{}]}", "", "allow by=shop/a"),
    ("configured root namespace", "metadata: {name: d, namespace: istio-system}\nspec: {action: DENY, rules: [{}]}", "root=istio-system", "deny by=istio-system/d"),
    ("default root ignores istio-system", "metadata: {name: d, namespace: istio-system}\nspec: {action: DENY, rules: [{}]}", "", "allow"),
    ("destination in the root namespace", "metadata: {name: d, namespace: nodemesh-system}\nspec: {action: DENY, rules: [{}]}", "to=nodemesh-system", "deny by=nodemesh-system/d"),

    // ---- dry-run ----
    ("dry-run DENY is reported, not enforced", "metadata: {name: d, namespace: shop, annotations: {nodemesh.io/dry-run: 'true'}}\nspec: {action: DENY, rules: [{}]}", "", "allow reason=no_allow_policy dry=shop/d:deny"),
    ("dry-run DENY that does not match", "metadata: {name: d, namespace: shop, annotations: {nodemesh.io/dry-run: 'true'}}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [x]}}]}]}", "", "allow dry=shop/d:allow"),
    ("dry-run ALLOW not matching would deny", "metadata: {name: a, namespace: shop, annotations: {nodemesh.io/dry-run: 'true'}}\nspec: {rules: [{from: [{source: {namespaces: [x]}}]}]}", "", "allow reason=no_allow_policy dry=shop/a:deny"),
    ("dry-run ALLOW matching would allow", "metadata: {name: a, namespace: shop, annotations: {nodemesh.io/dry-run: 'true'}}\nspec: {rules: [{}]}", "", "allow dry=shop/a:allow"),
    ("Istio dry-run annotation", "metadata: {name: d, namespace: shop, annotations: {istio.io/dry-run: 'true'}}\nspec: {action: DENY, rules: [{}]}", "", "allow dry=shop/d:deny"),
    ("dry-run false is enforced", "metadata: {name: d, namespace: shop, annotations: {nodemesh.io/dry-run: 'false'}}\nspec: {action: DENY, rules: [{}]}", "", "deny by=shop/d"),
    ("dry-run ALLOW under an enforced DENY", "metadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n---\nmetadata: {name: a, namespace: shop, annotations: {nodemesh.io/dry-run: 'true'}}\nspec: {rules: [{}]}", "", "deny by=shop/d dry=shop/a:deny"),
    ("bad dry-run value fails closed", "metadata: {name: d, namespace: shop, annotations: {nodemesh.io/dry-run: 'maybe'}}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [x]}}]}]}", "", "deny reason=invalid_policy"),

    // ---- Istio apiVersions ----
    ("security.istio.io/v1beta1 parses", "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{}]}", "", "deny by=shop/d"),
    ("security.istio.io/v1 parses", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec: {}", "", "deny reason=no_allow_matched"),

    // ---- source: principals ----
    ("principals exact", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {principals: [cluster.local/ns/client/sa/curl]}}]}]}", "", "allow by=shop/a"),
    ("principals exact mismatch", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {principals: [cluster.local/ns/client/sa/other]}}]}]}", "", "deny"),
    ("principals prefix", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {principals: ['cluster.local/ns/client/*']}}]}]}", "", "allow"),
    ("principals suffix", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {principals: ['*/sa/curl']}}]}]}", "", "allow"),
    ("principals * needs mTLS", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {principals: ['*']}}]}]}", "principal=none", "deny"),
    ("principals * with mTLS", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {principals: ['*']}}]}]}", "", "allow"),
    ("principal given with spiffe://", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {principals: [cluster.local/ns/client/sa/curl]}}]}]}", "principal=spiffe://cluster.local/ns/client/sa/curl", "allow"),
    ("notPrincipals excludes", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {notPrincipals: [cluster.local/ns/client/sa/curl]}}]}]}", "", "deny"),
    ("notPrincipals * means plaintext only", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {notPrincipals: ['*']}}]}]}", "principal=none", "allow"),
    ("notPrincipals * refuses mTLS", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {notPrincipals: ['*']}}]}]}", "", "deny"),

    // ---- source: namespaces ----
    ("namespaces match", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {namespaces: [client]}}]}]}", "", "allow"),
    ("namespaces mismatch", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {namespaces: [shop]}}]}]}", "", "deny"),
    ("namespaces prefix", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {namespaces: ['cli*']}}]}]}", "", "allow"),
    ("namespaces need an identity", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {namespaces: ['*']}}]}]}", "principal=none", "deny"),
    ("notNamespaces excludes", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {notNamespaces: [client]}}]}]}", "", "deny"),
    ("notNamespaces other", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {notNamespaces: [evil]}}]}]}", "", "allow"),
    ("source namespace given apart from principal", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {namespaces: [batch]}}]}]}", "principal=none ns=batch", "allow"),

    // ---- source: IP blocks ----
    ("ipBlocks CIDR", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {ipBlocks: [10.0.1.0/24]}}]}]}", "", "allow"),
    ("ipBlocks single IP mismatch", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {ipBlocks: [10.0.1.2]}}]}]}", "", "deny"),
    ("ipBlocks with host bits", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {ipBlocks: [10.0.1.77/24]}}]}]}", "", "allow"),
    ("notIpBlocks excludes", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {notIpBlocks: [10.0.0.0/16]}}]}]}", "", "deny"),
    ("remoteIpBlocks is the source IP", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {remoteIpBlocks: [10.0.1.1]}}]}]}", "", "allow"),
    ("notRemoteIpBlocks excludes", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {notRemoteIpBlocks: [10.0.1.1/32]}}]}]}", "", "deny"),
    ("forwarded headers are not trusted", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {remoteIpBlocks: [1.2.3.4]}}]}]}", "method=GET hdr=x-forwarded-for:1.2.3.4", "deny"),

    // ---- source: service accounts ----
    ("serviceAccounts ns/sa", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {serviceAccounts: [client/curl]}}]}]}", "", "allow"),
    ("serviceAccounts bare name is the policy namespace", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {serviceAccounts: [curl]}}]}]}", "", "deny"),
    ("serviceAccounts bare name matches own namespace", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {serviceAccounts: [curl]}}]}]}", "principal=cluster.local/ns/shop/sa/curl", "allow"),
    ("notServiceAccounts excludes", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {notServiceAccounts: [client/curl]}}]}]}", "", "deny"),
    ("serviceAccounts need mTLS", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {serviceAccounts: [client/curl]}}]}]}", "principal=none", "deny"),
    ("serviceAccounts mixed with principals fails closed", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {serviceAccounts: [client/curl], principals: ['*']}}]}]}", "", "deny reason=no_allow_matched"),

    // ---- source: request principals (no JWT) ----
    ("requestPrincipals never hold on HTTP", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}", "method=GET", "deny l7"),
    ("notRequestPrincipals always hold on HTTP (DENY)", "metadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]}", "method=GET", "deny by=shop/d"),
    ("notRequestPrincipals always hold on HTTP (ALLOW)", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]}", "method=GET", "allow by=shop/a"),
    ("requestPrincipals in DENY on a non-HTTP stream", "metadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}", "", "deny by=shop/d l7"),
    ("every field of a source must match", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {principals: ['*'], namespaces: [x]}}]}]}", "", "deny"),
    ("one of several sources is enough", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {namespaces: [x]}}, {source: {ipBlocks: [10.0.0.0/8]}}]}]}", "", "allow"),

    // ---- operation: ports, methods, paths, hosts ----
    ("ports match", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {ports: ['8080']}}]}]}", "", "allow l4"),
    ("ports as YAML numbers", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {ports: [9090, 8080]}}]}]}", "", "allow"),
    ("ports mismatch", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {ports: ['80']}}]}]}", "", "deny"),
    ("notPorts excludes", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {notPorts: ['8080']}}]}]}", "", "deny"),
    ("methods match", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {methods: [GET]}}]}]}", "method=GET", "allow l7"),
    ("methods mismatch", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {methods: [GET]}}]}]}", "method=POST", "deny"),
    ("mixed-case method still denied", "{ALLOW_ALL}\n---\nmetadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}", "method=dElEtE", "deny by=shop/d"),
    ("notMethods excludes", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {notMethods: [DELETE]}}]}]}", "method=DELETE", "deny"),
    ("paths exact", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {paths: [/api]}}]}]}", "method=GET path=/api", "allow"),
    ("paths exact is case-sensitive", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {paths: [/api]}}]}]}", "method=GET path=/API", "deny"),
    ("paths prefix", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {paths: ['/api/*']}}]}]}", "method=GET path=/api/v1/x", "allow"),
    ("paths suffix", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {paths: ['*.png']}}]}]}", "method=GET path=/img/a.png", "allow"),
    ("paths {*} is one segment", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {paths: ['/api/{*}/items']}}]}]}", "method=GET path=/api/v1/items", "allow"),
    ("paths {*} is not two segments", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {paths: ['/api/{*}/items']}}]}]}", "method=GET path=/api/v1/x/items", "deny"),
    ("paths {**} is the rest", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {paths: ['/api/{**}']}}]}]}", "method=GET path=/api/v1/x/items", "allow"),
    ("{**} not last fails closed", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {paths: ['/{**}/x']}}]}]}", "method=GET path=/a/x", "deny reason=no_allow_matched"),
    ("notPaths in DENY", "{ALLOW_ALL}\n---\nmetadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{to: [{operation: {notPaths: ['/public/*']}}]}]}", "method=GET path=/admin", "deny by=shop/d"),
    ("notPaths in DENY lets the rest through", "{ALLOW_ALL}\n---\nmetadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{to: [{operation: {notPaths: ['/public/*']}}]}]}", "method=GET path=/public/a", "allow by=shop/allow-all"),
    ("hosts case-insensitive", "{ALLOW_ALL}\n---\nmetadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{to: [{operation: {hosts: [admin.example.com]}}]}]}", "method=GET host=ADMIN.Example.COM", "deny by=shop/d"),
    ("hosts ignore the port", "{ALLOW_ALL}\n---\nmetadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{to: [{operation: {hosts: ['*.example.com']}}]}]}", "method=GET host=admin.example.com:8080", "deny by=shop/d"),
    ("hosts mismatch", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {hosts: [web.shop]}}]}]}", "method=GET host=db.shop", "deny"),
    ("notHosts excludes", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {notHosts: [web.shop]}}]}]}", "method=GET host=WEB.shop", "deny"),
    ("every field of an operation must match", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {methods: [GET], paths: [/a]}}]}]}", "method=GET path=/b", "deny"),
    ("one of several operations is enough", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {methods: [POST]}}, {operation: {paths: [/b]}}]}]}", "method=GET path=/b", "allow"),
    ("from and to must both match", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {namespaces: [client]}}], to: [{operation: {ports: ['80']}}]}]}", "", "deny"),

    // ---- when ----
    ("when source.ip", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: source.ip, values: [10.0.1.0/24]}]}]}", "", "allow"),
    ("when remote.ip notValues", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: remote.ip, notValues: [10.0.1.1]}]}]}", "", "deny"),
    ("when source.namespace", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: source.namespace, values: [client]}]}]}", "", "allow"),
    ("when source.principal", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: source.principal, values: ['*/sa/other']}]}]}", "", "deny"),
    ("when source.serviceAccount", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: source.serviceAccount, values: [client/curl]}]}]}", "", "allow"),
    ("when destination.ip", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: destination.ip, values: [10.0.2.0/24]}]}]}", "", "allow"),
    ("when destination.ip mismatch", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: destination.ip, values: [10.9.0.0/16]}]}]}", "", "deny"),
    ("when destination.port", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: destination.port, values: ['8080']}]}]}", "", "allow"),
    ("when destination.port notValues", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: destination.port, notValues: ['8080']}]}]}", "", "deny"),
    ("when connection.sni never set", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: connection.sni, values: ['*']}]}]}", "", "deny"),
    ("when connection.sni notValues holds", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: connection.sni, notValues: [web.shop]}]}]}", "", "allow l4"),
    ("when values and notValues both apply", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: source.ip, values: [10.0.0.0/8], notValues: [10.0.1.0/24]}]}]}", "", "deny"),
    ("every when must hold", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: source.namespace, values: [client]}, {key: destination.port, values: ['80']}]}]}", "", "deny"),
    ("when header", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: 'request.headers[x-user]', values: [alice]}]}]}", "method=GET hdr=x-user:alice", "allow l7"),
    ("when header name is case-insensitive", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: 'request.headers[X-User]', values: ['al*']}]}]}", "method=GET hdr=X-USER:alice", "allow"),
    // A repeated header is matched as its values joined by `,` (Envoy's view), never value by value.
    ("when header: a repeated header is matched joined", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: 'request.headers[x-user]', values: [alice]}]}]}", "method=GET hdr=x-user:alice hdr=x-user:mallory", "deny reason=no_allow_matched"),
    ("when header: the joined value can match", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: 'request.headers[x-user]', values: ['alice,bob']}]}]}", "method=GET hdr=x-user:alice hdr=X-User:bob", "allow"),
    ("when header: DENY on the joined value", "{ALLOW_ALL}\n---\nmetadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{when: [{key: 'request.headers[x-user]', values: ['*,admin']}]}]}", "method=GET hdr=x-user:bob hdr=x-user:admin", "deny by=shop/d"),
    ("when header: one value of a repeated header is not the header", "{ALLOW_ALL}\n---\nmetadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{when: [{key: 'request.headers[x-user]', values: [admin]}]}]}", "method=GET hdr=x-user:bob hdr=x-user:admin", "allow"),
    ("when header absent", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: 'request.headers[x-user]', values: ['*']}]}]}", "method=GET", "deny"),
    ("when header notValues with header absent", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: 'request.headers[x-user]', notValues: [bob]}]}]}", "method=GET", "allow"),
    ("when request.auth.claims never hold", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: 'request.auth.claims[iss]', values: ['*']}]}]}", "method=GET", "deny"),
    ("when request.auth.principal notValues hold", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: request.auth.principal, notValues: [x]}]}]}", "method=GET", "allow"),
    ("unknown when key fails closed", "metadata: {name: a, namespace: shop}\nspec: {rules: [{when: [{key: source.labels, values: [x]}]}]}", "", "deny reason=no_allow_matched"),

    // ---- L7 fields on streams that are not HTTP ----
    ("ALLOW with methods on a non-HTTP stream", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {methods: [GET]}}]}]}", "", "deny reason=no_allow_matched l7"),
    ("ALLOW with notPaths on a non-HTTP stream", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {notPaths: [/admin]}}]}]}", "", "deny l7"),
    ("DENY with paths on a non-HTTP stream", "@allow-all+deny-admin", "", "deny by=shop/deny-admin reason=deny_matched l7"),
    ("DENY with paths on HTTP elsewhere", "@allow-all+deny-admin", "method=GET path=/index.html", "allow by=shop/allow-all"),
    ("L4 DENY match needs no L7", "metadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [client]}}]}]}\n---\nmetadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {methods: [GET]}}]}]}", "", "deny by=shop/d l4"),
    ("L4-only policies need no L7", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {ports: ['8080']}}]}]}", "method=GET", "allow l4"),
    ("dry-run L7 policy asks for L7", "metadata: {name: d, namespace: shop, annotations: {nodemesh.io/dry-run: 'true'}}\nspec: {action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}", "", "allow l7 dry=shop/d:deny"),

    // ---- path normalization attacks (DENY /admin* with ALLOW all) ----
    ("path /admin", "@allow-all+deny-admin", "method=GET path=/admin", "deny by=shop/deny-admin"),
    ("path /admin/../admin", "@allow-all+deny-admin", "method=GET path=/admin/../admin", "deny by=shop/deny-admin"),
    ("path /public/../admin", "@allow-all+deny-admin", "method=GET path=/public/../admin", "deny by=shop/deny-admin"),
    ("path /%2e%2e/admin", "@allow-all+deny-admin", "method=GET path=/%2e%2e/admin", "deny by=shop/deny-admin"),
    ("path /public/%2E%2e/admin", "@allow-all+deny-admin", "method=GET path=/public/%2E%2e/admin", "deny by=shop/deny-admin"),
    ("path //admin", "@allow-all+deny-admin", "method=GET path=//admin", "deny by=shop/deny-admin"),
    ("path /./admin", "@allow-all+deny-admin", "method=GET path=/./admin", "deny by=shop/deny-admin"),
    ("path with %2F is refused", "@allow-all+deny-admin", "method=GET path=/public%2F..%2Fadmin", "deny by=- reason=invalid_path"),
    ("path with lowercase %2f is refused", "@allow-all", "method=GET path=/a%2fb", "deny reason=invalid_path"),
    ("path with %5C is refused", "@allow-all", "method=GET path=/a%5cb", "deny reason=invalid_path"),
    ("path with %00 is refused", "@allow-all", "method=GET path=/admin%00.html", "deny reason=invalid_path"),
    ("path with backslashes", "@allow-all+deny-admin", "method=GET path=/public\\..\\admin", "deny by=shop/deny-admin"),
    ("path with a fragment", "@allow-all+deny-admin", "method=GET path=/admin#x", "deny by=shop/deny-admin"),
    ("fragment hides nothing", "@allow-all+deny-admin", "method=GET path=/public#/../admin", "allow"),
    ("path with a query", "@allow-all+deny-admin", "method=GET path=/admin?next=/public", "deny by=shop/deny-admin"),
    ("path with escaped letters", "@allow-all+deny-admin", "method=GET path=/%61dmin", "deny by=shop/deny-admin"),
    ("path case differs", "@allow-all+deny-admin", "method=GET path=/ADMIN", "allow"),
    ("ALLOW prefix is not escaped by ..", "metadata: {name: a, namespace: shop}\nspec: {rules: [{to: [{operation: {paths: ['/public/*']}}]}]}", "method=GET path=/public/../admin", "deny reason=no_allow_matched"),

    // ---- policies that do not compile fail closed ----
    ("invalid ALLOW allows nothing", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/99]}}]}]}", "", "deny reason=no_allow_matched"),
    ("invalid ALLOW next to a valid one", "metadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {ipBlocks: [nope]}}]}]}\n---\nmetadata: {name: b, namespace: shop}\nspec: {rules: [{}]}", "", "allow by=shop/b"),
    ("invalid DENY denies everything", "{ALLOW_ALL}\n---\nmetadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: [{to: [{operation: {ports: ['99999']}}]}]}", "", "deny by=shop/d reason=invalid_policy l4"),
    ("CUSTOM denies everything", "metadata: {name: c, namespace: shop}\nspec: {action: CUSTOM, provider: {name: ext}, rules: [{}]}", "", "deny by=shop/c reason=invalid_policy"),
    ("invalid DENY in another namespace", "metadata: {name: d, namespace: other}\nspec: {action: DENY, rules: [{to: [{operation: {ports: ['0']}}]}]}", "", "allow"),
    ("invalid DENY selecting other workloads", "metadata: {name: d, namespace: shop}\nspec: {action: DENY, selector: {matchLabels: {app: db}}, rules: [{to: [{operation: {ports: [x]}}]}]}", "", "allow"),
];

#[test]
fn conformance_table() {
    assert!(CASES.len() >= 80, "the suite must keep at least 80 cases");
    let mut names = std::collections::HashSet::new();
    let mut failed = Vec::new();
    for (name, yaml, traffic, expect) in CASES {
        assert!(names.insert(*name), "duplicate case name {name}");
        let yaml = match fixture(yaml) {
            Some(y) => y,
            None if *yaml == "@allow-all" => ALLOW_ALL.to_owned(),
            None => yaml.replace("{ALLOW_ALL}", ALLOW_ALL),
        };
        // Run every case, then report all failures at once.
        let run = std::panic::catch_unwind(|| {
            let t = Traffic::parse(traffic);
            let set = PolicySet::new(policies(&yaml), t.options());
            let d = t.decide(&set);
            assert_expect(name, &d, expect);
        });
        if run.is_err() {
            failed.push(*name);
        }
    }
    assert!(
        failed.is_empty(),
        "{} case(s) failed: {failed:#?}",
        failed.len()
    );
}

#[test]
fn decode_escaped_slashes_option() {
    let t = Traffic::parse("method=GET path=/public%2F..%2Fadmin");
    let mut options = t.options();
    options.path.decode_escaped_slashes = true;
    let yaml = fixture("@allow-all+deny-admin").expect("fixture");
    let set = PolicySet::new(policies(&yaml), options);
    assert_expect("decoded", &t.decide(&set), "deny by=shop/deny-admin");
}
