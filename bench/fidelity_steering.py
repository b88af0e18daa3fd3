"""Model steering with a reference model (issue 11): data-efficiency curves and speed.

**Fidelity** (``steering-fidelity``): test quality at 10 / 25 / 50 / 100 % of the target pool, mean +- std over
seeds, for every method in the same training loop (``xrisk.recipes.steer.train_steer`` /
``xrisk.recipes.contrastive.train_clip``), each run under the same step budget (the epochs of a fraction are
scaled so that every fraction takes the same number of optimisation steps: the data is the only variable).

* Fashion-MNIST (12,000-sample training split: target pool 9,600, reference pool 2,400) and BBC News (MiniLM
  embeddings, 1,558 articles: target pool 1,247, reference pool 311): target MLP (one hidden layer of 256),
  reference a linear model trained on the reference pool (smaller *and* trained on other data), test accuracy;
  ERM, DRRho-KL, DRRho-CVaR, RHO selection, distillation.
* Fashion-captions CLIP (pool of 4,000 image-caption pairs): target image MLP of width 16 + bag-of-tokens text
  tower (64-d), reference a CLIP of width 8 (32-d) trained on 4,000 other pairs; mean of image->text and
  text->image recall@1/@5 on held-out pairs (and zero-shot accuracy); GCL (no reference), DRRho-CLIP, JEST,
  distillation.

Verdict lines, per data set: (a) a DRRho target beats ERM/GCL at equal data; (b) the smallest fraction at which
DRRho reaches ERM's 100 % score; (c) the DRRho target beats its own reference; (d) DRRho beats the selection
baselines. "Beats" means the mean difference exceeds the larger of the two seed stds (and is positive).

**Speed** (``steering-speed``): one process, one thread, interleaved rounds, paired ratios (per round the
ratio of the two methods' median step times, then the median over rounds):

* DRRho-CLIP step with cached reference features (the cache read included) vs the same GCL step without a
  reference, B = 128 / 512 / 2048, at two levels: the loss alone (forward + backward from leaf features
  ``[B, 256]``) and a training step of the tiny CLIP (both towers, loss, backward, AdamW); the on-the-fly
  reference's forward pass (no gradient) reported separately;
* ``DRRhoLoss`` training step (MLP on Fashion-MNIST-sized inputs, cached reference logits) vs the plain mean
  cross-entropy step, and the loss alone;
* reads of a ``ReferenceCache`` (rows/s from the memory map, and their share of the DRRho-CLIP training step);
* with ``--baseline-commit REV`` (a commit of this repository, exported with ``git archive``) or ``--baseline-src
  DIR`` (an exported package): training without reference features is bit-identical to the baseline's and as fast
  (child processes, alternating). With a commit, a loss whose training is not bit-identical is traced to the
  first commit that changed it (a bisection of the history between the baseline and ``HEAD``, as ``git bisect``
  would do, without touching the worktree), named in the table with the files it changed.

    .venv-bench/bin/python bench/fidelity_steering.py                      # full run (nice -n 10, 1 thread)
    .venv-bench/bin/python bench/fidelity_steering.py --part speed --baseline-commit 13d977b
    .venv-bench/bin/python bench/fidelity_steering.py --quick              # smoke run, prints only
    .venv-bench/bin/python bench/fidelity_steering.py --drrho-only         # only the DRRhoLoss rows, prints only
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import _common

SECTION_FIDELITY = "steering-fidelity"
SECTION_SPEED = "steering-speed"
REPO = Path(__file__).resolve().parent.parent
PLOT = REPO / "bench" / "plots" / "steering_data_efficiency.png"
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
CLASSIFICATION_METHODS = ("erm", "drrho-kl", "drrho-cvar", "rho-select", "distill")
CLIP_METHODS = ("gcl", "drrho", "jest", "distill")
LABELS = {"erm": "ERM", "drrho-kl": "DRRho-KL", "drrho-cvar": "DRRho-CVaR", "rho-select": "RHO selection",
          "distill": "distillation", "gcl": "GCL (no reference)", "drrho": "DRRho-CLIP", "jest": "JEST"}
# the same colour for the same role in every panel: no reference, DRRho, second DRRho, selection, distillation
COLORS = {"erm": "C0", "gcl": "C0", "drrho-kl": "C1", "drrho": "C1", "drrho-cvar": "C2", "rho-select": "C3",
          "jest": "C3", "distill": "C4"}
GOAL_CLIP, GOAL_DRRHO, GOAL_CACHE = 1.15, 1.10, 0.05
CLOCK = time.thread_time  # CPU time of the timing thread: on the shared machine wall time is mostly waiting


@dataclass
class Setup:
    quick: bool
    seeds: tuple[int, ...]
    steps: dict[str, int]  # optimisation steps per run, per data set
    clip_pool: int = 4000
    clip_ref_epochs: int = 30
    batches: tuple[int, ...] = (128, 512, 2048)
    rounds: int = 15
    extra: dict = field(default_factory=dict)


def full_setup(seeds: int) -> Setup:
    return Setup(quick=False, seeds=tuple(range(seeds)), steps={"fashion-mnist": 1500, "bbc": 1500, "clip": 1500})


def quick_setup() -> Setup:
    return Setup(quick=True, seeds=(0,), steps={"fashion-mnist": 40, "bbc": 40, "clip": 20}, clip_pool=800,
                 clip_ref_epochs=1, batches=(128,), rounds=3)


# ============================================================================ fidelity
# Hyperparameters: one setting for every data set, fraction and seed (no selection run on these test sets is
# recorded, so the tables claim no tuning).
STEER = dict(batch_size=64, lr=1e-3, tau=2.0, gamma=0.9, alpha=0.7, eta=0.05, select_ratio=0.5, distill_weight=0.5,
             distill_temp=2.0, num_threads=1)
MAX_TRAIN = {"fashion-mnist": 12000, "bbc": None}


def _epochs_for(n: int, batch: int, steps: int) -> int:
    return max(1, round(steps / max(1, n // batch)))


def _classification(data: str, s: Setup, workdir: Path) -> dict:
    """``{method: {fraction: [test_acc per seed]}}`` plus ``"reference": [acc per seed]``."""
    import xrisk.recipes.steer as steer_recipe
    from xrisk.recipes.runner import RunContext
    from xrisk.recipes.steer import SteerConfig, train_steer

    # every run of this study reads the same split: load it once (train_steer only indexes it, never writes it)
    if not hasattr(steer_recipe.load_steer_data, "cache_info"):
        steer_recipe.load_steer_data = functools.lru_cache(maxsize=2)(steer_recipe.load_steer_data)
    d = steer_recipe.load_steer_data(data, ref_split=0.2, split_seed=0, max_train=MAX_TRAIN[data])
    pool = int(d.pools["target"].numel())
    out: dict = {m: {f: [] for f in FRACTIONS} for m in CLASSIFICATION_METHODS}
    out["reference"] = []
    out["pool"] = pool
    out["ref_pool"] = int(d.pools["reference"].numel())
    steps = s.steps[data]
    for seed in s.seeds:
        ref_dir = workdir / f"{data}-ref-{seed}"
        ref_cfg = SteerConfig(data=data, method="erm", pool="reference", arch="linear", max_train=MAX_TRAIN[data],
                              seed=seed, epochs=_epochs_for(out["ref_pool"], 64, steps), **_only(STEER, "batch_size", "lr",
                                                                                                   "num_threads"))
        ref_cfg.eval_every = ref_cfg.epochs
        args = {"data": data, "method": "erm", "pool": "reference", "seed": seed, "max_train": MAX_TRAIN[data],
                "ref_split": 0.2, "split_seed": 0, "arch": "linear", "hidden": 256, "train_fraction": 1.0}
        with RunContext(ref_dir, recipe="steer", args=args, quiet=True, plot=False) as ctx:
            ref = train_steer(ref_cfg, ctx)
            ctx.finish(ref)
        out["reference"].append(ref["test_acc"])
        for frac in FRACTIONS:
            n = round(pool * frac)
            epochs = _epochs_for(n, STEER["batch_size"], steps)
            for method in CLASSIFICATION_METHODS:
                t0 = time.perf_counter()
                cfg = SteerConfig(data=data, method=method, train_fraction=frac, ref=None if method == "erm" else ref_dir,
                                  max_train=MAX_TRAIN[data], seed=seed, epochs=epochs, eval_every=epochs,
                                  ref_cache=workdir / f"{data}-cache-{seed}", **STEER)
                res = train_steer(cfg)
                out[method][frac].append(res["test_acc"])
                print(f"  {data} seed {seed} {frac:>4} {method:<11} acc {res['test_acc']:.4f} "
                      f"({time.perf_counter() - t0:.0f} s, load {_common.loadavg():.1f})", flush=True)
    return out


def _only(d: dict, *keys: str) -> dict:
    return {k: d[k] for k in keys}


CLIP = dict(data="fashion-captions", loss="gcl", image_encoder="mlp", text_encoder="bag", batch_size=64, lr=1e-3,
            tau=0.1, gamma=0.9, dim=64, width=16, test_subset=2000, eval_size=1000, num_threads=1)


def _clip_score(res: dict) -> float:
    return sum(res[k] for k in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5")) / 4


def _clip(s: Setup, workdir: Path) -> dict:
    from xrisk.recipes.contrastive import CLIPConfig, train_clip
    from xrisk.recipes.runner import RunContext

    out: dict = {m: {f: [] for f in FRACTIONS} for m in CLIP_METHODS}
    out["reference"], out["reference_zs"], out["zero_shot"] = [], [], {m: {f: [] for f in FRACTIONS} for m in CLIP_METHODS}
    steps = s.steps["clip"]
    for seed in s.seeds:
        ref_dir = workdir / f"clip-ref-{seed}"
        ref_cfg = CLIPConfig(**{**CLIP, "width": 8, "dim": 32}, subset=s.clip_pool, seed=1000 + seed,
                             epochs=s.clip_ref_epochs, eval_every=s.clip_ref_epochs)
        args = {k: getattr(ref_cfg, k) for k in ("data", "loss", "image_encoder", "text_encoder", "dim", "width",
                                                  "subset", "seed", "tau", "gamma", "batch_size", "test_subset",
                                                  "eval_size", "lr")}
        with RunContext(ref_dir, recipe="clip", args=args, quiet=True, plot=False) as ctx:
            ref = train_clip(ref_cfg, ctx)
            ctx.finish(ref)
        out["reference"].append(_clip_score(ref))
        out["reference_zs"].append(ref["zero_shot_acc"])
        for frac in FRACTIONS:
            n = round(s.clip_pool * frac)
            epochs = _epochs_for(n, CLIP["batch_size"], steps)
            for method in CLIP_METHODS:
                t0 = time.perf_counter()
                extra = {} if method == "gcl" else {"ref": ref_dir, "ref_use": method,
                                                    "ref_cache": workdir / f"clip-cache-{seed}-{n}"}
                cfg = CLIPConfig(**CLIP, subset=n, seed=seed, epochs=epochs, eval_every=epochs, **extra)
                res = train_clip(cfg)
                out[method][frac].append(_clip_score(res))
                out["zero_shot"][method][frac].append(res["zero_shot_acc"])
                print(f"  clip seed {seed} {frac:>4} {method:<8} mean R {_clip_score(res):.4f} zero-shot "
                      f"{res['zero_shot_acc']:.4f} ({time.perf_counter() - t0:.0f} s, load {_common.loadavg():.1f})",
                      flush=True)
    return out


def _ms(xs: list[float], scale: float = 100.0) -> str:
    m, sd = _common.mean_std([x * scale for x in xs])
    return f"{m:.1f} ± {sd:.1f}"


def _beats(a: list[float], b: list[float]) -> tuple[bool, float]:
    """Whether mean(a) exceeds mean(b) by more than the larger seed std, and the difference (points)."""
    (ma, sa), (mb, sb) = _common.mean_std(a), _common.mean_std(b)
    return ma - mb > max(sa, sb), 100 * (ma - mb)


def _verdicts(res: dict, base: str, steered: tuple[str, ...], selection: tuple[str, ...], what: str) -> list[str]:
    lines = []
    # (a) steered beats the unsteered target at equal data
    parts = []
    for m in steered:
        wins = [f for f in FRACTIONS if _beats(res[m][f], res[base][f])[0]]
        diffs = ", ".join(f"{int(f * 100)} %: {_beats(res[m][f], res[base][f])[1]:+.1f}" for f in FRACTIONS)
        parts.append(f"{LABELS[m]} beats {LABELS[base]} at {len(wins)} of {len(FRACTIONS)} fractions ({diffs} points)")
    held = any(len([f for f in FRACTIONS if _beats(res[m][f], res[base][f])[0]]) >= 2 for m in steered)
    lines.append(f"(a) steered beats unsteered at equal data: {'; '.join(parts)} -> **{'held' if held else 'did not hold'}**"
                 f"{'' if held else ' (no DRRho variant wins at two or more fractions)'}.")
    # (b) reaches the unsteered full-data score with a fraction of the data, where the unsteered target does not:
    # the steered mean at f is at least the unsteered 100 % mean and the steered target beats the unsteered one at f
    full = statistics.fmean(res[base][1.0])
    base_reach = [f for f in FRACTIONS if f < 1.0 and statistics.fmean(res[base][f]) >= full]
    parts = []
    best_frac = None
    for m in steered:
        reach = [f for f in FRACTIONS if f < 1.0 and statistics.fmean(res[m][f]) >= full]
        gain = [f for f in reach if _beats(res[m][f], res[base][f])[0]]
        parts.append(f"{LABELS[m]}: {'mean from ' + str(int(min(reach) * 100)) + ' %' if reach else 'at no fraction below 100 %'}"
                     f"{', beating ' + LABELS[base] + ' there at ' + ', '.join(f'{int(f * 100)} %' for f in gain) if gain else ''}")
        if gain:
            best_frac = min(gain) if best_frac is None else min(best_frac, min(gain))
    own = (f"{LABELS[base]} itself reaches it from {int(min(base_reach) * 100)} %" if base_reach
           else f"{LABELS[base]} itself only at 100 %")
    lines.append(f"(b) reaching {LABELS[base]}'s 100 % score ({100 * full:.1f}) with less data: {'; '.join(parts)} "
                 f"({own}) -> " + (f"**held with {int(best_frac * 100)} % of the data**." if best_frac else
                                   "**did not hold** (not reached at a fraction where the steered target beats "
                                   f"{LABELS[base]} by more than the seed std)."))
    # (c) the target beats its reference
    ref = res["reference"]
    parts = []
    for m in steered:
        wins = [f for f in FRACTIONS if _beats(res[m][f], ref)[0]]
        parts.append(f"{LABELS[m]} above the reference ({_ms(ref)}) at {', '.join(f'{int(f * 100)} %' for f in wins) or 'no fraction'}")
    held_c = any(_beats(res[m][1.0], ref)[0] for m in steered)
    lines.append(f"(c) weak to strong, the target beats its own reference: {'; '.join(parts)} -> "
                 f"**{'held' if held_c else 'did not hold'}**.")
    # (d) DRRho beats the selection baselines: some DRRho variant better at two or more fractions, worse at none
    parts = []
    held_d = False
    for m in steered:
        for sel in selection:
            wins = [f for f in FRACTIONS if _beats(res[m][f], res[sel][f])[0]]
            losses = [f for f in FRACTIONS if _beats(res[sel][f], res[m][f])[0]]
            held_d = held_d or (len(wins) >= 2 and not losses)
            parts.append(f"{LABELS[m]} vs {LABELS[sel]}: better at {len(wins)}, worse at {len(losses)} of {len(FRACTIONS)}")
    lines.append(f"(d) DRRho beats the selection baselines ({what}): {'; '.join(parts)} -> "
                 f"**{'held' if held_d else 'did not hold'}** (held: better at two or more fractions, worse at none).")
    return lines


def _table(res: dict, methods: tuple[str, ...], scale_name: str) -> str:
    rows = [[LABELS[m], *[_ms(res[m][f]) for f in FRACTIONS]] for m in methods]
    rows.append(["reference (its own data)", _ms(res["reference"]), "", "", ""])
    return _common.md_table([f"method ({scale_name}, %)", *[f"{int(f * 100)} %" for f in FRACTIONS]], rows)


def _plot(results: dict[str, tuple[dict, tuple[str, ...], str]]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4))
    axes = [axes] if len(results) == 1 else list(axes)
    for ax, (title, (res, methods, ylabel)) in zip(axes, results.items()):
        x = [100 * f for f in FRACTIONS]
        for m in methods:
            ms = [_common.mean_std([100 * v for v in res[m][f]]) for f in FRACTIONS]
            ax.errorbar(x, [a for a, _ in ms], yerr=[b for _, b in ms], marker="o", capsize=3, label=LABELS[m],
                        color=COLORS[m])
        ref_m = 100 * statistics.fmean(res["reference"])
        ax.axhline(ref_m, color="grey", linestyle="--", label="reference")
        ax.set_xscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{int(v)}" for v in x])
        ax.set_xlabel("% of the target's training pool")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)  # every panel: the CLIP panel has other methods
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return True


def fidelity(s: Setup, command: str, write: bool) -> None:
    t0 = time.perf_counter()
    facts = _common.machine_facts(1)  # date and load average at the start
    with tempfile.TemporaryDirectory(prefix="xrisk-steer-") as tmp:
        work = Path(tmp)
        fm = _classification("fashion-mnist", s, work)
        bbc = _classification("bbc", s, work)
        clip = _clip(s, work)
    minutes = (time.perf_counter() - t0) / 60
    load1 = os.getloadavg()
    seeds = list(s.seeds)
    body = [
        "## Model steering: data efficiency with a reference model (issue 11)",
        "",
        f"Command: `nice -n 10 {_common.interpreter()} {command}` ({minutes:.0f} min, "
        f"one process, one thread). {facts}, at the end {', '.join(f'{v:.2f}' for v in load1)}.",
        "",
        f"Scale (what fits the shared 2-core machine): seeds {seeds}; every run takes the same number of optimisation "
        f"steps at every fraction (Fashion-MNIST {s.steps['fashion-mnist']}, BBC {s.steps['bbc']}, CLIP "
        f"{s.steps['clip']}; the epochs are scaled), Adam lr 1e-3, batch 64. Hyperparameters: DRRho-KL tau = "
        f"{STEER['tau']}, gamma = {STEER['gamma']}; DRRho-CVaR alpha = {STEER['alpha']}, eta = {STEER['eta']} (one "
        "setting for every data set, fraction and seed, not tuned on these test sets); RHO selection trains on "
        "the best half of twice the batch; "
        f"distillation weight {STEER['distill_weight']} at temperature {STEER['distill_temp']}; CLIP: tau = "
        f"{CLIP['tau']} for GCL, DRRho-CLIP (same tau for the reference), JEST (keeps half of twice the batch, 2 "
        "chunks) and distillation (weight 0.5). Numbers: test accuracy / mean recall in %, mean ± std over seeds.",
        "",
        f"### Fashion-MNIST (target pool {fm['pool']}, reference pool {fm['ref_pool']}; MLP 784-256-10 target, "
        "linear reference)",
        "",
        _table(fm, CLASSIFICATION_METHODS, "test accuracy"),
        "",
        *_verdicts(fm, "erm", ("drrho-kl", "drrho-cvar"), ("rho-select",), "RHO selection"),
        "",
        f"### BBC News (target pool {bbc['pool']}, reference pool {bbc['ref_pool']}; MLP 384-256-5 on MiniLM "
        "embeddings, linear reference)",
        "",
        _table(bbc, CLASSIFICATION_METHODS, "test accuracy"),
        "",
        *_verdicts(bbc, "erm", ("drrho-kl", "drrho-cvar"), ("rho-select",), "RHO selection"),
        "",
        f"### Fashion-captions CLIP (pool {s.clip_pool} pairs; target width 16 / 64-d, reference width 8 / 32-d "
        "trained on other pairs)",
        "",
        "Mean of image->text and text->image recall@1 and @5 on 1,000 held-out test pairs (retrieval among the "
        "distinct captions, a caption of the image's class counts as a hit):",
        "",
        _table(clip, CLIP_METHODS, "mean recall"),
        "",
        "Zero-shot accuracy on 2,000 test images: " + "; ".join(
            f"{LABELS[m]} " + ", ".join(f"{int(f * 100)} % {_ms(clip['zero_shot'][m][f])}" for f in FRACTIONS)
            for m in CLIP_METHODS) + f"; reference {_ms(clip['reference_zs'])}.",
        "",
        *_verdicts(clip, "gcl", ("drrho",), ("jest",), "JEST"),
        "",
    ]
    if write and _plot({"Fashion-MNIST (test accuracy %)": (fm, CLASSIFICATION_METHODS, "test accuracy %"),
              "BBC News (test accuracy %)": (bbc, CLASSIFICATION_METHODS, "test accuracy %"),
              "fashion-captions CLIP (mean recall %)": (clip, CLIP_METHODS, "mean recall@1/5 %")}):
        body += [f"![data-efficiency curves](plots/{PLOT.name})", ""]
    text = "\n".join(body)
    print(text)
    if write:
        _common.write_section(SECTION_FIDELITY, text)


# ============================================================================ speed
D = 256
D_SMALL = 64  # a reference with a quarter of the target's embedding width (context row)
D_SWEEP = (32, 64, 128, 256)  # reference widths of the product-share table (the floor's extra matrix product)


def _clip_towers(dim: int, width: int, vocab: int = 300) -> tuple[nn.Module, nn.Module]:
    from xrisk.models.encoders import BagOfTokensTextEncoder
    from xrisk.recipes.contrastive import build_image_encoder

    return build_image_encoder("mlp", (1, 28, 28), dim=dim, width=width), BagOfTokensTextEncoder(vocab, embed_dim=64,
                                                                                                  out_dim=dim)


class _Indices:
    """Fresh dataset indices per step at no cost inside the timed step: consecutive slices of a few precomputed
    permutations of ``[0, n)`` (a ``randperm(n)`` per step would cost more than a small model's step)."""

    def __init__(self, n: int, g: torch.Generator, count: int = 8) -> None:
        self.perms = [torch.randperm(n, generator=g) for _ in range(count)]
        self.n, self.k = n, 0

    def __call__(self, n: int, b: int, g: torch.Generator) -> torch.Tensor:
        perm = self.perms[(self.k // max(1, self.n // b)) % len(self.perms)]
        start = (self.k % max(1, self.n // b)) * b
        self.k += 1
        return perm[start : start + b]


def _paired(times: dict[str, list[float]], a: str, b: str, spr: int) -> float:
    """Median over rounds of (median time of a in the round) / (median time of b in the round)."""
    ra = [statistics.median(times[a][i:i + spr]) for i in range(0, len(times[a]), spr)]
    rb = [statistics.median(times[b][i:i + spr]) for i in range(0, len(times[b]), spr)]
    return statistics.median(x / y for x, y in zip(ra, rb))


def speed(s: Setup, command: str, write: bool, baseline: tuple[str, str | None] | None,
          drrho_only: bool = False) -> None:
    """The speed section; ``baseline``: ``(package src dir, its commit or None)`` for the no-reference comparison;
    ``drrho_only``: time only the ``DRRhoLoss`` rows (the same steps, rounds and pairing) and print their table."""
    from xrisk.data.reference_cache import ReferenceCache, fingerprint
    from xrisk.losses import DRRhoLoss, GlobalContrastiveLoss

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    facts = _common.machine_facts(1)  # date and load average at the start
    n = 20000
    g = torch.Generator().manual_seed(0)
    tmp = tempfile.TemporaryDirectory(prefix="xrisk-steer-speed-")
    clip_cache = ReferenceCache(Path(tmp.name) / "clip", num_samples=n, shape=(2, D), data_fingerprint="speed",
                                model_fingerprint="random unit rows")
    small_cache = ReferenceCache(Path(tmp.name) / "clip-small", num_samples=n, shape=(2, D_SMALL),
                                 data_fingerprint="speed", model_fingerprint="random unit rows")
    for chunk in torch.arange(n).split(4096):
        clip_cache.write(chunk, F.normalize(torch.randn(chunk.numel(), 2, D, generator=g), dim=2))
        small_cache.write(chunk, F.normalize(torch.randn(chunk.numel(), 2, D_SMALL, generator=g), dim=2))
    logit_cache = ReferenceCache(Path(tmp.name) / "logits", num_samples=n, shape=(10,), data_fingerprint="speed",
                                 model_fingerprint=fingerprint("random logits"))
    logit_cache.write(torch.arange(n), torch.randn(n, 10, generator=g))
    y_all = torch.randint(0, 10, (n,), generator=g)
    ref_losses = F.cross_entropy(logit_cache.read(torch.arange(n)), y_all, reduction="none")  # as the steer recipe
    _fresh_index = _Indices(n, g)
    spr = 3 if not s.quick else 2
    clip_rows, loss_rows, onfly_rows, cache_rows, sweep_rows = [], [], [], [], []
    goals = {}
    for b in () if drrho_only else s.batches:
        rounds = s.rounds if b < 2048 else max(3, s.rounds // 3)
        # --- loss alone, leaf features
        gcl_plain = GlobalContrastiveLoss(n, mode="bimodal", tau=0.07, gamma=0.9)
        gcl_ref = GlobalContrastiveLoss(n, mode="bimodal", tau=0.07, gamma=0.9)
        gcl_small = GlobalContrastiveLoss(n, mode="bimodal", tau=0.07, gamma=0.9)
        gcl_floor = GlobalContrastiveLoss(n, mode="bimodal", tau=0.07, gamma=0.9)
        fa, fb = torch.randn(b, D, generator=g), torch.randn(b, D, generator=g)

        def loss_step(loss, cache, fa=fa, fb=fb, b=b, floor=False):
            idx = _fresh_index(n, b, g)
            a, bb = fa.clone().requires_grad_(True), fb.clone().requires_grad_(True)
            rf = None
            if cache is not None:
                rows = cache.read(idx)
                rf = (rows[:, 0], rows[:, 1])
            if floor:  # the floor: the GCL step plus the read and one bare product of the reference's shape
                torch.mm(rf[0], rf[1].T)
                rf = None
            loss(a, bb, idx, ref_feats=rf).backward()

        # --- training step of the tiny CLIP
        torch.manual_seed(0)
        img_t, txt_t = _clip_towers(D, 16)
        img_r, txt_r = _clip_towers(D, 16)  # the same towers, for the on-the-fly reference (conservative)
        for m in (img_r, txt_r):
            m.eval()
        opt = torch.optim.AdamW(list(img_t.parameters()) + list(txt_t.parameters()), lr=1e-4)
        x = torch.rand(b, 1, 28, 28, generator=g)
        tok = torch.randint(2, 300, (b, 12), generator=g)
        gcl_train_plain = GlobalContrastiveLoss(n, mode="bimodal", tau=0.07, gamma=0.9)
        gcl_train_ref = GlobalContrastiveLoss(n, mode="bimodal", tau=0.07, gamma=0.9)
        gcl_train_fly = GlobalContrastiveLoss(n, mode="bimodal", tau=0.07, gamma=0.9)
        gcl_train_small = GlobalContrastiveLoss(n, mode="bimodal", tau=0.07, gamma=0.9)
        gcl_train_floor = GlobalContrastiveLoss(n, mode="bimodal", tau=0.07, gamma=0.9)

        def train_step(loss, ref_mode, x=x, tok=tok, b=b):
            idx = _fresh_index(n, b, g)
            rf = None
            if ref_mode in ("cached", "small", "floor"):
                rows = (clip_cache if ref_mode != "small" else small_cache).read(idx)
                rf = (rows[:, 0], rows[:, 1])
                if ref_mode == "floor":  # the GCL step plus the read and one bare product (see loss_step)
                    torch.mm(rf[0], rf[1].T)
                    rf = None
            elif ref_mode == "fly":
                with torch.no_grad():
                    rf = (img_r(x), txt_r(tok))
            value = loss(img_t(x), txt_t(tok), idx, ref_feats=rf)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()

        def ref_forward(x=x, tok=tok):
            with torch.no_grad():
                img_r(x), txt_r(tok)

        def cache_read(b=b):
            clip_cache.read(_fresh_index(n, b, g))

        ref_pairs = {w: (F.normalize(torch.randn(b, w, generator=g), dim=1), F.normalize(torch.randn(b, w, generator=g), dim=1))
                     for w in D_SWEEP}

        def bare_product(w, pairs=ref_pairs):  # the reference similarity matrix alone, [B, w] x [w, B]
            torch.mm(pairs[w][0], pairs[w][1].T)

        # three groups, each alternating its steps one by one (spr = 1): a ratio is the median of per-step ratios
        times = _common.time_interleaved({
            "loss: GCL": lambda: loss_step(gcl_plain, None),
            "loss: DRRho-CLIP cached": lambda: loss_step(gcl_ref, clip_cache),
            "loss: DRRho-CLIP small": lambda: loss_step(gcl_small, small_cache),
            "loss: floor": lambda: loss_step(gcl_floor, clip_cache, floor=True),
        }, rounds=rounds * 4, steps_per_round=1, clock=CLOCK)
        times.update(_common.time_interleaved({
            "train: GCL": lambda: train_step(gcl_train_plain, None),
            "train: GCL again": lambda: train_step(gcl_train_plain, None),
            "train: DRRho-CLIP cached": lambda: train_step(gcl_train_ref, "cached"),
            "train: DRRho-CLIP on the fly": lambda: train_step(gcl_train_fly, "fly"),
            "train: DRRho-CLIP small": lambda: train_step(gcl_train_small, "small"),
            "train: floor": lambda: train_step(gcl_train_floor, "floor"),
        }, rounds=rounds * 4, steps_per_round=1, clock=CLOCK))
        times.update(_common.time_interleaved({"reference forward": ref_forward, "cache read": cache_read,
                                               **{f"product {w}": functools.partial(bare_product, w) for w in D_SWEEP}},
                                              rounds=rounds * 4, steps_per_round=1, clock=CLOCK))
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        r_loss = _paired(times, "loss: DRRho-CLIP cached", "loss: GCL", 1)
        r_train = _paired(times, "train: DRRho-CLIP cached", "train: GCL", 1)
        r_fly = _paired(times, "train: DRRho-CLIP on the fly", "train: GCL", 1)
        r_aa = _paired(times, "train: GCL again", "train: GCL", 1)
        r_loss_small = _paired(times, "loss: DRRho-CLIP small", "loss: GCL", 1)
        r_train_small = _paired(times, "train: DRRho-CLIP small", "train: GCL", 1)
        r_loss_floor = _paired(times, "loss: floor", "loss: GCL", 1)
        r_train_floor = _paired(times, "train: floor", "train: GCL", 1)
        share = med["cache read"] / med["train: DRRho-CLIP cached"]
        goals[b] = (r_train, r_loss, share)
        clip_rows.append([b, f"{med['loss: GCL']:.2f}", f"{med['loss: DRRho-CLIP cached']:.2f}", f"{r_loss:.2f}x",
                          f"{med['train: GCL']:.2f}", f"{med['train: DRRho-CLIP cached']:.2f}", f"{r_train:.2f}x",
                          f"{r_aa:.2f}x", f"{r_loss_floor:.2f}x", f"{r_train_floor:.2f}x", f"{r_loss_small:.2f}x",
                          f"{r_train_small:.2f}x"])
        onfly_rows.append([b, f"{med['reference forward']:.2f}", f"{med['train: DRRho-CLIP on the fly']:.2f}",
                           f"{r_fly:.2f}x"])
        cache_rows.append([b, f"{1e3 * med['cache read']:.0f}", f"{b / (med['cache read'] / 1e3):,.0f}",
                           f"{100 * share:.2f} %"])
        sweep_rows.append([b, f"{med['train: GCL']:.2f}", *(
            f"{med[f'product {w}']:.2f} ({100 * med[f'product {w}'] / med['train: GCL']:.1f} %)" for w in D_SWEEP),
            f"{1 + (med['cache read'] + med[f'product {D}']) / med['train: GCL']:.2f}x"])
        print(f"  B={b}: loss {r_loss:.2f}x, train {r_train:.2f}x, on the fly {r_fly:.2f}x, cache share {100 * share:.2f} %",
              flush=True)
    # --- DRRhoLoss vs the plain mean loss
    for b in (64, 256):
        torch.manual_seed(0)  # one model and optimizer for every step: only the loss differs between the rows
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
        models = {k: model for k in ("erm", "kl", "cvar")}
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        opts = {k: opt for k in models}
        losses = {"kl": DRRhoLoss(divergence="kl", tau=2.0), "cvar": DRRhoLoss(divergence="cvar", alpha=0.7)}
        x = torch.rand(b, 1, 28, 28, generator=g)
        logits = torch.randn(b, 10, generator=g)
        y = y_all[:b]

        def erm_step(x=x, y=y):
            value = F.cross_entropy(models["erm"](x), y)
            opts["erm"].zero_grad(set_to_none=True)
            value.backward()
            opts["erm"].step()

        def drrho_step(k, x=x, y=y, b=b):
            idx = _fresh_index(n, b, g)
            value = losses[k](F.cross_entropy(models[k](x), y, reduction="none"), ref_losses[idx], idx)
            opts[k].zero_grad(set_to_none=True)
            value.backward()
            opts[k].step()

        w_fixed = torch.full((b,), 1.0 / b)

        def floor_step(x=x, y=y, b=b, w=w_fixed):  # the ops any excess-loss weighting needs: fixed weights
            idx = _fresh_index(n, b, g)
            value = torch.dot(w, F.cross_entropy(models["erm"](x), y, reduction="none") - ref_losses[idx])
            opts["erm"].zero_grad(set_to_none=True)
            value.backward()
            opts["erm"].step()

        bare = {"log_u": torch.zeros(()), "old": 0.0, "seen": False}
        kl_inv = torch.tensor(1 / losses["kl"].tau)  # a cached 0-dim constant, as DRRhoLoss uses

        def bare_kl_step(x=x, y=y, b=b, st=bare, gamma=losses["kl"].gamma):
            """The KL row's arithmetic as bare tensor ops (the state as Python values, one write), without the module
            call, the input checks or the staged writes: the least a step with DRRho-KL weights costs."""
            idx = _fresh_index(n, b, g)
            excess = F.cross_entropy(models["erm"](x), y, reduction="none") - ref_losses[idx]
            e = torch.mul(excess.detach(), kl_inv).exp_()  # exp(x / tau), as DRRhoLoss while |log u| <= 30
            f = math.exp(-st["old"])
            r = e.sum().item() * f / b
            d = (1 - gamma) + gamma * r if st["seen"] else r
            value = torch.dot(e.mul_(f / (b * d)), excess)
            if not math.isfinite(value.item()):
                raise FloatingPointError("bare KL step")
            st["old"], st["seen"] = st["old"] + math.log(d), True
            st["log_u"].fill_(st["old"])
            opts["erm"].zero_grad(set_to_none=True)
            value.backward()
            opts["erm"].step()

        def erm_loss(logits=logits, y=y):
            z = logits.clone().requires_grad_(True)
            F.cross_entropy(z, y).backward()

        def drrho_loss(k, logits=logits, y=y, b=b):
            z = logits.clone().requires_grad_(True)
            idx = _fresh_index(n, b, g)
            losses[k](F.cross_entropy(z, y, reduction="none"), ref_losses[idx], idx).backward()

        times = _common.time_interleaved(
            {"erm": erm_step, "erm again": erm_step, "floor": floor_step, "kl": lambda: drrho_step("kl"),
             "cvar": lambda: drrho_step("cvar")},
            rounds=s.rounds * 40, steps_per_round=1, clock=CLOCK)
        # the bare-ops floor in a group of its own (the goal rows' group above is timed as before), paired with the
        # mean CE step timed in the same group
        times.update(_common.time_interleaved(
            {"bare: erm": erm_step, "bare: floor": floor_step, "bare kl": bare_kl_step},
            rounds=s.rounds * 40, steps_per_round=1, clock=CLOCK))
        times.update(_common.time_interleaved(
            {"erm loss": erm_loss, "kl loss": lambda: drrho_loss("kl"), "cvar loss": lambda: drrho_loss("cvar")},
            rounds=s.rounds * 100, steps_per_round=1, clock=CLOCK))
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        aa = _paired(times, "erm again", "erm", 1)
        loss_rows.append(["A/A control: mean CE again", b, f"{med['erm']:.3f}", f"{med['erm again']:.3f}", f"{aa:.2f}x",
                          "", "", ""])
        loss_rows.append(["floor: gathered reference losses, fixed weights", b, f"{med['erm']:.3f}",
                          f"{med['floor']:.3f}", f"{_paired(times, 'floor', 'erm', 1):.2f}x", "", "", ""])
        loss_rows.append(["floor: the KL arithmetic as bare tensor ops (no module call, checks, staged writes; own "
                          f"group, its fixed-weight floor {_paired(times, 'bare: floor', 'bare: erm', 1):.2f}x)", b,
                          f"{med['bare: erm']:.3f}", f"{med['bare kl']:.3f}",
                          f"{_paired(times, 'bare kl', 'bare: erm', 1):.2f}x", "", "", ""])
        for k in ("kl", "cvar"):
            r = _paired(times, k, "erm", 1)
            goals[(k, b)] = r
            loss_rows.append([f"DRRhoLoss {k}", b, f"{med['erm']:.3f}", f"{med[k]:.3f}", f"{r:.2f}x",
                              f"{1e3 * med['erm loss']:.0f}", f"{1e3 * med[k + ' loss']:.0f}",
                              f"{_paired(times, k + ' loss', 'erm loss', 1):.2f}x"])
    tmp.cleanup()
    if drrho_only:
        print(f"{facts}, at the end {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(_common.md_table(["loss", "B", "mean CE step ms", "DRRho step ms", "step ratio", "mean CE loss us",
                                "DRRho loss us", "loss ratio"], loss_rows))
        return
    baseline_lines = _baseline_comparison(*baseline, s) if baseline else []
    minutes = (time.perf_counter() - t_start) / 60
    load1 = os.getloadavg()
    verdict_clip = ", ".join(f"B={b} {goals[b][0]:.2f}x" for b in s.batches)
    verdict_loss = ", ".join(f"B={b} {goals[b][1]:.2f}x" for b in s.batches)
    held_clip = all(goals[b][0] <= GOAL_CLIP for b in s.batches)
    held_loss = all(goals[b][1] <= GOAL_CLIP for b in s.batches)
    drrho_r = [goals[k] for k in goals if isinstance(k, tuple)]
    held_drrho = all(r <= GOAL_DRRHO for r in drrho_r)
    held_cache = all(goals[b][2] < GOAL_CACHE for b in s.batches)
    body = [
        "## Model steering: speed (issue 11)",
        "",
        f"Command: `nice -n 10 {_common.interpreter()} {command}` ({minutes:.1f} min). {facts}, "
        f"at the end {', '.join(f'{v:.2f}' for v in load1)}.",
        "",
        "One process, `torch.set_num_threads(1)`; the steps compared alternate one by one (rotating order); median "
        "**CPU time** per step (`time.thread_time`: the wall time of a millisecond step on the shared machine is "
        "mostly waiting for a core) in ms; ratios paired (the median of the ratios of consecutive steps). "
        "An A/A row (the same step timed twice) shows the noise. Every step uses fresh dataset "
        f"indices (state read and written; `num_samples` = {n:,}). GCL: `GlobalContrastiveLoss(mode='bimodal', "
        "temperature='fixed', tau=0.07)`; DRRho-CLIP: the same loss with `ref_feats` read from a `ReferenceCache` "
        f"of `[{n:,}, 2, {D}]` float32 rows (the read is inside the timed step). 'loss': forward + backward from leaf "
        f"features `[B, {D}]`; 'train': the tiny CLIP's towers (image MLP of width 16 on 28x28 inputs, bag-of-tokens "
        f"text tower, both to {D}-d) forward + loss + backward + AdamW step.",
        "",
        _common.md_table(["B", "loss: GCL ms", "loss: DRRho-CLIP ms", "loss ratio", "train: GCL ms",
                          "train: DRRho-CLIP ms", "train ratio", "A/A: GCL train again", "floor: loss ratio",
                          "floor: train ratio", f"loss ratio, d_ref = {D_SMALL}", f"train ratio, d_ref = {D_SMALL}"],
                         clip_rows),
        "",
        f"Goal DRRho-CLIP step with cached reference features <= {GOAL_CLIP}x the GCL step: training step "
        f"{verdict_clip} -> **{'held' if held_clip else 'not held'}**; the loss alone {verdict_loss} -> "
        f"**{'held' if held_loss else 'not held'}**. The extra cost is the cache read and one `[B, d_ref] x [d_ref, B]` "
        "matrix product without gradient (the subtraction of the reference similarities happens inside it: one "
        "`addmm`, no `[B, B]` offset). The floor columns time the GCL step plus the same cache read and one bare "
        "product of that shape, with the loss unchanged: the least a step with a cached reference can cost. At "
        "d_ref = d that product is a fourth matrix product of the GCL step's size next to its three (forward, and "
        "two in backward), so where the floor is above the goal the goal cannot be met with d_ref = d. The last two "
        f"columns: a reference of width d_ref = {D_SMALL} (reads from a `[{n:,}, 2, {D_SMALL}]` cache), the "
        "realistic case of a smaller reference model.",
        "",
        "The floor's extra work by reference width: the bare reference product `[B, d_ref] x [d_ref, B]` (median CPU "
        "ms, timed alone in the same run) and its share of the GCL training step; the last column adds the cache read "
        f"at d_ref = {D} to give the least ratio a DRRho-CLIP step at d_ref = d can have (1 + (read + product) / GCL "
        "step), before any overhead of the loss itself:",
        "",
        _common.md_table(["B", "train: GCL ms", *(f"product ms, d_ref = {w} (share)" for w in D_SWEEP),
                          f"1 + (read + product) / GCL, d_ref = {D}"], sweep_rows),
        "",
        "On-the-fly reference (towers of the target's size, forward under `no_grad` on the same batch), reported "
        "separately:",
        "",
        _common.md_table(["B", "reference forward ms", "train: DRRho-CLIP on the fly ms", "ratio to GCL train"],
                         onfly_rows),
        "",
        "`DRRhoLoss` vs the plain mean cross-entropy: a training step of an MLP 784-256-10 with Adam, and the loss "
        "alone (forward + backward from leaf logits, in us). The reference losses are gathered from the table the "
        "steer recipe computes once from its `ReferenceCache` of reference logits (`[n, 10]`), with the step's "
        "fresh indices:",
        "",
        _common.md_table(["loss", "B", "mean CE step ms", "DRRho step ms", "step ratio", "mean CE loss us",
                          "DRRho loss us", "loss ratio"], loss_rows),
        "",
        f"Goal DRRhoLoss step <= {GOAL_DRRHO}x the plain mean: "
        + ", ".join(f"{r:.2f}x" for r in drrho_r) + f" -> **{'held' if held_drrho else 'not held'}** (training step; "
        "the loss alone is a few elementwise operations more than a mean and is reported for context). The floor row "
        "is the step with the per-sample losses, the gathered reference losses and a weighted sum with fixed weights "
        "(no DRRho statistics, no state): what any loss on the excess loss costs over the mean. The bare-ops row adds "
        "the KL row's arithmetic (`mul`, `exp_`, `sum`, `mul_`, two host reads, one state write) written inline, without "
        "the module call, the input checks and the staged all-or-nothing writes: the least a step with DRRho-KL "
        "weights costs; the distance from it to the KL row is the cost of those contracts. It is timed in a group of "
        "its own (mean CE, fixed-weight floor, bare ops; the same rounds), so the goal rows above are timed exactly as "
        "before.",
        "",
        "Cache reads (`ReferenceCache.read` of B random rows of `[2, 256]` float32 from the memory map) and their share "
        "of the DRRho-CLIP training step:",
        "",
        _common.md_table(["B", "read us", "rows / s", "share of the train step"], cache_rows),
        "",
        f"Goal cache reads < {100 * GOAL_CACHE:.0f} % of the step: **{'held' if held_cache else 'not held'}**.",
        "",
        *baseline_lines,
    ]
    text = "\n".join(body)
    print(text)
    if write:
        _common.write_section(SECTION_SPEED, text)


# ---------------------------------------------------------------------------- no reference == the baseline
CHILD_CONFIGS = ("bimodal-fixed", "bimodal-global", "unimodal-individual", "bimodal-fnd", "nuclr")


def _child(out: str, configs: tuple[str, ...] = CHILD_CONFIGS) -> None:
    """Run in a child process with the xrisk under test first on sys.path: train each config without reference
    features for a few steps, time the steps, save the final state and the gradients."""
    import xrisk
    from xrisk.losses import FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss

    torch.set_num_threads(1)
    n, b, steps = 5000, 512, 12
    result: dict = {"xrisk_file": xrisk.__file__}
    for name in configs:
        if name == "nuclr":
            loss = NUCLRLoss(n, tau=0.07, zeta_start_epoch=0)
        else:
            mode, temp = name.split("-")
            fnd = FalseNegativeDetector(n, alpha=0.05, start_epoch=0) if temp == "fnd" else None
            loss = GlobalContrastiveLoss(n, mode=mode, temperature="fixed" if temp == "fnd" else temp, tau=0.07,
                                         rho=0.5, false_negatives=fnd)
        if hasattr(loss, "set_epoch"):
            loss.set_epoch(0)  # all 12 steps in epoch 0, set explicitly (the same in both packages; no warning)
        g = torch.Generator().manual_seed(1)
        times, grads = [], []
        for step in range(steps):
            a = torch.randn(b, 64, generator=g, requires_grad=True)
            c = (a.detach() + 0.5 * torch.randn(b, 64, generator=g)).requires_grad_(True)
            idx = torch.randperm(n, generator=g)[:b]
            t0 = CLOCK()
            loss(a, c, idx).backward()
            times.append(CLOCK() - t0)
            grads.append(torch.cat([a.grad.flatten(), c.grad.flatten()]))
        result[name] = {"state": {k: v.clone() for k, v in loss.state_dict().items()}, "grads": torch.stack(grads),
                        "median_s": statistics.median(times[2:])}
    torch.save(result, out)


def _run_child(src: str, out: str, configs: tuple[str, ...] = CHILD_CONFIGS) -> dict:
    """:func:`_child` in a fresh process with the package in ``src`` first on its path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(Path(__file__).parent)]), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, __file__, "--child", out, "--child-configs", *configs], check=True, env=env)
    return torch.load(out, weights_only=False)


def _same(a: dict, b: dict) -> bool:
    """Every gradient of every step and the final state equal bit for bit."""
    return torch.equal(a["grads"], b["grads"]) and a["state"].keys() == b["state"].keys() and all(
        torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def _export(rev: str, into: str) -> str:
    """``rev``'s ``src`` exported with ``git archive`` under ``into``; returns the package directory."""
    os.makedirs(into, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return os.path.join(into, "src")


def _first_change(config: str, base_rev: str, want: dict, tmp: str) -> str:
    """The first commit after ``base_rev`` whose package trains ``config`` differently from ``want`` (the baseline's
    result): a bisection of the commits in ``HEAD`` but not in ``base_rev``, as ``git bisect`` does (``git rev-list
    --bisect``: merges and side branches included), each commit exported and run in a child. Returns a markdown
    line naming it and the files it changed, or why none was found."""
    def differs(rev: str) -> bool:
        res = _run_child(_export(rev, os.path.join(tmp, rev)), os.path.join(tmp, f"{rev}.pt"), (config,))
        return not _same(res[config], want)

    head = _git("rev-parse", "--short", "HEAD")
    if not differs(head):
        return f"`{config}`: `HEAD` ({head}) trains it as the baseline does: the difference is in uncommitted changes."
    bad, good = head, [base_rev]
    while True:
        left = _git("rev-list", bad, "--not", *good).split()
        if len(left) <= 1:
            break
        mid = _git("rev-list", "--bisect", bad, "--not", *good)
        if differs(mid):
            bad = mid
        else:
            good.append(mid)
    subject = _git("show", "-s", "--format=%s", bad)
    files = _git("show", "--format=", "--name-only", bad).split()
    parents = _git("show", "-s", "--format=%p", bad).split()
    return (f"`{config}`: first trained differently by commit `{bad[:10]}` (\"{subject}\"); "
            f"files it changed: {', '.join(f'`{f}`' for f in files) or 'none (a merge)'}; its parent(s) "
            f"{', '.join(f'`{p}`' for p in parents)} train it as the baseline does.")


def _baseline_comparison(baseline_src: str, base_rev: str | None, s: Setup) -> list[str]:
    here = str(REPO / "src")
    rounds = 2 if s.quick else 5
    med: dict[str, dict[str, list[float]]] = {"branch": {c: [] for c in CHILD_CONFIGS},
                                               "baseline": {c: [] for c in CHILD_CONFIGS}}
    last: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            order = [("branch", here), ("baseline", baseline_src)]
            for label, src in (order if r % 2 == 0 else order[::-1]):
                res = _run_child(src, os.path.join(tmp, f"{label}.pt"))
                last[label] = res
                for c in CHILD_CONFIGS:
                    med[label][c].append(res[c]["median_s"])
        rows, traced = [], []
        for c in CHILD_CONFIGS:
            a, b = last["branch"][c], last["baseline"][c]
            same = _same(a, b)
            diff = (a["grads"] - b["grads"]).abs().max().item()
            ratio = statistics.median(x / y for x, y in zip(med["branch"][c], med["baseline"][c]))
            rows.append([c, "yes" if same else "**no**", "0" if same else f"{diff:.2g}",
                         f"{1e3 * statistics.median(med['baseline'][c]):.2f}",
                         f"{1e3 * statistics.median(med['branch'][c]):.2f}", f"{ratio:.3f}"])
            if not same:
                traced.append(_first_change(c, base_rev, b, tmp) if base_rev else
                              f"`{c}`: not traced (run with `--baseline-commit` to find the commit that changed it).")
    differing = [r[0] for r in rows if r[1] != "yes"]
    what = (f"commit `{base_rev}` (its `src` exported with `git archive`)" if base_rev else
            f"the package in `{baseline_src}` (`{last['baseline']['xrisk_file']}`)")
    return [
        f"Without reference features, this branch vs the baseline, {what}: "
        f"12 steps of each loss at B = 512, `num_samples` 5,000, 64-d features, the same seeds, in child processes "
        f"that alternate ({rounds} rounds each); 'bit-identical' compares every gradient of every step and the final "
        "state bit for bit ('largest gradient difference': the largest absolute difference of a gradient entry over "
        "the steps); times are the median CPU time of a step (forward + backward) per process, the ratio the "
        "median over rounds of branch / baseline.",
        "",
        _common.md_table(["loss", "bit-identical", "largest gradient difference", "baseline ms", "branch ms",
                          "branch / baseline"], rows),
        "",
        ("Training without reference features is **bit-identical** to the baseline." if not differing else
         f"Training without reference features is **NOT bit-identical** to the baseline for {', '.join(differing)}. "
         "Where the baseline is a commit, the first commit that changed each such loss (a bisection of the "
         "history since the baseline, every commit exported and run as above):"),
        "",
        *(f"- {t}" for t in traced),
        "",
    ]


# ============================================================================ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (prints, writes nothing)")
    ap.add_argument("--part", choices=("all", "speed", "fidelity"), default="all")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the fidelity study (>= 3 for the tables)")
    ap.add_argument("--baseline-src", metavar="DIR", default=None,
                    help="also compare training without a reference with the xrisk package in DIR (e.g. main)")
    ap.add_argument("--baseline-commit", metavar="REV", default=None,
                    help="the same with commit REV of this repository (exported with git archive; a loss that "
                         "differs is traced to the first commit that changed it)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--drrho-only", action="store_true",
                    help="speed: time only the DRRhoLoss rows (the same steps; prints, writes nothing)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="speed: batch sizes (default 128 512 2048)")
    ap.add_argument("--steps", type=int, default=None,
                    help="fidelity: optimisation steps of every run on every data set (default 1500)")
    ap.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    ap.add_argument("--child-configs", nargs="+", default=list(CHILD_CONFIGS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, tuple(args.child_configs))
        return 0
    if args.baseline_src and args.baseline_commit:
        ap.error("give --baseline-src or --baseline-commit, not both")
    s = quick_setup() if args.quick else full_setup(args.seeds)
    if args.batches:
        s.batches = tuple(args.batches)
    if args.steps:
        s.steps = {k: args.steps for k in s.steps}
    write = not (args.quick or args.no_write or args.drrho_only)
    command = " ".join(["bench/fidelity_steering.py", *(argv if argv is not None else sys.argv[1:])])
    if args.drrho_only:
        speed(s, command, write, None, drrho_only=True)
        return 0
    if args.part in ("all", "speed"):
        if args.baseline_commit:
            rev = _git("rev-parse", "--short", args.baseline_commit)
            with tempfile.TemporaryDirectory(prefix=f"xrisk-base-{rev}-") as tmp:
                speed(s, command, write, (_export(rev, tmp), rev))
        else:
            speed(s, command, write, (args.baseline_src, None) if args.baseline_src else None)
    if args.part in ("all", "fidelity"):
        fidelity(s, command, write)
    return 0


if __name__ == "__main__":
    if "--child" not in sys.argv:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
