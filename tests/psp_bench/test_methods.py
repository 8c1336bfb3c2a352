"""Method names and the contexts they give each task."""

import pytest

from psp_bench.methods import DEFAULT_METHODS, Method, parse_methods
from psp_core import ContextSpec


def test_names_parse_into_families_and_kinds() -> None:
    methods = parse_methods(",".join(DEFAULT_METHODS))
    kinds = ["none", "binary", "complex", "rotation", "onepower"]
    assert [(m.family, m.kind, m.replay) for m in methods] == [
        *(("psp", kind, False) for kind in kinds),
        *(("psp", kind, True) for kind in kinds),
        ("separate", "none", False),
        ("ewc", "none", False),
    ]
    assert Method.parse("onepower-continuous-local") == Method(
        "onepower-continuous-local", "psp", "onepower", local_mix=True, continuous=True
    )
    assert Method.parse("none-replay") == Method("none-replay", "psp", "none", replay=True)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("dense", "unknown method"),
        ("complex-fast", "suffixes"),
        ("complex-local-local", "suffixes"),
        ("binary-local", "complex and onepower only"),
        ("complex-continuous", "onepower only"),
        ("separate-replay", "superposed kinds, none, embed and gains"),
        ("river-replay", "superposed kinds, none, embed and gains"),
        ("complex-forest", "river only"),
    ],
)
def test_bad_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Method.parse(name)


def test_the_learned_context_baselines_rehearse_and_river_may_be_a_forest() -> None:
    assert Method.parse("gains-replay") == Method("gains-replay", "gains", "none", replay=True)
    assert Method.parse("embed") == Method("embed", "embed", "none")
    assert Method.parse("river-forest") == Method("river-forest", "river", "none", forest=True)


def test_a_list_needs_distinct_names() -> None:
    with pytest.raises(ValueError, match="repeat"):
        parse_methods("complex,complex")
    with pytest.raises(ValueError, match="at least one"):
        parse_methods(" , ")


def test_each_task_gets_its_own_context() -> None:
    assert Method.parse("complex").context(3, 3.0) == ("task-3", ContextSpec(seed=3))
    assert Method.parse("ewc").context(3, 3.0) == ("task-3", ContextSpec(seed=3))
    assert Method.parse("onepower").context(3, 3.5) == ("task-3", ContextSpec(power=3.0))
    # A continuous one-power context follows the stream's fractional position.
    assert Method.parse("onepower-continuous").context(3, 3.5) == (
        "power-3.5",
        ContextSpec(power=3.5),
    )
