"""Checkpoint cadence, retention and POST /model/rollback in the `all` role."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi.testclient import TestClient
from safetensors import safe_open

from service.app import create_app
from service.model.training_hooks import TrainingHooks, install_training_hooks
from service.testing.faults import FaultSettings, injected_faults
from service.testing.processes import wait_until
from tests.service.api.helpers import register, rows


def _train(client: TestClient, key: str, label: int) -> int:
    response = client.post(
        f"/train/{key}?wait=true", json={"inputs": rows(4, 0.1 * label), "labels": [label] * 4}
    )
    version: int = response.json()["model_version"]
    return version


def test_every_step_checkpoint_keeps_the_last_k_and_rolls_back(make_settings) -> None:
    settings = make_settings(checkpoint={"every_steps": 1, "every_seconds": 60, "keep": 3})
    with TestClient(create_app(settings)) as client:
        register(client, "t")
        probe = {"inputs": rows(2, 0.3)}
        answers = {}
        for label in range(1, 6):
            version = _train(client, "t", label)
            # The trainer checkpoints after each step; wait until that version is on disk.
            answers[version] = client.post("/predict/t", json=probe).json()["probabilities"]
        client.portal.call(client.app.state.runtime.shards[0].trainer.checkpoint)  # type: ignore[attr-defined]
        model = client.get("/model").json()
        assert model["model_version"] == 5
        assert model["checkpoints"] == [3, 4, 5]

        missing = client.post("/model/rollback", json={"version": 1})
        assert missing.status_code == 404
        assert "[3, 4, 5]" in missing.json()["detail"]
        assert client.get("/model").json()["model_version"] == 5

        rolled = client.post("/model/rollback", json={"version": 3})
        assert rolled.status_code == 200
        # The restored weights of version 3 are a new version: no number names two states.
        assert (rolled.json()["model_version"], rolled.json()["restored_from"]) == (6, 3)
        assert rolled.json()["checkpoints"] == [4, 5, 6]
        assert client.post("/predict/t", json=probe).json()["probabilities"] == answers[3]
        assert _train(client, "t", 2) == 7  # training continues from the restored state
        assert client.post("/model/rollback", json={"version": -1}).status_code == 422
    with TestClient(create_app(settings)) as client:  # the rollback survives a restart
        assert client.get("/model").json()["model_version"] == 7


def test_versions_only_grow_across_rollbacks(make_settings) -> None:
    settings = make_settings(checkpoint={"every_steps": 1, "every_seconds": 60, "keep": 5})
    with TestClient(create_app(settings)) as client:
        register(client, "t")
        probe = {"inputs": rows(2, 0.3)}
        answers = {}
        for label in range(1, 5):
            version = _train(client, "t", label)
            answers[version] = client.post("/predict/t", json=probe).json()
        rolled = client.post("/model/rollback", json={"version": 1}).json()
        assert (rolled["model_version"], rolled["restored_from"]) == (5, 1)
        assert [_train(client, "t", 1), _train(client, "t", 2)] == [6, 7]
        client.portal.call(client.app.state.runtime.shards[0].trainer.checkpoint)  # type: ignore[attr-defined]
        checkpoints = client.get("/model").json()["checkpoints"]
        assert checkpoints == sorted(set(checkpoints)) == [3, 4, 5, 6, 7]
        # A prediction's version names one set of weights: 1's weights now answer as 5.
        rolled_back = client.post("/model/rollback", json={"version": 5}).json()
        assert rolled_back["model_version"] == 8
        again = client.post("/predict/t", json=probe).json()
        assert again["probabilities"] == answers[1]["probabilities"]
        assert again["model_version"] == 8


def _buffered_contexts(path: Path) -> set[int]:
    """The registry indices whose rows a checkpoint's rehearsal buffer holds."""
    with safe_open(str(path), framework="pt") as handle:
        return set(handle.get_tensor("replay.ids").tolist())


def test_a_deleted_tenants_rows_stay_out_of_every_checkpoint_even_after_a_rollback(
    make_settings,
) -> None:
    settings = make_settings(registry_poll_seconds=0.2, checkpoint={"keep": 5})
    with TestClient(create_app(settings)) as client:
        shard = client.app.state.runtime.shards[0]  # type: ignore[attr-defined]
        alice, bob = register(client, "alice")["index"], register(client, "bob")["index"]
        for key in ("alice", "bob"):
            _train(client, key, 1)
        client.portal.call(shard.trainer.checkpoint)
        before_delete = client.get("/model").json()["model_version"]
        assert _buffered_contexts(shard.store.latest().path) == {alice, bob}

        assert client.delete("/contexts/alice").status_code == 204

        def scrubbed() -> bool:
            return all(alice not in _buffered_contexts(i.path) for i in shard.store.list())

        wait_until(scrubbed, 15, what="every kept checkpoint without alice's rows")
        rolled = client.post("/model/rollback", json={"version": before_delete})
        assert rolled.status_code == 200, rolled.text
        assert _buffered_contexts(shard.store.latest().path) == {bob}
        assert alice not in client.portal.call(  # type: ignore[union-attr]
            asyncio.to_thread, shard.host.remembered_contexts
        )
        assert scrubbed()


def test_a_rollback_while_checkpoints_cannot_be_written_is_503_and_restores_nothing(
    make_settings, tmp_path: Path
) -> None:
    disk_full = tmp_path / "disk-full"
    settings = make_settings()
    faults = FaultSettings(disk_full_while=disk_full)
    with injected_faults(faults), TestClient(create_app(settings)) as client:
        shard = client.app.state.runtime.shards[0]  # type: ignore[attr-defined]
        register(client, "t")
        first = _train(client, "t", 1)
        client.portal.call(shard.trainer.checkpoint)
        _train(client, "t", 2)
        disk_full.touch()
        before = client.get("/model").json()["model_version"]
        answer = client.post("/model/rollback", json={"version": first})
        assert answer.status_code == 503, answer.text
        detail = answer.json()["detail"]
        assert detail.startswith("the rollback did not happen: the checkpoint before it could")
        assert "the model is unchanged, retry later" in detail
        assert client.get("/model").json()["model_version"] == before
        disk_full.unlink()
        assert client.post("/model/rollback", json={"version": first}).status_code == 200


def test_a_rollback_to_the_oldest_kept_version_survives_the_checkpoint_before_it(
    make_settings,
) -> None:
    """The checkpoint written before a rollback prunes the oldest file; the rollback's target
    must not be that file."""
    settings = make_settings(checkpoint={"every_steps": 100, "every_seconds": 60, "keep": 2})
    with TestClient(create_app(settings)) as client:
        shard = client.app.state.runtime.shards[0]  # type: ignore[attr-defined]
        register(client, "t")
        probe = {"inputs": rows(2, 0.3)}
        oldest = _train(client, "t", 1)
        client.portal.call(shard.trainer.checkpoint)
        oldest_answer = client.post("/predict/t", json=probe).json()["probabilities"]
        _train(client, "t", 2)
        client.portal.call(shard.trainer.checkpoint)
        newest = _train(client, "t", 3)  # applied, not yet checkpointed
        assert client.get("/model").json()["checkpoints"] == [oldest, oldest + 1]

        rolled = client.post("/model/rollback", json={"version": oldest})
        assert rolled.status_code == 200, rolled.text
        assert (rolled.json()["model_version"], rolled.json()["restored_from"]) == (
            newest + 1,
            oldest,
        )
        assert rolled.json()["checkpoints"] == [newest, newest + 1]
        assert client.post("/predict/t", json=probe).json()["probabilities"] == oldest_answer


def test_a_rollback_whose_restored_state_cannot_be_written_is_503_and_restores_nothing(
    make_settings,
) -> None:
    """The disk fills between the checkpoint before the rollback and the one of the restored
    state: the model goes back to where it was, and a restart would find the same."""
    writes = {"allowed": 0}

    def disk_fills_after_allowed_writes() -> None:
        if writes["allowed"] <= 0:
            raise OSError(28, "No space left on device (test)")
        writes["allowed"] -= 1

    settings = make_settings(checkpoint={"every_steps": 100, "every_seconds": 60})
    hooks = TrainingHooks(checkpoint_write_checks=(disk_fills_after_allowed_writes,))
    writes["allowed"] = 1_000
    previous = install_training_hooks(hooks)
    try:
        with TestClient(create_app(settings)) as client:
            shard = client.app.state.runtime.shards[0]  # type: ignore[attr-defined]
            register(client, "t")
            probe = {"inputs": rows(2, 0.3)}
            first = _train(client, "t", 1)
            client.portal.call(shard.trainer.checkpoint)
            _train(client, "t", 2)
            before = client.post("/predict/t", json=probe).json()
            writes["allowed"] = 1  # the checkpoint before the rollback, and no more
            answer = client.post("/model/rollback", json={"version": first})
            assert answer.status_code == 503, answer.text
            assert answer.json()["detail"].startswith("the rollback did not happen")
            after = client.post("/predict/t", json=probe).json()
            assert after["probabilities"] == before["probabilities"]
            assert after["model_version"] >= before["model_version"]
            writes["allowed"] = 1_000
            assert client.post("/model/rollback", json={"version": first}).status_code == 200
    finally:
        install_training_hooks(previous)
