"""`psp worker` refuses to serve its checkpoints without a token where others can reach them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import service.cli.commands
from service.cli.commands import app as cli
from service.settings import get_settings


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> list[dict]:
    """Runs `psp worker` up to the point where it would serve; records what it would serve."""
    monkeypatch.setenv("PSP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PSP_REDIS_URL", redis_url)
    monkeypatch.delenv("PSP_CHECKPOINT__FETCH_TOKEN", raising=False)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        service.cli.commands, "_run_writer", lambda app, **kwargs: calls.append(kwargs)
    )
    get_settings.cache_clear()
    yield calls
    get_settings.cache_clear()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7", "psp-worker-0.psp-worker"])
def test_a_reachable_worker_without_a_token_is_refused(started: list[dict], host: str) -> None:
    result = CliRunner().invoke(cli, ["worker", "--host", host])
    assert result.exit_code == 2, result.output
    assert started == []
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "PSP_CHECKPOINT__FETCH_TOKEN" in lines[0]
    assert "127.0.0.1" in lines[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_a_worker_on_loopback_needs_no_token(started: list[dict], host: str) -> None:
    result = CliRunner().invoke(cli, ["worker", "--host", host])
    assert result.exit_code == 0, result.output
    assert [call["host"] for call in started] == [host]


def test_a_token_lets_the_worker_listen_everywhere(
    started: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PSP_CHECKPOINT__FETCH_TOKEN", "s3cret-token-of-the-deployment")
    result = CliRunner().invoke(cli, ["worker", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert [call["host"] for call in started] == ["0.0.0.0"]
