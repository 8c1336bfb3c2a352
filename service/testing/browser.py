"""A headless Chromium driven through chromedriver, for the tests and the benchmark of the
`/ui` page.

It uses Debian's `chromium` and `chromium-driver` packages (`apt-get install -y chromium
chromium-driver`), never a browser or driver fetched at run time: Selenium is given both paths,
so its driver manager has nothing to download. The flags keep Chromium off the network (without
them it waits on update and sync services that a closed network never answers) and each browser
gets a fresh profile directory. Selenium is a `dev` dependency: nothing in the running service
imports this module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = os.environ.get("PSP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PSP_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver"

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
)


def missing() -> str | None:
    """Why no browser can start here (a sentence saying how to get one), or None."""
    absent = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if not absent:
        return None
    return (
        f"{' and '.join(absent)} not found: install Debian's packages ({INSTALL}), or point "
        "PSP_TEST_CHROMIUM and PSP_TEST_CHROMEDRIVER at a Chromium and its chromedriver"
    )


@contextlib.contextmanager
def headless_chromium(width: int = 1400, height: int = 1000) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile, quit (and its profile removed) afterwards.

    Raises:
        RuntimeError: Chromium or chromedriver is missing (`missing` says which).
    """
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    profile = Path(tempfile.mkdtemp(prefix="psp-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
