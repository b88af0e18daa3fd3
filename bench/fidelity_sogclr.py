"""SogCLR's small-batch claim vs training length and the gamma schedule (issue 10, section 3 "Claims").

The fidelity run of issue 3 (``bench/fidelity_contrastive.py`` part (a), 25 epochs) found SogCLR at
B=32 below SimCLR at B=256 (82.0 vs 83.3 % linear-probe accuracy on 6,000 Fashion-MNIST images).
The paper trains for 400-800 epochs, and the group's later code decays ``gamma`` (the weight on the
new value of the moving average ``u``) from 1 by a cosine. This study asks whether the gap closes
with training length or with that schedule, and what the estimator ``u`` is worth at B=32:

* arms (same data, encoder, augmentations, Adam lr 1e-3, tau 0.2 as part (a)): SimCLR (mini-batch
  NT-Xent) at B=256 and B=32; SogCLR (``GlobalContrastiveLoss(mode="unimodal")``) at B=32 with the
  reference code's constant ``gamma = 0.9`` (first visit 1), at B=32 with the cosine schedule
  ``CosineGammaSchedule(gamma_min, decay_epochs = E / 2)`` sized for each epoch budget ``E``
  (FastCLIP / LibAUC ``gamma_schedule="cosine"``, whose docs recommend half the epochs), and at
  B=256 with ``gamma = 0.9``;
* at every epoch of the grid: linear-probe test accuracy (the claim's metric), the exact global
  contrastive objective over the whole training set (what SogCLR optimises), and for SogCLR the
  error of its estimator ``log u`` against the exact ``log g`` next to the error of a fresh
  mini-batch estimate (what SimCLR's normaliser uses) and the augmentation floor.

The constant-``gamma`` and SimCLR arms are single runs evaluated at each epoch of the grid (Adam at a
constant learning rate: the state after E epochs of a longer run is the state of an E-epoch run); the
scheduled arm is one run per budget. Every evaluation is appended to a cache and every run
checkpoints itself, so an interrupted study resumes where it stopped (``--cache``).

    .venv-bench/bin/python bench/fidelity_sogclr.py            # full study (~3 h on a shared 2-core machine)
    .venv-bench/bin/python bench/fidelity_sogclr.py --quick    # smoke run (< 2 min), prints only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import _common
from _baselines_contrastive import nt_xent
from fidelity_contrastive import Encoder, augment, embed, load_fmnist
from xrisk.losses import GlobalContrastiveLoss
from xrisk.metrics.retrieval import linear_probe as _linear_probe
from xrisk.schedules import CosineGammaSchedule

SECTION = "sogclr-epochs"
REPO = Path(__file__).resolve().parent.parent
PNG = Path(__file__).resolve().parent / "fidelity_sogclr.png"


@dataclass(frozen=True)
class Arm:
    """One training configuration. ``gamma``: SogCLR's constant weight, or ``gamma_min`` of the cosine
    schedule when ``cosine`` (one run per epoch budget, decay over half of it). ``core``: trained for every
    seed (otherwise for the ``side_seeds`` only: a side diagnostic the 2-core budget allows once)."""

    label: str
    method: str  # "SimCLR" | "SogCLR"
    batch: int
    gamma: float | None = None
    cosine: bool = False
    core: bool = True  # False: trained for Config.side_seeds only

    def schedule(self, budget: int) -> CosineGammaSchedule | None:
        return CosineGammaSchedule(gamma_min=self.gamma, decay_epochs=max(1, budget // 2)) if self.cosine else None


ARMS: tuple[Arm, ...] = (  # in priority order: a study stopped early has the first ones for more seeds
    Arm("SimCLR B=256", "SimCLR", 256),
    Arm("SogCLR B=32, gamma 0.9", "SogCLR", 32, 0.9),
    Arm("SogCLR B=32, cosine gamma 1 -> 0.2", "SogCLR", 32, 0.2, cosine=True),
    Arm("SimCLR B=32", "SimCLR", 32),
    Arm("SogCLR B=256, gamma 0.9", "SogCLR", 256, 0.9, core=False),
    Arm("SogCLR B=32, gamma 0.2", "SogCLR", 32, 0.2, core=False),
)
REFERENCE = ARMS[0]  # the large-batch SimCLR the claim compares against


@dataclass(frozen=True)
class Config:
    quick: bool
    seeds: tuple[int, ...]
    epochs: tuple[int, ...]
    long_epochs: tuple[int, ...] = ()  # further grid points, trained for long_seeds only
    long_seeds: tuple[int, ...] = ()
    side_seeds: tuple[int, ...] = ()  # the seeds that train the side arms (Arm.core False)
    n_train: int = 6000
    n_test: int = 10000
    tau: float = 0.2
    lr: float = 1e-3
    eval_batch: int = 32  # mini-batch size of the "fresh mini-batch estimate" diagnostic


def full_config() -> Config:
    return Config(quick=False, seeds=(0, 1, 2), epochs=(10, 20, 40, 80), long_epochs=(160,), long_seeds=(0, 1, 2),
                  side_seeds=(0,))


def quick_config() -> Config:
    return Config(quick=True, seeds=(0, 1), epochs=(1, 2), long_epochs=(3,), long_seeds=(0,), side_seeds=(0,),
                  n_train=512, n_test=500)


# ----------------------------------------------------------------------------- evaluation
def linear_probe(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor) -> float:
    """Test accuracy of :func:`xrisk.metrics.linear_probe` (multinomial logistic regression on standardised
    frozen features, full-batch L-BFGS, weight decay 1e-4): deterministic and about 15x cheaper than part (a)'s
    scikit-learn probe (which spent ~50 CPU-seconds per evaluation on 256-d features here)."""
    return _linear_probe(train_f, train_y, test_f, test_y, num_classes=10).test_accuracy


@torch.no_grad()
def exact_log_g(model: Encoder, x: Tensor, tau: float, seed: int, chunk: int = 1024) -> Tensor:
    """``log g_iv`` over the whole data set, ``[n, 2]``: both views of every image as anchors against all
    ``2n - 2`` other views, ``g_iv = mean_j exp((s_ij - s_i+) / tau)`` (the xrisk GCL definition), views
    drawn with a generator seeded by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    model.eval()
    z = F.normalize(torch.cat([model(augment(x, g)), model(augment(x, g))]), dim=1)  # [2n, d]
    model.train()
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    out = torch.empty(2 * n)
    for a in range(0, 2 * n, chunk):
        rows = torch.arange(a, min(a + chunk, 2 * n))
        s = z[rows] @ z.T
        d = (s - s[torch.arange(rows.numel()), pos[rows]][:, None]) / tau
        d[torch.arange(rows.numel()), rows] = -math.inf
        d[torch.arange(rows.numel()), pos[rows]] = -math.inf
        out[rows] = torch.logsumexp(d, 1) - math.log(2 * n - 2)
    return torch.stack([out[:n], out[n:]], 1)


@torch.no_grad()
def minibatch_log_g(model: Encoder, x: Tensor, tau: float, seed: int, batch: int) -> Tensor:
    """The mini-batch estimate of ``log g_iv`` (``2B - 2`` in-batch negatives, the normaliser SimCLR sees),
    with random batches of ``batch`` images and the same views as :func:`exact_log_g` ``(seed)``."""
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    model.eval()
    z1, z2 = F.normalize(model(augment(x, g)), dim=1), F.normalize(model(augment(x, g)), dim=1)
    model.train()
    out = torch.full((n, 2), math.nan)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    for k in range(0, n - batch + 1, batch):
        idx = perm[k:k + batch]
        z = torch.cat([z1[idx], z2[idx]])  # [2B, d]
        s = z @ z.T
        b = idx.numel()
        pos = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
        d = (s - s[torch.arange(2 * b), pos][:, None]) / tau
        d[torch.arange(2 * b), torch.arange(2 * b)] = -math.inf
        d[torch.arange(2 * b), pos] = -math.inf
        lg = torch.logsumexp(d, 1) - math.log(2 * b - 2)
        out[idx, 0], out[idx, 1] = lg[:b], lg[b:]
    return out


def evaluate(model: Encoder, loss_fn: GlobalContrastiveLoss | None, data: tuple, cfg: Config) -> dict[str, float]:
    xtr, ytr, xte, yte = data
    r = {"probe_acc": linear_probe(embed(model, xtr), ytr, embed(model, xte), yte)}
    log_g = exact_log_g(model, xtr, cfg.tau, seed=777)
    r["objective"] = float(cfg.tau * log_g.sum(1).mean())  # (1/n) sum_i sum_v tau log g_iv, as GCL's objective()
    if loss_fn is not None:
        gamma = loss_fn.current_gamma()
        log_u, seen = loss_fn.log_u.tensors()
        seen = seen.all(1)  # images visited at least once (the last incomplete batch of an epoch is dropped)
        log_gb = minibatch_log_g(model, xtr, cfg.tau, seed=777, batch=cfg.eval_batch)
        keep = seen & torch.isfinite(log_gb).all(1)  # visited, and outside the evaluation's incomplete batch
        # the denominator SogCLR's step uses with these views: (1 - gamma) u + gamma g_batch
        log_step = torch.logaddexp(log_u + math.log1p(-gamma), log_gb + math.log(gamma)) if gamma < 1 else log_gb
        log_g2 = exact_log_g(model, xtr, cfg.tau, seed=778)
        for name, est, rows in (("step", log_step, keep), ("stored", log_u, seen), ("batch", log_gb, keep),
                                ("floor", log_g2, keep)):
            diff = est[rows] - log_g[rows]
            r[f"err_{name}"] = float(diff.abs().median())
            r[f"bias_{name}"] = float(diff.mean())
        r["gamma"] = float(gamma)
    return r


# ----------------------------------------------------------------------------- runs (cached, resumable)
class Cache:
    """``results.jsonl`` (one evaluation per line) and per-run checkpoints under ``root``."""

    def __init__(self, root: Path, cfg: Config) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.file = root / "results.jsonl"
        self.cfg_key = {k: v for k, v in asdict(cfg).items() if k in ("n_train", "n_test", "tau", "lr")}
        self.rows: dict[str, dict] = {}
        if self.file.exists():
            for line in self.file.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["key"]] = row

    def run_key(self, arm: Arm, seed: int, budget: int | None) -> str:
        arm_spec = [arm.method, arm.batch, arm.gamma, arm.cosine]  # not the label/core: relabelling keeps the cache
        spec = json.dumps([arm_spec, seed, budget, self.cfg_key], sort_keys=True)
        return hashlib.sha1(spec.encode()).hexdigest()[:16]

    def get(self, run: str, epoch: int) -> dict | None:
        return self.rows.get(f"{run}@{epoch}")

    def put(self, run: str, epoch: int, row: dict) -> None:
        row = {"key": f"{run}@{epoch}", **row}
        self.rows[row["key"]] = row
        with self.file.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def checkpoint(self, run: str) -> Path:
        return self.root / f"ckpt_{run}.pt"

    def log_session(self, row: dict) -> None:
        """Append one invocation's wall time and load averages to ``sessions.jsonl``."""
        with (self.root / "sessions.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")

    def sessions(self) -> list[dict]:
        path = self.root / "sessions.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def train_run(arm: Arm, seed: int, budget: int | None, evals: list[int], data: tuple, cfg: Config,
              cache: Cache, log) -> None:
    """Train ``arm`` (seed ``seed``) up to ``max(evals)`` epochs, evaluating after each epoch in ``evals``
    (cached); resumes from the run's checkpoint. ``budget``: the epoch budget a cosine schedule is sized for."""
    run = cache.run_key(arm, seed, budget)
    todo = [e for e in evals if cache.get(run, e) is None]
    if not todo:
        return
    xtr = data[0]
    n = xtr.shape[0]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    model = Encoder()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = None
    if arm.method == "SogCLR":
        assert arm.gamma is not None
        loss_fn = GlobalContrastiveLoss(n, mode="unimodal", temperature="fixed", tau=cfg.tau, gamma=arm.gamma,
                                        gamma_schedule=arm.schedule(budget or max(evals)))
    start, t_train = 0, 0.0
    ckpt = cache.checkpoint(run)
    if ckpt.exists() and torch.load(ckpt, weights_only=False)["epoch"] > min(todo):
        log(f"{arm.label} seed {seed}: an evaluation before the checkpoint's epoch is missing, training from scratch")
    elif ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if loss_fn is not None:
            loss_fn.load_state_dict(state["loss"])
        g.set_state(state["gen"])
        start, t_train = state["epoch"], state["t_train"]
    last = max(todo)
    for epoch in range(start, last):
        t0 = time.perf_counter()
        if loss_fn is not None:
            loss_fn.set_epoch(epoch)
        perm = torch.randperm(n, generator=g)
        for k in range(0, n - arm.batch + 1, arm.batch):  # drop the last incomplete batch, as SimCLR does
            idx = perm[k:k + arm.batch]
            xb = xtr[idx]
            z1, z2 = model(augment(xb, g)), model(augment(xb, g))
            loss = nt_xent(z1, z2, cfg.tau) if loss_fn is None else loss_fn(z1, z2, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        t_train += time.perf_counter() - t0
        done = epoch + 1
        if done in todo:
            r = evaluate(model, loss_fn, data, cfg)
            cache.put(run, done, {"arm": arm.label, "seed": seed, "budget": budget, "epoch": done,
                                  "train_s": t_train, **r})
            log(f"{arm.label} seed {seed}" + (f" budget {budget}" if budget else "") + f" epoch {done}: "
                + " ".join(f"{k}={v:.4f}" for k, v in r.items()) + f" (train {t_train:.0f} s)")
        if done in todo or done % 20 == 0 or done == last:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "loss": loss_fn.state_dict() if loss_fn is not None else None,
                        "gen": g.get_state(), "epoch": done, "t_train": t_train}, tmp)
            os.replace(tmp, ckpt)


def reference_probes(data: tuple, cfg: Config, cache: Cache) -> dict[str, list[float]]:
    """Probe accuracy of the raw pixels and of the untrained encoder of every seed (the headroom of the metric)."""
    xtr, ytr, xte, yte = data
    out: dict[str, list[float]] = {"raw pixels": [], "untrained encoder": []}
    row = cache.get("raw-pixels", 0)
    if row is None:
        row = {"probe_acc": linear_probe(xtr.flatten(1), ytr, xte.flatten(1), yte)}
        cache.put("raw-pixels", 0, row)
    out["raw pixels"].append(row["probe_acc"])
    for seed in cfg.seeds:
        row = cache.get(f"init-{seed}", 0)
        if row is None:
            torch.manual_seed(seed)  # the initialisation every arm of this seed starts from
            model = Encoder()
            row = {"probe_acc": linear_probe(embed(model, xtr), ytr, embed(model, xte), yte)}
            cache.put(f"init-{seed}", 0, row)
        out["untrained encoder"].append(row["probe_acc"])
    return out


def plan(cfg: Config, arms: tuple[Arm, ...]) -> list[tuple[Arm, int, int | None, list[int]]]:
    """Task list ``(arm, seed, budget, eval epochs)``, seed-major (a stopped study still has whole seeds): the
    ``long_seeds`` over ``epochs + long_epochs`` first (the whole curve early), then the other seeds over ``epochs``;
    the side arms for the ``side_seeds`` only."""
    tasks = []
    long = [s for s in cfg.seeds if s in cfg.long_seeds and cfg.long_epochs]
    stages = [((s,), list(cfg.epochs) + list(cfg.long_epochs)) for s in long]
    stages += [(tuple(s for s in cfg.seeds if s not in long), list(cfg.epochs))]
    for seeds, grid in stages:
        for seed in seeds:
            for arm in arms:
                if not arm.core and seed not in cfg.side_seeds:
                    continue
                if arm.cosine:
                    tasks += [(arm, seed, e, [e]) for e in grid]
                else:
                    tasks.append((arm, seed, None, grid))
    return tasks


def grid(cfg: Config) -> list[int]:
    return sorted(set(cfg.epochs) | set(cfg.long_epochs))


def collect(cfg: Config, arms: tuple[Arm, ...], cache: Cache) -> dict[tuple[str, int], list[dict]]:
    """Evaluations per ``(arm label, epoch)`` over the seeds that have them."""
    out: dict[tuple[str, int], list[dict]] = {}
    seen = set()
    for arm, seed, budget, evals in plan(cfg, arms):
        run = cache.run_key(arm, seed, budget)
        for e in evals:
            row = cache.get(run, e)
            if row is not None and (run, e) not in seen:
                seen.add((run, e))
                out.setdefault((arm.label, e), []).append(row)
    return out


# ----------------------------------------------------------------------------- report
def _ms(rows: list[dict], key: str, scale: float, digits: int, full: int = 0) -> str:
    """``mean ± std`` over the seeds' rows; one seed: the value alone; ``(n=k)`` when fewer than ``full`` seeds."""
    if not rows:
        return "–"
    m, s = _common.mean_std([scale * r[key] for r in rows])
    txt = f"{m:.{digits}f} ± {s:.{digits}f}" if len(rows) > 1 else f"{m:.{digits}f}"
    return txt + (f" (n={len(rows)})" if len(rows) < full else "")


@dataclass(frozen=True)
class Gap:
    """A paired difference ``a - b`` over the seeds both arms have: mean, std over seeds (``None`` for one seed),
    the per-seed values (seed order) and the two-sided 95 % Student-t interval of the mean (``None`` for one seed)."""

    mean: float
    std: float | None
    per_seed: tuple[float, ...]
    ci: tuple[float, float] | None

    @property
    def n(self) -> int:
        return len(self.per_seed)


def _gap(res: dict, a: str, b: str, e: int, key: str = "probe_acc", scale: float = 100.0) -> Gap | None:
    """Difference ``scale (a - b)`` (accuracy points by default) paired by seed, over the seeds both have."""
    from scipy import stats

    ra = {r["seed"]: r[key] for r in res.get((a, e), [])}
    rb = {r["seed"]: r[key] for r in res.get((b, e), [])}
    common = sorted(set(ra) & set(rb))
    if not common:
        return None
    d = [scale * (ra[s] - rb[s]) for s in common]
    m = float(np.mean(d))
    if len(d) == 1:
        return Gap(m, None, tuple(d), None)
    sd = float(np.std(d, ddof=1))
    half = float(stats.t.ppf(0.975, len(d) - 1)) * sd / math.sqrt(len(d))
    return Gap(m, sd, tuple(d), (m - half, m + half))


def plot(res: dict, refs: dict[str, list[float]], cfg: Config, arms: tuple[Arm, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for i, arm in enumerate(arms):
        color = f"C{ARMS.index(arm) if arm in ARMS else i}"
        es = [e for e in grid(cfg) if (arm.label, e) in res]
        for ax, key, scale in ((axes[0], "probe_acc", 100), (axes[2], "objective", 1)):
            m = [np.mean([scale * r[key] for r in res[(arm.label, e)]]) for e in es]
            s = [np.std([scale * r[key] for r in res[(arm.label, e)]]) for e in es]
            label = arm.label if arm.core else f"{arm.label} (seed(s) {', '.join(map(str, cfg.side_seeds))})"
            ax.errorbar(es, m, yerr=s, marker="o", capsize=3, label=label, color=color)
        if arm is not REFERENCE:
            gs = [(e, _gap(res, arm.label, REFERENCE.label, e)) for e in es]
            gs = [(e, g) for e, g in gs if g is not None]
            if gs:
                axes[1].errorbar([e for e, _ in gs], [g.mean for _, g in gs], yerr=[g.std or 0.0 for _, g in gs],
                                 marker="o", capsize=3, label=arm.label, color=color)
    for (name, vals), style in zip(refs.items(), (":", "--")):
        axes[0].axhline(100 * float(np.mean(vals)), color="grey", ls=style, lw=1, label=name)
    axes[1].axhline(0.0, color="grey", lw=0.8)
    single = f"; {', '.join(map(str, cfg.long_epochs))} epochs: one seed" if cfg.long_epochs and len(cfg.long_seeds) == 1 else ""
    single += "; bars: std over seeds"
    titles = (f"linear-probe test accuracy (%{single})", f"gap to {REFERENCE.label} (points, paired{single})",
              "exact global contrastive objective (train set)")
    for ax, t in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xticks(grid(cfg), [str(e) for e in grid(cfg)])
        ax.set_xlabel("epochs")
        ax.set_title(t, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(res: dict, refs: dict[str, list[float]], cfg: Config, arms: tuple[Arm, ...], sessions: list[dict],
           facts: str, cmd: str, png: str | None) -> str:
    labels = [a.label for a in arms]
    acc_rows, obj_rows = [], []
    diff_rows = []
    for e in grid(cfg):
        full = _seeds(res, arms, e)
        acc_rows.append([e, full] + [_ms(res.get((lab, e), []), "probe_acc", 100, 1, full) for lab in labels])
        obj_rows.append([e] + [_ms(res.get((lab, e), []), "objective", 1, 3, full) for lab in labels])
        diff_rows.append([e] + [_fmt_gap(_gap(res, a.label, b.label, e), 1, full) for _, a, b in contrasts(arms)]
                         + [_fmt_gap(_gap(res, a.label, b.label, e, "objective", 1.0), 3, full)
                            for _, a, b in contrasts(arms)[:1]])
    est_rows = []
    for a in (x for x in arms if x.method == "SogCLR"):
        for e in grid(cfg):
            rows = res.get((a.label, e), [])
            if rows:
                full = _seeds(res, arms, e)
                est_rows.append([a.label, e, f"{np.mean([r['gamma'] for r in rows]):.2f}"]
                                + [_ms(rows, f"err_{k}", 1, 2, full) for k in ("step", "stored", "batch", "floor")]
                                + [_ms(rows, f"bias_{k}", 1, 2, full) for k in ("step", "batch")])
    trained = sorted((x for x in sessions if x["trained"]), key=lambda x: x["start"])
    wall = sum(x["wall_s"] for x in trained)
    loads = [x[k][0] for x in trained for k in ("load_start", "load_end") if k in x]
    late = [x for x in trained if "reconstructed" in x]
    argvs = [f"`{a}`" if a else "none" for a in dict.fromkeys(" ".join(x["argv"]) for x in trained
                                                               if x.get("argv") is not None)]
    head = (f"Command: `{cmd}` (one process, one torch thread; {wall / 60:.0f} min wall in {len(trained)} "
            f"session(s) from {trained[0]['start'] if trained else '?'} to {max((x['end'] for x in trained), default='?')}"
            + (f", {len(late)} of them reconstructed from file times ({'; '.join(x['reconstructed'] for x in late)})"
               if late else "")
            + (f"; the sessions' arguments: {'; '.join(argvs)}" if argvs else "")
            + ", the evaluations cached and every run checkpointed between sessions; 1-minute load average "
            + (f"{min(loads):.1f}-{max(loads):.1f} at the sessions' starts and ends" if loads else "n/a")
            + f"). Machine of the report: {facts}.")
    setup = (
        f"Data: {cfg.n_train} class-balanced Fashion-MNIST training images (the subset of part (a)), probe tested "
        f"on {cfg.n_test} test images. Encoder and augmentations as in part (a) of the issue-3 fidelity "
        f"run: MLP 784-512-256 (+ head 256-128), Adam lr {cfg.lr:g} (constant), tau = {cfg.tau} for every arm, "
        "the last incomplete batch dropped. SogCLR gamma: the reference code's constant 0.9 (first visit 1), "
        "or `CosineGammaSchedule(gamma_min=0.2, decay_epochs=E/2)` (gamma 1 in epoch 0, cosine to 0.2 at half "
        "the budget E, then 0.2; FastCLIP's/LibAUC's schedule and recommended decay length), trained once per "
        "budget. The other arms are one run each, evaluated after E epochs. "
        + (f"Seeds {', '.join(map(str, cfg.seeds))} up to {max(cfg.epochs)} epochs"
           + (f", seed(s) {', '.join(map(str, cfg.long_seeds))} also at {', '.join(map(str, cfg.long_epochs))} epochs"
              if cfg.long_seeds and cfg.long_epochs else "")
           + ("; the side arms " + " and ".join(f"'{a.label}'" for a in arms if not a.core)
              + f" for seed(s) {', '.join(map(str, cfg.side_seeds))} only"
              if cfg.side_seeds and any(not a.core for a in arms) else "")
           + "; a cell over fewer seeds than its row says so with `(n=k)`. ")
        + "Linear probe: `xrisk.metrics.linear_probe` "
        "(multinomial logistic regression, L-BFGS, weight decay 1e-4) on the standardised 256-d backbone features "
        "of the training images (part (a) used scikit-learn's, 15x slower); mean ± std over seeds "
        f"{list(cfg.seeds)}; 'gap' = SogCLR − "
        f"{REFERENCE.label}, paired by seed. Headroom of the metric: "
        + ", ".join(f"{k} {_ms([{'a': v} for v in vs], 'a', 100, 1)} %" for k, vs in refs.items()) + ".")
    return "\n".join([
        "## SogCLR's small-batch claim vs training length and the gamma schedule (issue 10)", "",
        head, "", setup, "",
        "### Linear-probe test accuracy (%) vs epochs", "",
        _common.md_table(["epochs", "seeds"] + labels, acc_rows), "",
        *([f"![probe accuracy, gap and objective vs epochs]({png})", ""] if png else []),
        "Paired differences (probe accuracy points, mean ± std over the seeds, `(n=k)`: only k seeds; the last "
        "column is the difference in the exact objective below, negative = SogCLR B=32 optimised it further):", "",
        _common.md_table(["epochs"] + [t for t, _, _ in contrasts(arms)]
                         + [f"objective: {contrasts(arms)[0][0].split(':')[0]}"], diff_rows), "",
        claim_verdict(res, cfg, arms), "",
        *([findings(res, cfg, arms), ""] if findings(res, cfg, arms) else []),
        "### Exact global contrastive objective on the training set (lower is better)", "",
        "`(1/n) sum_i sum_v tau log g_iv` with `g_iv` the mean of `exp((s_ij - s_i+)/tau)` over all `2n - 2` "
        "other views of the data set (one fixed draw of two views per image; the objective SogCLR minimises, "
        "evaluated exactly for every arm).", "",
        _common.md_table(["epochs"] + labels, obj_rows), "",
        "### What SogCLR's estimator is worth", "",
        "Errors in `log g_iv` against the exact value with the current encoder and one fixed draw of the views, "
        "median over anchors (mean ± std over seeds): `step` = the denominator SogCLR's step would use with "
        "these views, `(1 - gamma) u_iv + gamma g_batch` at the arm's current gamma; `stored` = the stored "
        "estimator `u_iv` alone (built over earlier epochs, other views, an older encoder); `batch` = the "
        f"mini-batch estimate from B={cfg.eval_batch} images (`2B - 2` negatives; SimCLR's normaliser, SogCLR "
        "with gamma = 1); `floor` = the exact value from a second independent draw of the views (how much "
        "`log g` moves with the augmentation alone). `bias` = mean signed error (a mini-batch log-mean is "
        "biased low by Jensen's inequality).", "",
        _common.md_table(["arm", "epochs", "gamma", "err step", "err stored", "err batch", "floor", "bias step",
                          "bias batch"], est_rows),
    ])


def _fmt_gap(g: Gap | None, digits: int = 1, full: int = 0) -> str:
    """``mean ± std`` of a paired difference; one seed: the value alone; ``(n=k)`` when fewer than ``full`` seeds."""
    if g is None:
        return "–"
    txt = f"{g.mean:+.{digits}f}" if g.std is None else f"{g.mean:+.{digits}f} ± {g.std:.{digits}f}"
    return txt + (f" (n={g.n})" if g.n < max(full, 2) else "")


def _seeds(res: dict, arms: tuple[Arm, ...], e: int) -> int:
    return max((len(res.get((a.label, e), [])) for a in arms), default=0)


def contrasts(arms: tuple[Arm, ...]) -> list[tuple[str, Arm, Arm]]:
    """The paired differences the study reads: ``(column title, a, b)`` for ``a - b``."""
    by = {(a.method, a.batch, a.gamma, a.cosine): a for a in arms}
    sog32, sim32 = by.get(("SogCLR", 32, 0.9, False)), by.get(("SimCLR", 32, None, False))
    cos32, g02 = by.get(("SogCLR", 32, 0.2, True)), by.get(("SogCLR", 32, 0.2, False))
    sog256 = by.get(("SogCLR", 256, 0.9, False))
    out = [("SogCLR B=32 (0.9) − SimCLR B=256: the claim", sog32, REFERENCE),
           ("SogCLR B=32 (0.9) − SimCLR B=32: the estimator at B=32", sog32, sim32),
           ("cosine 1 -> 0.2 − constant 0.9 (B=32)", cos32, sog32),
           ("constant 0.2 − constant 0.9 (B=32)", g02, sog32),
           ("SogCLR B=256 − SimCLR B=256", sog256, REFERENCE),
           ("SimCLR B=32 − SimCLR B=256", sim32, REFERENCE)]
    return [(t, a, b) for t, a, b in out if a is not None and b is not None]


def claim_verdict(res: dict, cfg: Config, arms: tuple[Arm, ...]) -> str:
    """The claim read at every epoch of the grid: the paired gap of SogCLR B=32 (gamma 0.9) to SimCLR B=256,
    'held' when its mean over seeds is above ``-max(0.5, std of the paired gaps)`` (part (a)'s rule), with the
    per-seed gaps and the 95 % t-interval next to it; one seed decides nothing. Then the best SogCLR B=32 arm per
    epoch count among the arms with as many seeds as the claim's pair."""
    parts = []
    for _, a, b in contrasts(arms)[:1]:
        for e in grid(cfg):
            g = _gap(res, a.label, b.label, e)
            if g is None:
                continue
            seeds = "/".join(f"{x:+.1f}" for x in g.per_seed)
            if g.std is None:
                parts.append(f"{e} epochs {g.mean:+.1f} on one seed: **not decided**")
                continue
            tol = max(0.5, g.std)
            behind = sum(x < 0 for x in g.per_seed)
            parts.append(f"{e} epochs {g.mean:+.1f} ({g.n} seeds: {seeds}, behind in {behind} of {g.n}; 95 % CI "
                         f"{g.ci[0]:+.1f} to {g.ci[1]:+.1f}; tolerance {tol:.1f}): "
                         f"**{'held' if g.mean >= -tol else 'did not hold'}**")
    best = []
    sog_small = [a for a in arms if a.method == "SogCLR" and a.batch < REFERENCE.batch]
    for e in grid(cfg):
        gs = [(g.mean, a.label, g.n) for a in sog_small if (g := _gap(res, a.label, REFERENCE.label, e)) is not None]
        k = max((x[2] for x in gs), default=0)
        gs = [x for x in gs if x[2] == k]
        if gs:
            m, lab, _ = max(gs)
            best.append(f"{e}: {m:+.1f} ({lab}, {_count(k, 'seed')})")
    return ("Claim 'SogCLR at B=32 matches SimCLR at B=256', gamma 0.9, gap in probe points per epoch count: "
            + "; ".join(parts) + ". Best SogCLR B=32 arm at each epoch count (among the arms with the most seeds "
            "there): " + "; ".join(best) + ".")


def _mean(res: dict, label: str, e: int, key: str) -> float | None:
    rows = res.get((label, e), [])
    return float(np.mean([r[key] for r in rows])) if rows else None


def _span(vals: list[float], digits: int = 1, sign: str = "+") -> str:
    """``"a to b"`` over the values (``"a"`` when they agree at this precision)."""
    lo, hi = f"{min(vals):{sign}.{digits}f}", f"{max(vals):{sign}.{digits}f}"
    return lo if lo == hi else f"{lo} to {hi}"


def _count(k: int, noun: str) -> str:
    return f"one {noun}" if k == 1 else f"{k} {noun}s"


def findings(res: dict, cfg: Config, arms: tuple[Arm, ...]) -> str:
    """Why the claim holds or not, every number read from ``res``: the gap's trend with epochs, how much of
    SimCLR's small-batch loss the estimator wins back, the estimator's error against a fresh mini-batch estimate
    and the augmentation floor, and the gamma schedule's effect. Each statement uses the epoch counts where its
    arms have every seed, and says how many seeds a single-seed statement rests on. Empty unless the study's main
    arms are present."""
    by = {(a.method, a.batch, a.gamma, a.cosine): a for a in arms}
    sog, sim32 = by.get(("SogCLR", 32, 0.9, False)), by.get(("SimCLR", 32, None, False))
    cos, sog256 = by.get(("SogCLR", 32, 0.2, True)), by.get(("SogCLR", 256, 0.9, False))
    g02 = by.get(("SogCLR", 32, 0.2, False))
    if sog is None or sim32 is None or cos is None:
        return ""
    allg, k = grid(cfg), len(cfg.seeds)

    def full(*xs: Arm) -> list[int]:
        """Epoch counts where every arm in ``xs`` has all the seeds."""
        return [e for e in allg if all(len(res.get((a.label, e), [])) == k for a in xs)]

    core = full(sog, REFERENCE)
    if len(core) < 2:
        return ""
    steps = cfg.n_train // sog.batch

    def gaps(a: Arm, b: Arm, es: list[int], key: str = "probe_acc", scale: float = 100.0) -> list[Gap]:
        return [g for e in es if (g := _gap(res, a.label, b.label, e, key, scale)) is not None]

    def col(a: Arm, key: str, es: list[int]) -> list[float]:
        return [v for e in es if (v := _mean(res, a.label, e, key)) is not None]

    claim = gaps(sog, REFERENCE, core)
    trend = claim[-1].mean - claim[0].mean
    spread = max(g.std for g in claim)
    verb = "does not close" if trend < max(0.3, spread) else "narrows"
    out = [f"**Why.** (1) Longer training {verb} the gap: SogCLR B=32 (gamma 0.9) − {REFERENCE.label} is "
           f"{claim[0].mean:+.1f} points at {core[0]} epochs and {claim[-1].mean:+.1f} at {core[-1]} "
           f"({_count(k, 'seed')}, per seed {'/'.join(f'{x:+.1f}' for x in claim[-1].per_seed)} at {core[-1]}; "
           f"paired std up to {spread:.1f}"
           + (f", so a change of {trend:+.1f} over the curve is within the noise)" if abs(trend) <= spread else ")")]
    short = [e for e in allg if e > core[-1] and (g := _gap(res, sog.label, REFERENCE.label, e)) is not None]
    if short:
        g = _gap(res, sog.label, REFERENCE.label, short[-1])
        out[-1] += f"; {g.mean:+.1f} at {short[-1]} epochs on {_count(g.n, 'seed')} only"
    out[-1] += "."
    es32 = full(sog, sim32, REFERENCE)
    if es32:
        loss32, won = gaps(sim32, REFERENCE, es32), gaps(sog, sim32, es32)
        e = es32[-1]
        obj = {a.label: _mean(res, a.label, e, "objective") for a in (sog, sim32, REFERENCE)}
        out.append(f"(2) The estimator wins back part of the small batch's loss, not all of it ({es32[0]}-{e} "
                   f"epochs): SimCLR loses {_span([-g.mean for g in loss32], sign='')} points from B={REFERENCE.batch} "
                   f"to B={sim32.batch}; SogCLR at B={sog.batch} is {_span([g.mean for g in won])} points above SimCLR "
                   f"at B={sim32.batch}. On the exact global objective it does barely better than SimCLR "
                   f"B={sim32.batch} ({obj[sog.label]:.3f} vs {obj[sim32.label]:.3f} at {e} epochs) and stays behind "
                   f"{REFERENCE.label} ({obj[REFERENCE.label]:.3f}).")
    stored, batch, step, floor = (col(sog, f"err_{x}", core) for x in ("stored", "batch", "step", "floor"))
    ratio = [a / b for a, b in zip(step, batch)]
    txt = (f"(3) Why so little: at B={sog.batch} an image's `u` is refreshed once per epoch ({steps} steps), so with "
           f"gamma 0.9 it holds one stale mini-batch estimate (older encoder, other views): its error in `log g` "
           f"({_span(stored, 2, '')}) exceeds a fresh mini-batch estimate's ({_span(batch, 2, '')}), and the denominator "
           f"SogCLR's step uses ({_span(step, 2, '')}) is only {_span([100 * (1 - r) for r in ratio], 0, '')} % below "
           f"the mini-batch one. A new draw of the augmentations alone moves the exact `log g` by "
           f"{_span(floor, 2, '')} (floor), about as much as the estimators' errors: an estimate carried over from "
           "earlier views cannot get much closer to the current view's `g` than that.")
    if sog256 is not None:
        s256 = col(sog256, "err_stored", allg)
        d256 = gaps(sog256, REFERENCE, allg)
        if d256:
            txt += (f" At B={sog256.batch} (`u` refreshed every {cfg.n_train // sog256.batch} steps, stored error "
                    f"{_span(s256, 2, '')}) SogCLR is {_span([g.mean for g in d256])} points from SimCLR "
                    f"B={REFERENCE.batch} ({_count(max(g.n for g in d256), 'seed')}).")
    out.append(txt)
    ces = full(cos, sog)
    if ces:
        cgap = [g.mean for g in gaps(cos, sog, ces)]
        txt = (f"(4) The gamma schedule {'does not help' if max(cgap) < 0.3 else 'helps'}: the cosine decay from 1 "
               f"to {cos.gamma} (FastCLIP's/LibAUC's) is {_span(cgap)} points against constant 0.9 ({ces[0]}-{ces[-1]} "
               f"epochs, {_count(k, 'seed')})")
        if g02 is not None and (d02 := gaps(g02, sog, allg)):
            txt += f", a constant {g02.gamma} {_span([g.mean for g in d02])} ({_count(max(g.n for g in d02), 'seed')})"
        cbias = col(cos, "bias_step", ces)
        cstep, cbatch = col(cos, "err_step", ces), col(cos, "err_batch", ces)
        below = [e for e, a, b in zip(ces, cstep, cbatch) if round(a, 2) < round(b, 2)]
        last = [e for e in allg if (cos.label, e) in res][-1]
        dobj = _gap(res, cos.label, sog.label, last, "objective", 1.0)
        lstep, lbatch = _mean(res, cos.label, last, "err_step"), _mean(res, cos.label, last, "err_batch")
        txt += (f". Leaning on the stale `u` biases the step's denominator high (mean error {_span(cbias, 2)} in "
                "`log g`: `g` shrinks as training proceeds and `u` lags behind); "
                + (f"its error falls below the fresh mini-batch's only from {below[0]} epochs on" if below else
                   f"its error stays above the fresh mini-batch's up to {ces[-1]} epochs")
                + f" (at {last}: {lstep:.2f} vs {lbatch:.2f}, {_count(dobj.n, 'seed')}), and that did not turn into "
                f"accuracy or a lower objective (cosine − constant 0.9 at {last} epochs: "
                f"{_fmt_gap(_gap(res, cos.label, sog.label, last))} probe points, {dobj.mean:+.3f} in the objective).")
        out.append(txt)
    return " ".join(out)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (< 2 min), prints only")
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="override the seeds")
    p.add_argument("--epochs", type=int, nargs="*", default=None, help="override the epoch grid")
    p.add_argument("--long-epochs", type=int, nargs="*", default=None,
                   help="override the further grid points trained for the long seeds (none: no extension)")
    p.add_argument("--arms", type=int, nargs="*", default=None, help="indices into ARMS (default: all)")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache folder (default: runs/bench-fidelity-sogclr, --quick: a temporary folder)")
    p.add_argument("--report-only", action="store_true", help="write the report from the cache, train nothing")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = quick_config() if args.quick else full_config()
    if args.seeds:
        cfg = Config(**{**asdict(cfg), "seeds": tuple(args.seeds)})
    if args.epochs:
        cfg = Config(**{**asdict(cfg), "epochs": tuple(sorted(args.epochs))})
    if args.long_epochs is not None:
        cfg = Config(**{**asdict(cfg), "long_epochs": tuple(sorted(args.long_epochs))})
    # the long and side seeds among the chosen ones (``--seeds 1``: seed 1 alone, to 160 epochs, no side arms)
    cfg = Config(**{**asdict(cfg), "long_seeds": tuple(s for s in cfg.long_seeds if s in cfg.seeds),
                    "side_seeds": tuple(s for s in cfg.side_seeds if s in cfg.seeds)})
    arms = ARMS if args.arms is None else tuple(ARMS[i] for i in args.arms)
    if REFERENCE not in arms:
        arms = (REFERENCE, *arms)
    if args.cache is not None:
        root = args.cache
    elif args.quick:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="fidelity-sogclr-"))
    else:
        root = REPO / "runs" / "bench-fidelity-sogclr"
    cache = Cache(root, cfg)
    facts = _common.machine_facts(1)
    t_start = time.perf_counter()
    session = {"start": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": list(os.getloadavg()),
               "argv": sys.argv[1:] if argv is None else list(argv)}

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    data = load_fmnist(cfg.n_train, cfg.n_test)
    refs = reference_probes(data, cfg, cache)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed study still records its session
    try:
        if not args.report_only:
            for arm, seed, budget, evals in plan(cfg, arms):
                train_run(arm, seed, budget, evals, data, cfg, cache, log)
    finally:
        session.update(end=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_end=list(os.getloadavg()),
                       wall_s=time.perf_counter() - t_start, trained=not args.report_only)
        cache.log_session(session)
    res = collect(cfg, arms, cache)
    write = not (args.no_write or args.quick)
    png = None
    if write:
        plot(res, refs, cfg, arms, PNG)
        png = PNG.name
    cmd = "nice -n 10 .venv-bench/bin/python bench/fidelity_sogclr.py" + (" --quick" if args.quick else "")
    for flag, val in (("--seeds", args.seeds), ("--epochs", args.epochs), ("--long-epochs", args.long_epochs),
                      ("--arms", args.arms)):
        if val is not None:
            cmd += f" {flag} " + " ".join(map(str, val))
    text = report(res, refs, cfg, arms, cache.sessions(), facts, cmd, png)
    print(text)
    if write:
        _common.write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
