"""Several shards in one process (PSP_ROLE=all): each context lives in one shard's model,
trains through that shard's queue and predicts from that shard's weights."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.api.auth import issue_key
from service.app import create_app
from service.model.step_client import ChildStepHost
from service.runtime.runtime import Runtime
from service.runtime.shard_roles import Shard
from service.runtime.startup import StartupError
from service.testing.processes import wait_until
from tests.service.api.helpers import register, rows
from tests.service.conftest import SettingsFactory


def _runtime(client: TestClient) -> Runtime:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def _weights(shard: Shard) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(shard.host.learner.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _all_weights(client: TestClient) -> list[str]:
    return [_weights(shard) for shard in _runtime(client).shards]


def _train(client: TestClient, key: str, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    body = {"inputs": rng.random((16, 64)).tolist(), "labels": rng.integers(0, 10, 16).tolist()}
    response = client.post(f"/train/{key}?wait=true", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture
def three_shards(make_settings: SettingsFactory) -> Any:
    with TestClient(create_app(make_settings(shards={"count": 3}))) as client:
        yield client


def test_contexts_spread_over_the_shards_and_each_model_holds_only_its_own(
    three_shards: TestClient,
) -> None:
    shards = [register(three_shards, f"t{i}")["shard"] for i in range(7)]
    assert shards == [0, 1, 2, 0, 1, 2, 0]
    assert [shard.host.context_count for shard in _runtime(three_shards).shards] == [3, 2, 2]
    listed = three_shards.get("/contexts").json()["items"]
    assert [item["shard"] for item in listed] == shards
    assert three_shards.get("/contexts/t4").json()["shard"] == 1


def test_the_shards_are_independent_models_and_shard_0_is_the_configured_one(
    make_settings: SettingsFactory, three_shards: TestClient
) -> None:
    weights = _all_weights(three_shards)
    assert len(set(weights)) == 3
    seeds = [shard.host.config.seed for shard in _runtime(three_shards).shards]
    assert seeds[0] == 0 and len(set(seeds)) == 3
    with TestClient(create_app(make_settings(data_dir=make_settings().data_dir / "one"))) as one:
        assert _all_weights(one) == weights[:1]


def test_training_a_context_changes_only_its_shards_weights(three_shards: TestClient) -> None:
    for key in ("a", "b", "c"):
        register(three_shards, key)
    before = _all_weights(three_shards)
    answer = _train(three_shards, "b", seed=1)
    after = _all_weights(three_shards)
    assert after[1] != before[1]
    assert (after[0], after[2]) == (before[0], before[2])
    versions = [shard.host.model_version for shard in _runtime(three_shards).shards]
    assert versions == [0, answer["model_version"], 0] and answer["model_version"] > 0
    assert three_shards.get("/model", params={"shard": 1}).json()["model_version"] == versions[1]
    assert three_shards.get("/contexts/b").json()["examples_seen"] in (0, 16)


def test_the_shards_of_one_process_step_in_one_child(make_settings: SettingsFactory) -> None:
    settings = make_settings(shards={"count": 3}, training={"steps_in": "child_process"})
    with TestClient(create_app(settings)) as client:
        for key in ("a", "b", "c"):
            register(client, key)
        before = _all_weights(client)
        _train(client, "b", seed=1)
        after = _all_weights(client)
        hosts = [shard.host for shard in _runtime(client).shards]
        pids = {host.child_pid if isinstance(host, ChildStepHost) else None for host in hosts}
    assert after[1] != before[1] and (after[0], after[2]) == (before[0], before[2])
    assert len(pids) == 1
    (pid,) = pids
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists()  # the runtime's stop stopped it


def test_a_mixed_multi_predict_answers_like_single_predictions_in_order(
    three_shards: TestClient,
) -> None:
    keys = ["a", "b", "c", "d"]
    for key in keys:
        register(three_shards, key)
    _train(three_shards, "c", seed=2)
    order = ["c", "a", "d", "b", "a"]
    items = [{"context": key, "inputs": rows(2, value=0.1 * i)} for i, key in enumerate(order)]
    many = three_shards.post("/predict", json={"items": items})
    assert many.status_code == 200, many.text
    answers = many.json()["items"]
    assert [answer["context"] for answer in answers] == order
    for item, answer in zip(items, answers, strict=True):
        single = three_shards.post(
            f"/predict/{item['context']}", json={"inputs": item["inputs"]}
        ).json()
        assert answer["predictions"] == single["predictions"]
        np.testing.assert_allclose(answer["probabilities"], single["probabilities"], rtol=1e-5)
        assert answer["model_version"] == single["model_version"]
    assert [answer["model_version"] for answer in answers] == [1, 0, 0, 0, 0]
    assert many.json()["model_version"] == 1


def test_registration_past_the_capacity_of_every_shard_is_409_and_changes_nothing(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(shards={"count": 3, "capacity": 1})
    with TestClient(create_app(settings)) as client:
        assert [register(client, key)["shard"] for key in ("a", "b", "c")] == [0, 1, 2]
        weights = _all_weights(client)
        listed = client.get("/contexts").json()
        refused = client.post("/contexts", json={"key": "d"})
        assert refused.status_code == 409
        assert refused.json()["detail"].startswith("all 3 shards are full at 1 live contexts each")
        assert client.get("/contexts").json() == listed
        assert _all_weights(client) == weights
        assert [shard.host.context_count for shard in _runtime(client).shards] == [1, 1, 1]


def test_raising_the_count_sends_new_contexts_to_new_shards_and_keeps_the_old_ones(
    make_settings: SettingsFactory,
) -> None:
    with TestClient(create_app(make_settings(shards={"count": 2}))) as client:
        assert [register(client, key)["shard"] for key in ("a", "b", "c")] == [0, 1, 0]
        _train(client, "a", seed=3)
        _train(client, "b", seed=4)
        weights = _all_weights(client)
    with TestClient(create_app(make_settings(shards={"count": 4}))) as client:
        assert _all_weights(client)[:2] == weights
        assert [register(client, key)["shard"] for key in ("d", "e", "f")] == [2, 3, 1]
        assert [client.get(f"/contexts/{key}").json()["shard"] for key in "abc"] == [0, 1, 0]
        counts = [shard.host.context_count for shard in _runtime(client).shards]
        assert counts == [2, 2, 1, 1]
        assert client.post("/predict/a", json={"inputs": rows(1)}).json()["model_version"] > 0


def test_lowering_the_count_below_a_shard_that_holds_contexts_is_refused(
    make_settings: SettingsFactory,
) -> None:
    with TestClient(create_app(make_settings(shards={"count": 2}))) as client:
        register(client, "a")
        register(client, "b")
    lowered = TestClient(create_app(make_settings(shards={"count": 1})))
    with pytest.raises(StartupError, match=r"live contexts belong to shard 1 .*COUNT=2 or more$"):
        lowered.__enter__()


def test_model_info_and_rollback_name_a_shard(three_shards: TestClient) -> None:
    for key in ("a", "b"):
        register(three_shards, key)
    _train(three_shards, "b", seed=5)
    client_portal = three_shards.portal  # type: ignore[attr-defined]
    trainer = _runtime(three_shards).shards[1].trainer
    assert trainer is not None
    client_portal.call(trainer.checkpoint)
    info = three_shards.get("/model", params={"shard": 1}).json()
    assert (info["shard"], info["shards"], info["contexts"]) == (1, 3, 1)
    assert info["checkpoints"][-1] == info["model_version"] > 0
    assert three_shards.get("/model").json()["shard"] == 0
    before = _all_weights(three_shards)
    _train(three_shards, "b", seed=6)
    rolled = three_shards.post(
        "/model/rollback", json={"version": info["model_version"], "shard": 1}
    )
    assert rolled.status_code == 200, rolled.text
    assert (rolled.json()["shard"], rolled.json()["restored_from"]) == (1, info["model_version"])
    assert _all_weights(three_shards)[1] == before[1]
    missing = three_shards.get("/model", params={"shard": 3})
    assert missing.status_code == 422
    assert missing.json()["detail"].startswith("there is no shard 3: PSP_SHARDS__COUNT=3")


def _metrics(client: TestClient) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("psp_")
    }


def test_metrics_carry_the_shard_and_report_how_full_each_is(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(shards={"count": 2, "capacity": 5}, registry_poll_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        for key in ("a", "b", "c"):
            register(client, key)
        before = _metrics(client)  # the counters are the test process's, shared by every test
        answer = _train(client, "b", seed=7)
        wait_until(lambda: _metrics(client)['psp_shard_live_contexts{shard="0"}'] == 2, 10)
        values = _metrics(client)
    assert values['psp_shard_live_contexts{shard="1"}'] == 1
    assert values['psp_shard_capacity{shard="0"}'] == values['psp_shard_capacity{shard="1"}'] == 5
    assert values['psp_model_version{shard="1"}'] == answer["model_version"] > 0
    assert values['psp_model_version{shard="0"}'] == 0
    learned = {
        shard: values[f'psp_trainer_examples_total{{shard="{shard}"}}']
        - before[f'psp_trainer_examples_total{{shard="{shard}"}}']
        for shard in (0, 1)
    }
    assert learned == {0: 0, 1: 16}
    assert values['psp_contexts{shard="0"}'] == 2 and values['psp_contexts{shard="1"}'] == 1


def test_a_context_on_a_shard_this_process_does_not_hold_is_503_with_the_fix(
    make_settings: SettingsFactory,
) -> None:
    fewer = make_settings(data_dir=make_settings().data_dir / "fewer", shards={"count": 1})
    more = make_settings(data_dir=make_settings().data_dir / "more", shards={"count": 2})
    with TestClient(create_app(fewer)) as old, TestClient(create_app(more)) as new:
        assert [register(new, key)["shard"] for key in ("a", "b")] == [0, 1]
        assert old.post("/predict/a", json={"inputs": rows(1)}).status_code == 200
        refused = old.post("/predict/b", json={"inputs": rows(1)})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json()["detail"] == (
            "the context belongs to shard 1, but this process serves shards 0 to 0; start "
            "every process with PSP_SHARDS__COUNT=2 or more"
        )


def test_an_idempotency_key_names_one_batch_across_shards_for_each_api_key(
    make_settings: SettingsFactory,
) -> None:
    first_key, first_spec = issue_key(["admin", "train"], name="first")
    other_key, other_spec = issue_key(["train"], name="other")
    settings = make_settings(shards={"count": 2}, api_keys=[first_spec, other_spec])
    with TestClient(create_app(settings)) as client:
        for key in ("a", "b"):
            made = client.post("/contexts", json={"key": key}, headers={"X-API-Key": first_key})
            assert made.status_code == 201, made.text
        shards = client.get("/contexts", headers={"X-API-Key": first_key}).json()["items"]
        assert [(item["key"], item["shard"]) for item in shards] == [("a", 0), ("b", 1)]
        first = {"X-API-Key": first_key, "Idempotency-Key": "batch-0001"}
        queued = client.post("/train/a", json={"inputs": rows(2), "labels": [1, 2]}, headers=first)
        assert queued.status_code == 202, queued.text
        accepted = REGISTRY.get_sample_value("psp_train_accepted_examples_total")

        # The same key with a batch for a context of the other shard is the same caller's
        # other batch: refused, and nothing is queued there.
        elsewhere = client.post("/train/b", json={"inputs": rows(1), "labels": [3]}, headers=first)
        assert elsewhere.status_code == 422, elsewhere.text
        assert "first used with a different batch" in elsewhere.json()["detail"]
        assert REGISTRY.get_sample_value("psp_train_accepted_examples_total") == accepted

        # Another API key's idempotency keys are its own.
        other = {"X-API-Key": other_key, "Idempotency-Key": "batch-0001"}
        theirs = client.post("/train/b", json={"inputs": rows(1), "labels": [3]}, headers=other)
        assert theirs.status_code == 202, theirs.text
        assert theirs.json()["batch_id"] != queued.json()["batch_id"]
        assert REGISTRY.get_sample_value("psp_train_accepted_examples_total") == accepted + 1
