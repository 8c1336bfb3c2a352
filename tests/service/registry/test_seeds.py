"""Seeds: random when drawn, and each names one model for the life of the registry."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from service.registry.errors import ContextParameterTaken, InvalidContextParameters
from service.registry.queries import get_context, retire_context
from service.registry.registration import create_context, create_contexts
from tests.service.registry.helpers import all_rows

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases


def test_seeds_are_random_63_bit(registry_session: Session) -> None:
    rows = [
        create_context(session=registry_session, key=f"k{i}", kind="binary")[0] for i in range(50)
    ]
    seeds = {row.seed for row in rows}
    assert len(seeds) == 50
    assert all(seed is not None and 0 <= seed < 2**63 for seed in seeds)
    # 50 uniform 63-bit draws all below 2**40 would mean the range is wrong.
    assert max(seed for seed in seeds if seed is not None) > 2**40


def test_a_seed_of_another_live_context_is_refused_without_naming_it(
    registry_session: Session,
) -> None:
    create_context(session=registry_session, key="tenant-b:x", kind="binary", seed=777)
    registry_session.commit()
    with pytest.raises(ContextParameterTaken, match="seed 777") as caught:
        create_context(session=registry_session, key="tenant-a:y", kind="binary", seed=777)
    assert "tenant-b" not in str(caught.value)
    assert get_context(session=registry_session, key="tenant-a:y") is None


def test_a_deleted_contexts_seed_is_never_issued_again(registry_session: Session) -> None:
    create_context(session=registry_session, key="gone", kind="complex", seed=12)
    registry_session.commit()
    assert retire_context(session=registry_session, key="gone") is True
    registry_session.commit()
    for key in ("gone", "other"):
        with pytest.raises(ContextParameterTaken, match="seed 12"):
            create_context(session=registry_session, key=key, kind="complex", seed=12)


def test_one_seed_for_two_keys_of_a_batch_is_refused(registry_session: Session) -> None:
    with pytest.raises(InvalidContextParameters, match="same seed"):
        create_contexts(
            session=registry_session, kind="binary", items=[("a", 5, None), ("b", 5, None)]
        )
    assert all_rows(registry_session) == []


def test_server_seeds_are_redrawn_until_unused(
    registry_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_context(session=registry_session, key="first", kind="binary", seed=99)
    registry_session.commit()
    draws = iter([99, 99, 5, 5, 6])  # used, used, new, drawn twice, new
    monkeypatch.setattr("service.registry.seeds.secrets.randbits", lambda bits: next(draws))
    results = create_contexts(
        session=registry_session, kind="binary", items=[("a", None, None), ("b", None, None)]
    )
    assert sorted(row.seed for row, _ in results if row.seed is not None) == [5, 6]
