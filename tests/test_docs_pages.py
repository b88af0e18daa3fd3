"""The generated benchmarks page shows the plots bench/RESULTS.md links to (``docs/gen_pages.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture
def gen_pages(monkeypatch):
    monkeypatch.syspath_prepend(str(DOCS))
    import gen_pages

    return gen_pages


def test_bench_images_lists_the_plots_under_bench_only(gen_pages, monkeypatch, tmp_path):
    bench = tmp_path / "bench"
    (bench / "plots").mkdir(parents=True)
    (bench / "curve.png").write_bytes(b"png")
    (bench / "plots" / "fair.png").write_bytes(b"png")
    (tmp_path / "outside.png").write_bytes(b"png")
    (bench / "RESULTS.md").write_text(
        "# r\n\n![a curve](curve.png)\n\n![again](curve.png) ![gone](missing.png) ![up](../outside.png)\n"
        "![web](https://example.org/x.png) [a link, not an image](curve.png) ![sub](plots/fair.png)\n",
        encoding="utf-8")
    monkeypatch.setattr(gen_pages, "ROOT", tmp_path)
    assert gen_pages.bench_images() == [("curve.png", (bench / "curve.png").resolve()),
                                        ("plots/fair.png", (bench / "plots" / "fair.png").resolve())]
    (bench / "RESULTS.md").unlink()
    assert gen_pages.bench_images() == []


def test_every_plot_results_md_links_to_is_served(gen_pages):
    import re

    text = (gen_pages.ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", text))
    assert {rel for rel, _ in gen_pages.bench_images()} == linked
