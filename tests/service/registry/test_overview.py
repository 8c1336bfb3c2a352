"""The list page's query: live contexts under a prefix, sorted by any column with missing
values last, paged, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from service.registry.accuracy import Scores
from service.registry.overview import SORT_KEYS, SortKey
from service.registry.store import RegistryStore

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases


async def _store(engine: Engine) -> tuple[RegistryStore, dict[str, int]]:
    """Four contexts: `b` trained well then drifted, `c` trained and refused some, `a` and
    `ACME-x` never trained; `gone` retired."""
    store = RegistryStore(engine, "complex")
    indices = {}
    for key in ("b", "a", "c", "ACME-x", "gone"):
        row, _ = await store.create(key, None, None)
        indices[key] = row.index
    for entry in range(1, 6):
        counts = {indices["b"]: (50, 45), indices["c"]: (20, 10, 1)}
        await store.commit_training(shard=0, last_entry_id=f"{entry}-0", counts=counts)
    await store.commit_training(shard=0, last_entry_id="6-0", counts={indices["b"]: (50, 1)})
    await store.add_feedback_scores(indices["c"], Scores(4, 3))
    await store.retire("gone")
    return store, indices


async def _keys(store: RegistryStore, sort: SortKey, descending: bool, prefix: str = "") -> list:
    rows, _ = await store.overview(prefix, sort, descending, 10, 0)
    return [row.key for row in rows]


async def test_every_column_sorts_with_missing_values_last(registry_engine: Engine) -> None:
    store, _ = await _store(registry_engine)
    # Where the capitals go is the database collation's choice.
    assert [key for key in await _keys(store, "key", False) if key.islower()] == ["a", "b", "c"]
    assert [key for key in await _keys(store, "key", True) if key.islower()] == ["c", "b", "a"]
    assert await _keys(store, "examples", True) == ["b", "c", "a", "ACME-x"]
    assert await _keys(store, "refused", True) == ["c", "b", "a", "ACME-x"]
    # b: 226/300, c: 50/100; never trained last, in registration order, either way.
    assert await _keys(store, "accuracy", True) == ["b", "c", "a", "ACME-x"]
    assert await _keys(store, "accuracy", False) == ["c", "b", "a", "ACME-x"]
    assert (await _keys(store, "trained", True))[2:] == ["a", "ACME-x"]
    assert await _keys(store, "drift", True) == ["b", "a", "c", "ACME-x"]
    assert await _keys(store, "shard", False) == ["b", "a", "c", "ACME-x"]
    assert set(SORT_KEYS) == {"key", "shard", "examples", "refused", "trained", "accuracy", "drift"}


async def test_a_summary_carries_what_the_page_shows(registry_engine: Engine) -> None:
    store, indices = await _store(registry_engine)
    rows, total = await store.overview("", "drift", True, 10, 0)
    assert total == 4
    by_key = {row.key: row for row in rows}
    b, c = by_key["b"], by_key["c"]
    assert (b.key, b.examples_seen, b.refused, b.drifts) == ("b", 300, 0, 1)
    assert b.prequential_accuracy == pytest.approx(226 / 300)
    assert b.last_drift_at is not None and b.last_trained is not None
    assert b.detectors == [(0, 0.0)]  # the drift started the detector afresh
    assert (c.refused, c.drifts, c.last_drift_at) == (5, 0, None)
    assert sorted(rows_ for rows_, _ in c.detectors) == [4, 100]  # train and feedback
    never = by_key["a"]
    assert (never.last_trained, never.prequential_accuracy, never.detectors) == (None, None, [])
    assert never.index == indices["a"]


async def test_pages_and_prefixes(registry_engine: Engine) -> None:
    store, _ = await _store(registry_engine)
    first, total = await store.overview("", "examples", True, 2, 0)
    second, _ = await store.overview("", "examples", True, 2, 2)
    assert total == 4 and [r.key for r in first + second] == ["b", "c", "a", "ACME-x"]
    # Prefixes are exact and case-sensitive on both databases.
    assert await _keys(store, "key", False, prefix="ACME-") == ["ACME-x"]
    assert await _keys(store, "key", False, prefix="acme-") == []
    assert (await store.overview("zz", "key", False, 10, 0)) == ([], 0)
