"""Checkpoint downloads: the worker's exports, the bearer token, and the replica's checks."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client import REGISTRY
from pydantic import SecretStr

from psp_core.checkpoint import CheckpointError, read_weights, save_checkpoint
from psp_core.contexts import ContextSpec
from psp_core.learner import OnlineLearner, TrainingConfig
from psp_core.models import ModelConfig, build_model
from service.api.auth import Unauthorized
from service.checkpoints.store import CheckpointInfo, CheckpointStore
from service.checkpoints.transfer import CheckpointExports, CheckpointFetcher, check_fetch_token

CONFIG = ModelConfig(kind="binary", hidden=(8,))


def _write(store: CheckpointStore, version: int) -> CheckpointInfo:
    model = build_model(CONFIG)
    model.bank.extend([ContextSpec(seed=1)])
    learner = OnlineLearner(model, TrainingConfig())
    learner.model_version = version
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(version / 10)
    target = store.next(version)
    save_checkpoint(target.path, learner)
    return target


def _fetches(shard: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "psp_checkpoint_fetches_total", {"shard": shard, "outcome": outcome}
    )
    return value or 0.0


def test_exports_are_kept_for_the_two_newest_and_made_again_from_the_store(tmp_path) -> None:
    store = CheckpointStore(tmp_path / "worker", keep=5)
    exports = CheckpointExports(store)
    written = [_write(store, version) for version in (1, 2, 3)]
    made = [exports.export(info) for info in written]
    assert [e.sha256 for e in made] == [hashlib.sha256(e.blob).hexdigest() for e in made]
    assert len({e.sha256 for e in made}) == 3
    written[2].path.unlink()
    assert exports.get(written[2].path.name) == made[2]  # still in memory
    # The oldest is no longer kept in memory, but its file is: exported again, identically.
    assert exports.get(written[0].path.name) == made[0]
    assert exports.get("ckpt-0000000099-v99.safetensors") is None


def test_the_token_is_required_only_when_configured() -> None:
    check_fetch_token(None, None)
    check_fetch_token(SecretStr("s3cret"), "Bearer s3cret")
    for sent in (None, "Bearer wrong", "s3cre"):
        with pytest.raises(Unauthorized, match="PSP_CHECKPOINT__FETCH_TOKEN"):
            check_fetch_token(SecretStr("s3cret"), sent)


def _serving(blob: bytes, status: int = 200) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=blob)

    return httpx.MockTransport(answer), seen


def test_a_download_with_the_announced_checksum_is_stored_and_serves_the_weights(
    tmp_path: Path,
) -> None:
    worker = CheckpointStore(tmp_path / "worker", keep=5)
    exported = CheckpointExports(worker).export(_write(worker, 4))
    replica = CheckpointStore(tmp_path / "replica", keep=1)
    _write(replica, 1)  # an older one, pruned once the download is in
    transport, seen = _serving(exported.blob)
    fetcher = CheckpointFetcher(replica, shard=3, token="s3cret", transport=transport)
    before = _fetches("3", "ok")

    info = asyncio.run(fetcher.fetch(exported.file, "http://w/x", exported.sha256))
    assert seen[0].headers["Authorization"] == "Bearer s3cret"
    assert (info.version, info.path) == (4, replica.directory / exported.file)
    assert [i.version for i in replica.list()] == [4]
    serving = read_weights(info.path, CONFIG)
    assert serving.header["model_version"] == 4
    assert all(torch.all(tensor == 0.4) for tensor in serving.weights.values())
    assert _fetches("3", "ok") == before + 1


def test_a_wrong_checksum_or_a_failed_download_stores_nothing(tmp_path: Path) -> None:
    worker = CheckpointStore(tmp_path / "worker", keep=5)
    exported = CheckpointExports(worker).export(_write(worker, 4))
    replica = CheckpointStore(tmp_path / "replica", keep=5)
    mismatches, failures = _fetches("0", "checksum_mismatch"), _fetches("0", "unavailable")

    tampered = exported.blob[:-1] + bytes([exported.blob[-1] ^ 1])
    fetcher = CheckpointFetcher(replica, 0, None, transport=_serving(tampered)[0])
    with pytest.raises(CheckpointError, match=r"SHA-256 .* was announced"):
        asyncio.run(fetcher.fetch(exported.file, "http://w/x", exported.sha256))
    gone = CheckpointFetcher(replica, 0, None, transport=_serving(b"not kept", 404)[0])
    with pytest.raises(CheckpointError, match="answered 404 not kept"):
        asyncio.run(gone.fetch(exported.file, "http://w/x", exported.sha256))
    named_badly = CheckpointFetcher(replica, 0, None, transport=_serving(exported.blob)[0])
    with pytest.raises(CheckpointError, match="not a checkpoint file name"):
        asyncio.run(named_badly.fetch("../escape", "http://w/x", exported.sha256))

    assert list(replica.directory.iterdir()) == []
    assert _fetches("0", "checksum_mismatch") == mismatches + 1
    assert _fetches("0", "unavailable") == failures + 2
