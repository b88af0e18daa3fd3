"""Compiled vs eager training steps of the global contrastive losses (issue 18, section 2), on this CPU, one thread.

One image-text step: fixed backbone features ``[B, 256]`` of both modalities (16 batches, cycled) go through two
linear projection heads 256 -> 128 (CLIP's projection layers), the loss, ``backward()`` and a plain SGD step of
the heads and the loss's own parameters (the learnable temperature), written as a traceable
``torch.optim.Optimizer`` (``tests/_compile.py``'s ``TraceableSGD``). Dataset indices are drawn from ``num_samples = 1e5``.
Losses: the mini-batch reference, the ClipLoss formula (``_baselines_contrastive.clip_loss``, one matrix product,
temperature 0.07); ``GlobalContrastiveLoss(mode="bimodal")`` with a fixed (FastCLIP-v1), one learnable
(FastCLIP-v3) and per-sample (iSogCLR) temperature; ``NUCLRLoss``; the per-sample-temperature GCL and NUCLR with
``FalseNegativeDetector`` (GloFND, masking from the first step); and a floor, ``StateFloor(3)``: the ClipLoss formula
plus the state traffic of three per-sample ``[N, 2]`` states (read, moving average, write back), what the
per-sample-temperature GCL and NUCLR must add to ClipLoss whatever their kernel; and ``HandWrittenGCL`` /
``HandWrittenNUCLR``: the per-sample-temperature GCL and the NUCLR step written out by hand (each equal to the library's
step on batches of distinct indices, tested) with nothing but the paper's arithmetic and their three states, what those
losses cost compiled without the library around them (not a lower bound: at B = 512 their unfused ``[B, B]``
temporaries make them slower than the library's kernels).
Three variants of every step, timed in the same
interleaved rounds (``_common.time_interleaved``), every loss's variants and the reference in one call:

* ``eager``: the default, validation on;
* ``eager, validation off``: ``xrisk.set_validation(False)``, the fixed-shape device path;
* ``compiled``: validation off, ``torch.compile(step, fullgraph=True)`` (inductor) with
  ``torch._dynamo.config.trace_autograd_ops = True`` (backward inside the graph); ClipLoss compiled the same way.

The issue's goals, at B = 128: the compiled per-sample-temperature GCL step and the compiled NUCLR step within
1.1x of the compiled ClipLoss step, GloFND (with the per-sample-temperature GCL) within 1.3x. Paired ratio =
median over rounds of the ratio of the round medians.

    python bench/compile_contrastive.py           # writes bench/RESULTS.md (section "compile_contrastive")
    python bench/compile_contrastive.py --quick   # smoke run, RESULTS.md untouched
"""

from __future__ import annotations

import math
import statistics
import sys
import time

import torch
from torch import nn

import _common as C
from _baselines_contrastive import ClipLossBaseline, clip_loss
from compile_score import TraceableSGD, _compiled, _runner, _Step, compile_bench_setup

SECTION = "compile_contrastive"
DIM, PROJ, N, TAU = 256, 128, 100_000, 0.07
LOG2E = 1.0 / math.log(2.0)
GOALS = {"GCL individual": 1.1, "NUCLR": 1.1, "GCL individual + GloFND": 1.3}


def _cases():
    from xrisk.losses import FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss

    def gcl(temperature: str, fnd: bool = False):
        return lambda: GlobalContrastiveLoss(
            N, mode="bimodal", temperature=temperature, tau=TAU, rho=6.5,
            false_negatives=FalseNegativeDetector(N, alpha=0.01) if fnd else None)

    def nuclr(fnd: bool = False):
        return lambda: NUCLRLoss(N, tau=TAU, zeta_start_epoch=0,
                                 false_negatives=FalseNegativeDetector(N, alpha=0.01) if fnd else None)

    return {
        "GCL fixed": gcl("fixed"),
        "GCL global": gcl("global"),
        "GCL individual": gcl("individual"),
        "NUCLR": nuclr(),
        "GCL individual + GloFND": gcl("individual", fnd=True),
        "NUCLR + GloFND": nuclr(fnd=True),
    }


class StateFloor(nn.Module):
    """The floor of a compiled global-loss step: the ClipLoss formula plus what any loss with ``k`` per-sample
    ``[N, 2]`` states must do on top of it -- read the batch's rows (and their seen flags), a moving average, write
    them back (``index_copy_``). No estimator, no duplicate merging, no checks: nothing of the FCCO math."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        for j in range(k):
            self.register_buffer(f"value{j}", torch.zeros(N, 2))
            self.register_buffer(f"seen{j}", torch.zeros(N, 2, dtype=torch.bool))

    def forward(self, a, b, idx):
        out = clip_loss(a, b, 1.0 / TAU)
        new = out.detach().expand(idx.shape[0], 2)
        for j in range(self.k):
            value, seen = getattr(self, f"value{j}"), getattr(self, f"seen{j}")
            old = value.index_select(0, idx)
            value.index_copy_(0, idx, torch.where(seen.index_select(0, idx), torch.lerp(old, new, 0.9), new))
            seen.index_fill_(0, idx, True)
        return out


class _HandWritten(nn.Module):
    """What the hand-written steps share: the log-space estimator ``u``, a third per-sample state ``name`` (initial
    value ``init``) with its momentum, the cosine similarities and the plain state writes (the last write of a
    repeated index wins)."""

    def __init__(self, num_samples: int, name: str, init: float) -> None:
        super().__init__()
        self.name = name
        self.register_buffer("log_u", torch.zeros(num_samples, 2))
        self.register_buffer("u_seen", torch.zeros(num_samples, 2, dtype=torch.bool))
        self.register_buffer(name, torch.full((num_samples, 2), init))
        self.register_buffer("momentum", torch.zeros(num_samples, 2))
        self.register_buffer("m_seen", torch.zeros(num_samples, 2, dtype=torch.bool))

    @staticmethod
    def similarities(a, b):
        """``(s, s detached, its diagonal, the identity mask)``; side 0: image anchors (rows) against text columns,
        side 1: text anchors (columns) against images."""
        a = a / torch.linalg.vector_norm(a, dim=1, keepdim=True).clamp_min(1e-12)
        b = b / torch.linalg.vector_norm(b, dim=1, keepdim=True).clamp_min(1e-12)
        s = a @ b.T
        sd = s.detach()
        return s, sd, sd.diagonal(), torch.eye(s.shape[0], dtype=torch.bool, device=s.device)

    def moving_average(self, idx, log_g, gamma: float):
        """The new ``log u`` rows (first visit: ``log_g``)."""
        old, seen = self.log_u.index_select(0, idx), self.u_seen.index_select(0, idx)
        return torch.where(seen, torch.logaddexp(old + math.log1p(-gamma), log_g + math.log(gamma)), log_g)

    def write(self, idx, log_u, grad, beta: float, lr: float, before, bounds=None):
        """Momentum ``m <- (1 - beta) m + beta grad`` (first visit: ``grad``), the third state ``before - lr m`` (clipped
        to ``bounds``), all rows written with ``log u``."""
        m_seen = self.m_seen.index_select(0, idx)
        m = torch.where(m_seen, torch.lerp(self.momentum.index_select(0, idx), grad, beta), grad)
        new = before - lr * m
        self.log_u.index_copy_(0, idx, log_u)
        self.u_seen.index_fill_(0, idx, True)
        self.momentum.index_copy_(0, idx, m)
        self.m_seen.index_fill_(0, idx, True)
        getattr(self, self.name).index_copy_(0, idx, new if bounds is None else new.clamp(*bounds))


class HandWrittenGCL(_HandWritten):
    """The per-sample-temperature GCL step (iSogCLR, ``mode="bimodal"``, FCCO) written out by hand with
    ``GlobalContrastiveLoss``'s defaults: the same loss value, gradients and state as the library's step when every
    index of the batch is distinct (tested in ``tests/test_compile_contrastive.py``), and nothing else -- no checks,
    no duplicate merging (a repeated index: the last write wins), no negatives mask (the diagonal only), no staged
    or all-or-nothing commit, no objective record. The shifted exponentials are kept (``tau_min = 0.01`` puts
    ``|d / tau|`` up to 200, beyond float32's exponent range), each side's shift taken on the similarities (its
    largest negative ``s``: the positive cancels), every per-anchor vector a contiguous ``[2, B]`` row and
    ``log2(e) / tau`` computed once (through ``exp2``/``log2``, which inductor keeps in its own buffer instead of
    recomputing it with the temperature gather in every ``[B, B]`` entry): five ``[B, B]`` passes (two maxima, one
    exponential pass per side with its sums, the weights with the surrogate). What the plain FCCO arithmetic of that
    loss costs compiled without the library around it; not a lower bound."""

    def __init__(self, num_samples: int = N, tau: float = TAU, *, gamma: float = 0.9, rho: float = 6.5,
                 lr_tau: float = 0.03, beta_tau: float = 0.9, clip: float = 5.0, bounds=(0.01, 1.0)) -> None:
        super().__init__(num_samples, "tau", tau)
        self.gamma, self.rho, self.lr_tau, self.beta_tau, self.clip, self.bounds = gamma, rho, lr_tau, beta_tau, clip, bounds

    def forward(self, a, b, idx):
        s, sd, p, eye = self.similarities(a, b)
        n = s.shape[0]
        tau = self.tau.index_select(0, idx)
        # per-anchor vectors as [2, B] rows (contiguous operands of the [B, B] passes); log2(e) / tau through
        # exp2/log2: inductor gives a reused result with an exponential its own buffer instead of recomputing it
        # (with the temperature gather) in every [B, B] entry
        tau_t = tau.T.contiguous()
        k = torch.exp2(math.log2(LOG2E) - torch.log2(tau_t))
        # each side's shift: its largest negative similarity (the positive cancels: d / tau - max d / tau)
        masked = torch.where(eye, float("-inf"), sd)
        top = torch.stack([masked.amax(1), masked.amax(0)], 0)
        e0 = torch.where(eye, 0.0, torch.exp2((sd - top[0][:, None]) * k[0][:, None]))
        e1 = torch.where(eye, 0.0, torch.exp2((sd - top[1][None, :]) * k[1][None, :]))
        sums = torch.stack([e0.sum(1), e1.sum(0)], 0)
        dots = torch.stack([(e0 * sd).sum(1), (e1 * sd).sum(0)], 0)
        f = (top - p[None, :]) / tau_t  # exp(d_ij / tau) = e_ij exp(f)
        log_cnt = math.log(n - 1)
        log_u = self.moving_average(idx, (sums.log() + f - log_cnt).T, self.gamma)
        coef = torch.exp(f - log_u.T - log_cnt) / n  # p_ij = e_ij * coef_i, scaled by 1 / B
        wrow = sums * coef
        value = dots * coef - wrow * p[None, :]  # sum_j p_ij d_ij
        w = e0 * coef[0][:, None] + e1 * coef[1][None, :] - torch.diag(wrow.sum(0))
        out = (w * s).sum()
        grad = (log_u + self.rho - (value * n / tau_t).T).clamp(-self.clip, self.clip)
        self.write(idx, log_u, grad, self.beta_tau, self.lr_tau, tau, self.bounds)
        return out


class HandWrittenNUCLR(_HandWritten):
    """The NUCLR step (``NUCLRLoss`` with ``zeta`` updated from the first step, its defaults otherwise) written out by
    hand, as :class:`HandWrittenGCL` is for the GCL: the paper's FCCO arithmetic -- per side the row-max shifted
    exponentials of ``(d_ij - zeta_j) / tau`` over the other columns, the log-space moving average ``u``, the weights
    ``w_ij = exp((d_ij - zeta_j) / tau) / Z_i`` with ``Z_i = exp(-xi / tau) / (n - 1) + u_i``, the surrogate
    ``sum_ij w_ij d_ij / (B (B - 1))``, the column sums of the weights, ``zeta``'s gradient ``1 - mean_i w_ij`` and its
    momentum SGD -- and its three states (``u``, ``zeta``, ``zeta``'s momentum); equal to the library's step when every
    index of the batch is distinct (tested in ``tests/test_compile_contrastive.py``). Nothing else: no checks, no
    duplicate merging, no negatives mask (the diagonal only), no staged commit, no objective. The shift is kept: the
    library cannot bound ``zeta`` (nor, at its default ``tau = 0.01``, ``|d / tau| <= 200``) without a host read."""

    def __init__(self, num_samples: int = N, tau: float = TAU, *, gamma: float = 0.8, zeta_init: float = -0.05,
                 xi_init: float = 0.0, lr_zeta: float = 5e-6, beta_zeta: float = 0.9) -> None:
        super().__init__(num_samples, "zeta", zeta_init)
        self.tau, self.gamma, self.lr_zeta, self.beta_zeta = tau, gamma, lr_zeta, beta_zeta
        self.log_pos = -max(zeta_init, xi_init) / tau - math.log(num_samples - 1)  # log of exp(-xi / tau) / (n - 1)

    def forward(self, a, b, idx):
        s, sd, p, eye = self.similarities(a, b)
        n = s.shape[0]
        zeta = self.zeta.index_select(0, idx)  # [B, 2]: zeta[j, 0] of text column j, zeta[i, 1] of image column i
        l0 = torch.where(eye, float("-inf"), (sd - p[:, None] - zeta[:, 0][None, :]) / self.tau)
        l1 = torch.where(eye, float("-inf"), (sd - p[None, :] - zeta[:, 1][:, None]) / self.tau)
        f0, f1 = l0.amax(1), l1.amax(0)
        e0, e1 = torch.exp(l0 - f0[:, None]), torch.exp(l1 - f1[None, :])
        f = torch.stack([f0, f1], 1)
        sums = torch.stack([e0.sum(1), e1.sum(0)], 1)
        log_u = self.moving_average(idx, sums.log() + f - math.log(n - 1), self.gamma)
        coef = torch.exp(f - torch.logaddexp(log_u, torch.full_like(log_u, self.log_pos)))  # w_ij = e_ij * coef_i
        w0, w1 = e0 * coef[:, 0:1], e1 * coef[:, 1][None, :]
        col_weight = torch.stack([w0.sum(0), w1.sum(1)], 1)  # per column: the sum of its weights over the anchors
        w = (w0 + w1 - torch.diag((sums * coef).sum(1))) / (n * (n - 1))
        out = (w * s).sum()
        self.write(idx, log_u, 1.0 - col_weight / (n - 1), self.beta_zeta, self.lr_zeta, zeta)
        return out

def _data(batch: int, count: int = 16):
    g = torch.Generator().manual_seed(batch)
    out = []
    for _ in range(count):
        a = torch.randn(batch, DIM, generator=g)
        out.append((a, a + 0.5 * torch.randn(batch, DIM, generator=g), torch.randint(0, N, (batch,), generator=g)))
    return out


def _step(loss: nn.Module) -> _Step:
    """Heads + loss + backward + SGD of the heads and the loss's parameters (the epoch set: nothing inferred)."""
    torch.manual_seed(0)
    heads = nn.ModuleList([nn.Linear(DIM, PROJ), nn.Linear(DIM, PROJ)])
    if hasattr(loss, "set_epoch"):
        loss.set_epoch(0)
    opt = TraceableSGD([*heads.parameters(), *loss.parameters()], lr=0.01)

    def step(a, b, idx):
        out = loss(heads[0](a), heads[1](b), idx)
        out.backward()
        opt.step()
        return out.detach()

    return _Step(step, opt)


def main(argv: list[str] | None = None) -> int:
    from torch import _dynamo

    args, rounds, spr, cmd = compile_bench_setup("compile_contrastive.py", __doc__, argv)
    facts = C.machine_facts(threads=1)
    t0 = time.perf_counter()
    loads = [f"start {C.loadavg():.2f}"]
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        data = _data(batch)
        variants = {"ref eager": _runner(_step(ClipLossBaseline(TAU)), data, True)}
        variants["ref compiled"], _ = _compiled(_step(ClipLossBaseline(TAU)), fullgraph=True, data=data)
        variants["floor compiled"], _ = _compiled(_step(StateFloor(3)), fullgraph=True, data=data)
        variants["hand-written compiled"], _ = _compiled(_step(HandWrittenGCL()), fullgraph=True, data=data)
        variants["hand-written NUCLR compiled"], _ = _compiled(_step(HandWrittenNUCLR()), fullgraph=True, data=data)
        compile_s = {}
        for name, make in _cases().items():
            variants[f"{name} eager"] = _runner(_step(make()), data, True)
            variants[f"{name} eager_off"] = _runner(_step(make()), data, False)
            variants[f"{name} compiled"], compile_s[name] = _compiled(_step(make()), fullgraph=True, data=data)
            print(f"[compile_contrastive] B={batch} {name} compiled in {compile_s[name]:.0f} s", flush=True)
        times = C.time_interleaved(variants, rounds=rounds, steps_per_round=spr)
        loads.append(f"B={batch} {C.loadavg():.2f}")

        def paired(a: str, b: str) -> float:
            return C.paired_ratio(times[a], times[b], rounds, spr)

        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        rows.append(["ClipLoss (mini-batch reference)", batch, f"{ms['ref eager']:.2f}", "", f"{ms['ref compiled']:.2f}",
                     "", f"{paired('ref compiled', 'ref eager'):.3f}", "1.000", ""])
        rows.append(["floor: ClipLoss + 3 per-sample states (read, moving average, write)", batch, "", "",
                     f"{ms['floor compiled']:.2f}", "", "", f"{paired('floor compiled', 'ref compiled'):.3f}", ""])
        rows.append(["GCL individual written out by hand (plain arithmetic, 3 states; no checks, merging, staging)",
                     batch, "", "", f"{ms['hand-written compiled']:.2f}", "", "",
                     f"{paired('hand-written compiled', 'ref compiled'):.3f}", ""])
        rows.append(["NUCLR written out by hand (plain arithmetic, 3 states; no checks, merging, staging)",
                     batch, "", "", f"{ms['hand-written NUCLR compiled']:.2f}", "", "",
                     f"{paired('hand-written NUCLR compiled', 'ref compiled'):.3f}", ""])
        for name in compile_s:
            r = paired(f"{name} compiled", "ref compiled")
            goal = GOALS.get(name) if batch == 128 else None
            verdict = "" if goal is None else f"goal {goal}: {'met' if r <= goal else 'not met'}"
            rows.append([name, batch, f"{ms[f'{name} eager']:.2f}", f"{ms[f'{name} eager_off']:.2f}",
                         f"{ms[f'{name} compiled']:.2f}", f"{paired(f'{name} eager_off', f'{name} eager'):.3f}",
                         f"{paired(f'{name} compiled', f'{name} eager'):.3f}", f"{r:.3f}", verdict])
        for row in rows[-len(compile_s) - 4:]:
            print(f"[compile_contrastive] {row}", flush=True)
        _dynamo.reset()
    table = C.md_table(["loss", "B", "eager ms/step", "eager, validation off ms/step", "compiled ms/step",
                        "paired ratio off/eager", "paired ratio compiled/eager",
                        "paired ratio compiled / ClipLoss compiled", "goal (B = 128)"], rows)
    body = (
        "## Global contrastive losses: compiled vs eager step (`bench/compile_contrastive.py`, issue 18"
        + (", inductor's C++ wrapper" if args.cpp_wrapper else "") + ")\n\n"
        + C.run_header(cmd, time.perf_counter() - t0, facts, loads)
        + f"{rounds} interleaved rounds of {spr} steps per variant (2 warm-up rounds dropped), every variant of one "
        "batch size in the same rounds; one thread. A step: two linear heads 256 -> 128 on fixed backbone features, "
        "the loss, backward, SGD of the heads and the loss's parameters. `compiled`: validation off, "
        "`torch.compile(step, fullgraph=True)` (inductor) of the whole step; the ClipLoss reference compiled the same "
        "way. Goals (issue 18, B = 128): per-sample-temperature GCL and NUCLR within 1.1x of ClipLoss compiled, "
        "GloFND (with that GCL) within 1.3x. The floor row is ClipLoss plus only the state traffic of a loss with three "
        "per-sample `[N, 2]` states (the per-sample-temperature GCL and NUCLR each keep three: estimator, "
        "temperature or normaliser, its momentum): the batch's rows and seen flags read, a moving average, the rows "
        "written back, nothing else. The hand-written row is the per-sample-temperature GCL step written out by hand "
        "(`HandWrittenGCL`: its plain arithmetic -- shifted exponentials (each side shifted by its largest negative similarity), moving average, weights, temperature gradient "
        "and momentum SGD -- and its three states; equal to the library's step when no index repeats, "
        "`tests/test_compile_contrastive.py`), without checks, duplicate merging, masks or staged commit: what "
        "that loss costs compiled without the library around it (not a lower bound: at B = 512 its unfused `[B, B]` "
        "temporaries make it slower than the library's kernel). The hand-written NUCLR row is the same for `NUCLRLoss` "
        "(`HandWrittenNUCLR`: shifted exponentials of `(d - zeta) / tau`, moving average, weights, the columns' weight "
        "sums, `zeta`'s gradient and momentum SGD, three states). The library's compiled step does that arithmetic and more "
        "(checks, duplicate merging, masks, staged commit): a goal that the hand-written row misses is out of its reach "
        "on this CPU.\n\n" + table
    )
    C.publish(SECTION + ("_cpp" if args.cpp_wrapper else ""), body, write=not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
