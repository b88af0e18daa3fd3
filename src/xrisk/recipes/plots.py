"""PNG plots of metric curves (needs matplotlib: ``pip install 'xrisk[plot]'``).

Uses matplotlib's object-oriented API with the Agg canvas only: no ``pyplot``, no change to
the user's backend or global state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PlotsUnavailable", "LABELS", "history_figures", "plot_history", "plot_comparison", "plot_panels",
           "plot_roc_curves"]


class PlotsUnavailable(ImportError):
    """matplotlib is not installed; the message says how to get it."""


_LOSS_WORDS = ("loss", "surrogate", "objective")

#: Legend labels of the metric names every recipe uses (see :mod:`xrisk.recipes.runner`): a
#: surrogate is named as such, so a negative or rising curve is not read as the objective.
LABELS: dict[str, str] = {
    "train_surrogate": "train surrogate (optimised; its value is not the objective)",
    "train_objective": "train objective (the loss's estimate)",
    "train_loss": "train loss",
}


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


def _curve(ax: Any, history: Sequence[Mapping[str, Any]], key: str, label: str) -> list[int]:
    """Plot ``key`` over epochs; a lone point gets a large marker and its value written next to it."""
    pts = [(row["epoch"], row[key]) for row in history if isinstance(row.get(key), (int, float))]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if len(pts) == 1:
        ax.plot(xs, ys, linestyle="none", marker="o", markersize=8, label=f"{label}: {ys[0]:.4g}")
    else:
        ax.plot(xs, ys, marker="o", markersize=4, label=label)
    return xs


def _epoch_axis(ax: Any, epochs: Sequence[int]) -> None:
    ax.set_xlabel("epoch")
    if epochs:
        lo, hi = min(epochs), max(epochs)
        ax.set_xlim(lo - 0.5, hi + 0.5)  # a one-epoch run is a point in the middle, not at an edge
        if hi - lo < 10:
            ax.set_xticks(range(int(lo), int(hi) + 1))
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def history_figures(history: Sequence[Mapping[str, Any]], *, title: str = "") -> dict[str, Any]:
    """The figures :func:`plot_history` writes, by file name (``loss.png``, ``metrics.png``).

    Raises:
        PlotsUnavailable: matplotlib is missing.
    """
    keys = [k for k in _numeric_keys(history) if k != "lr" and "seconds" not in k]
    lossy = [k for k in keys if any(w in k for w in _LOSS_WORDS)]
    groups = {"loss.png": lossy, "metrics.png": [k for k in keys if k not in lossy]}
    figures: dict[str, Any] = {}
    for fname, names in groups.items():
        if not names:
            continue
        fig, (ax,) = _figure()
        epochs: list[int] = []
        for k in names:
            epochs += _curve(ax, history, k, LABELS.get(k, k))
        if fname == "loss.png":
            what = "training surrogate and objective" if "train_surrogate" in names else "training loss"
        else:
            what = "metrics"
        ax.set_title(f"{title}: {what}" if title else what)
        _epoch_axis(ax, epochs)
        figures[fname] = fig
    return figures


def plot_history(history: Sequence[Mapping[str, Any]], out_dir: str | Path, *, title: str = "") -> list[Path]:
    """Plot every numeric metric of ``history`` (rows of ``{"epoch": e, name: value}``) over epochs.

    Writes ``loss.png`` (names containing ``loss``, ``surrogate`` or ``objective``; a surrogate is
    labelled as one, see :data:`LABELS`) and ``metrics.png`` (all other metrics, e.g. test
    AUROC/AP/pAUC) into ``out_dir``; ``lr`` and timings (names containing ``seconds``) are not
    plotted. A run of one epoch shows each value as a large marker with its value in the legend.

    Returns:
        The written paths.

    Raises:
        PlotsUnavailable: matplotlib is missing.
    """
    written: list[Path] = []
    for fname, fig in history_figures(history, title=title).items():
        path = Path(out_dir) / fname
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
        epochs: list[int] = []
        for method, history in histories.items():
            epochs += _curve(ax, history, name, method)
        ax.set_title(LABELS.get(name, name))
        _epoch_axis(ax, epochs)
    return _save(fig, path, title)


def plot_panels(
    history: Sequence[Mapping[str, Any]],
    panels: Mapping[str, Sequence[str]],
    path: str | Path,
    *,
    title: str = "",
    reference: Mapping[str, tuple[str, float]] | None = None,
) -> Path:
    """One panel per entry of ``panels`` (panel title -> metric names of ``history``), curves over epochs.

    ``reference[panel] = (label, value)`` draws a horizontal line (e.g. the allowed violation).
    Metrics missing from ``history`` are skipped.

    Raises:
        PlotsUnavailable: matplotlib is missing.
    """
    fig, axes = _figure(len(panels))
    for ax, (name, keys) in zip(axes, panels.items()):
        epochs: list[int] = []
        for k in keys:
            if any(isinstance(row.get(k), (int, float)) for row in history):
                epochs += _curve(ax, history, k, LABELS.get(k, k))
        if reference and name in reference:
            label, value = reference[name]
            ax.axhline(value, color="grey", linestyle="--", linewidth=1, label=label)
        ax.set_title(name)
        _epoch_axis(ax, epochs)
    return _save(fig, path, title)


def _save(fig: Any, path: str | Path, title: str) -> Path:
    """Give ``fig`` its title (if any) and write it to ``path``."""
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def plot_roc_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    title: str = "",
    max_fpr: float | None = None,
) -> Path:
    """ROC curves, one per name (``curves[name] = (fpr, tpr)``), on a linear and a logarithmic FPR axis (the
    low-FPR region where flagging decisions are made); ``max_fpr`` draws a vertical line at that FPR.

    Raises:
        PlotsUnavailable: matplotlib is missing.
    """
    fig, (lin, log) = _figure(2)
    for name, (fpr, tpr) in curves.items():
        line = lin.plot(fpr, tpr, label=name)[0]
        pts = [(f, t) for f, t in zip(fpr, tpr) if f > 0]
        log.plot([p[0] for p in pts], [p[1] for p in pts], color=line.get_color())
    lin.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    log.set_xscale("log")
    for ax in (lin, log):
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_ylim(0, 1.01)
        if max_fpr is not None:
            ax.axvline(max_fpr, color="grey", linestyle="--", linewidth=1)
    lin.legend(fontsize=7, loc="lower right")
    log.set_title("log FPR")
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
