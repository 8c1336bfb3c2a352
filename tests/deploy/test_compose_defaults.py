"""Compose is closed and operable by default: loopback-only ports, keys required, a checkpoint
token, one compute thread per process, a stop grace that outlasts `wait=true`, the same pinned
torch in every image, and every image swappable for one built offline from Debian packages."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.deploy.test_compose import (
    COMPOSE_FILE,
    DEPLOY,
    DOCKERFILE,
    IMAGE_VARIABLES,
    ROOT,
    TEST_ENV,
    dockerfile_instructions,
    environment,
    interpolate,
    psp_services,
    published_ports,
    worker_services,
)

OFFLINE = DEPLOY / "offline"
BUILD_SCRIPT = OFFLINE / "build-images.sh"
LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def seconds(duration: str) -> float:
    """A compose duration such as `90s` or `1m30s`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * unit[name] for number, name in parts)


def test_every_published_port_is_on_loopback_unless_told(compose: dict[str, Any]) -> None:
    published = {
        name: published_ports(service)
        for name, service in compose["services"].items()
        if service.get("ports")
    }
    assert {"nginx", "grafana"} <= set(published)
    for name, ports in published.items():
        assert all(host_ip == LOOPBACK for host_ip, _, _ in ports), f"{name}: {ports}"
    opened = {**TEST_ENV, "HTTP_ADDRESS": "0.0.0.0", "GRAFANA_ADDRESS": "0.0.0.0"}
    for name in ("nginx", "grafana"):
        (entry,) = compose["services"][name]["ports"]
        assert interpolate(entry, opened).startswith("0.0.0.0:"), name


def test_every_psp_process_requires_keys_and_has_one_thread(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in psp_services(compose).items():
        env = {key: interpolate(value) for key, value in environment(service).items()}
        assert env["OMP_NUM_THREADS"] == env["PSP_TORCH_THREADS"] == "1", name
        monkeypatch.setenv("PSP_AUTH__REQUIRED", env["PSP_AUTH__REQUIRED"])
        assert Settings().auth.required is True, name
        assert env["PSP_CHECKPOINT__FETCH_TOKEN"] == TEST_ENV["PSP_CHECKPOINT__FETCH_TOKEN"]
    threads = {**TEST_ENV, "OMP_NUM_THREADS": "4"}
    api = environment(compose["services"]["api"])
    assert interpolate(api["OMP_NUM_THREADS"], threads) == "4", ".env may raise it"


def test_the_api_is_given_longer_to_stop_than_a_wait_lasts(compose: dict[str, Any]) -> None:
    wait = Settings().limits.wait_seconds
    api = compose["services"]["api"]
    assert seconds(api["stop_grace_period"]) > wait
    for name, worker in worker_services(compose).items():
        assert seconds(worker["stop_grace_period"]) >= 30, name


def test_torch_is_the_same_pinned_release_in_the_cpu_and_the_cuda_image(
    compose: dict[str, Any],
) -> None:
    workers = worker_services(compose)
    cpu = {k: interpolate(v) for k, v in workers["worker"]["build"]["args"].items()}
    gpu = {k: interpolate(v) for k, v in workers["worker-gpu"]["build"]["args"].items()}
    assert cpu["TORCH_VERSION"] == gpu["TORCH_VERSION"]
    assert (cpu["TORCH_VARIANT"], gpu["TORCH_VARIANT"][:2]) == ("cpu", "cu")
    assert gpu["TORCH_INDEX_URL"].endswith("/" + gpu["TORCH_VARIANT"])
    for service in psp_services(compose).values():
        assert (
            service["build"]["args"]["TORCH_VERSION"]
            == workers["worker"]["build"]["args"]["TORCH_VERSION"]
        )
    dockerfile_args = dict(
        arguments.split("=", 1)
        for keyword, arguments in dockerfile_instructions()
        if keyword == "ARG" and "=" in arguments
    )
    assert dockerfile_args["TORCH_VERSION"] == cpu["TORCH_VERSION"]
    makefile_pin = re.search(r"^TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert makefile_pin and makefile_pin.group(1) == cpu["TORCH_VERSION"], "one torch everywhere"


def test_images_default_to_upstream_and_are_variables(compose: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    for variable, upstream in IMAGE_VARIABLES.items():
        assert f"${{{variable}:-{upstream}}}" in text, variable
    for name, service in compose["services"].items():
        if name in psp_services(compose):
            continue
        image = service["image"]
        (variable,) = re.findall(r"\$\{(PSP_[A-Z]+_IMAGE):-", image)
        assert interpolate(image, {variable: "local/x:1"}) == "local/x:1", name


def offline_images() -> dict[str, str]:
    """The variables build-images.sh writes to images.env, with the image each names."""
    script = BUILD_SCRIPT.read_text()
    block = script[script.index('cat > "$OFFLINE/images.env" <<EOF') : script.index("\nEOF\n}")]
    values = {"$PREFIX": "psp-offline", "$SUITE": "bookworm"}
    images = {}
    for variable, value in re.findall(r"^(PSP_[A-Z]+_IMAGE)=(\S+)$", block, re.M):
        for placeholder, replacement in values.items():
            value = value.replace(placeholder, replacement)
        images[variable] = value
    return images


def test_the_offline_build_makes_every_image_but_grafana(compose: dict[str, Any]) -> None:
    images = offline_images()
    assert set(images) == set(IMAGE_VARIABLES) - {"PSP_GRAFANA_IMAGE"}
    for variable, image in images.items():
        name = image.split("/")[1].split(":")[0]
        assert (OFFLINE / f"{name}.Dockerfile").is_file(), variable
    grafana = compose["services"]["grafana"]
    script = BUILD_SCRIPT.read_text()
    (profiles,) = re.findall(r"^COMPOSE_PROFILES=(\S+)$", script, re.M)
    assert not set(grafana["profiles"]) & set(profiles.split(",")), "no Grafana offline"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_1_29_accepts_the_file(tmp_path: Path) -> None:
    """`docker-compose config` (Compose 1.29, the one Debian packages) reads the file."""
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in TEST_ENV.items()))
    result = subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        cwd=DEPLOY,
    )
    assert result.returncode == 0, result.stderr


def test_the_dockerfile_needs_no_registry_beyond_its_base_image() -> None:
    """No `# syntax=` frontend image and no BuildKit-only mounts: it builds with the classic
    builder too, which docker-compose 1.x uses."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax=", text, re.M)
    runs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"]
    assert runs and not any(run.startswith("--mount") for run in runs)


def test_psp_containers_run_without_privileges_on_a_read_only_root(
    compose: dict[str, Any],
) -> None:
    for name, service in psp_services(compose).items():
        assert service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
