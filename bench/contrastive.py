"""Speed and scale of the global contrastive losses (issue 3).

One process, ``torch.set_num_threads(1)``, interleaved rounds (``_common.time_interleaved``),
median per-step time of **forward + backward** from leaf features ``[B, 256]`` (the losses
L2-normalise inside; the baselines and LibAUC's bimodal loss get the same normalisation in
the timed step). Every step uses fresh dataset indices, so the state is read and written.
Ratios between two methods are paired: per round the ratio of their median step times, then
the median over rounds (a slow spell of the shared machine hits both methods of a round).

Compared, at B = 128 / 512 / 2048:

* xrisk: unimodal SogCLR (``GlobalContrastiveLoss(mode="unimodal")``), unimodal individual
  temperatures (iSogCLR), bimodal fixed / global / individual temperature (FastCLIP-v1 / v3 /
  iSogCLR), ``NUCLRLoss``; each with and without ``FalseNegativeDetector`` (GloFND, masking on);
* the mini-batch counterparts (``bench/_baselines_contrastive.py``): NT-Xent over the same 2B
  views (unimodal) and the ClipLoss formula with one matrix product (bimodal; the reference), plus,
  for context, the same loss with the two products OpenCLIP's ``ClipLoss`` computes on one process;
* LibAUC 2.0.1 ``GCLoss_v1`` (unimodal, plain and ``enable_isogclr``) and ``GCLoss_v2``
  (``global_constant`` / ``global_learnable`` / ``individual_learnable``), if importable.

Scale: per-step time of each xrisk loss with ``num_samples`` 1e4 vs 1e7 (same batch, interleaved;
the ratio should be ~1), the same for ``SampleState.update`` alone, and the bytes of state per sample.

    .venv-bench/bin/python bench/contrastive.py            # full run, writes bench/RESULTS.md
    .venv-bench/bin/python bench/contrastive.py --quick    # smoke run (< 1 min)
    .venv-bench/bin/python bench/contrastive.py --profile bimodal-fixed --batch 512
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import sys
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import _common
from _baselines_contrastive import ClipLossBaseline, NTXentBaseline, OpenClipFormBaseline
from xrisk.losses import FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss
from xrisk.state import SampleState

SECTION = "contrastive-speed"
DIM = 256
TAU_UNI, TAU_BI = 0.1, 0.07
GOAL_RATIO = 1.3


@dataclass
class Variant:
    name: str           # row label
    modality: str       # "unimodal" | "bimodal"
    kind: str           # "xrisk" | "minibatch" (the reference) | "context" (another mini-batch form) | "libauc"
    build: Callable[[int], nn.Module]  # num_samples -> loss module called as loss(a, b, index)
    libauc_twin: str | None = None     # name of the LibAUC variant computing the same estimator


# ----------------------------------------------------------------------------- builders
def _fnd(n: int) -> FalseNegativeDetector:
    # masking on from the first step (start_epoch=0): the detector's full per-step cost is timed
    return FalseNegativeDetector(n, alpha=0.01, start_epoch=0)


def _gcl(mode: str, temperature: str, fnd: bool) -> Callable[[int], nn.Module]:
    tau = TAU_UNI if mode == "unimodal" else TAU_BI
    rho = 0.4 if mode == "unimodal" else 6.5

    def build(n: int) -> nn.Module:
        return GlobalContrastiveLoss(
            n, mode=mode, temperature=temperature, tau=tau, gamma=0.9, rho=rho,
            tau_min=0.01, tau_max=1.0, false_negatives=_fnd(n) if fnd else None,
        )

    return build


def _nuclr(fnd: bool) -> Callable[[int], nn.Module]:
    def build(n: int) -> nn.Module:
        # zeta updates on from the first step: the full per-step cost is timed
        return NUCLRLoss(n, tau=TAU_BI, gamma=0.8, zeta_start_epoch=0, false_negatives=_fnd(n) if fnd else None)

    return build


class _LibAUCNormalized(nn.Module):
    """LibAUC ``GCLoss_v2`` does not normalise its inputs; do it here like every other loss."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, a: torch.Tensor, b: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        out = self.inner(F.normalize(a, dim=1), F.normalize(b, dim=1), index)
        return out[0] if isinstance(out, tuple) else out


def _libauc_builders(libauc) -> dict[str, Callable[[int], nn.Module]]:
    L = libauc.losses.contrastive

    def quiet(fn):  # LibAUC prints its gamma schedule on construction
        def build(n: int) -> nn.Module:
            with contextlib.redirect_stdout(io.StringIO()):
                return fn(n)
        return build

    return {
        "libauc-v1": quiet(lambda n: L.GCLoss_v1(N=n, tau=TAU_UNI, gamma=0.9, device=torch.device("cpu"))),
        "libauc-v1-isogclr": quiet(lambda n: L.GCLoss_v1(
            N=n, tau=TAU_UNI, gamma=0.9, device=torch.device("cpu"), enable_isogclr=True, rho=0.4)),
        "libauc-v2-global_constant": quiet(lambda n: _LibAUCNormalized(
            L.GCLoss_v2(N=n, tau=TAU_BI, gamma=0.9, temperature_scheme="global_constant"))),
        "libauc-v2-global_learnable": quiet(lambda n: _LibAUCNormalized(
            L.GCLoss_v2(N=n, tau=TAU_BI, gamma=0.9, temperature_scheme="global_learnable", rho=6.5))),
        "libauc-v2-individual_learnable": quiet(lambda n: _LibAUCNormalized(L.GCLoss_v2(
            N=n, tau=TAU_BI, gamma=0.9, temperature_scheme="individual_learnable", rho=6.5,
            tau_min=0.01, tau_max=1.0))),
    }


def variants(libauc) -> list[Variant]:
    v = [
        Variant("NT-Xent (mini-batch)", "unimodal", "minibatch", lambda n: NTXentBaseline(TAU_UNI)),
        Variant("SogCLR (unimodal, fixed tau)", "unimodal", "xrisk", _gcl("unimodal", "fixed", False), "libauc-v1"),
        Variant("SogCLR + GloFND", "unimodal", "xrisk", _gcl("unimodal", "fixed", True)),
        Variant("iSogCLR (unimodal, individual tau)", "unimodal", "xrisk", _gcl("unimodal", "individual", False),
                "libauc-v1-isogclr"),
        Variant("CLIP loss (mini-batch)", "bimodal", "minibatch", lambda n: ClipLossBaseline(TAU_BI)),
        Variant("ClipLoss as OpenCLIP computes it (two products)", "bimodal", "context",
                lambda n: OpenClipFormBaseline(TAU_BI)),
        Variant("GCL bimodal, fixed tau (FastCLIP-v1)", "bimodal", "xrisk", _gcl("bimodal", "fixed", False),
                "libauc-v2-global_constant"),
        Variant("GCL bimodal, global tau (FastCLIP-v3)", "bimodal", "xrisk", _gcl("bimodal", "global", False),
                "libauc-v2-global_learnable"),
        Variant("GCL bimodal, individual tau (iSogCLR)", "bimodal", "xrisk", _gcl("bimodal", "individual", False),
                "libauc-v2-individual_learnable"),
        Variant("NUCLR", "bimodal", "xrisk", _nuclr(False)),
        Variant("GCL bimodal fixed + GloFND", "bimodal", "xrisk", _gcl("bimodal", "fixed", True)),
        Variant("GCL bimodal global + GloFND", "bimodal", "xrisk", _gcl("bimodal", "global", True)),
        Variant("GCL bimodal individual + GloFND", "bimodal", "xrisk", _gcl("bimodal", "individual", True)),
        Variant("NUCLR + GloFND", "bimodal", "xrisk", _nuclr(True)),
    ]
    if libauc is not None:
        for name, build in _libauc_builders(libauc).items():
            v.append(Variant(name, "unimodal" if "-v1" in name else "bimodal", "libauc", build))
    return v


# ----------------------------------------------------------------------------- timing
def make_step(loss: nn.Module, batch: int, num_samples: int, seed: int) -> Callable[[], None]:
    """A closure doing one forward+backward with fresh indices (a cycling random permutation)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, DIM, generator=g).requires_grad_(True)
    b = (a.detach() + 0.5 * torch.randn(batch, DIM, generator=g)).requires_grad_(True)
    perm = torch.randperm(num_samples, generator=g)
    n_chunks = max(num_samples // batch, 1)
    params = [p for p in loss.parameters() if p.requires_grad]
    state = {"k": 0}

    def step() -> None:
        k = state["k"] % n_chunks
        state["k"] += 1
        idx = perm[k * batch:(k + 1) * batch]
        a.grad = b.grad = None
        for p in params:
            p.grad = None
        loss(a, b, idx).backward()

    return step


class Speed(NamedTuple):
    """Median ms per step of every variant, and per round the median ms of its ``spr`` steps."""

    ms: dict[str, float]
    rounds: dict[str, list[float]]

    def ratio(self, name: str, ref: str) -> float:
        """Median over rounds of ``name``'s time / ``ref``'s time in the same round (paired: a slow spell of
        a shared machine hits both methods of a round alike, unlike the ratio of pooled medians)."""
        return _common.median([x / y for x, y in zip(self.rounds[name], self.rounds[ref])])


def speed_table(vs: list[Variant], batch: int, num_samples: int, rounds: int, spr: int) -> Speed:
    """Median ms per step of every variant at one batch size (interleaved within each modality)."""
    out = Speed({}, {})
    for modality in ("unimodal", "bimodal"):
        steps = {}
        for i, v in enumerate(x for x in vs if x.modality == modality):
            steps[v.name] = make_step(v.build(num_samples), batch, num_samples, seed=i)
        times = _common.time_interleaved(steps, rounds=rounds, steps_per_round=spr, warmup_rounds=1)
        for k, t in times.items():
            out.ms[k] = 1e3 * _common.median(t)
            out.rounds[k] = [1e3 * _common.median(t[r * spr:(r + 1) * spr]) for r in range(rounds)]
        del steps
        gc.collect()
    return out


def state_bytes_per_sample(loss: nn.Module, n: int) -> float:
    """Bytes of per-sample state: every buffer/parameter/tensor attribute whose first dim is ``n``."""
    seen: set[int] = set()
    total = 0
    tensors = list(loss.state_dict(keep_vars=True).values())
    for mod in loss.modules():  # LibAUC keeps its state in plain tensor attributes
        tensors += [t for t in vars(mod).values() if isinstance(t, torch.Tensor)]
    for t in tensors:
        if id(t) in seen or t.dim() == 0 or t.shape[0] != n:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total / n


def scale_table(vs: list[Variant], batch: int, sizes: tuple[int, int], rounds: int, spr: int) -> list[list]:
    """Step time at num_samples = sizes[0] vs sizes[1] for each xrisk (and LibAUC) loss."""
    rows = []
    small, large = sizes
    for v in vs:
        if v.kind in ("minibatch", "context"):
            continue
        steps = {
            "small": make_step(v.build(small), batch, small, seed=1),
            "large": make_step(v.build(large), batch, large, seed=1),
        }
        times = _common.time_interleaved(steps, rounds=rounds, steps_per_round=spr, warmup_rounds=1)
        t_s, t_l = 1e3 * _common.median(times["small"]), 1e3 * _common.median(times["large"])
        mem = state_bytes_per_sample(v.build(small), small)
        rows.append([v.name, f"{t_s:.2f}", f"{t_l:.2f}", f"{t_l / t_s:.2f}", f"{mem:g}"])
        del steps
        gc.collect()
    # SampleState.update alone ([B, 2] float32 values, fresh random indices every call)
    upd = {}
    for label, n in (("small", small), ("large", large)):
        st = SampleState(n, (2,))
        gen = torch.Generator().manual_seed(0)
        perm = torch.randperm(n, generator=gen)
        vals = torch.rand(batch, 2, generator=gen)
        box = {"k": 0}

        def f(st=st, perm=perm, vals=vals, box=box, n=n) -> None:
            k = box["k"] % max(n // batch, 1)
            box["k"] += 1
            st.update(perm[k * batch:(k + 1) * batch], vals, 0.9)

        upd[label] = f
    times = _common.time_interleaved(upd, rounds=rounds, steps_per_round=20 * spr, warmup_rounds=1)
    t_s, t_l = 1e3 * _common.median(times["small"]), 1e3 * _common.median(times["large"])
    rows.append(["`SampleState(n, (2,)).update` alone", f"{t_s:.3f}", f"{t_l:.3f}", f"{t_l / t_s:.2f}", "10"])
    return rows


# ----------------------------------------------------------------------------- profile
def _op_profile(v: Variant, batch: int, num_samples: int, steps: int = 10) -> tuple[dict[str, tuple[float, float]], float]:
    """Self CPU ms and calls per step of every aten op, and the total self CPU ms per step."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    step = make_step(v.build(num_samples), batch, num_samples, seed=0)
    for _ in range(3):
        step()
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops = {e.key: (e.self_cpu_time_total / 1e3 / steps, e.count / steps)
           for e in prof.key_averages() if e.key.startswith("aten::")}
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3 / steps
    return ops, total


def profile_table(vs: list[Variant], name: str, ref: str, batch: int, num_samples: int, top: int = 10) -> str:
    """Markdown table: the ``top`` aten ops by self time of ``name`` next to the same ops of ``ref``."""
    by = {v.name: v for v in vs}
    ops, tot = _op_profile(by[name], batch, num_samples)
    rops, rtot = _op_profile(by[ref], batch, num_samples)
    rows = []
    for op, (ms, calls) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]:
        rms, rcalls = rops.get(op, (0.0, 0.0))
        rows.append([f"`{op}`", f"{ms:.2f}", f"{calls:g}", f"{rms:.2f}", f"{rcalls:g}"])
    rows.append(["all ops (incl. autograd)", f"{tot:.2f}", f"{sum(c for _, c in ops.values()):g} aten calls",
                 f"{rtot:.2f}", f"{sum(c for _, c in rops.values()):g} aten calls"])
    return _common.md_table(["op", f"{name}: ms/step", "calls/step", f"{ref}: ms/step", "calls/step"], rows)


def profile(vs: list[Variant], name: str, batch: int, num_samples: int) -> None:
    from torch.profiler import ProfilerActivity, profile as tprofile

    v = next(x for x in vs if x.name == name or name in x.name)
    step = make_step(v.build(num_samples), batch, num_samples, seed=0)
    for _ in range(3):
        step()
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    calls = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")) / 10
    print(f"profile of {v.name!r} at B={batch} (10 steps): {calls:g} aten calls per step")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small batches, few rounds")
    p.add_argument("--batches", type=int, nargs="*", default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--no-write", action="store_true", help="print only, do not touch RESULTS.md")
    p.add_argument("--profile", default=None, help="profile one variant (substring of its name) and exit")
    p.add_argument("--batch", type=int, default=512, help="batch of --profile")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        libauc = _common.import_libauc()
        import libauc.losses.contrastive  # noqa: F401
        libauc_note = f"LibAUC {libauc.__version__} imported"
    except ImportError as exc:
        libauc, libauc_note = None, f"LibAUC not importable ({exc}); its columns are omitted"
    vs = variants(libauc)
    if args.profile:
        profile(vs, args.profile, args.batch, 100_000)
        return 0

    quick = args.quick
    batches = args.batches or ([64, 256] if quick else [128, 512, 2048])
    rounds = args.rounds or (3 if quick else 9)
    num_samples = 100_000
    facts = _common.machine_facts(1)
    t_start = time.perf_counter()
    by_name = {v.name: v for v in vs}
    speeds: dict[int, Speed] = {}
    for bsz in batches:
        spr = 1 if bsz >= 2048 else (2 if bsz >= 512 else 20)  # small batches: many short steps per round
        # small batches: three times the rounds (a round is short, and its ratios move most between runs)
        speeds[bsz] = speed_table(vs, bsz, num_samples, rounds * (3 if bsz < 512 else 1), spr)
        print(f"B={bsz}: " + ", ".join(f"{k}={t:.2f}ms" for k, t in speeds[bsz].ms.items()), flush=True)
    results = {b: s.ms for b, s in speeds.items()}

    # --- speed table: one row per xrisk loss, columns per batch size
    header = ["loss"]
    for bsz in batches:
        header += [f"B={bsz} ms", f"vs mini-batch", f"vs LibAUC"]
    rows = []
    goal_mb: dict[int, list[bool]] = {b: [] for b in batches}
    goal_lib: dict[int, list[bool]] = {b: [] for b in batches}
    for v in vs:
        if v.kind not in ("xrisk", "minibatch", "context"):
            continue
        row = [v.name]
        for bsz in batches:
            r = results[bsz]
            base = "NT-Xent (mini-batch)" if v.modality == "unimodal" else "CLIP loss (mini-batch)"
            if v.kind == "minibatch":
                row += [f"{r[v.name]:.2f}", "1 (reference)", ""]
                continue
            ratio = speeds[bsz].ratio(v.name, base)
            if v.kind == "context":
                row += [f"{r[v.name]:.2f}", f"{ratio:.2f}x", ""]
                continue
            if "GloFND" not in v.name:
                goal_mb[bsz].append(ratio <= GOAL_RATIO)
            lib = ""
            if v.libauc_twin and v.libauc_twin in r:
                lr = speeds[bsz].ratio(v.name, v.libauc_twin)
                lib = f"{lr:.2f}x ({v.libauc_twin} {r[v.libauc_twin]:.2f} ms)"
                goal_lib[bsz].append(lr < 1.0)
            row += [f"{r[v.name]:.2f}", f"{ratio:.2f}x", lib]
        rows.append(row)
    lib_rows = []
    for v in vs:
        if v.kind != "libauc":
            continue
        base = "NT-Xent (mini-batch)" if v.modality == "unimodal" else "CLIP loss (mini-batch)"
        lib_rows.append([v.name] + [f"{results[b][v.name]:.2f} ms = {speeds[b].ratio(v.name, base):.2f}x"
                                    for b in batches])

    # --- scale
    scale_sizes = (10_000, 10_000_000) if not quick else (10_000, 1_000_000)
    scale_batch = 512 if not quick else 128
    scale_rows = scale_table([x for x in vs if x.kind == "xrisk" or x.kind == "libauc"], scale_batch,
                             scale_sizes, rounds=5 if not quick else 2, spr=2)
    for r in scale_rows:
        print("scale:", r, flush=True)
    prof_batch = 512 if not quick else 128
    prof_md = {
        m: profile_table(vs, name, ref, prof_batch, num_samples)
        for m, name, ref in (("bimodal", "GCL bimodal, fixed tau (FastCLIP-v1)", "CLIP loss (mini-batch)"),
                             ("unimodal", "SogCLR (unimodal, fixed tau)", "NT-Xent (mini-batch)"))
    }
    elapsed = time.perf_counter() - t_start

    cmd = ".venv-bench/bin/python bench/contrastive.py" + (" --quick" if quick else "")
    held_mb = {b: all(goal_mb[b]) for b in batches}
    held_lib = {b: (all(goal_lib[b]) if goal_lib[b] else None) for b in batches}
    lines = [
        "## Global contrastive losses: speed and scale (issue 3)",
        "",
        f"Command: `{cmd}` ({elapsed / 60:.1f} min). Machine: {facts}. {libauc_note}.",
        "",
        f"Forward+backward of the loss from leaf features `[B, {DIM}]` (all losses L2-normalise), median ms "
        f"per step over {rounds} interleaved rounds ({3 * rounds} below B=512; methods of one modality rotate within each round), one "
        f"process, `torch.set_num_threads(1)`, `num_samples = {num_samples:,}`, fresh indices every step. "
        "GloFND rows mask from the first step (`start_epoch=0`), NUCLR updates zeta from the first step. "
        "'vs mini-batch' = time / time of the mini-batch counterpart on the same features "
        "(unimodal: NT-Xent over the same 2B views; bimodal: the ClipLoss formula with one matrix product, "
        "faster than OpenCLIP's own one-process ClipLoss, which multiplies twice: its row is context, "
        "not the reference); "
        "'vs LibAUC' = time / time of LibAUC 2.0.1's loss for the same estimator. Ratios are paired: the "
        "median over rounds of the two methods' median times within the same round.",
        "",
        _common.md_table(header, rows),
        "",
        "LibAUC 2.0.1 for reference (time and ratio to the mini-batch counterpart):",
        "",
        _common.md_table(["LibAUC loss"] + [f"B={b}" for b in batches], lib_rows) if lib_rows else "(not importable)",
        "",
        "Goals (issue 3): xrisk within 1.3x of the mini-batch counterpart at every batch size (rows without GloFND), "
        "and faster than LibAUC's loss for the same estimator:",
        "",
        _common.md_table(
            ["batch", f"all xrisk losses <= {GOAL_RATIO}x mini-batch", "all xrisk losses faster than LibAUC twin"],
            [[b, "held" if held_mb[b] else "**missed**",
              "n/a" if held_lib[b] is None else ("held" if held_lib[b] else "**missed**")] for b in batches],
        ),
        "",
        f"Scale: median ms per step at B={scale_batch}, `num_samples` {scale_sizes[0]:,} vs {scale_sizes[1]:,} "
        "(interleaved), and bytes of per-sample state (every state tensor with `num_samples` rows, "
        "incl. the `seen` flags of `SampleState`):",
        "",
        _common.md_table(["loss", f"n={scale_sizes[0]:,} ms", f"n={scale_sizes[1]:,} ms", "ratio",
                          "state bytes / sample"], scale_rows),
        "",
        "The `update` row does no O(n) work per call (no full-size allocation, no scan of `seen`: two "
        "`index_select` gathers, one `index_copy_`, one `index_fill_` of B rows); what grows with n is the "
        "latency of B random row reads (value and `seen`) missing the cache and TLB in a 90 MB state at "
        "n=1e7, while at n=1e4 the 100 kB state stays in cache. Inside a loss step that difference is "
        "a few hundredths of a millisecond.",
        "",
        f"Where the time goes (torch.profiler, B={prof_batch}, 10 steps, self CPU time per step of the 10 "
        "most expensive aten ops of the xrisk loss, next to its mini-batch counterpart; profiler overhead "
        "included, so totals exceed the medians above). Rerun one with "
        "`bench/contrastive.py --profile NAME --batch B`.",
        "",
        prof_md["bimodal"],
        "",
        prof_md["unimodal"],
    ]
    body = "\n".join(lines)
    print(body)
    if not (args.no_write or quick):  # the smoke run only prints
        _common.write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
