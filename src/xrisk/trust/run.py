"""``xrisk trust run``: evaluate one adapter on a suite, every dimension, resumably.

The run folder (a :class:`~xrisk.recipes.runner.RunContext` folder) holds::

    RUN/
      config.json               arguments, versions, start / resume times (RunContext)
      answers/<dimension>.jsonl  answer cache: one line per question asked (resume re-asks nothing)
      answers/<dimension>.json   the answers in the reference's layout: each record plus
                                 "<adapter>_answer", the setting and the exact prompt
      results/<dimension>.json   metrics, tables and rows of a finished dimension
      transfer/*.png             black-box transfer images made on the surrogate
      metrics.jsonl              one line per finished dimension; metrics.json: all final metrics
      checkpoint.pt              the step checkpoint (dimensions finished, arguments) for --resume
      report.md, report.html, report.json, plots/*.png

``--resume`` with the same ``--out`` skips finished dimensions (read back from ``results/``) and,
inside an unfinished one, answers every question already in the cache from the cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xrisk.recipes.runner import RunContext
from xrisk.trust.adapters import supports_white_box
from xrisk.trust.dimensions import DIMENSIONS, DimensionResult, TrustSettings, evaluate_dimension
from xrisk.trust.engine import Session
from xrisk.trust.records import QARecord
from xrisk.trust.report import write_report
from xrisk.trust.suite import Suite, load_suite

__all__ = ["run_evaluation", "write_answers"]


def write_answers(path: Path, adapter_name: str, result: DimensionResult, records: dict[str, QARecord]) -> Path:
    """The answers of a dimension in the reference's layout (each record + ``<adapter>_answer``)."""
    out = []
    for row in result.rows:
        rec = records.get(row.get("uid", ""))
        base = rec.to_dict() if rec is not None else {}
        out.append({**base, f"{adapter_name}_answer": row.get("answer", ""), "setting": row.get("setting", ""),
                    "prompt": row.get("prompt", "")})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _suite_records(suite: Suite) -> dict[str, QARecord]:
    out = {}
    for role in suite.files:
        if role != "ego_patterns":
            for r in suite.records(role):
                out[r.uid] = r
    return out


def run_evaluation(
    ctx: RunContext,
    *,
    suite: Suite | str | Path,
    adapter: Any,
    dimensions: Sequence[str] = DIMENSIONS,
    settings: TrustSettings | None = None,
    plot: bool = True,
) -> dict[str, Any]:
    """Evaluate ``adapter`` on ``suite`` for ``dimensions``, writing everything into ``ctx.out_dir``.

    Returns:
        The final metrics (``"<dimension>.<metric>": value``), also in ``metrics.json``.
    """
    settings = settings or TrustSettings()
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimension(s) {unknown}; known: {', '.join(DIMENSIONS)}")
    out = ctx.out_dir
    done_steps = ctx.resume()
    name = str(getattr(adapter, "name", type(adapter).__name__))
    ctx.update_config(adapter_name=name, white_box=supports_white_box(adapter), image_root=str(suite.image_root),
                      dimensions=list(dimensions))
    records = _suite_records(suite)
    bar = ctx.progress(0, "trust")
    session = Session(adapter, suite.image_root, out / "answers", on_answer=lambda: bar.update())
    final: dict[str, Any] = {}
    try:
        for step, dim in enumerate(dimensions, 1):
            path = out / "results" / f"{dim}.json"
            if step <= done_steps and path.is_file():
                res = DimensionResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
                ctx.notice(f"{dim}: finished before, read from {path}")
            else:
                bar.set_description(dim)
                res = evaluate_dimension(dim, session, suite, settings, work_dir=out)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(json.dumps(res.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")
                tmp.replace(path)
                write_answers(out / "answers" / f"{dim}.json", name, res, records)
                for note in res.notes:
                    ctx.notice(f"{dim}: {note}")
                ctx.log_epoch(step, {"dimension": dim, **{k: v for k, v in res.metrics.items()},
                                     "seconds": res.seconds, "asked": res.asked, "cached": res.cached})
                ctx.save(epoch=step, dimensions_done=list(dimensions[:step]))
            final.update({f"{dim}.{k}": v for k, v in res.metrics.items()})
    finally:
        session.close()
    bar.close()
    write_report(out, plot=plot)
    return ctx.finish(final)
