"""Browser tests: the real Host (in-process, tests/inproc/cluster.py) driven
through its dashboard by headless Debian chromium and selenium.

Needs `apt-get install chromium chromium-driver` (scripts/test.sh installs both
and sets HAKURIVER_REQUIRE_BROWSER=1); without them every test here is skipped,
saying so (failed, under HAKURIVER_REQUIRE_BROWSER=1). Nothing is
downloaded at run time: selenium is given /usr/bin/chromedriver, and chromium
runs with its network features off and a fresh profile in a temporary dir.

Screenshots go to $HAKURIVER_SCREENSHOTS when it is set (the ones in
docs/dashboard/ were made with HAKURIVER_SCREENSHOTS=docs/dashboard), else to
the test's temporary dir.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.inproc.conftest import cluster, fake_nvml  # noqa: F401 - fixtures these tests use

REQUIRE_ENV = "HAKURIVER_REQUIRE_BROWSER"
"""Set to 1 (scripts/test.sh does) and a missing chromium fails the tests instead of skipping them."""
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,860",
)


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(path)):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless chromium, closed after the test."""
    reason = _missing()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":  # CI: installed by scripts/test.sh, so missing is a failure
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
        # No script error on any page (refused calls, 401/403, are the test's own doing).
        errors = [e["message"] for e in driver.get_log("browser") if "Failed to load resource" not in e["message"]]
        assert errors == [], f"the pages logged errors: {errors}"
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the tests save their screenshots (see the module doc)."""
    target = os.environ.get("HAKURIVER_SCREENSHOTS")
    path = Path(target) if target else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path
