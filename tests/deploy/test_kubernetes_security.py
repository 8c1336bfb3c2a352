"""The Kubernetes manifests are closed and operable: every pod meets Pod Security "restricted",
NetworkPolicies admit only what each role needs, and the operational details hold (shard count,
grace periods, readiness, threads, a worker without its pod index)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.pod_security import pod_template_spec, restricted_violations
from tests.deploy.test_compose import resolve_cli
from tests.deploy.test_kubernetes import (
    K8S,
    OVERLAYS,
    Objects,
    container_environment,
    find,
    psp_argv,
    psp_containers,
    render,
    settings_from,
)

WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
DNS_PORT = 53


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, Objects]:
    return request.param, render(K8S / "overlays" / request.param)


def workloads(objects: Objects) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] in WORKLOAD_KINDS]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def policies_for(objects: Objects, workload: dict[str, Any]) -> list[dict[str, Any]]:
    labels = pod_labels(workload)
    return [
        obj
        for obj in objects
        if obj["kind"] == "NetworkPolicy" and selected(obj["spec"]["podSelector"], labels)
    ]


def ports_of(rules: list[dict[str, Any]]) -> set[int]:
    return {port["port"] for rule in rules for port in rule.get("ports", [])}


# ------------------------------------------------------------------------------------------------
# Pod Security "restricted"
# ------------------------------------------------------------------------------------------------


def test_every_pod_meets_the_restricted_profile(overlay: tuple[str, Objects]) -> None:
    name, objects = overlay
    checked = workloads(objects)
    assert {obj["metadata"]["name"] for obj in checked} >= {"psp-api", "psp-worker"}
    for workload in checked:
        problems = restricted_violations(pod_template_spec(workload))
        assert not problems, (
            f"{name}: {workload['kind']} {workload['metadata']['name']}: {problems}"
        )


def test_the_policy_check_refuses_what_restricted_forbids() -> None:
    """The checker itself: a plain pod, a privileged one and one with a host path all fail."""
    plain = {"containers": [{"name": "app", "image": "x"}]}
    problems = restricted_violations(plain)
    assert any("allowPrivilegeEscalation" in problem for problem in problems)
    assert any("runAsNonRoot" in problem for problem in problems)
    assert any("seccomp" in problem for problem in problems)
    assert any("drop ALL" in problem for problem in problems)
    compliant = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "app",
                "image": "x",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }
    assert restricted_violations(compliant) == []
    escalated = {**compliant, "hostNetwork": True, "volumes": [{"name": "h", "hostPath": {}}]}
    assert restricted_violations(escalated) == [
        "hostNetwork is on",
        "volume h is of type ['hostPath']",
    ]
    root = {**compliant, "securityContext": {**compliant["securityContext"], "runAsUser": 0}}
    assert restricted_violations(root) == ["the pod runs as uid 0"]


def test_the_dev_namespace_enforces_restricted() -> None:
    objects = render(K8S / "overlays" / "dev")
    namespace = find(objects, "Namespace", "psp-dev")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_psp_containers_run_on_a_read_only_root_with_a_scratch_tmp(
    overlay: tuple[str, Objects],
) -> None:
    _, objects = overlay
    for workload in (
        find(objects, "Deployment", "psp-api"),
        find(objects, "StatefulSet", "psp-worker"),
    ):
        pod = pod_template_spec(workload)
        scratch = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for spec in [*pod.get("initContainers", []), *pod["containers"]]:
            assert spec["securityContext"]["readOnlyRootFilesystem"] is True, spec["name"]
            tmp = [m for m in spec["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert [m["name"] for m in tmp] and tmp[0]["name"] in scratch, spec["name"]


# ------------------------------------------------------------------------------------------------
# NetworkPolicies
# ------------------------------------------------------------------------------------------------


def needed_egress_ports(objects: Objects, spec: dict[str, Any], monkeypatch: Any) -> set[int]:
    """DNS plus the ports of the registry and the queue a container's settings name."""
    settings = settings_from(container_environment(objects, spec), monkeypatch)
    assert settings.database_url and settings.redis_url
    database = urlparse(settings.database_url.replace("postgresql+psycopg", "postgresql"))
    return {DNS_PORT, database.port or 5432, urlparse(settings.redis_url).port or 6379}


def test_each_psp_role_is_admitted_and_reaches_only_what_it_needs(
    overlay: tuple[str, Objects], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, objects = overlay
    containers = psp_containers(objects)
    api_port = resolve_cli(psp_argv(containers["api"]))[1]["port"]
    worker = settings_from(container_environment(objects, containers["worker"]), monkeypatch)
    api_workload = find(objects, "Deployment", "psp-api")
    worker_workload = find(objects, "StatefulSet", "psp-worker")

    (api_policy,) = policies_for(objects, api_workload)
    assert set(api_policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, name
    assert ports_of(api_policy["spec"]["ingress"]) == {api_port}
    needed = needed_egress_ports(objects, containers["migrate"], monkeypatch)
    assert ports_of(api_policy["spec"]["egress"]) == needed | {worker.metrics_port}
    (to_workers,) = [
        rule for rule in api_policy["spec"]["egress"] if worker.metrics_port in ports_of([rule])
    ]
    (peer,) = to_workers["to"]
    assert selected(peer["podSelector"], pod_labels(worker_workload)), "only the writers"

    (worker_policy,) = policies_for(objects, worker_workload)
    assert set(worker_policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = worker_policy["spec"]["ingress"]
    assert ports_of([ingress]) == {worker.metrics_port}
    peers = ingress["from"]
    assert any(selected(p.get("podSelector", {}), pod_labels(api_workload)) for p in peers)
    assert all("podSelector" in peer for peer in peers), "never from every pod of a namespace"
    needed = needed_egress_ports(objects, containers["worker"], monkeypatch)
    assert ports_of(worker_policy["spec"]["egress"]) == needed


def test_the_dev_databases_admit_only_psp_pods() -> None:
    objects = render(K8S / "overlays" / "dev")
    for name, port in (("postgres", 5432), ("redis", 6379)):
        (policy,) = policies_for(objects, find(objects, "StatefulSet", name))
        (ingress,) = policy["spec"]["ingress"]
        assert ports_of([ingress]) == {port}
        (peer,) = ingress["from"]
        assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "psp"}
        assert policy["spec"]["egress"] == [], f"{name} reaches nothing"
    every_workload = workloads(objects)
    assert all(policies_for(objects, workload) for workload in every_workload)


# ------------------------------------------------------------------------------------------------
# Operations
# ------------------------------------------------------------------------------------------------


def shard_count(objects: Objects) -> int:
    return int(find(objects, "ConfigMap", "psp-settings")["data"]["PSP_SHARDS__COUNT"])


def test_the_writers_are_as_many_as_the_shards(
    overlay: tuple[str, Objects], tmp_path: Path
) -> None:
    _, objects = overlay
    assert find(objects, "StatefulSet", "psp-worker")["spec"]["replicas"] == shard_count(objects)
    # An overlay that raises the shard count gets as many writers.
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "overlays" / overlay[0], tmp_path)],
                "components": [os.path.relpath(K8S / "components" / "shard-count", tmp_path)],
                "configMapGenerator": [
                    {
                        "name": "psp-settings",
                        "behavior": "merge",
                        "literals": ["PSP_SHARDS__COUNT=3"],
                    }
                ],
            }
        )
    )
    raised = render(tmp_path)
    assert shard_count(raised) == 3
    assert find(raised, "StatefulSet", "psp-worker")["spec"]["replicas"] == 3


def test_a_worker_without_its_pod_index_stops_with_one_line(
    overlay: tuple[str, Objects], tmp_path: Path
) -> None:
    _, objects = overlay
    command = psp_containers(objects)["worker"]["command"]
    fake_psp = tmp_path / "psp"
    fake_psp.write_text('#!/bin/sh\necho "psp $* (shard $PSP_QUEUE__SHARD)"\n')
    fake_psp.chmod(0o755)
    path = f"{tmp_path}:{os.environ['PATH']}"
    for missing in ("", "$(POD_INDEX)"):
        result = subprocess.run(
            command,
            env={"PATH": path, "PSP_QUEUE__SHARD": missing},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and "pod-index" in result.stderr, result.stderr
    result = subprocess.run(
        command,
        env={"PATH": path, "PSP_QUEUE__SHARD": "2"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == "psp worker (shard 2)\n"


def test_the_api_outlives_a_wait_and_a_blip(
    overlay: tuple[str, Objects], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, objects = overlay
    api = find(objects, "Deployment", "psp-api")
    spec = psp_containers(objects)["api"]
    settings = settings_from(container_environment(objects, spec), monkeypatch)
    grace = pod_template_spec(api)["terminationGracePeriodSeconds"]
    assert grace > settings.limits.wait_seconds, "a wait=true call is answered before the kill"
    readiness = spec["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] >= 30, (
        "a blip of PostgreSQL or Redis does not take the replica out of the Service"
    )


def test_every_psp_role_sets_its_compute_threads(overlay: tuple[str, Objects]) -> None:
    _, objects = overlay
    for role in ("api", "worker"):
        spec = psp_containers(objects)[role]
        env = {item["name"]: item.get("value") for item in spec["env"]}
        threads = int(env["OMP_NUM_THREADS"])
        assert env["PSP_TORCH_THREADS"] == env["OMP_NUM_THREADS"], role
        cpu = spec["resources"]["requests"]["cpu"]
        cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
        assert 1 <= threads <= max(1, cores), role
