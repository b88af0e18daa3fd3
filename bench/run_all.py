"""Run every benchmark in ``bench/``: each ``bench/*.py`` (not starting with ``_``) that
defines ``main(argv)``, in name order, in this process. Extra arguments (e.g. ``--quick``) are
passed to every benchmark. Exit status 1 if any benchmark raised.

    .venv-bench/bin/python bench/run_all.py            # full runs, tables into bench/RESULTS.md
    .venv-bench/bin/python bench/run_all.py --quick    # smoke runs
"""
from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def discover() -> list[Path]:
    """The benchmark scripts: ``bench/*.py`` except this file and ``_*.py``, that define main."""
    out = []
    for path in sorted(BENCH_DIR.glob("*.py")):
        if path.name.startswith("_") or path.name == Path(__file__).name:
            continue
        if "def main(" in path.read_text():
            out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    failed = []
    for path in discover():
        print(f"== bench/{path.name} {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        try:
            # imported under its own name from bench/ (on sys.path), so that worker processes
            # started with "spawn" can unpickle the benchmark's functions by `import <name>`
            module = importlib.import_module(path.stem)
            rc = module.main(list(argv))
            if rc:
                failed.append(f"{path.name} (exit {rc})")
        except SystemExit as exc:  # argparse errors or explicit exits
            if exc.code:
                failed.append(f"{path.name} (exit {exc.code})")
        except Exception:  # noqa: BLE001 - report and go on with the other benchmarks
            traceback.print_exc()
            failed.append(path.name)
        print(f"== bench/{path.name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    if failed:
        print("FAILED: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
