"""PNG plots of metric curves (needs matplotlib: ``pip install 'xrisk[plot]'``).

Uses matplotlib's object-oriented API with the Agg canvas only: no ``pyplot``, no change to
the user's backend or global state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PlotsUnavailable", "plot_history", "plot_comparison"]


class PlotsUnavailable(ImportError):
    """matplotlib is not installed; the message says how to get it."""


_LOSS_WORDS = ("loss", "surrogate", "objective")


def _figure(ncols: int = 1) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotsUnavailable(
            "matplotlib is not installed, so no plots were written (pip install 'xrisk[plot]')"
        ) from e
    fig = Figure(figsize=(5.0 * ncols, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _numeric_keys(history: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for row in history:
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
                keys.append(k)
    return keys


def plot_history(history: Sequence[Mapping[str, Any]], out_dir: str | Path, *, title: str = "") -> list[Path]:
    """Plot every numeric metric of ``history`` (rows of ``{"epoch": e, name: value}``) over epochs.

    Writes ``loss.png`` (names containing ``loss``, ``surrogate`` or ``objective``) and
    ``metrics.png`` (all other metrics, e.g. test AUROC/AP/pAUC) into ``out_dir``; ``lr`` and
    timings (names containing ``seconds``) are not plotted.

    Returns:
        The written paths.

    Raises:
        PlotsUnavailable: matplotlib is missing.
    """
    out = Path(out_dir)
    keys = [k for k in _numeric_keys(history) if k != "lr" and "seconds" not in k]
    lossy = [k for k in keys if any(w in k for w in _LOSS_WORDS)]
    groups = {"loss.png": lossy, "metrics.png": [k for k in keys if k not in lossy]}
    written: list[Path] = []
    for fname, names in groups.items():
        if not names:
            continue
        fig, (ax,) = _figure()
        for k in names:
            pts = [(row["epoch"], row[k]) for row in history if isinstance(row.get(k), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=k)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(f"{title} {fname[:-4]}".strip())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out / fname
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def plot_comparison(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    metrics: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """One panel per metric name, one curve per method (``histories[method]`` as above).

    Raises:
        PlotsUnavailable: matplotlib is missing.
    """
    fig, axes = _figure(len(metrics))
    for ax, name in zip(axes, metrics):
        for method, history in histories.items():
            pts = [(row["epoch"], row[name]) for row in history if isinstance(row.get(name), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=method)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
