"""The operator's page through the app: who may read it, what each key sees, sorting and
paging, the context page, and that it fetches nothing from elsewhere."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.auth import issue_key
from service.app import create_app
from service.testing.faults import FaultSettings, injected_faults
from service.testing.processes import wait_until
from service.ui import access
from tests.service.api.helpers import rows, sqlite_settings

ADMIN, ADMIN_SPEC = issue_key(["admin", "predict", "train"], name="operator")
ACME, ACME_SPEC = issue_key(["predict"], key_prefix="acme-", name="acme reader")
KEYS = ["acme-1", "acme-2", "acme-3", "globex-1", "globex-2"]


def _keys_shown(html: str) -> list[str]:
    return re.findall(r'<tr class="context" data-key="([^"]+)"', html)


def _commit(client: TestClient, counts: dict[int, tuple[int, int]], entry: int) -> None:
    registry = client.app.state.runtime.registry  # type: ignore[attr-defined]
    client.portal.call(
        lambda: registry.commit_training(shard=0, last_entry_id=f"{entry}-0", counts=counts)
    )


@pytest.fixture
def open_client(tmp_path: Path) -> Iterator[TestClient]:
    """The service without keys, five contexts, one of which has drifted."""
    settings = sqlite_settings(tmp_path, training={"steps_in": "thread"})
    with TestClient(create_app(settings)) as client:
        indices = {key: client.post("/contexts", json={"key": key}).json()["index"] for key in KEYS}
        for entry in range(1, 9):
            counts = {indices[key]: (10 * (n + 1), 9 * (n + 1)) for n, key in enumerate(KEYS)}
            _commit(client, counts, entry)
        _commit(client, {indices["acme-2"]: (50, 1)}, 9)
        yield client


@pytest.fixture
def keyed_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = sqlite_settings(
        tmp_path,
        training={"steps_in": "thread"},
        api_keys=[ADMIN_SPEC.model_dump(), ACME_SPEC.model_dump()],
    )
    with TestClient(create_app(settings)) as client:
        for key in KEYS:
            client.post("/contexts", json={"key": key}, headers={"X-API-Key": ADMIN})
        yield client


def test_the_list_sorts_by_each_column(open_client: TestClient) -> None:
    page = open_client.get("/ui")
    assert page.status_code == 200
    # Drifted first by default, then registration order.
    assert _keys_shown(page.text) == ["acme-2", "acme-1", "acme-3", "globex-1", "globex-2"]
    by_examples = open_client.get("/ui", params={"sort": "examples", "order": "desc"}).text
    assert _keys_shown(by_examples) == ["globex-2", "globex-1", "acme-3", "acme-2", "acme-1"]
    by_key = open_client.get("/ui", params={"sort": "key", "order": "asc"}).text
    assert _keys_shown(by_key) == sorted(KEYS)
    by_accuracy = open_client.get("/ui", params={"sort": "accuracy", "order": "asc"}).text
    assert _keys_shown(by_accuracy)[0] == "acme-2"
    assert 'aria-sort="ascending"' in by_accuracy


def test_the_list_pages_and_filters(open_client: TestClient) -> None:
    query = {"sort": "key", "order": "asc", "per_page": 2}
    first = open_client.get("/ui", params=query).text
    assert _keys_shown(first) == ["acme-1", "acme-2"]
    assert "page 1 of 3" in first
    last = open_client.get("/ui", params={**query, "page": 3}).text
    assert _keys_shown(last) == ["globex-2"] and "page 3 of 3" in last
    assert _keys_shown(open_client.get("/ui", params={**query, "page": 9}).text) == []
    globex = open_client.get("/ui", params={"prefix": "globex-", "sort": "key"}).text
    assert sorted(_keys_shown(globex)) == ["globex-1", "globex-2"]


def test_the_list_shows_counts_accuracy_and_drift(open_client: TestClient) -> None:
    html = open_client.get("/ui", params={"sort": "key", "order": "asc"}).text
    row = re.search(r'data-key="acme-2">(.*?)</tr>', html, re.S)
    assert row is not None
    assert 'data-value="210"' in row[1]  # 8 x 20 + 50 examples
    assert f'data-value="{(8 * 18 + 1) / 210}"' in row[1]
    assert '<span class="badge drifted">drifted</span>' in row[1]
    assert "<polyline" in row[1] or "<circle" in row[1]
    states = dict(re.findall(r'data-key="([^"]+)">.*?<span class="badge (\w+)">', html, re.S))
    # acme-1 has 80 rows, fewer than the detector's warm-up; the others are past it.
    assert states == {
        "acme-1": "learning",
        "acme-2": "drifted",
        "acme-3": "stable",
        "globex-1": "stable",
        "globex-2": "stable",
    }


def test_the_context_page_shows_its_curve_drift_and_calls(open_client: TestClient) -> None:
    page = open_client.get("/ui/contexts/acme-2")
    assert page.status_code == 200
    chart = re.search(r'<div id="accuracy-chart">(.*?)</div>', page.text, re.S)
    assert chart is not None and 'class="train"' in chart[1]
    assert 'class="marker"' in chart[1]  # the drift, on the curve
    assert page.text.count('<tr class="drift-event">') == 1
    assert "0.020" in page.text  # the accuracy it fell to
    assert "$PSP_URL/predict/acme-2" in page.text
    assert "http://testserver" in page.text
    assert open_client.get("/ui/contexts/acme-1").text.count('class="drift-event"') == 0


def test_nothing_is_fetched_from_elsewhere(open_client: TestClient) -> None:
    for path in ("/ui", "/ui/contexts/acme-2", "/ui/login"):
        page = open_client.get(path)
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert re.match(r"app;dur=\d+\.\d", page.headers["server-timing"])
        assert "<script" not in page.text
        assert not re.search(r'(src|href)="(https?:)?//', page.text)


def test_a_bad_query_is_a_422_with_a_sentence(open_client: TestClient) -> None:
    for params in ({"sort": "colour"}, {"page": 0}, {"per_page": 501}, {"order": "up"}):
        answer = open_client.get("/ui", params=params)
        assert answer.status_code == 422
        assert "send" in answer.json()["detail"]
    missing = open_client.get("/ui/contexts/nobody")
    assert missing.status_code == 404 and "no context has the key" in missing.text


def test_without_a_key_the_page_asks_for_one(keyed_client: TestClient) -> None:
    for path in ("/ui", "/ui/contexts/acme-1"):
        answer = keyed_client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    wrong = keyed_client.post("/ui/login", data={"key": "psp_nope_nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert access.COOKIE not in wrong.cookies


def test_a_prefixed_key_sees_only_its_contexts(keyed_client: TestClient) -> None:
    login = keyed_client.post("/ui/login", data={"key": ACME}, follow_redirects=False)
    assert login.status_code == 303
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    page = keyed_client.get("/ui")
    assert sorted(_keys_shown(page.text)) == ["acme-1", "acme-2", "acme-3"]
    assert "acme reader" in page.text
    assert "an admin key without a prefix shows them" in page.text
    assert keyed_client.get("/ui/contexts/acme-1").status_code == 200
    outside = keyed_client.get("/ui/contexts/globex-1")
    assert outside.status_code == 403 and "globex-1" not in _keys_shown(outside.text)
    assert keyed_client.get("/ui", params={"prefix": "globex-"}).status_code == 403
    keyed_client.post("/ui/logout")
    assert keyed_client.get("/ui", follow_redirects=False).status_code == 303


def test_a_prefix_is_exact_and_case_sensitive_on_the_page(keyed_client: TestClient) -> None:
    """SQLite compares with LIKE without case: `acme-` must still not show `ACME-victim`."""
    for key in ("ACME-victim", "Acme-4", "acmeX"):
        made = keyed_client.post("/contexts", json={"key": key}, headers={"X-API-Key": ADMIN})
        assert made.status_code == 201, made.text
    mine = {"X-API-Key": ACME}
    page = keyed_client.get("/ui", headers=mine)
    assert page.status_code == 200
    assert sorted(_keys_shown(page.text)) == ["acme-1", "acme-2", "acme-3"]
    assert keyed_client.get("/ui/contexts/ACME-victim", headers=mine).status_code == 403
    assert keyed_client.get("/ui", params={"prefix": "ACME-"}, headers=mine).status_code == 403
    everyone = keyed_client.get("/ui", params={"prefix": "ACME-"}, headers={"X-API-Key": ADMIN})
    assert _keys_shown(everyone.text) == ["ACME-victim"]


def test_a_key_in_a_header_needs_no_login(keyed_client: TestClient) -> None:
    page = keyed_client.get("/ui", headers={"Authorization": f"Bearer {ADMIN}"})
    assert page.status_code == 200
    assert sorted(_keys_shown(page.text)) == sorted(KEYS)
    assert "an admin key without a prefix shows them" not in page.text


def test_an_admin_sees_divergences_and_dead_letters(tmp_path: Path) -> None:
    # The first step leaves NaN in the weights: the trainer restores the last checkpoint and
    # sets the entry aside.
    settings = sqlite_settings(tmp_path, training={"steps_in": "thread"})
    faults = FaultSettings(nonfinite_steps=1)
    with injected_faults(faults), TestClient(create_app(settings)) as client:
        client.post("/contexts", json={"key": "poisoned"})
        client.post("/train/poisoned", json={"inputs": rows(3), "labels": [1, 2, 3]})
        wait_until(lambda: 'id="dead-letters"' in client.get("/ui").text, 30)
        page = client.get("/ui").text
        shard = re.search(r'<tr class="shard">(.*?)</tr>', page, re.S)
        assert shard is not None
        cells = re.findall(r"<td[^>]*>(.*?)</td>", shard[1], re.S)
        assert int(cells[5]) >= 1 and cells[6] == "1"  # divergences, dead letters
        letters = re.search(r'<table id="dead-letters">(.*?)</table>', page, re.S)
        assert letters is not None and "#1" in letters[1] and "non-finite" in letters[1]
