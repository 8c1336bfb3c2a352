"""The /ui page in a real browser: how long the list of contexts takes to load, in the browser
and on the server, and the screenshots of the README.

A `psp serve` (role all, a small model) holds `--contexts` contexts, `--history` of them with
`--history-hours` of hourly history (some drifting; `service.testing.tenant_history`). A headless
Chromium (`service.testing.browser`) logs in with an admin key and loads the list `--loads`
times under each sort, then one context's page. The browser's navigation timing gives the load
time (request to the load event); the page's `Server-Timing` header gives the server's share.

Run: `python benchmarks/ui_page.py [--contexts 5000] [--loads 20] [--postgres]
[--screenshots docs/img]`. Goal: the list loads in under 1 s, under 200 ms on the server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
from _harness import machine_line, percentile, print_table
from _stores import throwaway_postgres
from selenium import webdriver
from selenium.webdriver.common.by import By

from service.api.auth import issue_key
from service.testing.browser import headless_chromium
from service.testing.processes import psp_serve, running
from service.testing.tenant_history import seed_history

ADMIN, ADMIN_SPEC = issue_key(["admin", "predict", "train"], name="operator")
SORTS = ("drift", "accuracy", "examples", "trained", "key")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, default=5000)
    parser.add_argument("--history", type=int, default=60, help="contexts with history")
    parser.add_argument("--history-hours", type=int, default=72)
    parser.add_argument("--loads", type=int, default=20, help="loads of each view")
    parser.add_argument("--per-page", type=int, default=50)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--screenshots", type=Path, help="folder for the two PNGs")
    return parser.parse_args(argv)


@contextlib.contextmanager
def _site(args: argparse.Namespace, directory: Path) -> Iterator[str]:
    """A running `psp serve` with the contexts and their history; yields its base URL."""
    with contextlib.ExitStack() as stack:
        data = directory / "data"
        url = (
            stack.enter_context(throwaway_postgres())
            if args.postgres
            else f"sqlite:///{data / 'psp.db'}"
        )
        env = {
            "PSP_DATA_DIR": str(data),
            "PSP_DATABASE_URL": url,
            "PSP_DEVICE": "cpu",
            "PSP_TRAINING__STEPS_IN": "thread",
            "PSP_API_KEYS": json.dumps([ADMIN_SPEC.model_dump()]),
        }
        (server,) = stack.enter_context(running(psp_serve("ui-bench", env, directory)))
        keys = [f"tenant-{n:05d}" for n in range(args.contexts)]
        answer = httpx.post(
            f"{server.base_url}/contexts:batch",
            json={"contexts": [{"key": key} for key in keys]},
            headers={"X-API-Key": ADMIN},
            timeout=300,
        )
        answer.raise_for_status()
        _train_a_little(server.base_url, keys[-1])
        with_history = keys[: args.history]
        seed_history(
            url,
            with_history,
            hours=args.history_hours,
            drifting=with_history[::7],
            with_feedback=with_history[::3],
        )
        yield server.base_url


def _train_a_little(base_url: str, key: str) -> None:
    """A few real steps, so that the model panel shows a version above 0."""
    rows = [[(i * j % 7) / 7 for j in range(64)] for i in range(32)]
    for _ in range(3):
        answer = httpx.post(
            f"{base_url}/train/{key}?wait=true",
            json={"inputs": rows, "labels": [i % 10 for i in range(32)]},
            headers={"X-API-Key": ADMIN},
            timeout=60,
        )
        answer.raise_for_status()


def _log_in(driver: webdriver.Chrome, site: str) -> None:
    driver.get(f"{site}/ui/login")
    driver.find_element(By.ID, "api-key").send_keys(ADMIN)
    driver.find_element(By.ID, "log-in").click()
    driver.find_element(By.ID, "contexts")


def _load(driver: webdriver.Chrome, url: str) -> tuple[float, float]:
    """Browser load time and server time of one navigation, in ms."""
    driver.get(url)
    timing: dict[str, float] = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return {load: n.loadEventEnd - n.startTime, server: n.serverTiming[0].duration};"
    )
    return timing["load"], timing["server"]


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    print(f"ui_page: {machine_line()}")
    registry = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"{args.contexts:,} contexts ({args.history} with {args.history_hours} h of history), "
        f"{args.per_page} a page, registry {registry}, {args.loads} loads of each view"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="psp-ui-") as directory:
        site_args = _site(args, Path(directory))
        with site_args as site, headless_chromium() as driver:
            _log_in(driver, site)
            views = [(f"list, by {sort}", f"sort={sort}&order=desc") for sort in SORTS]
            views.append(("list, last page", f"sort=key&order=asc&page={args.contexts // 50}"))
            for name, query in views:
                url = f"{site}/ui?{query}&per_page={args.per_page}"
                rows.append(_measure(driver, name, url, args.loads))
            context = f"{site}/ui/contexts/tenant-00000?hours=168"
            rows.append(_measure(driver, "one context, 7 days", context, args.loads))
            if args.screenshots:
                _screenshots(driver, site, args.screenshots)
    print_table(
        ["view", "load ms median", "load ms p95", "server ms median", "server ms p95"], rows
    )
    print("goal: load < 1000 ms, server < 200 ms")


def _measure(driver: webdriver.Chrome, name: str, url: str, loads: int) -> list[object]:
    _load(driver, url)  # warm: the first load of a view compiles its queries
    measured = [_load(driver, url) for _ in range(loads)]
    loaded = [load for load, _ in measured]
    served = [server for _, server in measured]
    return [
        name,
        f"{percentile(loaded, 50):.0f}",
        f"{percentile(loaded, 95):.0f}",
        f"{percentile(served, 50):.1f}",
        f"{percentile(served, 95):.1f}",
    ]


def _screenshots(driver: webdriver.Chrome, site: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(1400, 1200)
    driver.get(f"{site}/ui?per_page=25")
    driver.save_screenshot(str(folder / "ui-contexts.png"))
    driver.get(f"{site}/ui/contexts/tenant-00021?hours=168")  # drifting, with late labels
    driver.set_window_size(1400, 1500)
    driver.save_screenshot(str(folder / "ui-context.png"))
    print(f"screenshots in {folder}: ui-contexts.png, ui-context.png")


if __name__ == "__main__":
    main(sys.argv[1:])
