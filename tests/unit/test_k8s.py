"""The Kubernetes manifests, without a cluster: every overlay renders with `kubectl kustomize`,
validates strictly against the Kubernetes schemas of a pinned version, and keeps the policies a
cluster operator expects (probes, limits, non-root, GPU, disruption budgets, network policy)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.common.discovery import parse_target
from services.lvlm_service.presets import DEFAULT_PRESET, PRESETS
from tests.helpers.fixtures import REPO_ROOT

KUBERNETES_VERSION = "1.32.0"
OVERLAYS = sorted((REPO_ROOT / "k8s" / "overlays").iterdir())
PORTS = {"orchestrator": 50050, "clip": 50051, "context": 50052, "lvlm": 50053}
METRICS_PORT, VLLM_PORT = 9100, 8000
PREFIX = {name: f"ANYANOMALY_{name.upper()}" for name in PORTS}
DISCOVERING = {"orchestrator", "context"}  # they follow the pods of the services they call


CRDS = REPO_ROOT / "tests" / "data" / "crds"


def render(overlay: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed to render the manifests"
    done = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [document for document in yaml.safe_load_all(done.stdout) if document]


def closed(schema: Any) -> Any:
    """A CRD's schema with unknown fields refused, as kubectl's strict field validation does."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and \
                not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [closed(item) for item in schema]
    return schema


def crd_schemas() -> dict[tuple[str, str], Any]:
    """{(apiVersion, kind): schema} of the vendored CRDs (tests/data/crds, sources named there)."""
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        crd = next(d for d in yaml.safe_load_all(path.read_text()) if d)
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = closed(version["schema"]["openAPIV3Schema"])
    return schemas


def validate(resources: list[dict[str, Any]]) -> None:
    custom = crd_schemas()
    for resource in resources:
        key = (resource["apiVersion"], resource["kind"])
        if key in custom:
            jsonschema.validate(resource, custom[key])
        else:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    overlay: Path = request.param
    return overlay.name, render(overlay)


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def of_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def test_there_are_the_two_overlays() -> None:
    assert [p.name for p in OVERLAYS] == ["dev-cpu", "prod-gpu"]


def test_every_resource_validates_strictly(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    validate(resources)


def test_a_misspelt_field_fails_validation(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    deployment = copy.deepcopy(of_kind(resources, "Deployment")["lvlm"])
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        validate([deployment])
    scaled = [copy.deepcopy(r) for r in resources if r["kind"] == "ScaledObject"]
    for resource in scaled:
        resource["spec"]["maxReplicas"] = 8
        with pytest.raises(jsonschema.ValidationError):
            validate([resource])


def test_lvlm_pods_scale_on_the_requests_waiting_for_them(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, resources = rendered
    scaled = of_kind(resources, "ScaledObject")
    if overlay == "dev-cpu":
        assert not scaled
        return
    spec = scaled["lvlm"]["spec"]
    assert spec["scaleTargetRef"]["name"] == "lvlm" and 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] > behavior["scaleUp"]["stabilizationWindowSeconds"]
    query = spec["triggers"][0]["metadata"]["query"]
    assert "vllm:num_requests_waiting" in query and "anyanomaly_lvlm_requests_waiting" in query  # the hidden queue
    template = of_kind(resources, "Deployment")["lvlm"]["spec"]["template"]
    lvlm = template["spec"]["containers"][0]
    assert env(lvlm)["ANYANOMALY_LVLM_METRICS_PORT"] == "9100"
    assert {"name": "metrics", "containerPort": 9100} in lvlm["ports"]
    # Every label the query selects on is on the scraped series: a pod label the ServiceMonitor copies.
    (monitor,) = of_kind(resources, "ServiceMonitor").values()
    copied = {re.sub(r"[^a-zA-Z0-9_]", "_", name): name for name in monitor["spec"]["podTargetLabels"]}
    for label, value in re.findall(r'(\w+)="([^"]*)"', query):
        assert template["metadata"]["labels"][copied[label]] == value, label
    assert of_kind(resources, "HorizontalPodAutoscaler")["orchestrator"]["spec"]["scaleTargetRef"]["name"] == \
        "orchestrator"


def test_the_hpa_alternative_renders_and_validates(tmp_path: Path) -> None:
    overlay = tmp_path / "hpa"
    overlay.mkdir()
    k8s = Path(os.path.relpath(REPO_ROOT / "k8s", overlay))
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{k8s / 'base'}]\ncomponents: [{k8s / 'components' / 'autoscaling-hpa'}]\n")
    resources = render(overlay)
    validate(resources)
    autoscalers = of_kind(resources, "HorizontalPodAutoscaler")
    assert set(autoscalers) == {"lvlm", "orchestrator"} and not of_kind(resources, "ScaledObject")
    metrics = {m["pods"]["metric"]["name"] for m in autoscalers["lvlm"]["spec"]["metrics"]}
    assert metrics == {"anyanomaly_lvlm_requests_waiting", "vllm:num_requests_waiting"}


def test_every_service_is_deployed_probed_and_reachable(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    deployments, services = of_kind(resources, "Deployment"), of_kind(resources, "Service")
    assert set(deployments) == set(services) == set(PORTS)
    for name, port in PORTS.items():
        assert {p["name"]: p["port"] for p in services[name]["spec"]["ports"]}["grpc"] == port
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        settings = env(container)
        # The native gRPC probe, on the service's port, or on its plaintext health port under TLS.
        probed = int(settings[f"{PREFIX[name]}_HEALTH_PORT"]) if f"{PREFIX[name]}_TLS_CERT" in settings else port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == probed, (name, probe)
        for other in deployments[name]["spec"]["template"]["spec"]["containers"]:  # vLLM's HTTP probes
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert "host" not in other.get(probe, {}).get("httpGet", {}), "the kubelet would probe its own node"


def test_pods_are_locked_down_and_sized(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    for name, deployment in of_kind(resources, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        # API access only where endpoints are discovered (test_only_discovery_reads_the_api)
        assert pod["automountServiceAccountToken"] is (name in DISCOVERING), name
        assert pod["enableServiceLinks"] is False  # a Service's *_PORT variables would read as settings
        assert pod["terminationGracePeriodSeconds"] > 30  # longer than the services' 30 s drain
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]) <= set(
                container["resources"]["limits"]), (name, container["name"])


def test_only_discovery_reads_the_api(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """One Role: get/list/watch EndpointSlices, bound to the service accounts that discover."""
    _, resources = rendered
    assert not of_kind(resources, "ClusterRole") and not of_kind(resources, "ClusterRoleBinding")
    roles, bindings = of_kind(resources, "Role"), of_kind(resources, "RoleBinding")
    assert [role["rules"] for role in roles.values()] == [
        [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}]]
    (binding,) = bindings.values()
    assert binding["roleRef"]["name"] in roles
    namespace = binding["metadata"]["namespace"]
    assert {(s["kind"], s["name"], s["namespace"]) for s in binding["subjects"]} == {
        ("ServiceAccount", name, namespace) for name in DISCOVERING}
    accounts = {d["spec"]["template"]["spec"]["serviceAccountName"] for d in of_kind(resources, "Deployment").values()
                if d["metadata"]["name"] in DISCOVERING}
    assert accounts == DISCOVERING


def test_service_addresses_name_services_and_ports_that_exist(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    services = of_kind(resources, "Service")
    config = of_kind(resources, "ConfigMap")["orchestrator"]["data"]
    context_args = of_kind(resources, "Deployment")["context"]["spec"]["template"]["spec"]["containers"][0]["args"]
    addresses = {name: config[f"ANYANOMALY_ORCHESTRATOR_{name.upper()}_ADDRESS"]
                 for name in ("clip", "context", "lvlm")}
    addresses["context -> clip"] = context_args[context_args.index("--clip-address") + 1]
    deployments = of_kind(resources, "Deployment")
    for address in addresses.values():
        target = parse_target(address)
        assert target is not None, address
        # A number (so that DNS can stand in without API access): the pods' gRPC port, behind the Service's.
        container = deployments[target.service]["spec"]["template"]["spec"]["containers"][0]
        grpc_port = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
        service_ports = {p["name"]: p for p in services[target.service]["spec"]["ports"]}
        assert int(target.port) == grpc_port == service_ports["grpc"]["port"], address
        assert service_ports["grpc"]["targetPort"] == "grpc"


def test_every_deployment_has_a_disruption_budget(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    budgets = of_kind(resources, "PodDisruptionBudget")
    for name, deployment in of_kind(resources, "Deployment").items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert budgets[name]["spec"]["selector"]["matchLabels"] == selector


def test_the_lvlm_pod_gets_its_gpu_only_in_production(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, resources = rendered
    pod = of_kind(resources, "Deployment")["lvlm"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    if overlay == "prod-gpu":
        vllm = containers["vllm"]
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert any(m["mountPath"] == "/dev/shm" for m in vllm["volumeMounts"])
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert "--openai-url" in containers["lvlm"]["args"]  # lvlm_service in front of vLLM on localhost
        assert of_kind(resources, "Deployment")["lvlm"]["spec"]["replicas"] == 2
    else:
        assert set(containers) == {"lvlm"} and "nvidia.com/gpu" not in str(pod)
        assert containers["lvlm"]["args"][-2:] == ["--models", "tiny"]


def test_network_policies_allow_only_the_pipelines_calls(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    policies = list(of_kind(resources, "NetworkPolicy").values())
    allowed: dict[str, set[str]] = {}
    for policy in policies:
        target = policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name", "*")
        for rule in policy["spec"].get("ingress", []):
            sources = set()
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:  # Prometheus, on the metrics ports only
                    sources.add("namespace " + peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
                    assert {p["port"] for p in rule["ports"]} == {METRICS_PORT, VLLM_PORT}
                else:
                    sources.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
            allowed.setdefault(target, set()).update(sources or {"anyone"})
    assert any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies)  # deny the rest
    assert allowed == {"orchestrator": {"anyone"}, "clip": {"orchestrator", "context"},
                       "context": {"orchestrator"}, "lvlm": {"orchestrator"}, "*": {"namespace monitoring"}}


def test_monitoring_scrapes_every_service_and_vllm_in_production(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, resources = rendered
    monitors = of_kind(resources, "ServiceMonitor")
    if overlay != "prod-gpu":
        assert not monitors
        return
    (monitor,) = monitors.values()
    (selected,) = monitor["spec"]["selector"]["matchExpressions"]
    assert set(selected["values"]) == set(PORTS)
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics", "vllm"}
    services, deployments = of_kind(resources, "Service"), of_kind(resources, "Deployment")
    for name in PORTS:
        assert services[name]["metadata"]["labels"]["app.kubernetes.io/name"] == name
        service_ports = {p["name"]: p["targetPort"] for p in services[name]["spec"]["ports"]}
        containers = deployments[name]["spec"]["template"]["spec"]["containers"]
        served = {p["name"]: (c, p["containerPort"]) for c in containers for p in c.get("ports", [])}
        container, port = served[service_ports["metrics"]]
        assert port == METRICS_PORT
        settings = {e["name"]: e["value"] for e in container.get("env", [])}
        args = container.get("args", [])
        flag = args[args.index("--metrics-port") + 1] if "--metrics-port" in args else None
        assert str(METRICS_PORT) in (flag, *settings.values()), name  # the service serves it there
    vllm, port = {p["name"]: (c, p["containerPort"]) for c in
                  deployments["lvlm"]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}["vllm"]
    assert port == VLLM_PORT and vllm["args"][vllm["args"].index("--host") + 1] == "0.0.0.0"
    # The engine runs with the preset's flags: the same `vllm serve` arguments, the host added.
    args = list(vllm["args"])
    del args[args.index("--host"):args.index("--host") + 2]
    assert ["vllm", "serve", *args] == PRESETS[DEFAULT_PRESET].serve_args(VLLM_PORT)


def test_production_speaks_mutual_tls_between_services(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, resources = rendered
    deployments, certificates = of_kind(resources, "Deployment"), of_kind(resources, "Certificate")
    if overlay != "prod-gpu":
        assert not certificates
        return
    for name in PORTS:
        pod = deployments[name]["spec"]["template"]["spec"]
        settings, prefix = env(pod["containers"][0]), PREFIX[name]
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        folder = str(Path(settings[f"{prefix}_TLS_CERT"]).parent)
        certificate = certificates[secrets[mounts[folder]]]  # the mounted Secret is a Certificate's
        assert name in certificate["spec"]["dnsNames"]  # callers check the Service's short name
        assert {"server auth", "client auth"} <= set(certificate["spec"]["usages"])
        assert settings[f"{prefix}_TLS_KEY"].startswith(folder)
        # Only the orchestrator's clients go without a certificate; the services require one.
        assert (f"{prefix}_TLS_CLIENT_CA" in settings) is (name != "orchestrator")
        if name in DISCOVERING:  # callers trust the CA and present their certificate
            assert settings[f"{prefix}_TLS_CA"] == settings.get(f"{prefix}_TLS_CLIENT_CA",
                                                                     f"{folder}/ca.crt")
            assert settings[f"{prefix}_TLS_CLIENT_CERT"] == settings[f"{prefix}_TLS_CERT"]
    issuers = {c["spec"]["issuerRef"]["name"] for c in certificates.values()}
    assert issuers <= set(of_kind(resources, "Issuer"))


def test_production_asks_for_tokens_from_a_mounted_secret(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, resources = rendered
    pod = of_kind(resources, "Deployment")["orchestrator"]["spec"]["template"]["spec"]
    settings = env(pod["containers"][0])
    if overlay != "prod-gpu":
        assert "ANYANOMALY_ORCHESTRATOR_AUTH_TOKENS_FILE" not in settings
        return
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    path = Path(settings["ANYANOMALY_ORCHESTRATOR_AUTH_TOKENS_FILE"])
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(path.parent)])
    assert volume["secret"]["secretName"] == "anyanomaly-tokens" and path.name == "tokens"
