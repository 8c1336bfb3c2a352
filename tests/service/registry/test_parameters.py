"""Which keys, seeds and powers a registration may send for each kind."""

from __future__ import annotations

import math

import pytest
from sqlalchemy.orm import Session

from service.registry.errors import InvalidContextParameters
from service.registry.parameters import MAX_BULK_CONTEXTS
from service.registry.queries import count_live_contexts
from service.registry.registration import create_context, create_contexts

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases


def test_an_unknown_kind_is_refused(registry_session: Session) -> None:
    with pytest.raises(ValueError, match="unknown context kind 'quantum'; expected one of"):
        create_context(session=registry_session, key="a", kind="quantum")


def test_unknown_kind_is_a_programming_error(registry_session: Session) -> None:
    with pytest.raises(ValueError, match="unknown context kind"):
        create_context(session=registry_session, key="a", kind="quaternion")


@pytest.mark.parametrize(
    ("kind", "key", "seed", "power", "message"),
    [
        ("onepower", "a", 3, None, "not a seed"),
        ("onepower", "a", None, math.nan, "finite"),
        ("onepower", "a", None, math.inf, "finite"),
        ("binary", "a", None, 1.0, "not a power"),
        ("complex", "a", None, 0.0, "not a power"),
        ("rotation", "a", -1, None, r"\[0, 2\*\*63\)"),
        ("rotation", "a", 2**63, None, r"\[0, 2\*\*63\)"),
        ("binary", "a", True, None, r"\[0, 2\*\*63\)"),
        ("binary", "", None, None, "not valid"),
        ("binary", "has space", None, None, "not valid"),
        ("binary", "x" * 129, None, None, "not valid"),
    ],
)
def test_invalid_parameters_are_refused(
    registry_session: Session,
    kind: str,
    key: str,
    seed: int | None,
    power: float | None,
    message: str,
) -> None:
    with pytest.raises(InvalidContextParameters, match=message):
        create_context(session=registry_session, key=key, kind=kind, seed=seed, power=power)
    assert isinstance(InvalidContextParameters("x"), ValueError)
    assert count_live_contexts(session=registry_session) == 0


def test_longest_key_is_accepted(registry_session: Session) -> None:
    key = "A-z0.9_:" * 16
    assert len(key) == 128
    row, created = create_context(session=registry_session, key=key, kind="binary")
    registry_session.commit()
    assert created and row.key == key


def test_bulk_create_refuses_oversized_batches(registry_session: Session) -> None:
    items: list[tuple[str, int | None, float | None]] = [
        (f"k{i}", None, None) for i in range(MAX_BULK_CONTEXTS + 1)
    ]
    with pytest.raises(InvalidContextParameters, match="at most"):
        create_contexts(session=registry_session, kind="binary", items=items)
    assert create_contexts(session=registry_session, kind="binary", items=[]) == []
