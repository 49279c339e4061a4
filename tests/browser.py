"""A headless Chromium for the tests that must see a page rendered (report.html, count.html,
the serve page). Needs Debian's chromium and chromium-driver (see .ci/run) and selenium; without
them a test skips, unless WBCNET_REQUIRE_BROWSER=1 (as .ci/run sets) makes it fail."""
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def missing_browser(reason: str):
    """Skip on a laptop; fail where the browser was promised, so CI cannot pass without rendering."""
    if os.environ.get("WBCNET_REQUIRE_BROWSER") == "1":
        pytest.fail(f"WBCNET_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@contextmanager
def chrome(profile: Path):
    """A Chrome driver with the console log recorded; `profile` is removed afterwards."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing_browser("selenium is not installed (pip install -e '.[test]')")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        missing_browser(f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1300,1000", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver path is given, so Selenium Manager never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def page_state(driver) -> dict:
    """readyState, title and every image's (alt, complete, naturalWidth) of the page shown."""
    return driver.execute_script(
        "return {ready: document.readyState, title: document.title,"
        " images: Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])};")


def console_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
