"""Machine-text detection fidelity (issue 17; Thorat & Yang, "Which LLMs are Difficult to Detect?", arXiv
2410.14875): CE vs AUC-M vs AP vs one-way / two-way partial-AUC losses at machine-text ratios of 2 %, 10 % and
50 % in the training split, 5 seeds, on the bundled human / SmolLM2 data (``xrisk run textdetect`` with the
TF-IDF + MLP detector, every flag at its default but the loss, the ratio and the seed), against the
zero-shot detector that needs no training (the text's mean token NLL under the generating SmolLM2, stored
with the data: lower NLL = flagged); per-domain and per-generator difficulty; a verdict per claim.

Every run goes through the recipe's own code (``xrisk.cli.main``) with ``--quiet --no-plot``; its
``evaluation.json`` is kept in ``bench/results_textdetect.json`` (runs already there are not repeated, so an
interrupted benchmark continues). ``--quick``: 1 seed, 2 epochs, RESULTS.md untouched.

    nice -n 10 python bench/fidelity_textdetect.py            # about 25 min on 2 shared cores, one thread
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

LOSSES = ("ce", "aucm", "ap", "pauc-cvar", "tpauc")
AUC_LOSSES = LOSSES[1:]
RATIOS = (0.02, 0.1, 0.5)
SEEDS = (0, 1, 2, 3, 4)
METRICS = ("auroc", "ap", "pauc", "tpauc", "tpr_at_1pct_fpr")
ZERO_SHOT = "zero-shot NLL"
RESULTS_JSON = _common.BENCH_DIR / "results_textdetect.json"
COMMAND = "nice -n 10 python bench/fidelity_textdetect.py"


def _key(method: str, ratio: float, seed: int) -> str:
    return f"{method}|{ratio:g}|{seed}"


def run_recipe(loss: str, ratio: float, seed: int, extra: list[str]) -> dict[str, Any]:
    """One ``xrisk run textdetect`` in this process; its evaluation and wall time."""
    from xrisk.cli import main as xrisk_main

    with tempfile.TemporaryDirectory(prefix="bench-textdetect-") as tmp:
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        code = xrisk_main(["run", "textdetect", "--text-encoder", "tfidf", "--loss", loss, "--machine-ratio",
                           str(ratio), "--seed", str(seed), "--quiet", "--no-plot", "--out", str(out), *extra])
        seconds = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"xrisk run textdetect --loss {loss} --machine-ratio {ratio} --seed {seed}: exit {code}")
        ev = _compact(json.loads((out / "evaluation.json").read_text()))
        cfg = json.loads((out / "config.json").read_text())["resolved"]
    return {"evaluation": ev, "seconds": seconds, "num_train": cfg["num_train"],
            "num_train_machine": cfg["num_train_machine"], "num_test": cfg["num_test"],
            "num_test_machine": cfg["num_test_machine"]}


def _compact(ev: dict[str, Any]) -> dict[str, Any]:
    """What the tables use of a run's ``evaluation.json`` (the per-domain feature table and the
    generator-within-domain metrics stay in the run folder)."""
    fa = ev.get("feature_analysis", {})
    return {**{k: ev[k] for k in ("overall", "by_domain", "by_generator", "settings") if k in ev},
            "feature_analysis": {"spearman_detector_auroc_vs_separability":
                                 fa.get("spearman_detector_auroc_vs_separability", {})}}


def zero_shot(seed: int, data_path: str) -> dict[str, Any]:
    """The zero-shot detector on the test split of ``seed`` (the test split does not depend on the ratio):
    score = minus the mean token NLL under SmolLM2; with every feature's own separability per domain."""
    from xrisk.data.machine_text import load_text_detection
    from xrisk.metrics.detection import feature_separability
    from xrisk.recipes.textdetect import evaluate_groups, prepare_split

    data = load_text_detection(None if data_path == "builtin" else data_path)
    test = prepare_split(data, machine_ratio=0.1, test_fraction=0.4, seed=seed).test
    domains = [data.domains[i] for i in test.tolist()]
    scores = -data.features["nll_mean"][test]
    ev = evaluate_groups(scores, data.labels[test], domains, [data.generators[i] for i in test.tolist()],
                         max_fpr=0.1, min_tpr=0.5)
    ev["feature_analysis"] = {"by_domain": feature_separability(
        {k: v[test] for k, v in data.features.items()}, data.labels[test], domains)}
    return {"evaluation": ev, "seconds": 0.0}


def _load_results() -> dict[str, Any]:
    return json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}


def _save_results(results: dict[str, Any]) -> None:
    tmp = RESULTS_JSON.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True, allow_nan=True) + "\n")
    os.replace(tmp, RESULTS_JSON)


# ----------------------------------------------------------------------------- tables
def _ms(xs: list[float], digits: int = 3) -> str:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return "n/a"
    m = statistics.fmean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _values(results: dict[str, Any], method: str, ratio: float, seeds: tuple[int, ...], path: tuple[str, ...]
            ) -> list[float]:
    out = []
    for s in seeds:
        r = results[_key(method, ratio, s)]["evaluation"]
        for p in path:
            r = r.get(p, {}) if isinstance(r, dict) else {}
        out.append(float(r) if isinstance(r, (int, float)) else math.nan)
    return out


def _paired(results: dict[str, Any], loss: str, ratio: float, seeds: tuple[int, ...], metric: str
            ) -> tuple[list[float], int]:
    a = _values(results, loss, ratio, seeds, ("overall", metric))
    b = _values(results, "ce", ratio, seeds, ("overall", metric))
    diff = [x - y for x, y in zip(a, b)]
    return diff, sum(d > 0 for d in diff)


def render(results: dict[str, Any], seeds: tuple[int, ...], header: str) -> tuple[str, list[str]]:
    """The markdown section and the verdict lines."""
    zs = {s: results[_key(ZERO_SHOT, 0, s)] for s in seeds}
    parts = [header]
    first = results[_key("ce", RATIOS[0], seeds[0])]
    sizes = ", ".join(
        f"{r:g}: train {results[_key('ce', r, seeds[0])]['num_train']} texts "
        f"({results[_key('ce', r, seeds[0])]['num_train_machine']} machine)" for r in RATIOS)
    parts.append(f"Test split (seed {seeds[0]}): {first['num_test']} texts, {first['num_test_machine']} machine "
                 f"(all of the split, its natural ratio). Training split by ratio: {sizes}.\n")
    # 1. overall per ratio
    for ratio in RATIOS:
        rows = [[f"{ZERO_SHOT} (no training)", *(_ms([zs[s]["evaluation"]["overall"][m] for s in seeds])
                                                  for m in METRICS), "0"]]
        for loss in LOSSES:
            secs = [results[_key(loss, ratio, s)]["seconds"] for s in seeds]
            rows.append([loss, *(_ms(_values(results, loss, ratio, seeds, ("overall", m))) for m in METRICS),
                         f"{statistics.fmean(secs):.1f}"])
        parts.append(f"**Machine texts {ratio:.0%} of the training split** (mean ± std over {len(seeds)} seeds; "
                     "test split at its natural ratio)\n")
        parts.append(_common.md_table(["detector", "AUROC", "AP", "pAUROC FPR≤0.1", "two-way pAUROC (FPR≤0.1, "
                                       "TPR≥0.5)", "TPR @ 1 % FPR", "s / run"], rows) + "\n")
    # 2. paired differences vs CE
    rows = []
    for ratio in RATIOS:
        for loss in AUC_LOSSES:
            cells = []
            for m in ("auroc", "pauc", "tpr_at_1pct_fpr"):
                diff, wins = _paired(results, loss, ratio, seeds, m)
                cells.append(f"{_ms(diff)} ({wins}/{len(seeds)})")
            rows.append([f"{ratio:.0%}", loss, *cells])
    parts.append("**Each AUC loss minus CE, same seed** (mean ± std of the paired difference; in brackets the "
                 "seeds where the AUC loss is higher)\n")
    parts.append(_common.md_table(["machine ratio", "loss", "Δ AUROC", "Δ pAUROC FPR≤0.1", "Δ TPR @ 1 % FPR"],
                                  rows) + "\n")
    # 3. difficulty by domain and by generator (all trained detectors at the 10 % ratio)
    verdicts: list[str] = []
    for group, title in (("by_domain", "domain"), ("by_generator", "generator")):
        names = list(results[_key("ce", 0.1, seeds[0])]["evaluation"][group])
        rows, means = [], {}
        per_seed: dict[str, list[float]] = {}
        for name in names:
            au = [statistics.fmean(_values(results, loss, 0.1, (s,), (group, name, "auroc"))[0] for loss in LOSSES)
                  for s in seeds]
            tpr = [statistics.fmean(_values(results, loss, 0.1, (s,), (group, name, "tpr_at_1pct_fpr"))[0]
                                    for loss in LOSSES) for s in seeds]
            per_seed[name], means[name] = au, statistics.fmean(au)
            z = [zs[s]["evaluation"][group][name]["auroc"] for s in seeds]
            rows.append([name, _ms(au), _ms(tpr), _ms(z)])
        rows.sort(key=lambda r: float(r[1].split()[0]))
        parts.append(f"**By {title}** (10 % ratio; detector = the mean over the 5 losses of each seed; "
                     f"{'each generator against all human texts' if title == 'generator' else 'the domain’s texts'}"
                     "), hardest first\n")
        parts.append(_common.md_table([title, "detector AUROC", "detector TPR @ 1 % FPR", f"{ZERO_SHOT} AUROC"],
                                      rows) + "\n")
        hard, easy = min(means, key=means.get), max(means, key=means.get)
        below = sum(a < b for a, b in zip(per_seed[hard], per_seed[easy]))
        spread = max(means.values()) - min(means.values())
        sd = statistics.fmean(statistics.stdev(v) for v in per_seed.values()) if len(seeds) > 1 else 0.0
        if title == "domain":
            holds = below == len(seeds) and spread > 2 * sd
            verdicts.append(
                f"- Difficulty varies by domain: **{'holds' if holds else 'does not hold'}** here. Hardest domain "
                f"{hard} (AUROC {means[hard]:.3f}), easiest {easy} ({means[easy]:.3f}); spread {spread:.3f} against "
                f"a mean seed std of {sd:.3f} per domain; {hard} below {easy} in {below}/{len(seeds)} seeds.")
        else:
            verdicts.append(
                f"- Hardest generator setting: {hard} (AUROC {means[hard]:.3f}; easiest {easy}, {means[easy]:.3f}; "
                f"below it in {below}/{len(seeds)} seeds). The paper's generator finding (OpenAI-family models "
                "hardest on RIP) cannot be tested here: only SmolLM2 decoding settings exist offline.")
    # 4. feature analysis (Spearman over domains, trained detectors at 10 %)
    feats = sorted(results[_key("ce", 0.1, seeds[0])]["evaluation"].get("feature_analysis", {})
                   .get("spearman_detector_auroc_vs_separability", {}))
    if feats:
        rows = []
        for f in feats:
            v = [results[_key(loss, 0.1, s)]["evaluation"]["feature_analysis"]
                 ["spearman_detector_auroc_vs_separability"][f] for loss in LOSSES for s in seeds]
            sep = [abs(zs[s]["evaluation"]["feature_analysis"]["by_domain"][d][f]["auroc"] - 0.5)
                   for s in seeds for d in zs[s]["evaluation"]["feature_analysis"]["by_domain"]] \
                if "feature_analysis" in zs[seeds[0]]["evaluation"] else []
            rows.append([f, _ms(v, 2), _ms(sep, 3) if sep else "n/a"])
        parts.append("**Analysis features** (Spearman correlation over the domains between the detector's "
                     "per-domain AUROC and the feature's own separability abs(AUROC_f − 0.5) in that domain; mean ± std "
                     f"over the {len(LOSSES) * len(seeds)} runs at the 10 % ratio; and the feature's separability itself, over seeds × "
                     "domains)\n")
        parts.append(_common.md_table(["feature", "Spearman (detector AUROC, separability)",
                                       "separability abs(AUROC_f − 0.5)"], rows) + "\n")
    # verdicts on the losses
    gains = {}
    for ratio in RATIOS:
        best = max(AUC_LOSSES, key=lambda loss: statistics.fmean(_paired(results, loss, ratio, seeds, "auroc")[0]))
        gains[ratio] = (best, *_paired(results, best, ratio, seeds, "auroc"))
    low, high = gains[RATIOS[0]], gains[RATIOS[-1]]
    helps_low = statistics.fmean(low[1]) > 0 and low[2] >= len(seeds) - 1
    holds = helps_low and statistics.fmean(low[1]) > statistics.fmean(high[1])
    verdicts.append(
        f"- AUC losses help most at low machine ratios: **{'holds' if holds else 'does not hold'}** here. Best AUC "
        f"loss minus CE in AUROC: {RATIOS[0]:.0%} {low[0]} {statistics.fmean(low[1]):+.3f} ({low[2]}/{len(seeds)} "
        f"seeds above CE); " + "; ".join(f"{r:.0%} {g[0]} {statistics.fmean(g[1]):+.3f} ({g[2]}/{len(seeds)})"
                                          for r, g in gains.items() if r != RATIOS[0]) + ".")
    low_fpr = []
    for loss in ("pauc-cvar", "tpauc"):
        d_p, w_p = _paired(results, loss, RATIOS[0], seeds, "pauc")
        d_a, _ = _paired(results, loss, RATIOS[0], seeds, "auroc")
        d_t, w_t = _paired(results, loss, RATIOS[0], seeds, "tpr_at_1pct_fpr")
        low_fpr.append((loss, statistics.fmean(d_p), w_p, statistics.fmean(d_a), statistics.fmean(d_t), w_t))
    holds = any(p > 0 and w >= len(seeds) - 1 and p > a for _, p, w, a, _, _ in low_fpr)
    verdicts.append(
        f"- The partial-AUC losses help most in the low-FPR region (at {RATIOS[0]:.0%}): "
        f"**{'holds' if holds else 'does not hold'}** here. " + "; ".join(
            f"{loss} minus CE: pAUROC {p:+.3f} ({w}/{len(seeds)} seeds), AUROC {a:+.3f}, TPR @ 1 % FPR {t:+.3f} "
            f"({wt}/{len(seeds)})" for loss, p, w, a, t, wt in low_fpr) + ".")
    z_au = statistics.fmean(zs[s]["evaluation"]["overall"]["auroc"] for s in seeds)
    best_trained = max(((loss, r) for loss in LOSSES for r in RATIOS),
                       key=lambda lr: statistics.fmean(_values(results, lr[0], lr[1], seeds, ("overall", "auroc"))))
    b_au = statistics.fmean(_values(results, *best_trained, seeds, ("overall", "auroc")))
    verdicts.append(
        f"- Trained detector vs the zero-shot NLL detector (the best alternative that needs no training): best "
        f"trained {best_trained[0]} at {best_trained[1]:.0%} AUROC {b_au:.3f} vs zero-shot {z_au:.3f} "
        f"({'trained better' if b_au > z_au else 'zero-shot better'}).")
    parts.append("**Verdicts** (computed by the script from the tables above)\n")
    parts.append("\n".join(verdicts) + "\n")
    return "\n".join(parts), verdicts


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 epochs, RESULTS.md untouched")
    p.add_argument("--data", default="builtin", help="builtin or a data file (RESULTS.md untouched unless builtin)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    seeds = SEEDS[:1] if args.quick else SEEDS
    extra = (["--epochs", "2"] if args.quick else []) + ["--data", args.data]
    write = not args.quick and args.data == "builtin"
    facts = _common.machine_facts(1)
    t_start = time.perf_counter()
    results = _load_results() if write else {}
    todo = [(s, r, loss) for s in seeds for r in RATIOS for loss in LOSSES if _key(loss, r, s) not in results]
    for s in seeds:
        if _key(ZERO_SHOT, 0, s) not in results:
            results[_key(ZERO_SHOT, 0, s)] = zero_shot(s, args.data)
    for k, (s, r, loss) in enumerate(todo, 1):
        results[_key(loss, r, s)] = run_recipe(loss, r, s, extra)
        au = results[_key(loss, r, s)]["evaluation"]["overall"]["auroc"]
        print(f"[{k}/{len(todo)}] seed {s} ratio {r:g} {loss}: AUROC {au:.3f} "
              f"({results[_key(loss, r, s)]['seconds']:.1f} s, load {_common.loadavg():.2f})", flush=True)
        if write:
            _save_results(results)
    minutes = (time.perf_counter() - t_start) / 60
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    header = (
        "## Machine-text detection: CE vs AUC / AP / partial-AUC losses (issue 17, `bench/fidelity_textdetect.py`)\n\n"
        f"Command: `{COMMAND}`{' --quick' if args.quick else ''}; {len(todo)} runs in this invocation, "
        f"{minutes:.1f} min (runs already in `bench/results_textdetect.json` are kept).  \n"
        f"Machine: {facts}; load average at the end {', '.join(f'{x:.2f}' for x in load_end)}.\n\n"
        "Data: the bundled file (`src/xrisk/data/files/textdetect_smollm2.jsonl.gz`, command in its `.meta.json`). "
        "Detector: `xrisk run textdetect --text-encoder tfidf --loss LOSS --machine-ratio R --seed S` (TF-IDF word "
        "1-2-grams, at most 5000 features, then an MLP with 64 hidden units, 20 epochs; Adam lr 1e-3 for ce/ap/pauc-cvar/tpauc, PESG lr 0.1 for aucm; dual "
        "sampler for the AUC losses). The split keeps every sample of a document group on one side; the seed "
        "sets the split, the subsample and the initialisation.\n")
    body, verdicts = render(results, seeds, header)
    print(body)
    if write:
        _common.write_section("textdetect", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
