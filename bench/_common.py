"""Shared helpers for the benchmarks in ``bench/``: machine facts, interleaved step timing,
mean ± std formatting, and the writer of one benchmark's section of ``bench/RESULTS.md``.

Each benchmark owns one section of ``RESULTS.md`` between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->``; :func:`write_section` replaces only that section (or appends it), so
benchmarks can be rerun one at a time without touching the others' tables.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
COMPAT_DIR = BENCH_DIR / "libauc_compat"


# ----------------------------------------------------------------------------- environment
def import_libauc():
    """Import LibAUC's losses, optimizers and sampler, with the torchvision stand-in.

    ``bench/libauc_compat`` goes first on ``sys.path`` while LibAUC is imported (see its
    README): LibAUC's sampler imports torchvision at module level, and the CUDA torchvision
    wheel that pip installs next to CPU torch cannot load its operators. Afterwards the stub
    leaves ``sys.path`` and ``sys.modules["torchvision"]`` is set to ``None`` (LibAUC's sampler
    keeps its reference to the stub): "torchvision not installed" for everybody else, so that
    transformers / sentence-transformers (MiniLM embeddings) do not try the broken wheel either.
    Returns the ``libauc`` package, or raises ImportError naming the extra.
    """
    if "libauc.sampler" in sys.modules:
        return sys.modules["libauc"]
    sys.path.insert(0, str(COMPAT_DIR))
    try:
        libauc = importlib.import_module("libauc")
        for sub in ("losses", "optimizers", "sampler"):
            importlib.import_module(f"libauc.{sub}")
    except ImportError as exc:  # pragma: no cover - depends on the venv
        raise ImportError(
            "LibAUC 2.0.1 is needed for this benchmark: run `make .venv-bench/.installed` "
            "(pip install -c constraints.txt -e '.[bench]') and use .venv-bench/bin/python"
        ) from exc
    finally:
        sys.path.remove(str(COMPAT_DIR))
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # type: ignore[assignment]  # import -> ImportError
    return libauc


def hide_broken_torchvision() -> None:
    """Make ``import torchvision`` raise ImportError when the installed wheel cannot load (CPU torch next to
    the torchvision pip pulls for LibAUC): transformers then treats it as absent instead of failing on
    ``LlamaConfig``. A working torchvision is left alone."""
    if "torchvision" in sys.modules:
        return
    try:
        importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001 - the broken wheel raises RuntimeError from its operator registration
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # type: ignore[assignment]


def machine_facts(threads: int) -> str:
    """One markdown line: date, CPU, cores, torch and libauc versions, threads, load."""
    import torch

    try:
        import libauc

        libauc_v = libauc.__version__
    except ImportError:
        libauc_v = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now}; {cpu}; {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"torch {torch.__version__}; libauc {libauc_v}; torch.set_num_threads({threads}); "
        f"load average at start {load}"
    )


def interpreter() -> str:
    """The Python interpreter running this benchmark, for a section's command line: relative to the repository
    root when it lives inside it (e.g. ``.venv-bench/bin/python``), else its full path (a venv elsewhere)."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(BENCH_DIR.parent))
    except ValueError:
        return str(exe)


def loadavg() -> float:
    """1-minute load average (0.0 where the OS does not report it)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


# ----------------------------------------------------------------------------- timing
def time_interleaved(
    steps: dict[str, Callable[[], None]],
    *,
    rounds: int,
    steps_per_round: int,
    warmup_rounds: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time ``steps[name]()`` (one training step each) in interleaved rounds.

    Each round runs ``steps_per_round`` consecutive steps of every method, the order of the
    methods rotating from one round to the next (A B C, B C A, C A B, ...), so that a slow
    period of a shared machine hits every method alike. The first ``warmup_rounds`` rounds
    are not recorded. Returns the per-step times in seconds, per method: wall time, or with
    ``clock=time.thread_time`` the CPU time of this thread (on a machine shared by many jobs the
    wall time of a millisecond step is mostly waiting for a core).
    """
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup_rounds + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = steps[name]
            record = times[name] if r >= warmup_rounds else None
            for _ in range(steps_per_round):
                t0 = clock()
                fn()
                dt = clock() - t0
                if record is not None:
                    record.append(dt)
    return times


def paired_ratio(a: Sequence[float], b: Sequence[float], rounds: int, steps_per_round: int) -> float:
    """Paired ratio of two methods timed by :func:`time_interleaved`: the median over rounds of the ratio of their
    round medians."""
    spr = steps_per_round
    return statistics.median(
        statistics.median(a[r * spr:(r + 1) * spr]) / statistics.median(b[r * spr:(r + 1) * spr]) for r in range(rounds))


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def iqr(xs: Sequence[float]) -> tuple[float, float]:
    """25th and 75th percentiles."""
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def mean_std(xs: Iterable[float]) -> tuple[float, float]:
    xs = list(xs)
    m = statistics.fmean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return m, s


def fmt_mean_std(xs: Iterable[float], digits: int = 4) -> str:
    m, s = mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    out = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(out)


# ----------------------------------------------------------------------------- RESULTS.md
_HEADER = (
    "# Benchmark results\n\n"
    "Written by the scripts in `bench/` (`python bench/run_all.py` runs them all); each script "
    "replaces only its own section, between its `<!-- NAME:start -->` and `<!-- NAME:end -->` "
    "markers. Numbers are as measured on the machine named in each section.\n"
)


def write_section(name: str, body: str, path: Path | None = None) -> None:
    """Replace the ``name`` section of ``path`` (``bench/RESULTS.md``) with ``body``, or append it."""
    path = RESULTS if path is None else path
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else _HEADER
    i, j = text.find(start), text.find(end)
    if i != -1 and j != -1 and j > i:
        text = text[:i] + block + text[j + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_header(cmd: str, seconds: float, facts: str, loads: Sequence[str],
               load_label: str = "1-min load average") -> str:
    """The lines under a section title that say how its numbers were made: the command, the wall time, the
    machine (:func:`machine_facts`) and the load averages read during the run."""
    return (f"Command: `{cmd.strip()}`; {seconds:.0f} s.  \n"
            f"Machine: {facts}.  \n"
            f"{load_label}: {'; '.join(loads)}.\n\n")


def publish(name: str, body: str, write: bool) -> None:
    """Print a section and, if ``write``, replace the ``name`` section of ``bench/RESULTS.md`` with it."""
    print(body, flush=True)
    if write:
        write_section(name, body)
