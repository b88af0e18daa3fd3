"""The HTML report in a real browser (headless Chromium via selenium): slow, run by `make bench`."""

from __future__ import annotations

import pytest

from _trust import tiny_suite
from xrisk.recipes.runner import RunContext
from xrisk.trust.browser import browser_available, check_page
from xrisk.trust.dimensions import TrustSettings
from xrisk.trust.rules import RandomAdapter
from xrisk.trust.run import run_evaluation

pytestmark = [pytest.mark.slow, pytest.mark.skipif(browser_available() is not None,
                                                   reason=f"needs {browser_available()}")]


def test_report_page_renders_offline_without_errors(tmp_path_factory, tmp_path):
    suite = tiny_suite(str(tmp_path_factory.getbasetemp()))
    out = tmp_path / "run"
    with RunContext(out, recipe="trust", args={"adapter": "random"}, quiet=True, plot=False) as ctx:
        run_evaluation(ctx, suite=suite, adapter=RandomAdapter(seed=0), plot=True,
                       settings=TrustSettings(attacks=(), pgd_epsilons=(), noise_variances=(100.0,), ego_records=4))
    check = check_page(out / "report.html", out / "report.png")
    assert check.ok, check.problems()
    assert check.console_errors == [] and check.requests == []
    assert len(check.tables) >= 10 and all(rows >= 2 and height > 0 for rows, height in check.tables)
    assert len(check.images) >= 4 and all(ok and w > 0 and rw > 0 for ok, w, rw in check.images)
    assert check.screenshot is not None and check.screenshot.stat().st_size > 10_000
    assert check.title.startswith("Trustworthiness report")


def test_the_checker_catches_requests_and_console_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><head><title>bad</title></head><body><table><tr><td>x</td></tr></table>"
                   "<img src=\"http://127.0.0.1:9/missing.png\"><script>undefinedFunction();</script></body></html>")
    check = check_page(bad, tmp_path / "bad.png")
    assert not check.ok
    assert any("127.0.0.1:9" in u for u in check.requests)
    assert any("undefinedFunction" in e for e in check.console_errors)
    assert any("image 0" in p for p in check.problems()) and any("table 0" in p for p in check.problems())
