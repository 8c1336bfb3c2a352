"""Prometheus with the project's files: promtool checks the configuration, the alert rules and
their tests and the service's /metrics, and a real Prometheus scrapes a running API and worker
with the project's scrape configuration."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.testing.processes import free_port, psp_serve, psp_worker, running, wait_until

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"

assert shutil.which("promtool") and shutil.which("prometheus"), (
    "Prometheus is not installed: `apt-get install -y prometheus` (.ci/run does it)"
)


def prometheus_files(kind: str) -> list[Path]:
    """Every YAML file under deploy/ that is a Prometheus `config`, `rules` or rule `tests`."""
    found = []
    for path in sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]):
        documents = list(yaml.safe_load_all(path.read_text()))
        if len(documents) != 1 or not isinstance(documents[0], dict):
            continue  # Kubernetes manifests and other multi-document files
        loaded = documents[0]
        if {
            "config": "scrape_configs" in loaded,
            "rules": "groups" in loaded and "apiVersion" not in loaded,
            "tests": "tests" in loaded and "rule_files" in loaded,
        }[kind]:
            found.append(path)
    return found


def promtool(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def test_promtool_checks_every_prometheus_configuration() -> None:
    configs = prometheus_files("config")
    assert configs == [PROMETHEUS_CONFIG]
    for path in configs:
        assert "SUCCESS" in promtool("check", "config", str(path))


def test_alert_rules_pass_promtool_and_their_tests() -> None:
    (rules,) = prometheus_files("rules")
    output = promtool("check", "rules", str(rules))
    assert "SUCCESS: 13 rules found" in output
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(rules.read_text())["groups"]
        for rule in group["rules"]
    }
    assert alerts == {
        "PspTrainingLag",
        "PspTrainQueueBacklog",
        "PspRefusedSteps",
        "PspTrainingDiverged",
        "PspDeadLetters",
        "PspBackgroundTaskDown",
        "PspProcessDown",
        "PspReplicaBehindWorker",
        "PspCheckpointFetchFailing",
        "PspServerErrors",
        "PspBackPressure",
        "PspShardNearCapacity",
        "PspManyContextsDrifted",
    }
    (tests,) = prometheus_files("tests")
    tested = {
        case["alertname"]
        for test in yaml.safe_load(tests.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested == alerts, "every alert has a test case"
    assert "SUCCESS" in promtool("test", "rules", str(tests))
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert [PROMETHEUS_CONFIG.parent / name for name in config["rule_files"]] == [rules]


def test_promtool_accepts_the_metrics_exposition(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, device="cpu", model={"hidden": [8]})
    with TestClient(create_app(settings)) as client:
        assert client.post("/contexts", json={"key": "a"}).status_code == 201
        assert client.post("/predict/a", json={"inputs": [[0.1] * 64]}).status_code == 200
        text = client.get("/metrics").text
    assert "psp_model_version" in text
    promtool("check", "metrics", stdin=text)


@pytest.fixture
def running_stack(
    tmp_path: Path, postgres_database_url: str, redis_url: str, key_prefix: str
) -> Iterator[dict[str, int]]:
    """`psp worker` and `psp serve` (PSP_ROLE=api) on PostgreSQL and Redis; their ports."""
    env = {
        "PSP_DATA_DIR": str(tmp_path / "data"),
        "PSP_DATABASE_URL": postgres_database_url,
        "PSP_REDIS_URL": redis_url,
        "PSP_KEY_PREFIX": key_prefix,
        "PSP_DEVICE": "cpu",
        "PSP_MODEL__HIDDEN": "[16]",
        "PSP_CHECKPOINT__EVERY_SECONDS": "0.5",
    }
    worker = psp_worker("worker", env, tmp_path)
    api = psp_serve("api", {**env, "PSP_ROLE": "api"}, tmp_path)
    with running(worker, api):
        yield {"psp-worker": worker.port, "psp-api": api.port}


def scrape_config_for(ports: dict[str, int], rules_dir: Path) -> dict[str, Any]:
    """The project's configuration, each job's discovery swapped for this machine's process."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(rules_dir / name) for name in config["rule_files"]]
    assert {job["job_name"] for job in config["scrape_configs"]} == set(ports)
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    return config


@pytest.mark.real_process
def test_a_real_prometheus_scrapes_the_api_and_the_worker(
    running_stack: dict[str, int], tmp_path: Path
) -> None:
    api = f"http://127.0.0.1:{running_stack['psp-api']}"
    assert httpx.post(f"{api}/contexts", json={"key": "scraped"}, timeout=10).status_code == 201
    batch = {
        "inputs": [[0.1 * (i % 5)] * 64 for i in range(8)],
        "labels": [i % 3 for i in range(8)],
    }
    response = httpx.post(f"{api}/train/scraped?wait=true", json=batch, timeout=60)
    assert response.status_code == 200, response.text

    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(
        yaml.safe_dump(scrape_config_for(running_stack, PROMETHEUS_CONFIG.parent))
    )
    promtool("check", "config", str(config_file))
    port = free_port()
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    base = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{base}/query", params={"query": expr}, timeout=5).json()
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    try:
        wait_until(lambda: len(query("up == 1")) == 2, 60, 0.5, "both targets up")
        wait_until(lambda: query("psp_trainer_examples_total") != [], 30, 0.5, "trainer counter")
        versions = {r["metric"]["job"]: float(r["value"][1]) for r in query("psp_model_version")}
        assert set(versions) == {"psp-api", "psp-worker"}
        assert versions["psp-worker"] >= 1
        (examples,) = query('psp_trainer_examples_total{job="psp-worker"}')
        assert float(examples["value"][1]) == 8
        (accepted,) = query('psp_train_accepted_examples_total{job="psp-api"}')
        assert float(accepted["value"][1]) == 8
        rules = httpx.get(f"{base}/rules", timeout=5).json()["data"]["groups"]
        assert {rule["name"] for group in rules for rule in group["rules"]} >= {"PspTrainingLag"}
    finally:
        prometheus.terminate()
        prometheus.wait(30)
