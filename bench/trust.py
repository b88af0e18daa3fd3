"""Benchmark of ``xrisk.trust`` (issue 16): the in-library VQA model and two rule-based reference
adapters on a generated driving-scene suite, every dimension; a PGD accuracy-vs-epsilon curve; time
per 1,000 records per dimension; the HTML report checked in headless Chromium.

    .venv-bench/bin/python bench/trust.py            # full run (37 min at load average 8-9 on 2 shared cores), RESULTS.md
    .venv-bench/bin/python bench/trust.py --quick    # smoke run (tiny suite, a few minutes), prints only

Steps (one process, ``torch.set_num_threads(1)``):

1. ``make_suite`` (600 training, 150 test, 60 long-tail, 120 fairness scenes; seed 0);
2. ``train_vqa`` on the training split (15 epochs, with the scenes' cell labels as auxiliary
   supervision), and a surrogate (4 epochs, seed 1) for the black-box transfer images;
3. ``run_evaluation`` of ``vqa`` (white-box PGD / BIM / C&W on 100 records, PGD at
   eps = 0.5 ... 16 / 255, black-box transfer from the surrogate), ``random`` and ``refuse``, all
   five dimensions;
4. the report of the ``vqa`` run opened in headless Chromium (console errors, requests, tables,
   images; the screenshot goes to the run folder).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _common
import torch

from xrisk.recipes.runner import RunContext
from xrisk.trust.browser import browser_available, check_page
from xrisk.trust.dimensions import DIMENSIONS, TrustSettings
from xrisk.trust.report import load_results, summary_rows
from xrisk.trust.rules import RandomAdapter, RefusingAdapter
from xrisk.trust.run import run_evaluation
from xrisk.trust.suite import SuiteConfig, load_suite, make_suite, read_scenes
from xrisk.trust.vqa import load_vqa, train_vqa

SECTION = "trust"
EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def _train(suite_dir: Path, path: Path, *, epochs: int, seed: int) -> tuple[float, dict[str, float]]:
    suite = load_suite(suite_dir)
    last: dict[str, float] = {}
    t0 = time.perf_counter()

    def progress(epoch: int, m: dict[str, float]) -> None:
        last.update(m)
        print(f"  train seed {seed} epoch {epoch}: {m}", flush=True)

    adapter = train_vqa(suite.records("train"), suite.image_root, epochs=epochs, seed=seed,
                        scenes=read_scenes(suite_dir), progress=progress)
    adapter.save(path)
    return time.perf_counter() - t0, last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run on a tiny suite (prints, RESULTS.md untouched)")
    p.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--work", type=Path, default=Path("/tmp/xrisk-bench-trust"), help="folder for suite, models, runs")
    p.add_argument("--tables-only", action="store_true",
                   help="rebuild the tables (and the browser check) from the runs a previous call left in --work")
    args = p.parse_args(argv)
    quick = args.quick
    torch.set_num_threads(1)
    work = args.work / ("quick" if quick else "full")
    cfg = SuiteConfig(train_scenes=60, test_scenes=12, long_tail_scenes=6, fairness_scenes=8) if quick else \
        SuiteConfig(train_scenes=600, test_scenes=150, long_tail_scenes=60, fairness_scenes=120)
    epochs = 2 if quick else 15
    attack_records = 8 if quick else 100
    if args.tables_only:
        meta = json.loads((work / "bench.json").read_text())
    else:
        meta = {"facts": _common.machine_facts(1)}
        t_start = time.perf_counter()
        if work.exists():
            import shutil

            shutil.rmtree(work)
        t0 = time.perf_counter()
        make_suite(work / "suite", cfg)
        meta["suite_seconds"] = time.perf_counter() - t0
        meta["train_seconds"], meta["train_metrics"] = _train(work / "suite", work / "vqa.pt", epochs=epochs, seed=0)
        meta["surrogate_seconds"], _ = _train(work / "suite", work / "surrogate.pt", epochs=1 if quick else 4, seed=1)
        _evaluate_all(work, quick, attack_records)
        meta["elapsed"] = time.perf_counter() - t_start
        meta["load_end"] = _common.loadavg()
        (work / "bench.json").write_text(json.dumps(meta, indent=2) + "\n")
    return _tables(args, work, cfg, epochs, attack_records, meta)


def _evaluate_all(work: Path, quick: bool, attack_records: int) -> None:
    """Run vqa (with attacks and a surrogate), random and refuse on every dimension."""
    for name in ("vqa", "random", "refuse"):
        adapter = {"vqa": lambda: load_vqa(work / "vqa.pt"), "random": lambda: RandomAdapter(seed=0),
                   "refuse": RefusingAdapter}[name]()
        settings = TrustSettings(attack_records=attack_records, pgd_epsilons=EPSILONS if name == "vqa" else (),
                                 noise_variances=(6.0, 100.0, 900.0), ego_records=12 if quick else 100,
                                 surrogate=load_vqa(work / "surrogate.pt", name="surrogate") if name == "vqa" else None)
        print(f"== {name}", flush=True)
        with RunContext(work / f"run-{name}", recipe="trust", args={"adapter": name, "suite": str(work / "suite")},
                        quiet=True, plot=False) as ctx:
            run_evaluation(ctx, suite=work / "suite", adapter=adapter, settings=settings)


def _tables(args: argparse.Namespace, work: Path, cfg: SuiteConfig, epochs: int, attack_records: int,
            meta: dict) -> int:
    """The RESULTS.md section from the runs in ``work`` (and the browser check of the vqa report)."""
    quick = args.quick
    results = {name: load_results(work / f"run-{name}") for name in ("vqa", "random", "refuse")}
    counts = load_suite(work / "suite").manifest["counts"]
    suite_seconds, train_seconds = meta["suite_seconds"], meta["train_seconds"]
    train_metrics, surrogate_seconds = meta["train_metrics"], meta["surrogate_seconds"]
    facts, elapsed = meta["facts"], meta["elapsed"]
    browser_note = browser_available()
    check = None
    if browser_note is None:
        check = check_page(work / "run-vqa" / "report.html", work / "run-vqa" / "report.png")

    # --- tables
    summaries = {n: summary_rows(r) for n, r in results.items()}
    comparison = []
    for row in summaries["vqa"]:
        cells = [row["dimension"], row["measure"]]
        for n in results:
            match = [r["value"] for r in summaries[n] if (r["dimension"], r["measure"]) == (row["dimension"],
                                                                                           row["measure"])]
            cells.append(f"{match[0]:.3f}" if match else "")
        comparison.append(cells)
    curve_rows = results["vqa"]["safety"].tables.get("PGD accuracy vs epsilon", [])
    timing = []
    for dim in DIMENSIONS:
        cells = [dim]
        for n in results:
            res = results[n][dim]
            per = 1000 * res.seconds / res.records if res.records else 0.0
            cells.append(f"{res.records} / {res.asked} / {per:.1f}")
        timing.append(cells)
    safety = results["vqa"]["safety"].tables["accuracy by setting"]
    cmd = ".venv-bench/bin/python bench/trust.py" + (" --quick" if quick else "")
    rerendered = (" Tables re-rendered from the same runs with `--tables-only` (report summary labels changed; "
                  "no number was measured again)." if args.tables_only else "")
    lines = [
        "## Trustworthiness benchmark: AutoTrust's five dimensions (`bench/trust.py`, issue 16)",
        "",
        f"Command: `{cmd}` ({elapsed / 60:.1f} min). Machine: {facts}; 1-min load average at the end "
        f"{meta['load_end']:.2f}.{rerendered}",
        "",
        f"Suite: `make_suite` seed 0, {cfg.train_scenes} training / {cfg.test_scenes} test / {cfg.long_tail_scenes} "
        f"long-tail / {cfg.fairness_scenes} fairness scenes ({suite_seconds:.0f} s); records per role: "
        + ", ".join(f"{k} {v}" for k, v in counts.items()) + ". "
        f"In-library model: `train_vqa`, {epochs} epochs, {train_seconds:.0f} s (training loss "
        f"{train_metrics.get('loss', float('nan')):.3f}, training accuracy {train_metrics.get('train_accuracy', 0):.3f}); "
        f"surrogate for the black-box images: the same model trained {1 if quick else 4} epochs with seed 1 "
        f"({surrogate_seconds:.0f} s). Rule-based references: `random` (uniform answers, seed 0) and `refuse` "
        "(always refuses). Chance on the closed-ended questions is about 0.36 (half multiple choice with four "
        "options, half yes/no).",
        "",
        "Headline numbers (accuracies and rates in [0, 1]; open-ended score by the offline overlap judge):",
        "",
        _common.md_table(["dimension", "measure", *results], comparison),
        "",
        f"Safety of the in-library model ({attack_records} closed-ended test records attacked; budgets of the "
        "reference: PGD eps 16/255 step 2/255, BIM 8/255 step 0.8/255, 10 steps; C&W L2, Adam lr 0.01, 100 steps, "
        "c 1, kappa 0; black-box: PGD 16/255 step 1/255, 30 steps on the surrogate, images saved as PNG):",
        "",
        _common.md_table(["setting", "accuracy", "n", "clean accuracy on the same records", "max L-inf (x255)"],
                         [[r["setting"], f"{r['accuracy']:.3f}", int(r["n"]),
                           f"{r['clean accuracy on the same records']:.3f}" if "clean accuracy on the same records"
                           in r else "", f"{r['max L-inf (x255)']:.2f}" if "max L-inf (x255)" in r else ""]
                          for r in safety]),
        "",
        "PGD accuracy vs epsilon (10 steps, step eps/8, same records):",
        "",
        _common.md_table(["epsilon (x 1/255)", "accuracy", "max L-inf (x 1/255)", "n"],
                         [[f"{r['epsilon (x255)']:g}", f"{r['accuracy']:.3f}", f"{r['max L-inf (x255)']:.2f}", r["n"]]
                          for r in curve_rows]),
        "",
        "Time per dimension (records / questions sent to the adapter / seconds per 1,000 records; fresh runs, "
        "one thread; `vqa` includes its attacks, which dominate safety):",
        "",
        _common.md_table(["dimension", *results], timing),
        "",
    ]
    if check is not None:
        lines += [
            f"Report page in headless Chromium (`xrisk.trust.browser.check_page`, {check.url.rsplit('/', 2)[-2]}/"
            f"report.html): {len(check.console_errors)} console errors, {len(check.requests)} requests, "
            f"{len(check.tables)} tables rendered (all with rows and height > 0: "
            f"{all(r >= 2 and h > 0 for r, h in check.tables)}), {len(check.images)} images loaded "
            f"({all(ok and w > 0 for ok, w, _ in check.images)}); screenshot saved "
            f"({check.screenshot.stat().st_size // 1024 if check.screenshot else 0} kB).",
        ]
    else:
        lines += [f"Browser check skipped: needs {browser_note}."]
    body = "\n".join(lines)
    print(body)
    if not (args.no_write or quick):
        _common.write_section(SECTION, body)
    return 0 if check is None or check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
