"""Reading, listing and retiring contexts; indices are never reused."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from service.registry.queries import (
    count_live_contexts,
    get_context,
    list_contexts,
    live_keys,
    retire_context,
    retired_since,
)
from service.registry.registration import create_context, create_contexts
from tests.service.registry.helpers import all_rows

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases


def test_indices_are_monotonic_and_never_reused(registry_session: Session) -> None:
    rows = [
        create_context(session=registry_session, key=f"k{i}", kind="binary")[0] for i in range(5)
    ]
    registry_session.commit()
    indices = [row.index for row in rows]
    assert indices == sorted(indices) and len(set(indices)) == 5

    assert retire_context(session=registry_session, key="k4") is True
    registry_session.commit()
    new, created = create_context(session=registry_session, key="k5", kind="binary")
    registry_session.commit()
    assert created and new.index > indices[-1]

    # Even a physically deleted highest row never gives its index away (SQLite AUTOINCREMENT,
    # PostgreSQL sequence); create_contexts deletes rows when a concurrent conflict aborts it.
    top = new.index
    registry_session.delete(new)
    registry_session.commit()
    after, _ = create_context(session=registry_session, key="k6", kind="binary")
    registry_session.commit()
    assert after.index > top


def test_retired_key_stops_answering_and_can_be_registered_again(
    registry_session: Session,
) -> None:
    old, _ = create_context(session=registry_session, key="a", kind="binary", seed=1)
    create_context(session=registry_session, key="b", kind="binary", seed=2)
    registry_session.commit()

    assert retire_context(session=registry_session, key="a") is True
    registry_session.commit()
    assert retire_context(session=registry_session, key="a") is False
    assert retire_context(session=registry_session, key="never") is False
    assert get_context(session=registry_session, key="a") is None
    assert old.retired_at is not None and old.retired_at.utcoffset() == timedelta(0)
    assert count_live_contexts(session=registry_session) == 1

    # A different seed is no conflict once the key is retired; the key gets a new index.
    new, created = create_context(session=registry_session, key="a", kind="binary", seed=99)
    registry_session.commit()
    assert created is True
    assert new.index > old.index
    assert new.seed == 99
    fetched = get_context(session=registry_session, key="a")
    assert fetched is not None and fetched.index == new.index

    rows = all_rows(registry_session)
    assert [(row.key, row.seed, row.retired_at is None) for row in rows] == [
        ("a", 1, False),
        ("b", 2, True),
        ("a", 99, True),
    ]


def test_live_keys_maps_each_live_key_to_its_index(registry_session: Session) -> None:
    rows = [
        create_context(session=registry_session, key=f"k{i}", kind="complex")[0] for i in range(4)
    ]
    retire_context(session=registry_session, key="k2")
    again, _ = create_context(session=registry_session, key="k2", kind="complex")
    registry_session.commit()

    assert sorted(live_keys(session=registry_session)) == [
        ("k0", rows[0].index),
        ("k1", rows[1].index),
        ("k2", again.index),
        ("k3", rows[3].index),
    ]
    assert again.index > rows[3].index


def test_retired_since_lists_only_retirements_from_that_time_on(
    registry_session: Session,
) -> None:
    rows = [
        create_context(session=registry_session, key=f"k{i}", kind="complex")[0] for i in range(3)
    ]
    retire_context(session=registry_session, key="k0")
    registry_session.commit()
    between = datetime.now(UTC)
    time.sleep(0.01)
    retire_context(session=registry_session, key="k1")
    registry_session.commit()

    assert retired_since(session=registry_session, since=between) == [("k1", rows[1].index)]
    assert sorted(retired_since(session=registry_session, since=between - timedelta(hours=1))) == [
        ("k0", rows[0].index),
        ("k1", rows[1].index),
    ]
    assert retired_since(session=registry_session, since=datetime.now(UTC)) == []


def test_list_contexts_pages_in_index_order_with_total(registry_session: Session) -> None:
    create_contexts(
        session=registry_session, kind="binary", items=[(f"k{i:02d}", i, None) for i in range(25)]
    )
    retire_context(session=registry_session, key="k00")
    retire_context(session=registry_session, key="k10")
    registry_session.commit()

    page, total = list_contexts(session=registry_session, limit=10, offset=0)
    assert total == 23
    assert [row.key for row in page] == [f"k{i:02d}" for i in [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]]
    page, total = list_contexts(session=registry_session, limit=10, offset=20)
    assert total == 23
    assert [row.key for row in page] == ["k22", "k23", "k24"]
    assert list_contexts(session=registry_session, limit=0, offset=0) == ([], 23)
    assert list_contexts(session=registry_session, limit=10, offset=100) == ([], 23)
    with pytest.raises(ValueError, match="non-negative"):
        list_contexts(session=registry_session, limit=-1, offset=0)
