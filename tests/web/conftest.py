"""Browser tests of the web view: a real daemon with `--web`, real connections through a real
`chimney-peer echo`, and Debian's headless Chromium driven by Playwright.

Chromium is `/usr/bin/chromium` (`.ci/run` installs the `chromium` package when it is missing);
Playwright's own browser download cannot work on these machines and is never used. A missing
browser fails these tests: they never skip. Screenshots land in `tests/web/screenshots/`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.support import WebDaemon, web_daemon

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}


@pytest.fixture(scope="module")
def wd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDaemon]:
    """One web daemon per test module."""
    with web_daemon(tmp_path_factory.mktemp("web")) as w:
        yield w


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, on a fresh profile directory; one per test module."""
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)"
    )
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chimneyd-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport=VIEWPORT,
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A new tab; JavaScript errors on it fail the test."""
    p = browser.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.set_default_timeout(15_000)
    try:
        yield p
    finally:
        p.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
