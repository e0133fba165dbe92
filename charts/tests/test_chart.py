#!/usr/bin/env python3
"""Renders and lints charts/nodemesh with a real Helm (helm-python-sdk, Helm v4 as a library)
and validates every rendered manifest against the Kubernetes 1.37 schemas (kubernetes-validate,
strict: unknown fields are errors). Run by scripts/test-chart inside its virtualenv.

Checks: `helm lint --strict` is clean; default values and a set of overrides render and
validate; the DaemonSet has exactly NET_ADMIN and NET_RAW, is not privileged, runs on the host
network at system-node-critical, tolerates everything, mounts /dev/net/tun and a token with
audience nodemesh-ca, probes 15021, is annotated for scraping, and outlives its drain timeout;
it upgrades in place (RollingUpdate maxSurge 1 / maxUnavailable 0, no container ports, the
--upgrade-deadline and --linger-after-handoff flags, a grace period of max(drain, upgrade
deadline) + 30, the state dir on a hostPath) from image.repository:image.tag (appVersion);
an init container installs nodemesh-cni from the hostPaths /etc/cni/net.d and /opt/cni/bin and
the uninstall hook removes it first; the CA has its Service (15012, 15014) and PodDisruptionBudget; RBAC and the admission policy
are there (the proxy reads NetworkPolicies and ClusterNetworkPolicies); networkPolicy.mode is
passed as --network-policy; networkPolicy.installClusterNetworkPolicyCRD renders the chart's
files/clusternetworkpolicies.yaml as a CRD kept on uninstall, and fails naming the file when it
is missing or is not that CRD; bad values fail schema validation naming the key.
"""

import pathlib
import shutil
import sys
import tempfile

import helm_python as helm
import kubernetes_validate
import yaml

CHART = pathlib.Path(__file__).resolve().parent.parent / "nodemesh"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
KUBE = "1.37"
NS = "nodemesh-system"

OVERRIDES = [
    {},
    {"wireguard": {"enabled": False}, "capture": {"backend": "nftables"}, "podCidrCheck": False,
     "cni": {"enabled": False}},
    {"istioPolicies": True, "mtls": {"defaultMode": "PERMISSIVE"}, "networkPolicy": {"mode": "off"},
     "ca": {"replicas": 1, "allowIstioZtunnel": True, "extraAllowedCallers": ["team-a/agent"]}},
    {"cleanup": {"enabled": False}, "proxy": {"drainTimeoutSeconds": 120, "logLevel": "debug"},
     "image": {"repository": "registry.example/nodemesh", "tag": "dev", "pullPolicy": "Always"}},
    {"proxy": {"drainTimeoutSeconds": 600, "upgradeDeadlineSeconds": 300}},
    {"proxy": {"upgradeDeadlineSeconds": 7200}},
]

BAD_VALUES = [
    ({"capture": {"backend": "ebpf"}}, "backend"),
    ({"proxy": {"ports": {"metrics": -1}}}, "metrics"),
    ({"ca": {"grpcPort": 70000}}, "grpcPort"),
    ({"mtls": {"defaultMode": "OFF"}}, "defaultMode"),
    ({"wireguard": {"enable": True}}, "enable"),
    ({"podCidrCheck": "no"}, "podCidrCheck"),
    ({"cni": {"confDir": "etc/cni"}}, "confDir"),
    ({"networkPolicy": {"mode": "audit"}}, "mode"),
    ({"networkPolicy": {"installClusterNetworkPolicyCRD": "yes"}}, "installClusterNetworkPolicyCRD"),
    ({"proxy": {"upgradeDeadlineSeconds": 0}}, "upgradeDeadlineSeconds"),
]

CNP_CRD = "files/clusternetworkpolicies.yaml"
CNP_CRD_NAME = "clusternetworkpolicies.policy.networking.k8s.io"
INSTALL_CRD = {"networkPolicy": {"installClusterNetworkPolicyCRD": True}}

# A minimal valid CRD standing in for the generated one, to test the template on its own.
FIXTURE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CNP_CRD_NAME, "annotations": {"generated-by": "fixture"}},
    "spec": {
        "group": "policy.networking.k8s.io",
        "scope": "Cluster",
        "names": {"plural": "clusternetworkpolicies", "singular": "clusternetworkpolicy",
                  "kind": "ClusterNetworkPolicy", "listKind": "ClusterNetworkPolicyList",
                  "shortNames": ["cnp"]},
        "versions": [{"name": "v1alpha2", "served": True, "storage": True,
                      "schema": {"openAPIV3Schema": {"type": "object",
                                                     "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL {what}")


def manifests(rendered):
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield path, doc


def by_kind(docs, kind, name):
    return next((d for _, d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


def lint():
    report = helm.lint(str(CHART), strict=True, namespace=NS, kube_version="v1.37.0")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    for m in problems:
        print(f"lint: {m}")
    check(not problems and not report.get("errors"), f"helm lint --strict: {report}")


def validate(docs, label):
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBE, strict=True)
        except kubernetes_validate.ValidationError as e:
            check(False, f"{label}: {path} {doc['kind']}/{doc['metadata']['name']}: "
                         f"{'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            check(False, f"{label}: {path}: no schema: {e.message}")


def check_defaults(docs, values):
    ds = by_kind(docs, "DaemonSet", "nodemesh-proxy")
    check(ds is not None, "proxy DaemonSet rendered")
    pod = ds["spec"]["template"]["spec"]
    proxy = pod["containers"][0]
    sc = proxy["securityContext"]
    check(sorted(sc["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"], f"capabilities {sc}")
    check(sc["capabilities"]["drop"] == ["ALL"], "drops every other capability")
    check(sc.get("privileged") is False, "not privileged")
    check(sc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    check(all("securityContext" not in c or "add" not in c["securityContext"].get("capabilities", {})
              for c in pod.get("initContainers", [])), "no init container adds capabilities")
    check(pod["hostNetwork"] is True, "host network")
    check(pod["priorityClassName"] == "system-node-critical", "system-node-critical")
    check({"operator": "Exists"} in pod["tolerations"], "tolerates every taint")
    check(pod["terminationGracePeriodSeconds"] > values["proxy"]["drainTimeoutSeconds"],
          "grace period longer than the drain timeout")
    check(f"--drain-timeout={values['proxy']['drainTimeoutSeconds']}s" in proxy["args"],
          "drain timeout passed")
    for probe in ("readinessProbe", "livenessProbe"):
        check(proxy[probe]["httpGet"]["port"] == 15021, f"{probe} on 15021")
    ann = ds["spec"]["template"]["metadata"]["annotations"]
    check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "15020",
          f"scrape annotations {ann}")
    tokens = [s["serviceAccountToken"] for v in pod["volumes"] if "projected" in v
              for s in v["projected"]["sources"] if "serviceAccountToken" in s]
    check([t["audience"] for t in tokens] == ["nodemesh-ca"], f"projected token {tokens}")
    check(host_paths(pod).get("xtables-lock") == "/run/xtables.lock"
          and any(m == {"name": "xtables-lock", "mountPath": "/run/xtables.lock"} for m in proxy["volumeMounts"]),
          "the host's /run/xtables.lock mounted (legacy iptables on a read-only root filesystem)")
    tun = [v for v in pod["volumes"] if v.get("hostPath", {}).get("path") == "/dev/net/tun"]
    check(len(tun) == 1 and any(m["mountPath"] == "/dev/net/tun" for m in proxy["volumeMounts"]),
          "/dev/net/tun mounted")

    svc = by_kind(docs, "Service", "nodemesh-ca")
    check(svc is not None and sorted(p["port"] for p in svc["spec"]["ports"]) == [15012, 15014],
          "CA Service on 15012 and 15014")
    check(by_kind(docs, "Deployment", "nodemesh-ca") is not None, "CA Deployment")
    check(by_kind(docs, "PodDisruptionBudget", "nodemesh-ca") is not None, "CA PDB")
    check(by_kind(docs, "ValidatingAdmissionPolicy", "nodemesh-proxy-node-patch") is not None,
          "node-patch admission policy")
    check(by_kind(docs, "ValidatingAdmissionPolicyBinding", "nodemesh-proxy-node-patch") is not None,
          "admission policy binding")
    role = by_kind(docs, "ClusterRole", "nodemesh-proxy")
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    check(verbs.get(("", "nodes")) == {"get", "list", "watch", "patch"}, f"proxy node verbs {verbs}")
    check(verbs.get(("security.nodemesh.io", "authorizationpolicies/status")) == {"patch"},
          "proxy writes policy status only")
    for group, resource in (("networking.k8s.io", "networkpolicies"),
                            ("policy.networking.k8s.io", "clusternetworkpolicies")):
        check(verbs.get((group, resource)) == {"get", "list", "watch"},
              f"proxy reads {group}/{resource}: {verbs.get((group, resource))}")
    check(not [d for _, d in docs if d["kind"] == "CustomResourceDefinition"],
          "no ClusterNetworkPolicy CRD unless asked for")
    check(all(not (v & {"create", "delete", "update"}) for v in verbs.values()),
          f"proxy creates, updates and deletes nothing {verbs}")
    hook = by_kind(docs, "DaemonSet", "nodemesh-cleanup")
    check(hook is not None and hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete",
          "pre-delete cleanup hook")
    script = hook["spec"]["template"]["spec"]["initContainers"][0]["args"][0]
    check(host_paths(hook["spec"]["template"]["spec"]).get("xtables-lock") == "/run/xtables.lock",
          "cleanup shares the host's iptables lock")
    check("nodemesh redirect remove" in script and "nodemesh wireguard down" in script,
          "cleanup removes capture rules and WireGuard")
    check("nodemesh cni uninstall" in script
          and script.index("nodemesh cni uninstall") < script.index("nodemesh redirect remove"),
          "cleanup removes the CNI entry before the capture rules")
    check_cni(pod, hook["spec"]["template"]["spec"])


def host_paths(pod):
    return {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}


def check_cni(pod, cleanup):
    """The init container installs nodemesh-cni into the node's conflist, from the host paths."""
    inits = {c["name"]: c for c in pod.get("initContainers", [])}
    cni = inits.get("install-cni")
    check(cni is not None, "install-cni init container")
    if cni is None:
        return
    check(cni["args"][:2] == ["cni", "install"], f"install-cni runs `nodemesh cni install` {cni}")
    mounts = {m["name"]: m["mountPath"] for m in cni["volumeMounts"]}
    paths = host_paths(pod)
    check(paths.get("cni-conf") == "/etc/cni/net.d" and paths.get("cni-bin") == "/opt/cni/bin",
          f"CNI host paths {paths}")
    check(f"--conf-dir={mounts.get('cni-conf')}" in cni["args"]
          and f"--bin-dir={mounts.get('cni-bin')}" in cni["args"],
          f"install-cni writes where the host paths are mounted {cni['args']} {mounts}")
    check(not cni["securityContext"]["capabilities"].get("add"), "install-cni adds no capability")
    check(host_paths(cleanup).get("cni-conf") == "/etc/cni/net.d", "cleanup mounts the conflist")


def check_upgrade(i, docs, values):
    """The DaemonSet is upgradable in place: a surge pod next to the old one, no ports, the
    handoff flags, a grace period covering the upgrade deadline, a shared state hostPath."""
    ds = by_kind(docs, "DaemonSet", "nodemesh-proxy")
    strategy = ds["spec"]["updateStrategy"]
    check(strategy == {"type": "RollingUpdate",
                       "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
          f"overrides[{i}]: surge one pod, none unavailable: {strategy}")
    pod = ds["spec"]["template"]["spec"]
    for c in pod["containers"] + pod.get("initContainers", []):
        check("ports" not in c, f"overrides[{i}]: container {c['name']} declares no ports: {c.get('ports')}")
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in c:
                check(isinstance(c[probe]["httpGet"]["port"], int),
                      f"overrides[{i}]: {c['name']} {probe} names a port number")
    proxy = pod["containers"][0]
    args = proxy["args"]
    p = values["proxy"]
    want = f"--upgrade-deadline={p['upgradeDeadlineSeconds']}s"
    check(want in args and sum(a.startswith("--upgrade-deadline") for a in args) == 1,
          f"overrides[{i}]: {want} passed once: {args}")
    check(args.count("--linger-after-handoff") == 1, f"overrides[{i}]: --linger-after-handoff passed")
    grace = max(p["drainTimeoutSeconds"], p["upgradeDeadlineSeconds"]) + 30
    check(pod["terminationGracePeriodSeconds"] == grace,
          f"overrides[{i}]: grace period {pod['terminationGracePeriodSeconds']} == {grace}")
    check(host_paths(pod).get("state") == "/var/lib/nodemesh"
          and any(m["name"] == "state" and m["mountPath"] == "/var/lib/nodemesh"
                  for m in proxy["volumeMounts"]),
          f"overrides[{i}]: the state dir (handoff socket) is the hostPath /var/lib/nodemesh")
    image = values["image"]
    got = proxy["image"]
    repo, _, tag = got.rpartition(":")
    check(repo == image["repository"], f"overrides[{i}]: image repository {got}")
    check(tag == (image["tag"] or APP_VERSION), f"overrides[{i}]: image tag {got} (want {image['tag'] or APP_VERSION})")
    check(proxy["imagePullPolicy"] == image["pullPolicy"], f"overrides[{i}]: pull policy")


def render_error(chart, overrides):
    """The render error's message, or None when `overrides` render."""
    try:
        chart.render(overrides, name="nodemesh", namespace=NS, is_install=True)
        return None
    except helm.HelmRenderError as e:
        return str(e)


def check_crd_rendered(chart, label, want_annotations):
    rendered = chart.render(INSTALL_CRD, name="nodemesh", namespace=NS, is_install=True)
    docs = list(manifests(rendered))
    crds = [d for _, d in docs if d["kind"] == "CustomResourceDefinition"]
    check([c["metadata"]["name"] for c in crds] == [CNP_CRD_NAME], f"{label}: CRD rendered {crds}")
    if not crds:
        return
    meta = crds[0]["metadata"]
    check(meta.get("annotations", {}).get("helm.sh/resource-policy") == "keep",
          f"{label}: CRD kept on uninstall {meta}")
    for k, v in want_annotations.items():
        check(meta["annotations"].get(k) == v, f"{label}: the file's annotation {k} kept {meta}")
    check(meta.get("labels", {}).get("app.kubernetes.io/part-of") == "nodemesh",
          f"{label}: CRD labelled {meta}")
    validate([(p, d) for p, d in docs if d["kind"] == "CustomResourceDefinition"], label)
    print(f"ok {label}: the ClusterNetworkPolicy CRD renders, kept on uninstall, valid")


def check_cnp_crd(chart):
    """networkPolicy.installClusterNetworkPolicyCRD installs files/clusternetworkpolicies.yaml."""
    if (CHART / CNP_CRD).exists():
        check_crd_rendered(chart, "chart CRD", {})
    else:
        error = render_error(chart, INSTALL_CRD)
        check(error is not None and CNP_CRD in error and "missing" in error,
              f"a missing {CNP_CRD} fails the install naming it: {error}")
        print(f"ok {CNP_CRD} is not in the chart yet: installing the CRD fails naming it")
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / "nodemesh"
        shutil.copytree(CHART, copy)
        (copy / "files").mkdir(exist_ok=True)
        (copy / CNP_CRD).write_text("# fixture\n" + yaml.safe_dump(FIXTURE_CRD))
        check_crd_rendered(helm.Chart.load(str(copy)), "fixture CRD", {"generated-by": "fixture"})
        wrong = dict(FIXTURE_CRD, metadata={"name": "adminnetworkpolicies.policy.networking.k8s.io"})
        (copy / CNP_CRD).write_text(yaml.safe_dump(wrong))
        error = render_error(helm.Chart.load(str(copy)), INSTALL_CRD)
        check(error is not None and CNP_CRD_NAME in error, f"another CRD in {CNP_CRD} is refused: {error}")
        print(f"ok another CRD in {CNP_CRD} is refused")


def main():
    print(f"helm {helm.helm_sdk_version()}, kubernetes-validate {KUBE}")
    chart = helm.Chart.load(str(CHART))
    lint()
    for crd in chart.crds:
        for doc in yaml.safe_load_all(crd.get("data") or crd.get("content") or ""):
            if doc:
                validate([(crd.get("name", "crd"), doc)], "crds/")
    for i, overrides in enumerate(OVERRIDES):
        values = chart.merge_values(overrides)
        rendered = chart.render(overrides, name="nodemesh", namespace=NS, is_install=True)
        docs = list(manifests(rendered))
        check(len(docs) > 10, f"overrides[{i}]: rendered {len(docs)} objects")
        validate(docs, f"overrides[{i}]")
        if i == 0:
            check_defaults(docs, values)
            check(values["proxy"]["upgradeDeadlineSeconds"] == 3600, "upgrade deadline 1h by default")
            check(values["image"]["repository"] == "ghcr.io/nodemesh/nodemesh",
                  "default image is what scripts/build-image builds")
        check_upgrade(i, docs, values)
        args = by_kind(docs, "DaemonSet", "nodemesh-proxy")["spec"]["template"]["spec"]["containers"][0]["args"]
        want = f"--pod-cidr-check={str(values['podCidrCheck']).lower()}"
        check(want in args, f"overrides[{i}]: {want} passed")
        want = f"--network-policy={values['networkPolicy']['mode']}"
        check(want in args and sum(a.startswith("--network-policy") for a in args) == 1,
              f"overrides[{i}]: {want} passed once: {args}")
        if not values["cni"]["enabled"]:
            pod = by_kind(docs, "DaemonSet", "nodemesh-proxy")["spec"]["template"]["spec"]
            check("initContainers" not in pod and "cni-conf" not in host_paths(pod),
                  f"overrides[{i}]: cni.enabled=false installs no plugin")
        print(f"ok overrides[{i}]: {len(docs)} objects rendered and valid")
    check_cnp_crd(chart)
    for bad, key in BAD_VALUES:
        try:
            chart.validate_schema(bad)
            check(False, f"bad values {bad} accepted")
        except helm.HelmValuesError as e:
            check(key in str(e), f"bad values {bad}: message does not name {key!r}: {e}")
            print(f"ok refused {bad}: {str(e).splitlines()[-1].strip()}")
    if failures:
        print(f"{len(failures)} chart check(s) failed")
        return 1
    print("chart: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
