"""The Kubernetes manifests (deploy/k8s): every overlay renders with `kubectl kustomize`, every
object validates against the Kubernetes schemas offline, and what the pods receive is checked
against the service itself (settings fields, CLI commands, routes, ports)."""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app, create_worker_app
from service.settings import Settings
from tests.deploy.settings_fields import PER_PROCESS, settings_env_names, shared_env_names
from tests.deploy.test_compose import resolve_cli

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = ("dev", "gpu")
KUBERNETES_VERSION = "1.30.0"
"""The schemas the objects are checked against (pod-index labels need 1.28 or later)."""
CUSTOM_KINDS = {"ServiceMonitor"}
"""Kinds of the Prometheus Operator, whose schemas are not Kubernetes' own."""

Objects = list[dict[str, Any]]


def render(directory: Path) -> Objects:
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def find(objects: Objects, kind: str, name_prefix: str) -> dict[str, Any]:
    (found,) = [
        obj
        for obj in objects
        if obj["kind"] == kind and obj["metadata"]["name"].startswith(name_prefix)
    ]
    return found


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(only)


def psp_containers(objects: Objects) -> dict[str, dict[str, Any]]:
    """The containers that run psp: the API, its migration (an init container) and the writer."""
    api = find(objects, "Deployment", "psp-api")
    (migrate,) = api["spec"]["template"]["spec"]["initContainers"]
    return {
        "api": container(api),
        "migrate": dict(migrate),
        "worker": container(find(objects, "StatefulSet", "psp-worker")),
    }


def psp_argv(spec: dict[str, Any]) -> list[str]:
    """The `psp` command line a container runs: its command, or what its `sh -c` script execs."""
    command = list(spec["command"])
    if command[:2] == ["sh", "-c"]:
        script = command[2]
        assert script.count("exec psp ") == 1, script
        return shlex.split(script[script.index("exec psp ") + len("exec ") :])
    return command


def data_of(obj: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's or Secret's values, decoded."""
    data = obj.get("data", {})
    if obj["kind"] == "Secret":
        return {key: base64.b64decode(value).decode() for key, value in data.items()}
    return dict(data)


FROM_THE_POD = "0"
"""Stands for a value the pod fills in itself (the shard: its ordinal)."""


def pod_environment(objects: Objects, workload: dict[str, Any]) -> dict[str, str]:
    """What a workload's psp container reads: its envFrom ConfigMaps and Secrets, then its env."""
    return container_environment(objects, container(workload))


def container_environment(objects: Objects, spec: dict[str, Any]) -> dict[str, str]:
    """What a container reads: its envFrom ConfigMaps and Secrets, then its own env."""
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            env |= data_of(find(objects, "ConfigMap", source["configMapRef"]["name"]))
        else:
            env |= data_of(find(objects, "Secret", source["secretRef"]["name"]))
    for item in spec.get("env", []):
        env[item["name"]] = item.get("value", FROM_THE_POD)
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a container with this environment builds."""
    with monkeypatch.context() as patch:
        for key in [key for key in os.environ if key.startswith("PSP_")]:
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        return Settings()


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, Objects]:
    return request.param, render(K8S / "overlays" / request.param)


@pytest.fixture(scope="module")
def base() -> Objects:
    return render(K8S / "base")


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Callable[[str], bool]]:
    """Whether the API's and the worker's apps have a GET route for a path (the lifespan, which
    would connect to the stores, is not entered: a route without its runtime answers 5xx)."""
    api = TestClient(create_app(Settings(data_dir=tmp_path_factory.mktemp("k8s"), device="cpu")))
    worker = TestClient(
        create_worker_app(
            Settings(role="worker", redis_url="redis://redis.invalid:6379/0", device="cpu")
        ),
        raise_server_exceptions=False,
    )
    api = TestClient(api.app, raise_server_exceptions=False)

    def routed(client: TestClient) -> Callable[[str], bool]:
        return lambda path: client.get(path).status_code not in (404, 405)

    return {"api": routed(api), "worker": routed(worker)}


@pytest.fixture(scope="module")
def with_servicemonitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Objects]:
    """The base with the optional ServiceMonitor component, as an overlay would add it."""
    directory = tmp_path_factory.mktemp("with-servicemonitor")
    (directory / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "base", directory)],
                "components": [os.path.relpath(K8S / "components" / "servicemonitor", directory)],
            }
        )
    )
    yield render(directory)


def test_every_object_validates_against_the_kubernetes_schemas(
    overlay: tuple[str, Objects], base: Objects
) -> None:
    name, objects = overlay
    assert objects, name
    for obj in [*objects, *base]:
        assert obj["kind"] not in CUSTOM_KINDS
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(
                f"{name}: {obj['kind']} {obj['metadata']['name']}: {error}"
            ) from error


def test_the_psp_workloads_run_real_commands(overlay: tuple[str, Objects]) -> None:
    _, objects = overlay
    commands = {role: resolve_cli(psp_argv(spec)) for role, spec in psp_containers(objects).items()}
    assert commands["api"][0].name == "serve"
    assert commands["api"][1]["host"] == "0.0.0.0"
    assert commands["worker"][0].name == "worker"
    assert commands["migrate"][0].name == "upgrade"
    api_port = commands["api"][1]["port"]
    (port,) = container(find(objects, "Deployment", "psp-api"))["ports"]
    assert port["containerPort"] == api_port


def test_migrations_leave_nothing_that_blocks_a_reapply(overlay: tuple[str, Objects]) -> None:
    """A finished Job's pod template is immutable, and it names the settings ConfigMap by its
    hashed name: the next `kubectl apply` with changed settings would be refused. Migrations
    run in the API pods' init container instead, before each replica starts."""
    name, objects = overlay
    jobs = [obj["metadata"]["name"] for obj in objects if obj["kind"] in ("Job", "CronJob")]
    assert jobs == [], f"{name}: a Job blocks the next apply: {jobs}"
    api = find(objects, "Deployment", "psp-api")
    init_commands = [
        resolve_cli(psp_argv(spec))[0].name
        for spec in api["spec"]["template"]["spec"]["initContainers"]
    ]
    assert init_commands == ["upgrade"], name


def test_every_psp_variable_is_a_settings_field(overlay: tuple[str, Objects]) -> None:
    name, objects = overlay
    valid = settings_env_names()
    used: set[str] = set()
    for obj in objects:
        if obj["kind"] in ("ConfigMap", "Secret") and obj["metadata"]["name"].startswith("psp-"):
            used |= set(data_of(obj))
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            pod = obj["spec"]["template"]["spec"]
            for spec in [*pod["containers"], *pod.get("initContainers", [])]:
                used |= {item["name"] for item in spec.get("env", [])}
    psp_names = {key for key in used if key.startswith("PSP_")}
    assert psp_names, name
    unknown = sorted(psp_names - valid)
    assert not unknown, f"{name}: not fields of service.settings.Settings: {unknown}"


def test_api_workers_and_migrations_share_every_setting(
    overlay: tuple[str, Objects], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ConfigMap and one Secret carry every shared setting; the pods set only their own."""
    name, objects = overlay
    containers = psp_containers(objects)
    sources = [spec["envFrom"] for spec in containers.values()]
    assert all(source == sources[0] for source in sources), f"{name}: envFrom differs"
    shared = container_environment(objects, containers["migrate"])
    missing = sorted(shared_env_names() - set(shared))
    assert not missing, f"{name}: no pod receives {missing}"
    for role, spec in containers.items():
        own = {item["name"] for item in spec.get("env", []) if item["name"].startswith("PSP_")}
        assert own <= PER_PROCESS, f"{role} overrides {own - PER_PROCESS}"
        settings = settings_from(container_environment(objects, spec), monkeypatch)
        assert str(settings.data_dir) == "/data"
        assert settings.redis_url and settings.database_url
    api = settings_from(container_environment(objects, containers["api"]), monkeypatch)
    worker = settings_from(container_environment(objects, containers["worker"]), monkeypatch)
    assert (api.role, worker.role) == ("api", "worker")
    assert api.model == worker.model and api.training == worker.training
    assert api.replay == worker.replay


def test_the_base_settings_are_the_service_defaults(
    base: Objects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap lists the defaults of service.settings (an overlay changes them), but for
    the data directory and keys being required from the start."""
    values = data_of(find(base, "ConfigMap", "psp-settings"))
    assert values.pop("PSP_DATA_DIR") == "/data"
    assert values.pop("PSP_AUTH__REQUIRED") == "true"
    assert (
        settings_from(values, monkeypatch).model_dump()
        == settings_from({}, monkeypatch).model_dump()
    )


def test_workers_are_a_statefulset_whose_ordinal_is_the_shard(
    overlay: tuple[str, Objects],
    answers: dict[str, Callable[[str], bool]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, objects = overlay
    workers = find(objects, "StatefulSet", "psp-worker")
    spec = container(workers)
    (shard,) = [item for item in spec["env"] if item["name"] == "PSP_QUEUE__SHARD"]
    assert shard["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    settings = settings_from(pod_environment(objects, workers), monkeypatch)
    (port,) = spec["ports"]
    assert port["containerPort"] == settings.metrics_port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert spec[probe]["httpGet"]["port"] == port["name"], probe
        assert answers["worker"](spec[probe]["httpGet"]["path"]), probe
    assert {
        spec["readinessProbe"]["httpGet"]["path"],
        spec["livenessProbe"]["httpGet"]["path"],
    } == {
        "/readyz",
        "/healthz",
    }
    (claim,) = workers["spec"]["volumeClaimTemplates"]
    mounts = {mount["name"]: mount["mountPath"] for mount in spec["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == str(settings.data_dir)
    service = find(objects, "Service", "psp-worker")
    # Each writer announces its checkpoints at its own stable name behind the headless Service.
    env = {item["name"]: item for item in spec["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert list(env).index("POD_NAME") < list(env).index("PSP_CHECKPOINT__ADVERTISE_URL")
    assert env["PSP_CHECKPOINT__ADVERTISE_URL"]["value"] == (
        f"http://$(POD_NAME).{service['metadata']['name']}:{port['containerPort']}"
    )
    assert settings.checkpoint.fetch_token is not None
    assert service["spec"]["clusterIP"] == "None"
    # Checkpoint URLs resolve while a writer catches up after a restart (not ready yet).
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert workers["spec"]["serviceName"] == service["metadata"]["name"]
    assert selects(service["spec"]["selector"], workers)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]


def selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


def test_the_api_is_a_deployment_with_service_autoscaler_and_probes(
    overlay: tuple[str, Objects], answers: dict[str, Callable[[str], bool]]
) -> None:
    _, objects = overlay
    api = find(objects, "Deployment", "psp-api")
    spec = container(api)
    service = find(objects, "Service", "psp-api")
    assert selects(service["spec"]["selector"], api)
    (port,) = spec["ports"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert answers["api"](spec[probe]["httpGet"]["path"]), probe
    autoscaler = find(objects, "HorizontalPodAutoscaler", "psp-api")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", api["metadata"]["name"])
    assert 1 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
    assert spec["resources"]["requests"]["cpu"], "utilisation needs a CPU request"


def test_disruption_budgets_cover_the_api_and_the_workers(overlay: tuple[str, Objects]) -> None:
    _, objects = overlay
    budgets = [obj for obj in objects if obj["kind"] == "PodDisruptionBudget"]
    covered = {
        workload["metadata"]["name"]
        for budget in budgets
        for workload in objects
        if workload["kind"] in ("Deployment", "StatefulSet")
        and workload["metadata"]["name"].startswith("psp-")
        and selects(budget["spec"]["selector"]["matchLabels"], workload)
    }
    assert covered == {"psp-api", "psp-worker"}
    api_budget = find(objects, "PodDisruptionBudget", "psp-api")
    assert api_budget["spec"]["minAvailable"] >= 1


def test_dev_runs_postgresql_and_redis_inside_the_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = render(K8S / "overlays" / "dev")
    worker = find(objects, "StatefulSet", "psp-worker")
    settings = settings_from(pod_environment(objects, worker), monkeypatch)
    services = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Service"}
    for url, kind, image in (
        (settings.database_url, "postgres", "postgres:"),
        (settings.redis_url, "redis", "redis:"),
    ):
        assert url is not None
        host_port = url.split("@")[-1].split("//")[-1].split("/")[0]
        host, port = host_port.split(":")
        service = services[host]
        assert int(port) in [p["port"] for p in service["spec"]["ports"]]
        database = find(objects, "StatefulSet", kind)
        assert database["spec"]["replicas"] == 1
        assert container(database)["image"].startswith(image)
        assert selects(service["spec"]["selector"], database)
    postgres = data_of(find(objects, "Secret", "postgres"))
    assert settings.database_url == (
        f"postgresql+psycopg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    assert {obj["metadata"].get("namespace") for obj in objects if obj["kind"] != "Namespace"} == {
        "psp-dev"
    }


def test_gpu_puts_every_writer_on_an_nvidia_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(K8S / "overlays" / "gpu")
    worker = find(objects, "StatefulSet", "psp-worker")
    spec = container(worker)
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["image"] == "psp-service:cuda"
    assert settings_from(pod_environment(objects, worker), monkeypatch).device == "cuda"
    api = container(find(objects, "Deployment", "psp-api"))
    assert "nvidia.com/gpu" not in api["resources"].get("limits", {})
    assert (
        settings_from(
            pod_environment(objects, find(objects, "Deployment", "psp-api")), monkeypatch
        ).device
        == "cpu"
    )


def test_the_optional_servicemonitors_scrape_both_services(with_servicemonitor: Objects) -> None:
    objects = with_servicemonitor
    for component in ("api", "worker"):
        monitor = find(objects, "ServiceMonitor", f"psp-{component}")
        service = find(objects, "Service", f"psp-{component}")
        labels = service["metadata"]["labels"]
        assert all(
            labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items()
        )
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
        assert endpoint["path"] == "/metrics"
    assert not any(obj["kind"] == "ServiceMonitor" for obj in render(K8S / "base"))
