"""Settings: the model kind is one of psp_core's kinds, and a wrong one names them all."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from psp_core.kinds import CONTEXT_KINDS
from service.runtime.startup import describe_settings_error
from service.settings import ModelSettings, Settings


@pytest.mark.parametrize("kind", CONTEXT_KINDS)
def test_every_psp_core_kind_is_a_model_kind(kind: str) -> None:
    assert ModelSettings(kind=kind).to_config().kind == kind


def test_an_unknown_kind_names_the_valid_ones() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(model={"kind": "quantum"})
    assert describe_settings_error(caught.value) == (
        "PSP_MODEL__KIND: unknown context kind 'quantum'; "
        "expected one of none, binary, complex, rotation, onepower"
    )


def test_the_json_schema_lists_the_kinds() -> None:
    schema = ModelSettings.model_json_schema()["properties"]["kind"]
    assert schema["enum"] == list(CONTEXT_KINDS) and schema["default"] == "complex"


def test_shards_default_to_one_without_a_cap_and_read_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (Settings().shards.count, Settings().shards.capacity) == (1, None)
    monkeypatch.setenv("PSP_SHARDS__COUNT", "3")
    monkeypatch.setenv("PSP_SHARDS__CAPACITY", "500")
    assert (Settings().shards.count, Settings().shards.capacity) == (3, 500)


def test_a_queue_shard_beyond_the_count_is_named() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(queue={"shard": 2}, shards={"count": 2})
    assert describe_settings_error(caught.value) == (
        "shard 2 (psp worker --shard, or PSP_QUEUE__SHARD) does not exist: with "
        "PSP_SHARDS__COUNT=2 the shards are 0 to 1; pick one of those, or raise PSP_SHARDS__COUNT"
    )


def test_torch_threads_default_to_half_the_cpus_the_process_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert Settings().resolved_torch_threads == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert Settings().resolved_torch_threads == 1
    assert Settings(torch_threads=4).resolved_torch_threads == 4
