"""The docs site typesets its math with no network: build it, open loss pages in headless Chromium.

Slow (it builds the whole site, about a minute): run with ``pytest -m slow tests/test_docs_browser.py``
or ``make docs-check``. Needs the ``docs`` extra (mkdocs, the bundled MathJax, selenium) and the
Debian packages ``chromium`` and ``chromium-driver``; skipped without them.

The site is served from 127.0.0.1; Chromium resolves every other host name to nothing
(``--host-resolver-rules``) and its network log must show no request to anything but the local
server, no failed or 404 request, MathJax's output elements (``mjx-container``) in every math
block, no MathJax error (``mjx-merror``) and no raw TeX left on the page.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

#: Pages with math: docstrings whose ``.. math::`` blocks the issue asked for, and two references.
PAGES = ["api/losses/OneWayPartialAUCLoss/", "api/optim/PDSCA/", "api/losses/AUCMLoss/", "api/metrics/"]

pytestmark = pytest.mark.slow


def _need_tools() -> None:
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("selenium", reason="the docs extra: pip install -e '.[docs]'")
    for path, deb in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"missing: run apt-get install {deb}")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    _need_tools()
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _need_tools()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1280,2000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _network_events(driver) -> list[dict]:
    return [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]


_TYPESET = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) { done({mathjax: false}); return; }
MathJax.startup.promise.then(() => document.fonts.ready).then(() => {
  const blocks = Array.from(document.querySelectorAll('.arithmatex'));
  done({
    mathjax: true,
    version: MathJax.version,
    blocks: blocks.length,
    typeset: blocks.filter(b => b.querySelector('mjx-container')).length,
    display: document.querySelectorAll('mjx-container[display="true"]').length,
    errors: document.querySelectorAll('mjx-merror').length,
    raw_tex: blocks.filter(b => !b.querySelector('mjx-container')).map(b => b.textContent.slice(0, 80)),
    fonts: Array.from(document.fonts).filter(f => f.family.includes('MJXTEX') || f.family.includes('MJXZERO'))
                                       .map(f => f.status),
  });
}, err => done({mathjax: true, failed: String(err)}));
"""


@pytest.mark.parametrize("page", PAGES)
def test_loss_pages_show_typeset_math_with_no_request_leaving_localhost(server, browser, page):
    browser.get("about:blank")
    browser.get_log("performance")  # drop the events of earlier pages
    browser.get(f"{server}/{page}")
    result = browser.execute_async_script(_TYPESET)
    events = _network_events(browser)
    requested = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    local = urlparse(server).netloc
    # the network: every http(s)/ws(s) request (chrome://, data:, blob: are the browser's own)
    outside = [u for u in requested if urlparse(u).scheme in ("http", "https", "ws", "wss", "ftp")
               and urlparse(u).netloc != local]
    failed = [e["params"] for e in events if e["method"] == "Network.loadingFailed"]
    bad_status = [(e["params"]["response"]["url"], e["params"]["response"]["status"]) for e in events
                  if e["method"] == "Network.responseReceived" and e["params"]["response"]["status"] >= 400]
    assert not outside, f"requests leaving localhost: {outside}"
    assert not failed and not bad_status, (failed, bad_status)
    assert any(u.endswith("/javascripts/mathjax/tex-mml-chtml.js") for u in requested), requested
    assert result.get("mathjax") and "failed" not in result, result
    assert result["version"].startswith("3."), result
    assert result["blocks"] > 0 and result["typeset"] == result["blocks"], result
    assert result["display"] > 0, result  # the ``.. math::`` blocks are display math
    assert result["errors"] == 0 and not result["raw_tex"], result
    # MathJax's web fonts came from the site: those the page uses are loaded (unused faces stay
    # "unloaded"), none failed
    assert "loaded" in result["fonts"] and "error" not in result["fonts"], result
    assert "\\frac" not in browser.find_element("css selector", "article").text  # no TeX source left visible
