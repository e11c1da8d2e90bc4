"""Open an explorer page in headless Chromium (Debian's `chromium`, driven by the Python package
`playwright` through `executable_path`; Playwright never downloads a browser here): for the
browser test and `benchmarks.bench_explore`.

Each page gets a fresh profile and Chromium's background traffic switched off; every request the
page makes is recorded, and any that is not the page's own file (or a data: URL) is aborted.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip
CHROMIUM_NAMES = ("chromium", "chromium-browser")
INSTALL_CHROMIUM = "apt-get install chromium (Debian's package)"
INSTALL_PLAYWRIGHT = "pip install playwright (the Python package; it needs no browser download)"


def find_chromium() -> str | None:
    """$DYNAST_CHROMIUM, else the first of CHROMIUM_NAMES on the PATH."""
    for name in (os.environ.get("DYNAST_CHROMIUM"), *CHROMIUM_NAMES):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def missing_tools() -> str | None:
    """What to install before a page can be opened, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return INSTALL_PLAYWRIGHT
    return None if find_chromium() else INSTALL_CHROMIUM


@dataclass
class OpenedPage:
    page: object  # playwright.sync_api.Page
    url: str
    requests: list[str] = field(default_factory=list)


@contextmanager
def open_page(path: str | Path, viewport: tuple[int, int] = (1300, 1000)) -> Iterator[OpenedPage]:
    """The page at `path`, loaded until its script has run (`body[data-ready]`)."""
    from playwright.sync_api import sync_playwright

    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError(f"no Chromium found: {INSTALL_CHROMIUM}")
    url = Path(path).resolve().as_uri()
    with sync_playwright() as driver, tempfile.TemporaryDirectory() as profile:
        context = driver.chromium.launch_persistent_context(
            profile,
            executable_path=binary,
            headless=True,
            args=list(CHROMIUM_FLAGS),
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            page = context.new_page()
            opened = OpenedPage(page, url)
            page.on("request", lambda request: opened.requests.append(request.url))
            page.route(re.compile(r"^(?!file:|data:)"), lambda route: route.abort())
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            yield opened
        finally:
            context.close()
