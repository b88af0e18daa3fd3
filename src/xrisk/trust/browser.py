"""Check a report page in a real browser: headless Chromium driven by selenium.

:func:`check_page` opens an HTML file in a fresh headless Chromium profile (Debian packages
``chromium`` and ``chromium-driver``; the ``selenium`` package) and reports what a reader would
meet: console errors, requests the page made to anything but itself and ``data:`` URIs, every
table (rows and rendered height) and every image (loaded, natural and rendered width). It saves a
full-page screenshot. The report of :mod:`xrisk.trust.report` passes with no console error and
no request.

Example::

    check = check_page("runs/trust-vqa/report.html", "runs/trust-vqa/report.png")
    assert check.ok, check.problems()
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CHROMIUM", "CHROMEDRIVER", "PageCheck", "browser_available", "check_page"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage")


@dataclass
class PageCheck:
    """What the browser saw.

    Attributes:
        url: the page's ``file://`` URL.
        console_errors: console entries of level SEVERE.
        requests: URLs requested other than the page itself and ``data:`` URIs.
        tables: ``(rows, rendered height in px)`` per table.
        images: ``(loaded, natural width, rendered width)`` per image.
        screenshot: the saved full-page PNG.
        title: the page title.
    """

    url: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    tables: list[tuple[int, float]] = field(default_factory=list)
    images: list[tuple[bool, int, float]] = field(default_factory=list)
    screenshot: Path | None = None
    title: str = ""

    def problems(self) -> list[str]:
        """Everything that is wrong (empty when the page is fine)."""
        out = [f"console error: {e}" for e in self.console_errors]
        out += [f"request to {u}" for u in self.requests]
        out += [f"table {i} is empty or not rendered" for i, (rows, h) in enumerate(self.tables) if rows < 2 or h <= 0]
        out += [f"image {i} did not render" for i, (ok, w, rw) in enumerate(self.images) if not ok or w <= 0 or rw <= 0]
        if not self.tables:
            out.append("no table")
        return out

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems()


def browser_available() -> str | None:
    """None when selenium, Chromium and chromedriver are installed; else what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package (pip install selenium)"
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} (apt-get install {pkg})"
    return None


def check_page(html: str | Path, screenshot: str | Path, *, width: int = 1280, timeout: float = 60.0) -> PageCheck:
    """Open ``html`` in headless Chromium, collect console errors, requests, tables, images; save a screenshot.

    Raises:
        RuntimeError: selenium, Chromium or chromedriver is missing (the message says which).
    """
    missing = browser_available()
    if missing is not None:
        raise RuntimeError(f"checking a page in a browser needs {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    page = Path(html).resolve()
    url = page.as_uri()
    profile = tempfile.mkdtemp(prefix="xrisk-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(timeout)
        driver.get("about:blank")
        driver.get_log("performance")  # drop what the browser's own start page loaded
        driver.get_log("browser")
        driver.get(url)
        driver.execute_script("return document.readyState")
        check = PageCheck(url=url, title=driver.title)
        check.console_errors = [str(e.get("message", e)) for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        for entry in driver.get_log("performance"):
            try:
                message = json.loads(entry["message"])["message"]
            except (KeyError, ValueError):
                continue
            if message.get("method") == "Network.requestWillBeSent":
                req = message.get("params", {}).get("request", {}).get("url", "")
                if req and req != url and not req.startswith("data:"):
                    check.requests.append(req)
        check.tables = [(int(r), float(h)) for r, h in driver.execute_script(
            "return Array.from(document.querySelectorAll('table'))"
            ".map(t => [t.rows.length, t.getBoundingClientRect().height]);")]
        check.images = [(bool(c), int(w), float(rw)) for c, w, rw in driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width]);")]
        height = int(driver.execute_script("return document.documentElement.scrollHeight;"))
        driver.set_window_size(width, min(max(height, 600), 16000))
        shot = Path(screenshot)
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
        check.screenshot = shot
        return check
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

