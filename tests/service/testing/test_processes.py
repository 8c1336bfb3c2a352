"""The process helpers shared by the tests and the benchmarks."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from service.testing import processes
from service.testing.processes import (
    RedisServer,
    ServerProcess,
    free_port,
    psp_command,
    running,
    wait_until,
)


def test_the_service_never_loads_the_helpers() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, service.app, service.cli.commands; "
            "print(sorted(m for m in sys.modules if m.startswith('service.testing')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"


def test_psp_command_is_the_installed_script() -> None:
    (script,) = psp_command()
    assert Path(script) == Path(sys.executable).parent / "psp"


@pytest.mark.real_process
def test_psp_command_runs_the_cli_as_a_module_where_no_script_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(processes.shutil, "which", lambda *args, **kwargs: None)
    command = psp_command()
    assert command == [sys.executable, "-m", "service.cli.commands"]
    usage = subprocess.run([*command, "--help"], capture_output=True, text=True, check=True)
    assert "serve" in usage.stdout and "worker" in usage.stdout


def test_wait_until_names_what_did_not_hold() -> None:
    with pytest.raises(TimeoutError, match=re.escape("the moon did not hold within 0.2 s")):
        wait_until(lambda: False, 0.2, 0.05, what="the moon")


def test_wait_until_retries_through_exceptions() -> None:
    calls = []

    def third_time_lucky() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return True

    wait_until(third_time_lucky, 5, 0.01)
    assert len(calls) == 3


def http_server(tmp_path: Path) -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return ServerProcess("http.server", command, {}, port, tmp_path / "http.log", health_path="/")


@pytest.mark.real_process
def test_a_server_is_healthy_while_running_and_gone_after(tmp_path: Path) -> None:
    server = http_server(tmp_path)
    with running(server):
        assert httpx.get(server.base_url, timeout=5).status_code == 200
        process = server.process
    assert process is not None and process.poll() is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.base_url, timeout=5)


@pytest.mark.real_process
def test_a_killed_server_starts_again_on_its_port(tmp_path: Path) -> None:
    server = http_server(tmp_path)
    with running(server):
        first = server.pid
        server.kill()
        assert server.process is not None and server.process.returncode == -9
        server.start()
        assert server.pid != first
        assert httpx.get(server.base_url, timeout=5).status_code == 200


def test_a_server_that_exits_at_start_up_says_so_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "print('no model here'); raise SystemExit(3)"]
    server = ServerProcess("broken", command, {}, free_port(), tmp_path / "broken.log")
    with pytest.raises(RuntimeError, match="broken exited at start-up:\nno model here"):
        server.start()


def test_a_server_never_healthy_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    server = ServerProcess("silent", command, {}, free_port(), tmp_path / "silent.log")
    with pytest.raises(TimeoutError, match=re.escape("silent was not healthy within 0.5 s")):
        server.start(timeout=0.5)
    assert server.process is not None and server.process.returncode is not None


def test_a_private_redis_comes_back_empty_on_the_same_port(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        with redis.Redis.from_url(server.url, socket_timeout=5) as client:
            client.set("kept", "no")
            server.kill()
            with pytest.raises(redis.ConnectionError):
                client.get("kept")
            server.start()
            assert client.get("kept") is None
            assert client.ping() is True
    finally:
        server.kill()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
