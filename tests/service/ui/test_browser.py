"""The /ui page in a real browser: Debian's Chromium, driven by Selenium through chromedriver,
against a real `psp serve` holding 5,000 contexts.

Never skipped: without Chromium the tests fail, saying what to install (CI installs it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from service.api.auth import issue_key
from service.testing.browser import headless_chromium, missing
from service.testing.processes import psp_serve, running
from service.testing.tenant_history import seed_history

# Every test here starts real `psp` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process

ADMIN, ADMIN_SPEC = issue_key(["admin", "predict", "train"], name="operator")
ACME, ACME_SPEC = issue_key(["predict"], key_prefix="acme-", name="acme")
ACME_KEYS = [f"acme-{n:04d}" for n in range(500)]
OTHER_KEYS = [f"tenant-{n:04d}" for n in range(4500)]
DRIFTING = ["acme-0007", "tenant-0042"]
HISTORY = ["acme-0001", "acme-0002", "tenant-0001", "tenant-0002", *DRIFTING]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `psp serve` with 5,000 contexts, a few of them with three days of history."""
    directory = tmp_path_factory.mktemp("ui")
    env = {
        "PSP_DATA_DIR": str(directory / "data"),
        "PSP_DEVICE": "cpu",
        "PSP_MODEL__HIDDEN": "[32]",
        "PSP_TRAINING__STEPS_IN": "thread",
        "PSP_API_KEYS": json.dumps([ADMIN_SPEC.model_dump(), ACME_SPEC.model_dump()]),
    }
    with running(psp_serve("ui", env, directory)) as (server,):
        contexts = [{"key": key} for key in ACME_KEYS + OTHER_KEYS]
        answer = httpx.post(
            f"{server.base_url}/contexts:batch",
            json={"contexts": contexts},
            headers={"X-API-Key": ADMIN},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        database = f"sqlite:///{directory / 'data' / 'psp.db'}"
        seed_history(database, HISTORY, hours=72, drifting=DRIFTING, with_feedback=["acme-0007"])
        yield server.base_url


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    reason = missing()
    if reason:
        pytest.fail(reason, pytrace=False)
    with headless_chromium() as driver:
        yield driver


def _log_in(driver: webdriver.Chrome, site: str, key: str) -> None:
    driver.get(f"{site}/ui/login")
    driver.delete_all_cookies()
    driver.get(f"{site}/ui")
    assert driver.current_url.endswith("/ui/login")  # asked to log in first
    driver.find_element(By.ID, "api-key").send_keys(key)
    driver.find_element(By.ID, "log-in").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "contexts"))


def _column(driver: webdriver.Chrome, column: int) -> list[str]:
    cells = driver.find_elements(By.CSS_SELECTOR, f"tr.context td:nth-child({column})")
    return [cell.get_attribute("data-value") or "" for cell in cells]


def _keys(driver: webdriver.Chrome) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.context")
    return [row.get_attribute("data-key") or "" for row in rows]


def _click(driver: webdriver.Chrome, selector: str) -> None:
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.CSS_SELECTOR, selector).click()
    WebDriverWait(driver, 30).until(lambda d: old != d.find_element(By.TAG_NAME, "html"))


def _navigation(driver: webdriver.Chrome) -> dict[str, Any]:
    timing: dict[str, Any] = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return {load: n.loadEventEnd - n.startTime,"
        " server: n.serverTiming.map(t => t.duration),"
        " resources: performance.getEntriesByType('resource').map(r => r.name)};"
    )
    return timing


def test_the_list_of_5000_contexts_sorts_and_pages(
    browser: webdriver.Chrome, site: str, record_property: Any
) -> None:
    _log_in(browser, site, ADMIN)
    assert browser.find_element(By.ID, "total").text == "5,000"
    assert len(_keys(browser)) == 50
    timing = _navigation(browser)
    assert timing["resources"] == []  # nothing fetched besides the page itself
    assert len(timing["server"]) == 1  # the Server-Timing header reached the browser
    record_property("list_load_ms", round(timing["load"], 1))
    record_property("list_server_ms", round(timing["server"][0], 1))
    # Drifted contexts first by default.
    assert _keys(browser)[:2] == sorted(DRIFTING)
    assert "drifted" in browser.find_element(By.CSS_SELECTOR, "tr.context .badge").text

    _click(browser, 'th[data-sort="examples"] a')
    examples = [int(v) for v in _column(browser, 3)]
    assert examples == sorted(examples, reverse=True) and examples[0] > 0
    header = browser.find_element(By.CSS_SELECTOR, 'th[data-sort="examples"]')
    assert header.get_attribute("aria-sort") == "descending"
    _click(browser, 'th[data-sort="examples"] a')
    assert [int(v) for v in _column(browser, 3)] == [0] * 50

    _click(browser, 'th[data-sort="key"] a')
    _click(browser, 'th[data-sort="key"] a')  # descending, then ascending
    first_page = _keys(browser)
    assert first_page == ACME_KEYS[:50]
    assert browser.find_element(By.ID, "page-of").text == "page 1 of 100"
    _click(browser, "a[rel=next]")
    assert _keys(browser) == ACME_KEYS[50:100]
    assert browser.find_element(By.ID, "page-of").text == "page 2 of 100"
    _click(browser, "a[rel=last]")
    assert _keys(browser) == OTHER_KEYS[-50:]
    assert browser.find_element(By.ID, "page-of").text == "page 100 of 100"


def test_a_context_page_shows_its_curve(browser: webdriver.Chrome, site: str) -> None:
    _log_in(browser, site, ADMIN)
    _click(browser, 'tr.context[data-key="acme-0007"] td.key a')
    assert browser.find_element(By.ID, "context-key").text == "acme-0007"
    assert browser.find_element(By.ID, "drift-state").text == "drifted"
    chart = browser.find_element(By.ID, "accuracy-chart")
    train = chart.find_element(By.CSS_SELECTOR, "polyline.train").get_attribute("points") or ""
    assert len(train.split()) == 72  # one point an hour, three days
    assert chart.find_elements(By.CSS_SELECTOR, "polyline.feedback")
    assert chart.find_elements(By.CSS_SELECTOR, "line.marker")  # the drift, on the curve
    assert browser.find_elements(By.CSS_SELECTOR, "tr.drift-event")
    assert browser.find_elements(By.CSS_SELECTOR, "#rows-chart rect.bar")
    assert "/predict/acme-0007" in browser.find_element(By.ID, "calls").text
    assert _navigation(browser)["resources"] == []


def test_a_prefixed_key_sees_only_its_contexts(browser: webdriver.Chrome, site: str) -> None:
    _log_in(browser, site, ACME)
    assert browser.find_element(By.ID, "total").text == "500"
    assert browser.find_element(By.ID, "who").text.startswith("acme")
    _click(browser, "a[rel=last]")
    assert browser.find_element(By.ID, "page-of").text == "page 10 of 10"
    assert all(key.startswith("acme-") for key in _keys(browser))
    browser.get(f"{site}/ui/contexts/tenant-0042")
    assert "may only use contexts whose keys start with 'acme-'" in browser.page_source
    assert not browser.find_elements(By.ID, "accuracy-chart")
    browser.find_element(By.CSS_SELECTOR, "header form button").click()  # log out
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/ui/login"))
    browser.get(f"{site}/ui")
    assert browser.current_url.endswith("/ui/login")
