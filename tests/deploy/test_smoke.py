"""The compose stack, for real: deploy/smoke.sh builds the images from Debian packages (kept
once built), starts the stack and walks one user's path through it, the worker's crash included.

Runs wherever Docker answers; elsewhere it is skipped with the reason. It runs after the other
real-process tests (tests/conftest.py), so that .ci/run's image build, started in the background,
is done by then (the build takes a lock: a smoke run that comes early waits for it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# Every test here starts real `psp` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process

SMOKE = Path(__file__).resolve().parents[2] / "deploy" / "smoke.sh"
SMOKE_TIMEOUT_SECONDS = 1200
"""A first run builds every image (about 5 minutes here); a cached one takes about one."""


def docker_missing() -> str | None:
    """Why the smoke run cannot happen on this machine, or None when it can."""
    if shutil.which("docker") is None:
        return "docker is not installed (apt-get install -y docker.io; .ci/run does it)"
    info = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"the Docker daemon does not answer: {reason}"
    compose_v2 = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
    )
    if compose_v2.returncode != 0 and shutil.which("docker-compose") is None:
        return "neither `docker compose` nor docker-compose is installed"
    base = subprocess.run(
        ["docker", "image", "inspect", "psp-offline/debian:bookworm"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    if base.returncode != 0 and shutil.which("debootstrap") is None:
        return "debootstrap is not installed and the offline images are not built"
    return None


@pytest.mark.timeout(SMOKE_TIMEOUT_SECONDS)
def test_the_compose_stack_serves_trains_and_survives_a_worker_crash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    reason = docker_missing()
    if reason:
        # Printed as well: a plain pytest run lists skips without their reasons.
        with capsys.disabled():
            print(f"\ndeploy/smoke.sh skipped: {reason}")
        pytest.skip(reason)
    result = subprocess.run(
        [str(SMOKE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=SMOKE_TIMEOUT_SECONDS - 30,
    )
    with capsys.disabled():
        print(f"\n--- deploy/smoke.sh ---\n{result.stdout}", end="")
    assert result.returncode == 0, f"deploy/smoke.sh failed:\n{result.stdout}{result.stderr}"
    steps = [line for line in result.stdout.splitlines() if " ... ok (" in line]
    assert len(steps) >= 11, result.stdout
    assert "every accepted example learned once" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("smoke: passed in")
