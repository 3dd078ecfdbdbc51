"""Checks of the tapwire chart without a cluster: Helm's linter in strict mode, every rendered
object against the Kubernetes API schemas in strict mode, typos in values refused, the
security-relevant fields of the listener DaemonSet, and the configuration the chart writes
accepted by the real tapwire binaries (`--check-config`).

Run by deploy/helm/check.sh (`make chart-check`), which sets up the tools.
"""

import copy
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest

from chart import CHART_DIR, NAMESPACE, RELEASE, cases, find, manifests, render, values_of

CASES = cases()
# The chart's kubeVersion floor and the newest API the validator knows.
KUBERNETES_VERSIONS = ["1.25.0", "1.37.0"]
# Custom resources: their schemas come with cert-manager and the Prometheus operator, not with
# Kubernetes, so the API validator cannot check them. Only these kinds are skipped (by name);
# test_custom_resources_* below check the fields the chart relies on instead.
CUSTOM_KINDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def case(request):
    return request.param, values_of(CASES[request.param])


def listener_container(objects):
    daemonset = find(objects, "DaemonSet", "-listener")
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    return daemonset, container


def flag_values(args, flag):
    prefix = f"--{flag}="
    return [arg[len(prefix):] for arg in args if arg.startswith(prefix)]


# --- Helm's own checks ---------------------------------------------------------------------


def test_helm_lint_strict_passes(case):
    name, values = case
    report = helm.lint(str(CHART_DIR), values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, f"{name}: {report}"


def typo(path, value):
    """Values with `value` at the dotted `path` (a `[0]` element is a one-item list)."""
    for key in reversed(path.split(".")):
        value = [value] if key == "[0]" else {key: value}
    return pytest.param(value, id=path)


@pytest.mark.parametrize(
    "values",
    [
        typo("listner", {}),
        typo("listener.interfaces", "eth0"),
        typo("listener.spool.hostpath", "/x"),
        typo("listener.resources.limit", {"cpu": "1"}),
        typo("replayer.engine.targets", [{"url": "http://a:80"}]),
        typo("replayer.engine.target.[0]", {"url": "http://a:80", "rates": 5}),
        typo("replayer.engine.grpc_listen", "0.0.0.0:1"),
        typo("tls.certManager.issuer", "x"),
    ],
)
def test_a_typo_in_values_is_refused(values):
    with pytest.raises(helm.HelmValuesError, match="additional properties"):
        render(values)


def test_a_wrong_type_in_values_is_refused():
    with pytest.raises(helm.HelmValuesError):
        render({"replayer": {"engine": {"target": [{"url": "http://a:80", "rate": "fast"}]}}})


# --- Kubernetes API schemas ----------------------------------------------------------------


def as_rendered_for(obj, version):
    """`obj` as the chart renders it for a cluster of `version`. The SDK renders for Helm's
    default Kubernetes version (1.27 or later); the one field gated on the cluster's version
    (`semverCompare` in replayer-pdb.yaml) is left out for older ones."""
    if obj["kind"] == "PodDisruptionBudget" and tuple(map(int, version.split(".")[:2])) < (1, 27):
        spec = {k: v for k, v in obj["spec"].items() if k != "unhealthyPodEvictionPolicy"}
        return {**obj, "spec": spec}
    return obj


def test_the_budget_lets_unready_replayers_be_evicted():
    """Staging down makes every replayer unready; node drains in production must not wait."""
    budget = find(manifests({}), "PodDisruptionBudget")
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_api_strictly(case, version):
    name, values = case
    objects = manifests(values)
    assert objects, f"{name}: nothing rendered"
    skipped = []
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            skipped.append(f"{obj['kind']}/{obj['metadata']['name']}")
            continue
        kubernetes_validate.validate(as_rendered_for(obj, version), version, strict=True)
    print(f"{name} @ {version}: {len(objects) - len(skipped)} objects valid; custom resources "
          f"not in the API schemas: {', '.join(skipped) or 'none'}")


def test_strict_validation_rejects_an_unknown_field():
    objects = manifests({})
    daemonset = copy.deepcopy(find(objects, "DaemonSet", "-listener"))
    daemonset["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[-1], strict=True)


# --- The listener DaemonSet's security-relevant fields --------------------------------------


def test_listener_runs_on_the_host_network_with_cluster_dns():
    daemonset, _ = listener_container(manifests({}))
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["automountServiceAccountToken"] is False
    assert pod.get("hostPID") is not True and pod.get("hostIPC") is not True


def test_listener_holds_net_raw_and_nothing_else():
    daemonset, container = listener_container(manifests({}))
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["privileged"] is False
    pod_security = daemonset["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_listener_dropping_to_a_user_adds_only_what_the_switch_needs():
    _, container = listener_container(manifests({"listener": {"user": "tapwire"}}))
    assert container["securityContext"]["capabilities"]["add"] == ["NET_RAW", "SETUID", "SETGID"]
    assert flag_values(container["args"], "user") == ["tapwire"]


def test_listener_has_no_cpu_limit_by_default():
    _, container = listener_container(manifests({}))
    resources = container["resources"]
    assert "cpu" not in resources["limits"]
    assert resources["requests"]["cpu"]
    assert resources["limits"]["memory"] and resources["requests"]["memory"]


def test_listener_cpu_limit_is_set_when_asked():
    limits = {"cpu": "750m", "memory": "128Mi"}
    _, container = listener_container(manifests({"listener": {"resources": {"limits": limits}}}))
    assert container["resources"]["limits"] == limits


def test_listener_probes_ask_health_and_readiness_at_the_metrics_port():
    _, container = listener_container(manifests({"listener": {"metricsPort": 9555}}))
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    (port,) = [p for p in container["ports"] if p["name"] == "metrics"]
    assert port["containerPort"] == 9555
    assert flag_values(container["args"], "metrics-listen") == ["$(POD_IP):9555"]


def test_listener_capture_settings_come_from_values():
    values = {"listener": {"interface": "eth1", "ports": [80, 8443],
                           "redactHeaders": ["X-Api-Key"], "redactJsonFields": ["password"]}}
    _, container = listener_container(manifests(values))
    args = container["args"]
    assert flag_values(args, "interface") == ["eth1"]
    assert flag_values(args, "port") == ["80", "8443"]
    assert flag_values(args, "redact-header") == ["X-Api-Key"]
    assert flag_values(args, "redact-json-field") == ["password"]


@pytest.mark.parametrize("spool", ["hostPath", "emptyDir", "none"])
def test_listener_spool_volume_follows_values(spool):
    daemonset, container = listener_container(manifests({"listener": {"spool": {"type": spool}}}))
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"].get("volumes") or []}
    mounts = {m["name"]: m for m in container.get("volumeMounts") or []}
    kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[-1], strict=True)
    if spool == "none":
        assert "spool" not in volumes and not flag_values(container["args"], "spool-dir")
        return
    assert spool in volumes["spool"]
    assert flag_values(container["args"], "spool-dir") == [mounts["spool"]["mountPath"]]
    if spool == "hostPath":
        # One spool per release on a node.
        assert volumes["spool"]["hostPath"]["path"].endswith(f"/{RELEASE}")


def test_listener_tolerates_every_taint_by_default():
    daemonset, _ = listener_container(manifests({}))
    assert daemonset["spec"]["template"]["spec"]["tolerations"] == [{"operator": "Exists"}]


def test_replayer_runs_unprivileged():
    deployment = find(manifests({}), "Deployment", "-replayer")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


# --- Listener to replayer wiring --------------------------------------------------------------


def test_listeners_point_at_the_headless_replayer_service():
    objects = manifests({})
    _, container = listener_container(objects)
    (replayer_url,) = flag_values(container["args"], "replayer")
    match = re.fullmatch(r"http://([^.]+)\.([^.]+)\.svc\.cluster\.local:(\d+)", replayer_url)
    assert match, replayer_url
    service = find(objects, "Service", match[1])
    assert service["spec"]["clusterIP"] == "None"
    assert match[2] == NAMESPACE
    assert [p["port"] for p in service["spec"]["ports"]] == [int(match[3])]
    deployment = find(objects, "Deployment", "-replayer")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_custom_resources_give_the_replayer_a_certificate_for_the_name_listeners_use():
    objects = manifests(values_of(CASES["example-mtls-cert-manager"]))
    _, container = listener_container(objects)
    (replayer_url,) = flag_values(container["args"], "replayer")
    host = re.fullmatch(r"https://([^:]+):\d+", replayer_url)[1]
    replayer_cert = find(objects, "Certificate", "-replayer")
    listener_cert = find(objects, "Certificate", "-listener")
    assert host in replayer_cert["spec"]["dnsNames"]
    assert replayer_cert["spec"]["usages"] == ["server auth"]
    assert listener_cert["spec"]["usages"] == ["client auth"]
    issuer = find(objects, "Issuer", replayer_cert["spec"]["issuerRef"]["name"])
    assert issuer["spec"]["ca"]["secretName"]
    secrets = {
        kind: [v["secret"]["secretName"] for v in
               find(objects, kind, "")["spec"]["template"]["spec"]["volumes"]
               if v["name"] == "tls"]
        for kind in ("DaemonSet", "Deployment")
    }
    assert secrets == {"DaemonSet": [listener_cert["spec"]["secretName"]],
                       "Deployment": [replayer_cert["spec"]["secretName"]]}


def test_custom_resources_service_monitors_scrape_both_metrics_ports():
    objects = manifests({"serviceMonitor": {"enabled": True}})
    for component in ("listener", "replayer"):
        monitor = find(objects, "ServiceMonitor", f"-{component}")
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [o for o in objects if o["kind"] == "Service"
                    and o["spec"]["selector"] == selector
                    and any(p["name"] == "metrics" for p in o["spec"]["ports"])]
        assert services, f"no Service with a metrics port for the {component} ServiceMonitor"
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_network_policy_admits_grpc_only_from_the_listener_nodes():
    objects = manifests({"networkPolicy": {"enabled": True, "listenerCIDRs": ["10.1.0.0/16"]}})
    policy = find(objects, "NetworkPolicy", "-replayer")
    grpc_rule, metrics_rule = policy["spec"]["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert grpc_rule["from"] == [{"ipBlock": {"cidr": "10.1.0.0/16"}}]
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]


def test_network_policy_without_node_cidrs_is_refused():
    with pytest.raises(helm.HelmError, match="listenerCIDRs"):
        render({"networkPolicy": {"enabled": True}})


def test_autoscaling_replaces_the_fixed_replica_count():
    objects = manifests({"replayer": {"autoscaling": {"enabled": True}}})
    assert "replicas" not in find(objects, "Deployment", "-replayer")["spec"]
    hpa = find(objects, "HorizontalPodAutoscaler", "-replayer")
    assert hpa["spec"]["scaleTargetRef"]["name"].endswith("-replayer")


# --- The replayer's config file ----------------------------------------------------------------


def replayer_toml(objects):
    return find(objects, "ConfigMap", "-replayer")["data"]["replayer.toml"]


def test_replayer_config_keeps_numbers_as_toml_integers():
    engine = {"global_rate": 1000, "speed": 1.5,
              "target": [{"url": "http://a:80", "rate": 100, "queue": 20000},
                         {"url": "http://b:80", "sample": "10%",
                          "rewrites": {"set_headers": {"X-Tapwire": "1"}}}]}
    config = tomllib.loads(replayer_toml(manifests({"replayer": {"engine": engine}})))
    assert config["global_rate"] == 1000 and isinstance(config["global_rate"], int)
    assert config["speed"] == 1.5
    assert config["target"] == engine["target"]
    assert config["grpc_listen"] == "0.0.0.0:7070"
    assert config["metrics_listen"] == "0.0.0.0:9090"


def test_replayer_pods_roll_when_the_engine_config_changes():
    def checksum(values):
        deployment = find(manifests(values), "Deployment", "-replayer")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = checksum({})
    changed = {"replayer": {"engine": {"target": [{"url": "http://other:80"}]}}}
    assert checksum(changed) != base
    assert checksum({}) == base


# --- The real binaries accept what the chart writes ------------------------------------------


def binary(name):
    directory = os.environ.get("TAPWIRE_BIN_DIR")
    assert directory, "TAPWIRE_BIN_DIR must name the directory of the built tapwire binaries"
    path = Path(directory) / name
    assert path.is_file(), f"{path} is missing: build it (cargo build --bins)"
    return str(path)


@pytest.fixture(scope="module")
def pod_files(tmp_path_factory):
    """Stand-ins for what the pods mount under /etc/tapwire and the spool: a real key pair (the
    replayer parses the PEM files) and a token."""
    root = tmp_path_factory.mktemp("pod")
    (root / "tls").mkdir()
    (root / "token").mkdir()
    assert shutil.which("openssl"), "openssl is needed to make a test certificate"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=tapwire-test",
         "-keyout", str(root / "tls" / "tls.key"), "-out", str(root / "tls" / "tls.crt")],
        check=True, capture_output=True)
    shutil.copy(root / "tls" / "tls.crt", root / "tls" / "ca.crt")
    (root / "token" / "token").write_text("test-token\n")
    return root


def in_pod_files(text, root):
    text = text.replace("/etc/tapwire/", f"{root}/").replace("/var/lib/tapwire-listener",
                                                           f"{root}/spool")
    text = text.replace("$(POD_IP)", "127.0.0.1")
    # --user names an account of the image; --check-config looks it up on the host it runs on
    # (as `nginx -t` does), so here it must be one this host has.
    return re.sub(r"^--user=.*", "--user=nobody", text)


def test_the_replayer_accepts_the_config_the_chart_writes(case, pod_files):
    name, values = case
    config = pod_files / f"{name}-replayer.toml"
    config.write_text(in_pod_files(replayer_toml(manifests(values)), pod_files))
    result = subprocess.run([binary("tapwire-replayer"), "--config", str(config),
                             "--check-config"], capture_output=True, text=True)
    assert result.returncode == 0, f"{name}: {result.stderr}\n{config.read_text()}"


def test_the_listener_accepts_the_flags_the_chart_writes(case, pod_files):
    name, values = case
    _, container = listener_container(manifests(values))
    args = [in_pod_files(arg, pod_files) for arg in container["args"]]
    result = subprocess.run([binary(container["command"][0]), *args, "--check-config"],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"{name}: {result.stderr}\n{args}"
