"""The report of a trust run: tables, plots, Markdown and a self-contained HTML page.

:func:`write_report` reads ``results/<dimension>.json`` of a run folder and writes

* ``report.json``: every dimension's metrics and tables, the run's configuration, the timings;
* ``report.md``: a summary table, one section per dimension with its tables and plots;
* ``plots/*.png``: one figure per dimension (and the PGD accuracy-vs-epsilon curve), drawn with
  matplotlib's object-oriented API (the ``plot`` extra; without it the report has no figures
  and says so);
* ``report.html``: the same content in one file with the CSS and the figures inlined (PNG as
  ``data:`` URIs): no script, no font, no request to any other file or host, so it can be mailed
  or archived as is.

:func:`summary_rows` gives the headline numbers of a run (used by the summary table and by
``bench/trust.py`` to compare adapters).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xrisk.trust.dimensions import DIMENSIONS, DimensionResult

__all__ = ["load_results", "summary_rows", "timing_rows", "write_report", "markdown_table", "html_table",
           "plot_dimension"]

#: Headline metrics of each dimension: (metric key, label).
HEADLINES: dict[str, tuple[tuple[str, str], ...]] = {
    "trustfulness": (("accuracy", "closed-ended accuracy"), ("macro_f1", "macro F1"),
                     ("open_score", "open-ended score"), ("over_confidence", "over-confidence ratio")),
    "safety": (("clean_accuracy", "clean accuracy"), ("misinformation_accuracy", "misinformation accuracy"),
               ("misinstruction_accuracy", "misinstruction accuracy"), ("pgd_accuracy", "PGD accuracy"),
               ("bim_accuracy", "BIM accuracy"), ("cw_accuracy", "C&W accuracy"),
               ("black-box_accuracy", "black-box accuracy")),
    "privacy": (("leakage_zero-shot", "leakage, zero-shot"), ("leakage_protective", "leakage, protective shots"),
                ("leakage_leaking", "leakage, leaking shots"), ("refusal_zero-shot", "refusal, zero-shot"),
                ("refusal_protective", "refusal, protective shots"), ("refusal_leaking", "refusal, leaking shots")),
    "fairness": (("ego_baseline_accuracy", "accuracy without prefix"),),
}


def load_results(run_dir: str | Path) -> dict[str, DimensionResult]:
    """The finished dimensions of a run folder, in the benchmark's order."""
    folder = Path(run_dir) / "results"
    out = {}
    for name in DIMENSIONS:
        path = folder / f"{name}.json"
        if path.is_file():
            out[name] = DimensionResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    return out


def summary_rows(results: Mapping[str, DimensionResult]) -> list[dict[str, Any]]:
    """``[{"dimension", "measure", "value"}]``: the headline numbers of a run (every language and noise
    level, the largest ego-prefix spread and the spread of every subject / scene grouping)."""
    rows: list[dict[str, Any]] = []
    for name, res in results.items():
        for key, label in HEADLINES.get(name, ()):
            if key in res.metrics:
                rows.append({"dimension": name, "measure": label, "value": res.metrics[key]})
        if name == "robustness":
            for t in res.tables.get("languages and long-tail scenes", []):
                rows.append({"dimension": name, "measure": f"{t['set']}: accuracy", "value": t["accuracy"]})
                rows.append({"dimension": name, "measure": f"{t['set']}: abstention rate",
                             "value": t["abstention rate"]})
            for t in res.tables.get("Gaussian noise", []):
                label = "clean pictures: accuracy" if t["variance"] == 0 else f"noise variance {t['variance']:g}: accuracy"
                rows.append({"dimension": name, "measure": label, "value": t["accuracy"]})
        if name == "fairness":
            ego = [t for t in res.tables.get("spread", []) if t["grouping"].startswith("ego ")]
            if ego:
                top = max(ego, key=lambda t: t["max - min"])  # its attribute is named in the spread table
                rows.append({"dimension": name, "measure": "largest ego-prefix spread (max - min)",
                             "value": top["max - min"]})
            for t in res.tables.get("spread", []):
                if not t["grouping"].startswith("ego "):
                    rows.append({"dimension": name, "measure": f"{t['grouping']} spread (max - min)",
                                 "value": t["max - min"]})
    return rows


def timing_rows(results: Mapping[str, DimensionResult]) -> list[dict[str, Any]]:
    """Per dimension: records, questions asked / cached, seconds, seconds per 1,000 records."""
    rows = []
    for name, res in results.items():
        per = 1000 * res.seconds / res.records if res.records else 0.0
        rows.append({"dimension": name, "records": res.records, "questions asked": res.asked,
                     "from cache": res.cached, "seconds": res.seconds, "seconds per 1,000 records": per})
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 2:
            return str(int(value))
        return f"{value:.3f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (columns in first-seen order)."""
    if not rows:
        return "_(empty)_\n"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c, "")).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(out) + "\n"


def html_table(rows: Sequence[Mapping[str, Any]], caption: str = "") -> str:
    """An HTML ``<table>`` of ``rows`` (escaped)."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(
        f"<td class=\"{'num' if isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) else 'txt'}\">"
        f"{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ----------------------------------------------------------------------------- plots
def _bars(ax: Any, labels: Sequence[str], series: Mapping[str, Sequence[float]]) -> None:
    n = max(1, len(series))
    width = 0.8 / n
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (n - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, values, width=width, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)


def plot_dimension(res: DimensionResult, folder: Path) -> list[Path]:
    """Figures of one dimension (PNG files in ``folder``).

    Raises:
        xrisk.recipes.plots.PlotsUnavailable: matplotlib is missing.
    """
    from xrisk.recipes.plots import _figure

    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = folder / name
        fig.savefig(path, dpi=90)
        out.append(path)

    t = res.tables
    if res.name == "trustfulness" and t.get("closed-ended"):
        fig, (ax,) = _figure()
        rows = t["closed-ended"] + t.get("uncertainty", [])
        _bars(ax, [r["measure"] for r in rows], {"value": [r["value"] for r in rows]})
        ax.set_title("trustfulness")
        save(fig, "trustfulness.png")
    if res.name == "safety" and t.get("accuracy by setting"):
        fig, (ax,) = _figure()
        rows = [r for r in t["accuracy by setting"] if not r["setting"].startswith("pgd-eps")]
        _bars(ax, [r["setting"] for r in rows], {"accuracy": [r["accuracy"] for r in rows]})
        ax.set_title("safety: accuracy by setting")
        save(fig, "safety.png")
        curve = t.get("PGD accuracy vs epsilon", [])
        if len(curve) > 1:
            fig, (ax,) = _figure()
            ax.plot([r["epsilon (x255)"] for r in curve], [r["accuracy"] for r in curve], marker="o")
            ax.set_xlabel("PGD epsilon (x 1/255, L-inf)")
            ax.set_ylabel("accuracy")
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3)
            ax.set_title("safety: PGD accuracy vs epsilon")
            save(fig, "safety_pgd_curve.png")
    if res.name == "robustness" and (t.get("languages and long-tail scenes") or t.get("Gaussian noise")):
        fig, axes = _figure(2)
        rows = t.get("languages and long-tail scenes", [])
        _bars(axes[0], [r["set"] for r in rows], {"accuracy": [r["accuracy"] for r in rows],
                                                   "abstention": [r["abstention rate"] for r in rows]})
        axes[0].set_title("languages and long-tail scenes")
        noise = t.get("Gaussian noise", [])
        axes[1].plot([r["variance"] for r in noise], [r["accuracy"] for r in noise], marker="o")
        axes[1].set_xlabel("noise variance (0-255 scale)")
        axes[1].set_ylim(0, 1.05)
        axes[1].grid(alpha=0.3)
        axes[1].set_title("Gaussian noise")
        save(fig, "robustness.png")
    if res.name == "privacy" and t.get("leakage and refusal"):
        fig, (ax,) = _figure()
        rows = t["leakage and refusal"]
        _bars(ax, [f"{r['kind']}\n{r['regime']}" for r in rows], {"leakage": [r["leakage rate"] for r in rows],
                                                                  "refusal": [r["refusal rate"] for r in rows]})
        ax.set_title("privacy")
        save(fig, "privacy.png")
    if res.name == "fairness" and (t.get("accuracy per ego prefix") or t.get("accuracy per group")):
        fig, axes = _figure(2)
        ego = t.get("accuracy per ego prefix", [])
        _bars(axes[0], [f"{r['group']}" for r in ego], {"accuracy": [r["accuracy"] for r in ego]})
        axes[0].set_title("accuracy per ego prefix")
        groups = t.get("accuracy per group", [])
        _bars(axes[1], [f"{r['field']}={r['group']}" for r in groups], {"accuracy": [r["accuracy"] for r in groups]})
        axes[1].set_title("accuracy per subject / scene group")
        save(fig, "fairness.png")
    return out


# ----------------------------------------------------------------------------- writers
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:70rem;color:#222;
padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ccc}h3{font-size:1rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.85rem}
th,td{border:1px solid #bbb;padding:.25rem .5rem}th{background:#eef2f7;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}caption{text-align:left;font-weight:600;padding:.3rem 0}
img{max-width:100%;border:1px solid #ddd;margin:.5rem 0}.note{color:#8a4b00}.meta{color:#555;font-size:.85rem}
"""


def write_report(run_dir: str | Path, *, plot: bool = True, title: str | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.html`` (and ``plots/``) into ``run_dir``.

    Returns:
        ``{"json": ..., "markdown": ..., "html": ...}``.

    Raises:
        FileNotFoundError: the folder has no finished dimension (``results/*.json``).
    """
    root = Path(run_dir)
    results = load_results(root)
    if not results:
        raise FileNotFoundError(f"{root} has no finished dimension (results/*.json); run `xrisk trust run` first")
    config = json.loads((root / "config.json").read_text()) if (root / "config.json").is_file() else {}
    args = config.get("args", {})
    adapter = args.get("adapter", "?")
    heading = title or f"Trustworthiness report: adapter {adapter}"
    plots: dict[str, list[Path]] = {}
    plot_note = ""
    if plot:
        from xrisk.recipes.plots import PlotsUnavailable

        try:
            for name, res in results.items():
                plots[name] = plot_dimension(res, root / "plots")
        except PlotsUnavailable as e:
            plot_note = str(e)
    summary = summary_rows(results)
    timing = timing_rows(results)
    meta = (f"suite {args.get('suite', '?')}; dimensions {', '.join(results)}; written "
            f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    payload = {"adapter": adapter, "config": config, "summary": summary, "timing": timing,
               "dimensions": {n: {"metrics": r.metrics, "tables": r.tables, "notes": r.notes} for n, r in results.items()}}
    (root / "report.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    md = [f"# {heading}", "", meta, "", "## Summary", "", markdown_table(summary), "## Time", "", markdown_table(timing)]
    if plot_note:
        md += [f"_{plot_note}_", ""]
    for name, res in results.items():
        md += [f"## {name.capitalize()}", ""]
        md += [f"> {n}" for n in res.notes] + ([""] if res.notes else [])
        for tname, rows in res.tables.items():
            if rows:
                md += [f"### {tname}", "", markdown_table(rows)]
        md += [f"![{name}](plots/{p.name})" for p in plots.get(name, [])] + [""]
    (root / "report.md").write_text("\n".join(md), encoding="utf-8")

    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
             "<link rel=\"icon\" href=\"data:,\">", f"<title>{html.escape(heading)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(heading)}</h1>",
             f"<p class=\"meta\">{html.escape(meta)}</p>", "<h2>Summary</h2>", html_table(summary, "headline numbers"),
             html_table(timing, "time per dimension")]
    if plot_note:
        parts.append(f"<p class=\"note\">{html.escape(plot_note)}</p>")
    for name, res in results.items():
        parts.append(f"<h2 id=\"{name}\">{html.escape(name.capitalize())}</h2>")
        parts += [f"<p class=\"note\">{html.escape(n)}</p>" for n in res.notes]
        for tname, rows in res.tables.items():
            if rows:
                parts.append(html_table(rows, tname))
        for p in plots.get(name, []):
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            parts.append(f"<img alt=\"{html.escape(name)} plot {html.escape(p.stem)}\" "
                         f"src=\"data:image/png;base64,{data}\">")
    parts.append("</body></html>")
    (root / "report.html").write_text("\n".join(parts), encoding="utf-8")
    return {"json": root / "report.json", "markdown": root / "report.md", "html": root / "report.html"}
