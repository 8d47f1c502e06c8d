"""deploy/kubernetes, checked without a cluster.

Each kustomization is rendered by `kubectl kustomize` and every object it yields is validated, with
unknown fields as errors, against the Kubernetes API schemas that kubernetes-validate ships (no
network), for the oldest and the newest Kubernetes the manifests are meant for. Then what the
schemas cannot know: probes on the services' own ports and paths, requests set, one way in, the
read-only collection, the fetcher's single ownership, and agreement with compose.yaml and the
settings classes.
"""

from __future__ import annotations

import argparse
import copy
import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from collection.__main__ import parser as collection_parser
from stack.processes import READINESS_PATH, SERVICES
from stack.proxy import TEMPLATE as PROXY_TEMPLATE
from stack.proxy import variables
from tests.test_compose import compose_env, compose_service, load_compose, settings_class

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ["data", "base", "overlays/gpu"]
# The oldest Kubernetes the manifests use features of (the preStop `sleep` action is on by default
# from 1.30) that is still the kubectl here, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.32.0", "1.37.0"]
LIVENESS_PATH = "/healthz"
NAMESPACE = "bioclip-image-search"
# Variables a service reads that are not its own settings (the hub client's, OpenMP's).
FOREIGN_VARIABLES = {"HF_HOME", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_TOKEN", "OMP_NUM_THREADS"}


def kustomize_version() -> tuple[int, ...] | None:
    """kubectl's built-in kustomize version, or None without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    done = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=60, check=False)
    found = re.search(r"Kustomize Version: v(\d+)\.(\d+)", done.stdout)
    return tuple(int(part) for part in found.groups()) if found else (0,)


needs_kubectl = pytest.mark.skipif(
    (kustomize_version() or (0,)) < (5, 0),
    reason="needs kubectl with kustomize v5 (kubectl >= 1.27): scripts/install.sh installs Debian's "
    "kubernetes-client where kubectl is missing; older releases of it embed kustomize v2, which cannot "
    "read these kustomizations",
)
pytestmark = needs_kubectl


def kustomize(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False
    )


@functools.cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    done = kustomize(KUBERNETES / name)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(name: str, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in rendered(name) if doc["kind"] == kind}


def deployment(name: str, overlay: str = "base") -> dict[str, Any]:
    return objects(overlay, "Deployment")[name]


def container(name: str, overlay: str = "base") -> dict[str, Any]:
    (only,) = deployment(name, overlay)["spec"]["template"]["spec"]["containers"]
    return only


def config_map(overlay: str, prefix: str) -> dict[str, str]:
    """The generated ConfigMap `prefix-<hash>`."""
    maps = objects(overlay, "ConfigMap")
    (found,) = [doc for name, doc in maps.items() if re.fullmatch(rf"{prefix}-[a-z0-9]+", name)]
    return found["data"]


def env_of(name: str, overlay: str = "base") -> dict[str, str]:
    """The environment a service's container gets from its ConfigMap (values only, no references)."""
    (source,) = container(name, overlay)["envFrom"]
    return objects(overlay, "ConfigMap")[source["configMapRef"]["name"]]["data"]


def port_named(spec: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in spec["ports"] if p["name"] == name]
    return int(port)


def volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in pod["volumes"]}


def mounts(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {mount["mountPath"]: mount for mount in spec["volumeMounts"]}


# --- rendering and the API schemas ---------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders_into_one_namespace(name: str) -> None:
    docs = rendered(name)
    assert docs
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == NAMESPACE


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_passes_the_kubernetes_schema_strictly(name: str, version: str) -> None:
    for doc in rendered(name):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    ("where", "damage", "expected"),
    [
        ("container", lambda c: c.update(readinesProbe=c.pop("readinessProbe")), "readinesProbe"),
        ("container", lambda c: c["resources"]["requests"].update(memory=["5Gi"]), "memory"),
        ("spec", lambda s: s.update(replicas="two"), "replicas"),
        ("spec", lambda s: s.pop("selector"), "selector"),
    ],
    ids=["misspelled field", "wrong type deep down", "wrong type", "required field missing"],
)
def test_schema_check_rejects_a_broken_deployment(where: str, damage: Any, expected: str) -> None:
    broken = copy.deepcopy(deployment("search"))
    damage(broken["spec"]["template"]["spec"]["containers"][0] if where == "container" else broken["spec"])
    with pytest.raises(kubernetes_validate.ValidationError, match=expected):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_rendering_fails_on_a_broken_kustomization(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    done = kustomize(tmp_path)
    assert done.returncode != 0
    assert "missing.yaml" in done.stderr


# --- each service --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SERVICES))
def test_service_runs_the_image_compose_builds_on_the_local_runners_port(name: str) -> None:
    spec = container(name)
    assert spec["image"] == f"{load_compose()['name']}-{name}"
    assert spec["imagePullPolicy"] == "IfNotPresent"
    port = SERVICES[name][1]
    assert port_named(spec, "http") == port
    env = env_of(name)
    assert env[f"{name.upper()}_HOST"] == "0.0.0.0"
    assert env[f"{name.upper()}_PORT"] == str(port)
    (service,) = [s for n, s in objects("base", "Service").items() if n == name]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]
    assert service["spec"]["selector"] == deployment(name)["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", list(SERVICES))
def test_readiness_and_liveness_probe_the_services_own_paths(name: str) -> None:
    spec = container(name)
    assert spec["readinessProbe"]["httpGet"] == {"path": READINESS_PATH, "port": "http"}
    assert spec["livenessProbe"]["httpGet"] == {"path": LIVENESS_PATH, "port": "http"}
    for probe in ("readinessProbe", "livenessProbe"):
        assert spec[probe]["timeoutSeconds"] < spec[probe]["periodSeconds"]


@pytest.mark.parametrize("name", list(SERVICES))
def test_every_setting_in_a_services_config_map_exists(name: str) -> None:
    prefix = f"{name.upper()}_"
    fields = {f"{prefix}{field.upper()}" for field in settings_class(name).model_fields}
    env = env_of(name)
    unknown = sorted(key for key in env if key not in fields and key not in FOREIGN_VARIABLES)
    assert not unknown, f"{name} reads no such settings: {unknown}"
    # Each service's settings are its own: no other prefix in its ConfigMap.
    assert all(key.startswith(prefix) or key in FOREIGN_VARIABLES for key in env)


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu"])
def test_every_container_requests_cpu_and_memory_and_is_capped_in_memory(overlay: str) -> None:
    pods = [d["spec"]["template"]["spec"] for d in objects(overlay, "Deployment").values()]
    pods += [j["spec"]["template"]["spec"] for j in objects("data", "Job").values()]
    for pod in pods:
        for spec in pod["containers"]:
            resources = spec["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), spec["name"]
            assert "memory" in resources["limits"], spec["name"]


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * units.get(unit, 1)


def test_embedder_memory_covers_the_measured_footprint() -> None:
    # ViT-L/14 fp32 after a batch of 8: 2.74 GB RSS (docs/benchmarks/footprint.md); the labels ~1.3 GB.
    requests = container("embedder")["resources"]["requests"]
    assert _bytes(requests["memory"]) >= (2.74 + 1.3) * 1e9
    assert _bytes(container("search")["resources"]["requests"]["memory"]) >= 0.6e9 + 4.8e9


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_run_unprivileged_with_a_read_only_root(kind: str) -> None:
    found = objects("base", "Deployment") if kind == "Deployment" else objects("data", "Job")
    assert found
    for name, workload in found.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for spec in pod["containers"]:
            context = spec["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert "/tmp" in mounts(spec), f"{name}: Python's temporary files need a writable /tmp"


def test_namespace_enforces_the_restricted_pod_security_standard() -> None:
    (namespace,) = objects("data", "Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- one way in ----------------------------------------------------------------------------------


def test_the_proxy_is_the_only_service_reachable_from_outside() -> None:
    services = objects("base", "Service")
    exposed = {name for name, s in services.items() if s["spec"].get("type", "ClusterIP") != "ClusterIP"}
    assert exposed == {"proxy"}
    proxy = services["proxy"]["spec"]
    assert proxy["type"] == "LoadBalancer"
    # The client's own address reaches nginx (no SNAT), which its per-client limits key on.
    assert proxy["externalTrafficPolicy"] == "Local"
    assert proxy["selector"] == deployment("proxy")["spec"]["selector"]["matchLabels"]
    assert not objects("base", "Ingress")
    assert not any(p.get("hostPort") for d in objects("base", "Deployment").values()
                   for c in d["spec"]["template"]["spec"]["containers"] for p in c["ports"])  # fmt: skip


def _admitted_from(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [peer for rule in policy["spec"].get("ingress", []) for peer in rule.get("from", [{}])]


def test_network_policies_admit_the_public_to_the_proxy_only_and_the_proxy_to_the_gateway_only() -> None:
    policies = objects("base", "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    component = "app.kubernetes.io/component"
    by_target: dict[str, list[dict[str, Any]]] = {}
    for policy in policies.values():
        selector = policy["spec"]["podSelector"]
        targets = [selector["matchLabels"][component]] if "matchLabels" in selector else []
        for expression in selector.get("matchExpressions", []):
            targets += expression["values"]
        for target in targets:
            by_target.setdefault(target, []).extend(_admitted_from(policy))
    assert by_target["proxy"] == [{}], "anyone may reach the proxy"
    assert by_target["gateway"] == [{"podSelector": {"matchLabels": {component: "proxy"}}}]
    for name in ("embedder", "search", "fetcher"):
        assert by_target[name] == [{"podSelector": {"matchLabels": {component: "gateway"}}}]


def test_proxy_serves_the_template_compose_and_the_tests_use() -> None:
    (template,) = [d for n, d in objects("base", "ConfigMap").items() if n.startswith("proxy-template-")]
    assert template["data"] == {PROXY_TEMPLATE.name: PROXY_TEMPLATE.read_text()}
    pod = deployment("proxy")["spec"]["template"]["spec"]
    assert volumes(pod)["template"]["configMap"]["name"] == template["metadata"]["name"]
    spec = container("proxy")
    assert mounts(spec)["/etc/nginx/templates"]["readOnly"] is True
    # The image's entrypoint writes the filled-in file there, and nginx its pid and body buffers.
    for path in ("/etc/nginx/conf.d", "/var/cache/nginx", "/run"):
        assert "emptyDir" in volumes(pod)[mounts(spec)[path]["name"]]
    assert spec["image"] == compose_service("proxy")["image"]
    assert port_named(spec, "http") == int(config_map("base", "proxy-env")["PROXY_LISTEN"])


def test_proxy_fills_in_every_template_variable_with_composes_values_but_the_upstream() -> None:
    env = config_map("base", "proxy-env")
    given = {key for key in env if key.startswith("PROXY_")}
    assert given == variables(PROXY_TEMPLATE.read_text())
    compose = compose_env("proxy")
    differs = {key for key in given if env[key] != compose[key]}
    assert differs == {"PROXY_UPSTREAM", "PROXY_RESOLVER"}
    assert env["PROXY_UPSTREAM"] == f"gateway:{SERVICES['gateway'][1]}"
    assert env["NGINX_ENVSUBST_FILTER"] == compose["NGINX_ENVSUBST_FILTER"]
    assert int(env["PROXY_MAX_BODY_BYTES"]) == settings_class("gateway").model_fields["max_upload_bytes"].default


def test_gateway_reaches_each_service_by_its_service_name_and_trusts_the_pod_network() -> None:
    env = env_of("gateway")
    for name in ("embedder", "search", "fetcher"):
        assert env[f"GATEWAY_{name.upper()}_URL"] == f"http://{name}:{SERVICES[name][1]}"
    assert env["GATEWAY_TRUSTED_PROXIES"]


@pytest.mark.parametrize("name", ["embedder", "search"])
def test_replicated_services_are_headless_so_the_gateway_sees_every_pod(name: str) -> None:
    service = objects("base", "Service")[name]
    assert service["spec"]["clusterIP"] == "None"
    assert not service["spec"].get("publishNotReadyAddresses"), "only ready pods may receive calls"
    assert float(env_of("gateway").get("GATEWAY_RESOLVE_INTERVAL", "5")) > 0


# --- state: the collection and the fetcher -------------------------------------------------------


def download_command() -> argparse.Namespace:
    """The download Job's command, parsed by the real `python -m collection` parser."""
    (job,) = objects("data", "Job").values()
    (spec,) = job["spec"]["template"]["spec"]["containers"]
    command = spec["command"]
    assert command[:3] == ["python", "-m", "collection"]
    args = collection_parser().parse_args(command[3:])
    assert args.command == "download"
    return args


def test_download_job_writes_the_volume_the_read_only_collection_is_cloned_from() -> None:
    args = download_command()
    (job,) = objects("data", "Job").values()
    pod = job["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    assert spec["image"] == f"{load_compose()['name']}-data"
    mount = mounts(spec)[str(args.data_dir)]
    assert not mount.get("readOnly", False)
    claim = volumes(pod)[mount["name"]]["persistentVolumeClaim"]["claimName"]
    written = objects("data", "PersistentVolumeClaim")[claim]
    assert written["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Everything the services read lies on that one volume.
    for path in (args.model_cache, args.search_cache):
        assert Path(path).is_relative_to(args.data_dir)
    collection = objects("base", "PersistentVolumeClaim")["collection"]["spec"]
    assert collection["accessModes"] == ["ReadOnlyMany"]
    assert collection["dataSource"] == {"kind": "PersistentVolumeClaim", "name": claim}
    assert _bytes(collection["resources"]["requests"]["storage"]) >= _bytes(
        written["spec"]["resources"]["requests"]["storage"]
    ), "a clone is at least its source's size"
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1


def test_download_job_takes_the_hub_token_from_an_optional_secret() -> None:
    (job,) = objects("data", "Job").values()
    (spec,) = job["spec"]["template"]["spec"]["containers"]
    (token,) = [e for e in spec["env"] if e["name"] == "HF_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["optional"] is True


@pytest.mark.parametrize("name", ["search", "embedder"])
def test_search_and_embedder_mount_the_collection_read_only(name: str) -> None:
    pod = deployment(name)["spec"]["template"]["spec"]
    spec = container(name)
    data_dir = env_of(name)["SEARCH_DATA_DIR" if name == "search" else "EMBEDDER_TREE_OF_LIFE_DIR"]
    mount = mounts(spec)[data_dir]
    assert mount["readOnly"] is True
    volume = volumes(pod)[mount["name"]]["persistentVolumeClaim"]
    assert volume == {"claimName": "collection", "readOnly": True}


def test_services_read_what_the_download_writes_where_it_writes_it() -> None:
    args = download_command()
    search, embedder = env_of("search"), env_of("embedder")
    assert search["SEARCH_DATA_DIR"] == str(args.data_dir)
    assert search["SEARCH_CACHE_DIR"] == str(args.search_cache)
    assert search["SEARCH_MMAP"] == "true"
    assert embedder["EMBEDDER_CACHE_DIR"] == str(args.model_cache)
    assert embedder["EMBEDDER_TREE_OF_LIFE_DIR"] == str(args.data_dir)
    assert embedder["HF_HUB_OFFLINE"] == "1", "the model is on the volume: the embedder never asks the hub"
    assert embedder["EMBEDDER_MODEL"] == settings_class("embedder").model_fields["model"].default
    # The coarse graph the download made is the one search looks for.
    assert config_map("data", "download-env")["SEARCH_COARSE_QUANTIZER"] == search["SEARCH_COARSE_QUANTIZER"]


def test_fetcher_is_one_replica_replaced_not_rolled_on_its_own_volume() -> None:
    fetcher = deployment("fetcher")
    assert fetcher["spec"]["replicas"] == 1
    assert fetcher["spec"]["strategy"] == {"type": "Recreate"}
    assert "fetcher" not in objects("base", "HorizontalPodAutoscaler")
    pod = fetcher["spec"]["template"]["spec"]
    mount = mounts(container("fetcher"))[env_of("fetcher")["FETCHER_CACHE_DIR"]]
    claim = volumes(pod)[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert objects("base", "PersistentVolumeClaim")[claim]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "FETCHER_BUDGET_STORE" not in env_of("fetcher"), "the budgets stay in the cache volume"
    assert "fetcher" not in objects("base", "PodDisruptionBudget"), "a budget on one replica blocks drains"


# --- scaling -------------------------------------------------------------------------------------


def test_autoscaler_scales_the_embedder_deployment_on_cpu() -> None:
    (hpa,) = objects("base", "HorizontalPodAutoscaler").values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "embedder")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in deployment("embedder")["spec"], "an apply would undo the autoscaler"
    # torch's threads follow the CPUs the pod is given.
    (threads,) = [e for e in container("embedder")["env"] if e["name"] == "EMBEDDER_TORCH_THREADS"]
    assert threads["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"


@pytest.mark.parametrize("name", ["search", "gateway", "proxy"])
def test_stateless_services_run_several_replicas_with_a_disruption_budget(name: str) -> None:
    assert deployment(name)["spec"]["replicas"] >= 2
    budget = objects("base", "PodDisruptionBudget")[name]["spec"]
    assert budget["selector"] == deployment(name)["spec"]["selector"]


# --- the GPU overlay -----------------------------------------------------------------------------


def test_gpu_overlay_gives_the_embedder_a_gpu_cuda_and_the_gpu_image() -> None:
    spec = container("embedder", "overlays/gpu")
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["resources"]["requests"]["nvidia.com/gpu"] == "1"
    env = env_of("embedder", "overlays/gpu")
    assert env["EMBEDDER_DEVICE"] == "cuda"
    assert "cuda" in settings_class("embedder").model_fields["device"].description
    assert spec["image"] == container("embedder")["image"] + "-gpu"
    pod = deployment("embedder", "overlays/gpu")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"]
    # Everything else is base's.
    assert env_of("embedder") == {**env, "EMBEDDER_DEVICE": "cpu"}
    for name in ("search", "fetcher", "gateway", "proxy"):
        assert deployment(name, "overlays/gpu") == deployment(name)
    assert "nvidia.com/gpu" not in str(rendered("base"))
