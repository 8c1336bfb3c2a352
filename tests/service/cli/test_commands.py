"""`psp keys create | list | revoke`: salted hashes in the registry, honoured at run time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from service.api.auth import issue_key
from service.app import create_app
from service.cli.commands import app as cli
from service.registry.database import make_engine
from service.settings import get_settings
from tests.service.conftest import SettingsFactory

# Keys are stored in the registry and reread by the app: the tests run on SQLite and PostgreSQL.
pytestmark = pytest.mark.both_databases

POLL_SECONDS = 0.2
ENV_KEY, ENV_SPEC = issue_key(["admin", "predict", "train"], name="bootstrap")


@pytest.fixture
def psp(
    migrated_database_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable]:
    """Runs `psp ...` in-process against this test's registry; returns its output."""
    monkeypatch.setenv("PSP_DATABASE_URL", migrated_database_url)
    monkeypatch.setenv("PSP_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("PSP_API_KEYS", f"[{ENV_SPEC.model_dump_json()}]")
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(cli, list(args))
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    yield run
    get_settings.cache_clear()


def _until(condition: Callable[[], bool], seconds: float = 5.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - started


def test_stored_keys_work_and_revocation_takes_effect_without_a_restart(
    make_settings: SettingsFactory,
    migrated_database_url: str,
    psp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(api_keys=[ENV_SPEC], registry_poll_seconds=POLL_SECONDS)
    with TestClient(create_app(settings)) as client:
        created = psp("keys", "create", "--scope", "predict", "--prefix", "t-a:", "--name", "a")
        key = created.split("key (shown only now): ")[1].split()[0]
        key_id, secret = key.split("_")[1], key.split("_", 2)[2]

        def answers(expected: int) -> Callable[[], bool]:
            return lambda: (
                client.get("/contexts", headers={"X-API-Key": key}).status_code == expected
            )

        _until(answers(200))
        assert client.get("/contexts", headers={"X-API-Key": key}).json()["total"] == 0

        listed = psp("keys", "list")
        assert key_id in listed and ENV_SPEC.id in listed and secret not in listed
        assert "valid" in listed

        psp("keys", "revoke", key_id)
        waited = _until(answers(401))
        assert waited < POLL_SECONDS * 10
        assert "revoked" in psp("keys", "list")
        assert "PSP_API_KEYS" in psp("keys", "revoke", ENV_SPEC.id, ok=False)
        assert "no valid stored key" in psp("keys", "revoke", key_id, ok=False)
        # The key from the environment is unaffected.
        assert client.get("/contexts", headers={"X-API-Key": ENV_KEY}).status_code == 200

    engine = make_engine(migrated_database_url)
    try:
        with engine.connect() as connection:
            stored = connection.execute(text("SELECT * FROM api_keys")).mappings().all()
    finally:
        engine.dispose()
    assert len(stored) == 1 and stored[0]["id"] == key_id
    assert all(secret not in str(value) for value in stored[0].values())
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert secret not in logged and ENV_KEY not in logged


def test_create_for_the_environment_stores_nothing(psp, migrated_database_url: str) -> None:
    output = psp("keys", "create", "--scope", "train", "--env")
    assert "PSP_API_KEYS entry:" in output and '"scopes":["train"]' in output
    listed = psp("keys", "list").splitlines()
    assert len(listed) == 1 and "PSP_API_KEYS" in listed[0]  # only the bootstrap key
    assert "unknown scopes" in psp("keys", "create", "--scope", "root", ok=False)


def test_revoking_the_last_stored_key_leaves_the_api_closed(
    make_settings: SettingsFactory, psp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a key has been created, authentication stays on, whatever is revoked later."""
    settings = make_settings(api_keys=[], registry_poll_seconds=POLL_SECONDS)
    with TestClient(create_app(settings)) as client:
        assert client.post("/contexts", json={"key": "before"}).status_code == 201
        created = psp("keys", "create", "--scope", "admin")
        key = created.split("key (shown only now): ")[1].split()[0]
        mine = {"X-API-Key": key}
        _until(lambda: client.post("/contexts", json={"key": "anon"}).status_code == 401)
        assert client.post("/contexts", json={"key": "mine"}, headers=mine).status_code == 201

        psp("keys", "revoke", key.split("_")[1])
        _until(lambda: client.get("/contexts", headers=mine).status_code == 401)
        registry = client.app.state.runtime.registry  # type: ignore[attr-defined]
        stored_api_keys, rereads = registry.stored_api_keys, []

        async def counted_stored_api_keys() -> Any:
            rereads.append(1)
            return await stored_api_keys()

        monkeypatch.setattr(registry, "stored_api_keys", counted_stored_api_keys)
        _until(lambda: len(rereads) >= 3)  # several rereads of the keys, none of them valid
        refused = client.post("/contexts", json={"key": "anon"})
        assert refused.status_code == 401, refused.text
        assert "requires an API key" in refused.json()["detail"]
