"""A real headless browser for tests: Debian's chromium driven through selenium.

`chrome` is a pytest fixture (import it into a test module) that yields a selenium
driver of `/usr/bin/chromium` through `/usr/bin/chromedriver`, with a fresh profile
folder and the flags this machine needs (no sandbox as root, no GPU, no QUIC, no
background traffic: nothing leaves the machine). The test is skipped, saying why, when
chromium or chromedriver is absent. `open_browser` is the same as a context manager,
for code that is not a test. `screenshot_is_blank` tells whether a PNG screenshot is one
colour all over, the usual sign that a page did not render.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from PIL import Image

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
    "--window-size=1280,1600",
)


def missing() -> str | None:
    """Why no browser can start here, or None when chromium and chromedriver are present."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is not installed (Debian packages chromium and chromium-driver; `make test` installs them)"
    return None


@contextmanager
def open_browser(page_load_timeout: float = 60) -> Iterator:
    """A selenium Chrome driver of Debian's chromium with a throwaway profile; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="autosafe-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(page_load_timeout)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def chrome() -> Iterator:
    """A headless chromium driver for one test; the test is skipped with the reason if there is none."""
    reason = missing()
    if reason is not None:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    with open_browser() as driver:
        yield driver


def screenshot_is_blank(png: bytes) -> bool:
    """Whether every pixel of a PNG image has the same colour."""
    with Image.open(io.BytesIO(png)) as image:
        low_high = image.convert("RGB").getextrema()
    return all(low == high for low, high in low_high)
