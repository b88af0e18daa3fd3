"""xrisk vs LibAUC 2.0.1, side by side in one process: step time and test quality.

Part 1, step time. Every method trains its own copy of the same MLP (same initial weights) on
the same precomputed batches (dataset indices included); one step = model forward, loss
forward, backward, optimizer step (``zero_grad`` included). The methods run in interleaved
rounds whose order rotates (A B C .., B C .. A, ...) so that a busy period of a shared machine
hits every method alike; the table reports the median per-step time over all recorded steps and
its ratio to BCE+Adam measured in the same rounds. ``torch.set_num_threads(1)``.

Part 2, quality. Test AUROC and AP, mean ± std over seeds, at several positive ratios of two
data sets, with the same model, the same number of steps and the same batches for every AUC
method (a positive-oversampling batch stream); BCE+Adam is run both on plainly shuffled batches
(the usual baseline) and on the same oversampled batches.

    .venv-bench/bin/python bench/auc.py            # full run (about 20-25 min on 2 cores)
    .venv-bench/bin/python bench/auc.py --quick    # smoke run (< 1 min), does not touch RESULTS.md
    .venv-bench/bin/python bench/auc.py --timing-only --profile

The tables go into ``bench/RESULTS.md`` between ``<!-- auc:start -->`` and ``<!-- auc:end -->``.
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import io
import math
import multiprocessing as mp
import pstats
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SECTION = "auc"


# ============================================================================ hyper-parameters
@dataclass(frozen=True)
class HP:
    """Hyper-parameters shared by the xrisk and LibAUC sides of each pair (same values)."""

    adam_lr: float = 1e-3
    adam_wd: float = 1e-5           # BCE+Adam, AP/pAUC + Adam (LibAUC SOAP/SOPA*/SOTAs default wd)
    pesg_lr: float = 0.1
    pesg_momentum: float = 0.9      # LibAUC convention (0.9 on the new gradient)
    pesg_wd: float = 1e-4
    pesg_epoch_decay: float = 3e-3
    margin: float = 1.0
    ap_gamma: float = 0.9
    max_fpr: float = 0.3
    min_tpr: float = 0.5
    cvar_eta: float = 0.1
    kl_tau: float = 1.0
    kl_gamma: float = 0.9


# ============================================================================ models and data
def make_model(in_features: int, hidden: tuple[int, ...], seed: int) -> nn.Module:
    from xrisk.models import MLP

    torch.manual_seed(seed)
    return MLP(in_features, hidden=hidden)


def dual_batches(y: np.ndarray, *, batch_size: int, pos_per_batch: int, num_batches: int,
                 seed: int) -> list[np.ndarray]:
    """Index batches with ``pos_per_batch`` positives each, cycling through reshuffled pools.

    The same composition rule as LibAUC's / xrisk's DualSampler (positives cycled and
    reshuffled at each wrap, negatives likewise); generated here once so that every method of
    a comparison sees exactly the same batches.
    """
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n_neg = batch_size - pos_per_batch

    def stream(pool: np.ndarray, k: int):
        order, at = rng.permutation(pool), 0
        while True:
            out = []
            while len(out) < k:
                if at == len(order):
                    order, at = rng.permutation(pool), 0
                take = min(k - len(out), len(order) - at)
                out.extend(order[at:at + take])
                at += take
            yield np.asarray(out)

    ps, ns = stream(pos, pos_per_batch), stream(neg, n_neg)
    return [np.concatenate([next(ps), next(ns)]) for _ in range(num_batches)]


def shuffled_batches(n: int, *, batch_size: int, num_batches: int, seed: int) -> list[np.ndarray]:
    """Plain shuffled mini-batches (reshuffled every pass), ``num_batches`` of them."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < num_batches:
        perm = rng.permutation(n)
        out += [perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    return out[:num_batches]


# ============================================================================ methods
@dataclass
class Trainer:
    """One method: ``step(x, y, index)`` runs one training step; ``end_stage()`` decays."""

    step: Callable[[Tensor, Tensor, Tensor], None]
    end_stage: Callable[[], None] = lambda: None
    model: nn.Module | None = None


def _bce_adam(model: nn.Module, n: int, hp: HP, lib) -> Trainer:
    opt = torch.optim.Adam(model.parameters(), lr=hp.adam_lr, weight_decay=hp.adam_wd)
    crit = nn.BCEWithLogitsLoss()

    def step(x: Tensor, y: Tensor, idx: Tensor) -> None:
        loss = crit(model(x).squeeze(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Trainer(step, model=model)


def _score_trainer(model: nn.Module, loss_fn: nn.Module, opt: torch.optim.Optimizer, *,
                   libauc_style: bool, needs_index: bool, end_stage=lambda: None) -> Trainer:
    """Step on sigmoid scores; LibAUC wants ``[B, 1]`` float tensors, xrisk ``[B]``."""

    if libauc_style:
        def step(x: Tensor, y: Tensor, idx: Tensor) -> None:
            s = torch.sigmoid(model(x))
            loss = loss_fn(s, y.view(-1, 1), idx) if needs_index else loss_fn(s, y.view(-1, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        def step(x: Tensor, y: Tensor, idx: Tensor) -> None:
            s = torch.sigmoid(model(x)).squeeze(1)
            loss = loss_fn(s, y, idx) if needs_index else loss_fn(s, y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return Trainer(step, end_stage=end_stage, model=model)


def _xrisk_aucm_pesg(model, n, hp: HP, lib, *, version: str | None = None) -> Trainer:
    from xrisk.losses import AUCMLoss
    from xrisk.optim import PESG

    loss_fn = AUCMLoss(margin=hp.margin) if version is None else AUCMLoss(margin=hp.margin, version=version)
    # LibAUC's `momentum=m` (u <- (1-m) u + m d) is xrisk's momentum=1-m, dampening=1-m
    # (torch convention u <- mu u + (1-delta) d), per xrisk.optim.PESG's docstring.
    m = 1.0 - hp.pesg_momentum
    opt = PESG(model.parameters(), loss=loss_fn, lr=hp.pesg_lr, momentum=m, dampening=m,
               weight_decay=hp.pesg_wd, epoch_decay=hp.pesg_epoch_decay)
    return _score_trainer(model, loss_fn, opt, libauc_style=False, needs_index=False,
                          end_stage=lambda: opt.update_regularizer(decay_factor=10))


def _floor_aucm_pesg(model, n, hp: HP, lib) -> Trainer:
    """The floor of an AUC-M + PESG step: the same update as ``_xrisk_aucm_pesg`` (v2 surrogate, PESG with the same
    hyper-parameters, reference point and iterate average, ``end_stage`` included) written out by hand with nothing
    else: no checks of the batch, no objective record, no optimizer bookkeeping. The surrogate is ``v^T M v`` with
    ``v = (f, a, b, alpha, 1)`` and ``M`` built once, from the first batch (every batch of this benchmark has its
    positives at the same positions: ``dual_batches`` puts them first); the PESG update is four ``_foreach`` ops and
    one ``torch._fused_sgd_`` call over the model parameters and ``a, b``, and two ops for ``alpha``. ``tests/test_aucm.py`` checks that it equals the
    library's step."""
    a, b, alpha = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    params = list(model.parameters()) + [a, b]
    one = torch.ones(1)
    m = 1.0 - hp.pesg_momentum  # LibAUC's momentum in torch's convention, as _xrisk_aucm_pesg
    ed, wd = hp.pesg_epoch_decay, hp.pesg_wd
    st: dict = {"lr": hp.pesg_lr, "count": 0, "bufs": None, "form": None,
                "refs": [p.detach().clone() for p in params], "avg": [torch.zeros_like(p) for p in params]}

    def form(y: Tensor) -> Tensor:  # M of F = mean_+ (f-a)^2 + mean_- (f-b)^2 + 2 alpha (m + mean_- f - mean_+ f) - alpha^2
        t = y.double()
        size = t.numel()
        wp, wn = t / t.sum(), (1 - t) / (1 - t).sum()
        out = torch.zeros(size + 4, size + 4, dtype=torch.float64)
        out[:size, :size] = torch.diag(wp + wn)
        out[:size, size] = -2 * wp
        out[:size, size + 1] = -2 * wn
        out[:size, size + 2] = 2 * (wn - wp)
        out[size, size], out[size + 1, size + 1], out[size + 2, size + 2] = 1.0, 1.0, -1.0
        out[size + 2, size + 3] = 2 * hp.margin
        return out.float()

    def step(x: Tensor, y: Tensor, idx: Tensor) -> None:
        if st["form"] is None:
            st["form"] = form(y)
        f = torch.sigmoid(model(x)).squeeze(1)
        v = torch.cat((f, a, b, alpha, one))
        loss = torch.dot(v, torch.mv(st["form"], v))
        for p in params:
            p.grad = None
        alpha.grad = None
        loss.backward()
        with torch.no_grad():
            lr = st["lr"]
            alpha.add_(alpha.grad, alpha=lr).clamp_(min=0.0)
            d = torch._foreach_clamp_min([p.grad for p in params], -1.0)
            torch._foreach_clamp_max_(d, 1.0)
            torch._foreach_add_(d, st["refs"], alpha=-ed)
            first = st["bufs"] is None
            if first:
                st["bufs"] = [torch.empty_like(p) for p in params]
            # d + (ed + wd) v, then u <- m u + (1 - m) d (u = d at first), v <- v - lr u: one fused kernel call
            torch._fused_sgd_(params, d, st["bufs"], weight_decay=ed + wd, momentum=m, lr=lr, dampening=m,
                              nesterov=False, maximize=False, is_first_step=first)
            st["count"] += 1
            torch._foreach_lerp_(st["avg"], params, 1.0 / st["count"])

    def end_stage() -> None:
        st["lr"] /= 10
        for r, v in zip(st["refs"], st["avg"]):
            if st["count"]:
                r.copy_(v)
            v.zero_()
        st["count"] = 0

    return Trainer(step, end_stage=end_stage, model=model)


def _libauc_aucm_pesg(model, n, hp: HP, lib) -> Trainer:
    loss_fn = lib.losses.AUCMLoss(margin=hp.margin, device="cpu")
    opt = lib.optimizers.PESG(model.parameters(), loss_fn=loss_fn, lr=hp.pesg_lr,
                              momentum=hp.pesg_momentum, weight_decay=hp.pesg_wd,
                              epoch_decay=hp.pesg_epoch_decay, verbose=False, device="cpu")
    return _score_trainer(model, loss_fn, opt, libauc_style=True, needs_index=False,
                          end_stage=lambda: opt.update_regularizer(decay_factor=10))


def _xrisk_ap_adam(model, n, hp: HP, lib) -> Trainer:
    from xrisk.losses import APLoss

    loss_fn = APLoss(n, gamma=hp.ap_gamma, margin=hp.margin)
    opt = torch.optim.Adam(model.parameters(), lr=hp.adam_lr, weight_decay=hp.adam_wd)
    return _score_trainer(model, loss_fn, opt, libauc_style=False, needs_index=True)


def _libauc_ap_soap(model, n, hp: HP, lib) -> Trainer:
    loss_fn = lib.losses.APLoss(data_len=n, gamma=hp.ap_gamma, margin=hp.margin, device="cpu")
    opt = lib.optimizers.SOAP(model.parameters(), lr=hp.adam_lr, mode="adam",
                              weight_decay=hp.adam_wd, verbose=False, device="cpu")
    return _score_trainer(model, loss_fn, opt, libauc_style=True, needs_index=True)


def _xrisk_opauc(method: str):
    def build(model, n, hp: HP, lib) -> Trainer:
        from xrisk.losses import OneWayPartialAUCLoss

        loss_fn = OneWayPartialAUCLoss(n, method=method, max_fpr=hp.max_fpr, margin=hp.margin,
                                       eta=hp.cvar_eta, tau=hp.kl_tau, gamma=hp.kl_gamma)
        opt = torch.optim.Adam(model.parameters(), lr=hp.adam_lr, weight_decay=hp.adam_wd)
        return _score_trainer(model, loss_fn, opt, libauc_style=False, needs_index=True)
    return build


def _libauc_pauc_cvar_sopa(model, n, hp: HP, lib, *, pos_len: int = 1) -> Trainer:
    loss_fn = lib.losses.pAUC_CVaR_Loss(data_len=n, pos_len=pos_len, margin=hp.margin,
                                        beta=hp.max_fpr, eta=hp.cvar_eta, device="cpu")
    opt = lib.optimizers.SOPA(model.parameters(), mode="adam", lr=hp.adam_lr,
                              weight_decay=hp.adam_wd, verbose=False, device="cpu")
    return _score_trainer(model, loss_fn, opt, libauc_style=True, needs_index=True)


def _libauc_pauc_dro_sopas(model, n, hp: HP, lib) -> Trainer:
    loss_fn = lib.losses.pAUC_DRO_Loss(data_len=n, gamma=hp.kl_gamma, margin=hp.margin,
                                       Lambda=hp.kl_tau, device="cpu")
    opt = lib.optimizers.SOPAs(model.parameters(), mode="adam", lr=hp.adam_lr,
                               weight_decay=hp.adam_wd, verbose=False, device="cpu")
    return _score_trainer(model, loss_fn, opt, libauc_style=True, needs_index=True)


def _xrisk_tpauc_adam(model, n, hp: HP, lib) -> Trainer:
    from xrisk.losses import TwoWayPartialAUCLoss

    loss_fn = TwoWayPartialAUCLoss(n, min_tpr=hp.min_tpr, max_fpr=hp.max_fpr, tau=hp.kl_tau,
                                   tau_outer=hp.kl_tau, gamma0=hp.kl_gamma, gamma1=hp.kl_gamma,
                                   margin=hp.margin)
    opt = torch.optim.Adam(model.parameters(), lr=hp.adam_lr, weight_decay=hp.adam_wd)
    return _score_trainer(model, loss_fn, opt, libauc_style=False, needs_index=True)


def _libauc_tpauc_sotas(model, n, hp: HP, lib) -> Trainer:
    loss_fn = lib.losses.tpAUC_KL_Loss(data_len=n, tau=hp.kl_tau, Lambda=hp.kl_tau,
                                       gammas=(hp.kl_gamma, hp.kl_gamma), margin=hp.margin,
                                       device="cpu")
    opt = lib.optimizers.SOTAs(model.parameters(), mode="adam", lr=hp.adam_lr,
                               weight_decay=hp.adam_wd, verbose=False, device="cpu")
    return _score_trainer(model, loss_fn, opt, libauc_style=True, needs_index=True)


# name -> (library, label, builder)
METHODS: dict[str, tuple[str, str, Callable]] = {
    "bce_adam": ("torch", "BCE + Adam", _bce_adam),
    "xrisk_aucm_pesg": ("xrisk", "AUCMLoss + PESG", _xrisk_aucm_pesg),
    "libauc_aucm_pesg": ("libauc", "AUCMLoss + PESG", _libauc_aucm_pesg),
    "floor_aucm_pesg": ("torch", "AUC-M + PESG written out by hand (floor)", _floor_aucm_pesg),
    "xrisk_aucm_v1_pesg": ("xrisk", "AUCMLoss(version='v1') + PESG",
                           lambda *a, **k: _xrisk_aucm_pesg(*a, version="v1", **k)),
    "xrisk_ap_adam": ("xrisk", "APLoss + Adam", _xrisk_ap_adam),
    "libauc_ap_soap": ("libauc", "APLoss + SOAP(adam)", _libauc_ap_soap),
    "xrisk_opauc_cvar_adam": ("xrisk", "OneWayPartialAUCLoss(cvar) + Adam", _xrisk_opauc("cvar")),
    "libauc_pauc_cvar_sopa": ("libauc", "pAUC_CVaR_Loss + SOPA(adam)", _libauc_pauc_cvar_sopa),
    "xrisk_opauc_kl_adam": ("xrisk", "OneWayPartialAUCLoss(kl) + Adam", _xrisk_opauc("kl")),
    "libauc_pauc_dro_sopas": ("libauc", "pAUC_DRO_Loss + SOPAs(adam)", _libauc_pauc_dro_sopas),
    "xrisk_tpauc_adam": ("xrisk", "TwoWayPartialAUCLoss + Adam", _xrisk_tpauc_adam),
    "libauc_tpauc_sotas": ("libauc", "tpAUC_KL_Loss + SOTAs(adam)", _libauc_tpauc_sotas),
}
TIMING_METHODS = [m for m in METHODS if m != "xrisk_aucm_v1_pesg"]
PAIRS = [("xrisk_aucm_pesg", "libauc_aucm_pesg"), ("xrisk_ap_adam", "libauc_ap_soap"),
         ("xrisk_opauc_cvar_adam", "libauc_pauc_cvar_sopa"),
         ("xrisk_opauc_kl_adam", "libauc_pauc_dro_sopas"),
         ("xrisk_tpauc_adam", "libauc_tpauc_sotas")]


# ============================================================================ part 1: timing
@dataclass(frozen=True)
class TimingConfig:
    name: str
    in_features: int
    hidden: tuple[int, ...]
    batch_size: int
    pos_per_batch: int
    num_samples: int = 4096


TIMING_CONFIGS = [
    # the reference study's setting (LibAUC AUCM+PESG measured at ~1.7x BCE+Adam there)
    TimingConfig("tabular: MLP 30-64-1, batch 32 (8 pos)", 30, (64,), 32, 8),
    # the quality benchmark's image model and batch
    TimingConfig("image: MLP 784-128-1, batch 64 (16 pos)", 784, (128,), 64, 16),
]


def run_timing(cfg: TimingConfig, lib, hp: HP, *, rounds: int, steps_per_round: int,
               methods: list[str]) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(0)
    n = cfg.num_samples
    x = torch.randn(n, cfg.in_features, generator=g)
    y_np = (np.random.default_rng(0).random(n) < 0.1).astype(np.int64)
    y = torch.from_numpy(y_np).float()
    batches = dual_batches(y_np, batch_size=cfg.batch_size, pos_per_batch=cfg.pos_per_batch,
                           num_batches=512, seed=0)
    data = [(x[b], y[b], torch.from_numpy(b)) for b in batches]
    base = make_model(cfg.in_features, cfg.hidden, seed=0)
    steps = {}
    for name in methods:
        model = copy.deepcopy(base)
        extra = {"pos_len": int(y_np.sum())} if name == "libauc_pauc_cvar_sopa" else {}
        tr = METHODS[name][2](model, n, hp, lib, **extra)
        steps[name] = _cycler(tr, data)
    return C.time_interleaved(steps, rounds=rounds, steps_per_round=steps_per_round)


def _cycler(tr: Trainer, data: list) -> Callable[[], None]:
    it = [0]

    def fn() -> None:
        x, y, idx = data[it[0] % len(data)]
        it[0] += 1
        tr.step(x, y, idx)

    return fn


def profile_method(cfg: TimingConfig, lib, hp: HP, name: str, steps: int = 2000) -> str:
    """cProfile of ``steps`` training steps of one method: the top functions by own time."""
    n = cfg.num_samples
    x = torch.randn(n, cfg.in_features, generator=torch.Generator().manual_seed(0))
    y_np = (np.random.default_rng(0).random(n) < 0.1).astype(np.int64)
    y = torch.from_numpy(y_np).float()
    batches = dual_batches(y_np, batch_size=cfg.batch_size, pos_per_batch=cfg.pos_per_batch,
                           num_batches=256, seed=0)
    data = [(x[b], y[b], torch.from_numpy(b)) for b in batches]
    extra = {"pos_len": int(y_np.sum())} if name == "libauc_pauc_cvar_sopa" else {}
    fn = _cycler(METHODS[name][2](make_model(cfg.in_features, cfg.hidden, 0), n, hp, lib, **extra), data)
    for _ in range(100):
        fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fn()
    prof.disable()
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    st.sort_stats("tottime").print_stats(18)
    out.write("\n-- by cumulative time --\n")
    st.sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def timing_tables(results: dict[str, dict[str, list[float]]],
                  loads: dict[str, tuple[float, float]] | None = None) -> str:
    parts = []
    for cfg_name, times in results.items():
        base = C.median(times["bce_adam"])
        rows = [["BCE + Adam", "torch", f"{base * 1e3:.3f}", "1.00", ""]]
        if "floor_aucm_pesg" in times:
            tf = C.median(times["floor_aucm_pesg"])
            rows.append([METHODS["floor_aucm_pesg"][1], "torch", f"{tf * 1e3:.3f}", f"{tf / base:.2f}", ""])
        for xr, la in PAIRS:
            if xr not in times or la not in times:
                continue
            tx, tl = C.median(times[xr]), C.median(times[la])
            rows.append([METHODS[xr][1], "xrisk", f"{tx * 1e3:.3f}", f"{tx / base:.2f}",
                         f"{tx / tl:.2f}"])
            rows.append([METHODS[la][1], "LibAUC 2.0.1", f"{tl * 1e3:.3f}", f"{tl / base:.2f}", ""])
        steps = len(times["bce_adam"])
        load = (f", 1-min load average {loads[cfg_name][0]:.2f} before, {loads[cfg_name][1]:.2f} after"
                if loads and cfg_name in loads else "")
        parts.append(f"**{cfg_name}** ({steps} recorded steps per method{load})\n\n" + C.md_table(
            ["method", "library", "median ms/step", "x BCE+Adam", "xrisk / LibAUC"], rows))
    return "\n\n".join(parts)


def goal_lines(results: dict[str, dict[str, list[float]]]) -> str:
    """The goals: xrisk AUCM+PESG <= 1.25 x BCE+Adam and faster than LibAUC's (issue 2); every AP and
    partial-AUC step at most LibAUC's, with a margin (issue 10: <= 0.95 x counts as met)."""
    out = []
    for cfg_name, times in results.items():
        b = C.median(times["bce_adam"])
        x, l_ = C.median(times["xrisk_aucm_pesg"]), C.median(times["libauc_aucm_pesg"])
        floor = (f", floor (the same step written out by hand) {C.median(times['floor_aucm_pesg']) / b:.2f} x"
                 if "floor_aucm_pesg" in times else "")
        out.append(f"- {cfg_name}: xrisk AUCM+PESG {x / b:.2f} x BCE+Adam "
                   f"({'meets' if x / b <= 1.25 else 'MISSES'} the <= 1.25 x goal{floor}); "
                   f"{'faster' if x < l_ else 'NOT faster'} than LibAUC's ({l_ / b:.2f} x BCE+Adam, "
                   f"xrisk / LibAUC = {x / l_:.2f})")
        ratios = {METHODS[xr][1].split(" + ")[0]: C.median(times[xr]) / C.median(times[la])
                  for xr, la in PAIRS[1:] if xr in times and la in times}
        if ratios:
            met = [k for k, r in ratios.items() if r <= 0.95]
            out.append(f"- {cfg_name}: AP / partial-AUC step vs LibAUC's (goal <= 1.0 x with a margin, counted as "
                       f"<= 0.95 x): " + ", ".join(f"{k} {r:.2f}" for k, r in ratios.items())
                       + f" -- met by {len(met)} of {len(ratios)}")
    return "Goal check (computed by the script):\n\n" + "\n".join(out)


def _ensure_skeleton() -> None:
    """The ``auc`` section holds two sub-sections that runs replace independently."""
    text = C.RESULTS.read_text() if C.RESULTS.exists() else ""
    if f"<!-- {SECTION}-timing:start -->" in text and f"<!-- {SECTION}-quality:start -->" in text:
        return
    C.write_section(SECTION, (
        "## AUC losses: xrisk vs LibAUC 2.0.1 (`bench/auc.py`)\n\n"
        "Both parts are written by `bench/auc.py`; `--timing-only` / `--quality-only` rerun one "
        "part and replace only its sub-section.\n\n"
        f"<!-- {SECTION}-timing:start -->\n<!-- {SECTION}-timing:end -->\n\n"
        f"<!-- {SECTION}-quality:start -->\n<!-- {SECTION}-quality:end -->"))


# ============================================================================ part 2: quality
@dataclass(frozen=True)
class QualityConfig:
    dataset: str
    label: str
    hidden: tuple[int, ...]
    epochs: int
    batch_size: int = 64
    pos_per_batch: int = 16
    load_kwargs: dict = field(default_factory=dict)
    max_steps: int | None = None   # caps the steps (smoke runs)


QUALITY_METHODS = ["bce_adam", "bce_adam_dual", "xrisk_aucm_pesg", "xrisk_aucm_v1_pesg",
                   "libauc_aucm_pesg", "xrisk_ap_adam", "libauc_ap_soap"]
QUALITY_LABEL = {
    "bce_adam": ("torch", "BCE + Adam, shuffled batches"),
    "bce_adam_dual": ("torch", "BCE + Adam, oversampled batches"),
}


def load_data(cfg: QualityConfig, pos_ratio: float, seed: int):
    """``(data, source)``: the data of one quality run from ``xrisk.data.load_binary`` and the
    description of that source for the table."""
    from xrisk.data import load_binary

    return (load_binary(cfg.dataset, pos_ratio=pos_ratio, seed=seed, **cfg.load_kwargs),
            f"`xrisk.data.load_binary({cfg.dataset!r}, pos_ratio=..., seed=...)`")


def _evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Test AUROC and AP by ``xrisk.metrics``, checked against scikit-learn every time."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    model.eval()
    with torch.no_grad():
        s = torch.cat([model(xb).squeeze(1) for xb in x.split(4096)])
    model.train()
    if not bool(torch.isfinite(s).all()):
        return float("nan"), float("nan")
    ys, ss = y.numpy(), s.double().numpy()
    a_sk, p_sk = float(roc_auc_score(ys, ss)), float(average_precision_score(ys, ss))
    try:
        from xrisk.metrics import auroc, average_precision
    except ImportError:
        return a_sk, p_sk
    a, p = float(auroc(s, y)), float(average_precision(s, y))
    if abs(a - a_sk) > 1e-5 or abs(p - p_sk) > 1e-5:
        raise AssertionError(f"xrisk metrics disagree with scikit-learn: {a} vs {a_sk}, {p} vs {p_sk}")
    return a, p


def metrics_source() -> str:
    try:
        from xrisk.metrics import auroc, average_precision  # noqa: F401
    except ImportError:
        return "scikit-learn (`roc_auc_score`, `average_precision_score`)"
    return "`xrisk.metrics.auroc` / `average_precision`, checked against scikit-learn on every evaluation"


def quality_job(args: tuple) -> list[dict]:
    """All methods on one (data set, ratio, seed): returns one record per method."""
    cfg, pos_ratio, seed, methods, hp, threads = args
    torch.set_num_threads(threads)
    lib = C.import_libauc() if any(m.startswith("libauc") for m in methods) else None
    d, source = load_data(cfg, pos_ratio, seed)
    xtr = torch.as_tensor(d.x_train, dtype=torch.float32).flatten(1)
    ytr = torch.as_tensor(d.y_train).float().view(-1)
    xte = torch.as_tensor(d.x_test, dtype=torch.float32).flatten(1)
    yte = torch.as_tensor(d.y_test).float().view(-1)
    n = len(ytr)
    y_np = ytr.numpy().astype(np.int64)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    dual = dual_batches(y_np, batch_size=cfg.batch_size, pos_per_batch=cfg.pos_per_batch,
                        num_batches=total, seed=seed)
    shuf = shuffled_batches(n, batch_size=cfg.batch_size, num_batches=total, seed=seed)
    stages = {int(total * 0.5), int(total * 0.75)}
    base = make_model(xtr.shape[1], cfg.hidden, seed=seed)
    out = []
    for name in methods:
        model = copy.deepcopy(base)
        builder = METHODS["bce_adam" if name == "bce_adam_dual" else name][2]
        extra = {"pos_len": int(y_np.sum())} if name == "libauc_pauc_cvar_sopa" else {}
        tr = builder(model, n, hp, lib, **extra)
        batches = shuf if name == "bce_adam" else dual
        t0 = time.perf_counter()
        for k, b in enumerate(batches):
            if k in stages:
                tr.end_stage()
            bi = torch.from_numpy(b)
            tr.step(xtr[bi], ytr[bi], bi)
        secs = time.perf_counter() - t0
        a, p = _evaluate(model, xte, yte)
        out.append(dict(dataset=cfg.label, ratio=pos_ratio, seed=seed, method=name, auroc=a,
                        ap=p, seconds=secs, n_train=n, pos_train=int(y_np.sum()),
                        n_test=len(yte), pos_test=int(yte.sum()), source=source))
    return out


def quality_tables(records: list[dict], cfgs: list[QualityConfig], ratios: list[float],
                   methods: list[str]) -> tuple[str, str]:
    """(tables, verdict lines)."""
    def label(m: str) -> tuple[str, str]:
        if m in QUALITY_LABEL:
            return QUALITY_LABEL[m]
        lib, lab, _ = METHODS[m]
        return ("LibAUC 2.0.1" if lib == "libauc" else lib), lab

    parts, verdicts = [], []
    for cfg in cfgs:
        recs = [r for r in records if r["dataset"] == cfg.label]
        if not recs:
            continue
        header = ["method", "library"]
        for r in ratios:
            header += [f"AUROC {r:.0%}", f"AP {r:.0%}"]
        rows = []
        stats: dict[tuple[str, float], tuple[list[float], list[float]]] = {}
        for m in methods:
            lib, lab = label(m)
            row = [lab, lib]
            for r in ratios:
                rs = [x for x in recs if x["method"] == m and x["ratio"] == r]
                au, ap = [x["auroc"] for x in rs], [x["ap"] for x in rs]
                stats[(m, r)] = (au, ap)
                row += [C.fmt_mean_std(au, 3) if au else "-", C.fmt_mean_std(ap, 3) if ap else "-"]
            rows.append(row)
        sizes = []
        for r in ratios:
            rs = [x for x in recs if x["ratio"] == r]
            if rs:
                sizes.append(f"{r:.0%}: train {rs[0]['n_train']} ({_rng(rs, 'pos_train')} pos), "
                             f"test {rs[0]['n_test']} ({_rng(rs, 'pos_test')} pos)")
        seeds = sorted({x["seed"] for x in recs})
        sources = sorted({x["source"] for x in recs})
        parts.append(f"**{cfg.label}** (data: {'; '.join(sources)}): {cfg.epochs} epochs of {cfg.batch_size}-sample steps, "
                     f"MLP hidden {list(cfg.hidden)}, seeds {seeds}. Sizes per ratio: "
                     + "; ".join(sizes) + "\n\n" + C.md_table(header, rows))
        verdicts += _verdicts(cfg, ratios, stats)
    return "\n\n".join(parts), "\n".join(verdicts)


def _rng(rs: list[dict], key: str) -> str:
    lo, hi = min(x[key] for x in rs), max(x[key] for x in rs)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _verdicts(cfg: QualityConfig, ratios: list[float], stats) -> list[str]:
    """Plain statements: xrisk vs LibAUC within noise, AUC losses vs CE, per ratio."""
    out = []

    def ms(key):
        return C.mean_std(key) if key else (float("nan"), float("nan"))

    if all(len(v[0]) < 2 for v in stats.values()):
        return [f"- {cfg.label}: one seed only, no noise estimate (smoke run)"]

    for r in ratios:
        for xr, la, metric in (("xrisk_aucm_pesg", "libauc_aucm_pesg", 0),
                               ("xrisk_ap_adam", "libauc_ap_soap", 1)):
            if (xr, r) not in stats or (la, r) not in stats or not stats[(xr, r)][metric]:
                continue
            mx, sx = ms(stats[(xr, r)][metric])
            ml, sl = ms(stats[(la, r)][metric])
            noise = max(sx, sl) / math.sqrt(len(stats[(xr, r)][metric]))  # ~ std of a mean
            verdict = ("xrisk above LibAUC beyond noise" if mx > ml + 2 * noise else
                       "tie within noise" if mx >= ml - 2 * noise else "xrisk BELOW LibAUC beyond noise")
            out.append(f"- {cfg.label} {r:.0%}, {METHODS[xr][1]} ({'AUROC' if metric == 0 else 'AP'}): "
                       f"xrisk {mx:.3f} vs LibAUC {ml:.3f}: {verdict}"
                       f" (2 x std of the mean = {2 * noise:.3f})")
        # the AUC loss against CE on the metric it targets (AUC-M: AUROC, AP loss: AP)
        for xr, metric in (("xrisk_aucm_pesg", 0), ("xrisk_ap_adam", 1)):
            for ce, ce_label in (("bce_adam", "shuffled"), ("bce_adam_dual", "oversampled")):
                if (xr, r) not in stats or (ce, r) not in stats or not stats[(ce, r)][metric]:
                    continue
                mx, sx = ms(stats[(xr, r)][metric])
                mb, sb = ms(stats[(ce, r)][metric])
                noise = max(sx, sb) / math.sqrt(len(stats[(xr, r)][metric]))
                verdict = ("above CE beyond noise" if mx > mb + 2 * noise else
                           "BELOW CE beyond noise" if mx < mb - 2 * noise else "tie with CE within noise")
                out.append(f"- {cfg.label} {r:.0%}, xrisk {METHODS[xr][1]} "
                           f"{'AUROC' if metric == 0 else 'AP'} {mx:.3f} vs BCE+Adam ({ce_label}) "
                           f"{mb:.3f}: {verdict}")
    return out


QUALITY_CONFIGS = [
    QualityConfig("fashion-mnist", "Fashion-MNIST (one class vs rest)", hidden=(128,), epochs=3),
    QualityConfig("bbc", "BBC news MiniLM embeddings (one topic vs rest)", hidden=(64,), epochs=20),
]


# ============================================================================ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (< 1 min); RESULTS.md untouched")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--quality-only", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile xrisk AUCM+PESG and BCE+Adam")
    ap.add_argument("--workers", type=int, default=2, help="processes for the quality runs")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    ap.add_argument("--dump", metavar="PATH", help="also save the per-run quality records as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    hp = HP()
    lib = C.import_libauc()
    write = not (args.quick or args.no_write)
    cmd = "python bench/auc.py " + " ".join(argv if argv is not None else sys.argv[1:])
    facts = C.machine_facts(threads=1)
    t_start = time.perf_counter()
    sections: list[str] = []

    timing_md = goal_md = ""
    if not args.quality_only:
        rounds, spr = (4, 20) if args.quick else (40, 50)
        cfgs = TIMING_CONFIGS[:1] if args.quick else TIMING_CONFIGS
        results, loads = {}, {}
        for cfg in cfgs:
            load0 = C.loadavg()
            t0 = time.perf_counter()
            results[cfg.name] = run_timing(cfg, lib, hp, rounds=rounds, steps_per_round=spr,
                                           methods=TIMING_METHODS)
            loads[cfg.name] = (load0, C.loadavg())
            print(f"[timing] {cfg.name}: {time.perf_counter() - t0:.0f} s, load {load0:.2f} -> "
                  f"{loads[cfg.name][1]:.2f}", flush=True)
        timing_md = timing_tables(results, loads)
        goal_md = goal_lines(results)
        print(timing_md + "\n\n" + goal_md, flush=True)
        if args.profile:
            for name in ("xrisk_aucm_pesg", "libauc_aucm_pesg", "bce_adam"):
                print(f"\n===== cProfile {name} ({TIMING_CONFIGS[0].name})\n"
                      + profile_method(TIMING_CONFIGS[0], lib, hp, name), flush=True)

    quality_md = verdict_md = ""
    if not args.timing_only:
        ratios = [0.05] if args.quick else [0.01, 0.05, 0.10]
        seeds = list(range(1 if args.quick else args.seeds))
        cfgs = QUALITY_CONFIGS
        if args.quick:
            cfgs = [QualityConfig(c.dataset, c.label, c.hidden, 1, c.batch_size, c.pos_per_batch,
                                  c.load_kwargs, max_steps=150) for c in QUALITY_CONFIGS]
        jobs = [(c, r, s, QUALITY_METHODS, hp, 1) for c in cfgs for r in ratios for s in seeds]
        for c in cfgs:  # fills caches (e.g. text embeddings) once, before the workers start
            load_data(c, ratios[0], seeds[0])
        t0 = time.perf_counter()
        records: list[dict] = []
        if args.workers > 1 and len(jobs) > 1:
            with mp.get_context("spawn").Pool(args.workers) as pool:
                for i, recs in enumerate(pool.imap_unordered(quality_job, jobs)):
                    records += recs
                    print(f"[quality] {i + 1}/{len(jobs)} jobs, {time.perf_counter() - t0:.0f} s",
                          flush=True)
        else:
            for i, job in enumerate(jobs):
                records += quality_job(job)
                print(f"[quality] {i + 1}/{len(jobs)} jobs, {time.perf_counter() - t0:.0f} s", flush=True)
        if args.dump:
            import json

            Path(args.dump).write_text(json.dumps(records, indent=1))
        quality_md, verdict_md = quality_tables(records, cfgs, ratios, QUALITY_METHODS)
        print(quality_md + "\n\n" + verdict_md, flush=True)

    total = time.perf_counter() - t_start
    print(f"[auc] total {total:.0f} s", flush=True)
    if write:
        head = (f"Command: `{cmd.strip()}` (in `.venv-bench`, see `bench/README.md`); "
                f"{total / 60:.1f} min.  \nMachine: {facts}.\n")
        _ensure_skeleton()
        if timing_md:
            C.write_section(f"{SECTION}-timing", "### Step time\n\n" + head + "\n" + TIMING_NOTE
                            + "\n\n" + timing_md + "\n\n" + goal_md)
        if quality_md:
            C.write_section(f"{SECTION}-quality", "### Test quality\n\n" + head + "\n" + QUALITY_NOTE
                            + f" Metrics: {metrics_source()}.\n\n" + quality_md + "\n\n"
                            + "Verdicts (computed by the script from the numbers above; 'noise' = "
                            "2 x the larger std / sqrt(seeds)):\n\n" + verdict_md)
    return 0


TIMING_NOTE = (
    "One process, `torch.set_num_threads(1)`; one step = model forward + loss forward + backward + "
    "optimizer step (+ `zero_grad`), same MLP initial weights and same precomputed batches "
    "(synthetic Gaussian inputs, ~10 % positives, fixed positives per batch) for every method; "
    "methods interleaved in rotating rounds of 50 steps, 2 warm-up rounds dropped, median over "
    "the recorded steps. Scores are `sigmoid(logit)` for every AUC loss. "
    "Pairs use the same hyper-parameters on both sides (xrisk AUCMLoss at its default `v2`, "
    "LibAUC at its default `v1`). `x BCE+Adam` = median step / median BCE+Adam step of the same "
    "run; `xrisk / LibAUC` < 1 means xrisk is faster. The floor row is the AUC-M + PESG step written out by hand "
    "(`_floor_aucm_pesg`: the same update, equal to the library's step in `tests/test_aucm.py`, with the surrogate as "
    "`v^T M v` for a fixed `M` and the PESG update as four `_foreach` ops and one `torch._fused_sgd_` call; no checks, "
    "no objective record, no optimizer bookkeeping): what any implementation of this step costs at least."
)
QUALITY_NOTE = (
    "Same MLP initial weights per seed, same number of steps (epochs x ceil(n_train / 64)), "
    "batch 64. Every AUC method and `BCE + Adam, oversampled` see the same batch stream with "
    "16 positives per batch (positives cycled, as DualSampler does); `BCE + Adam, shuffled` sees "
    "plain shuffled batches of the same training set. PESG: lr 0.1, momentum 0.9 (LibAUC "
    "convention; xrisk given the equivalent), weight decay 1e-4, epoch_decay 3e-3, lr / 10 and "
    "reference reset at 50 % and 75 % of the steps (`update_regularizer`). Adam / SOAP(adam): "
    "lr 1e-3, weight decay 1e-5. AP: gamma 0.9, margin 1.0. AUCM: margin 1.0; xrisk uses its "
    "default `version` (`v2`) and, as a same-formula check, `v1`; LibAUC its default `v1`. "
    "Mean ± std over seeds."
)


if __name__ == "__main__":
    sys.exit(main())
