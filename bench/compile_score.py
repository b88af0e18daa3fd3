"""Compiled vs eager training steps of the score losses (issue 18, section 2), on this CPU, one thread.

For AUC-M + PESG, compositional AUC + PDSCA, AP, one-way partial AUC (CVaR and KL) and two-way partial AUC
(each with its optimizer; AP and the partial AUCs with plain SGD written as a traceable ``torch.optim.Optimizer``)
on an MLP 64-128-1 at B = 128 and 512 (1/4 positives on average, the count changing every batch, dataset indices
drawn from ``num_samples = 1e5``), three variants of one training step (forward + loss + backward + optimizer
step) are timed in interleaved rounds (``_common.time_interleaved``):

* ``eager``: the default, validation on;
* ``eager, validation off``: ``xrisk.set_validation(False)``, the fixed-shape device path;
* ``compiled``: validation off, ``torch.compile(step, fullgraph=True)`` with the default (inductor) backend and
  ``torch._dynamo.config.trace_autograd_ops = True`` (backward inside the graph).

The AUC-M row also times BCE + Adam (``torch.compile`` without ``fullgraph``: ``torch.optim.Adam.step`` breaks
the graph on purpose) in the same rounds: the issue's goal is AUC-M + PESG compiled within 1.1x of BCE + Adam
compiled. Paired ratio = median over rounds of the ratio of the round medians. Compile time: the wall time of
the first three compiled calls (the optimizer's lazy state makes a second graph on the second call); inductor's
on-disk cache makes it short when the same graphs were compiled before.

    python bench/compile_score.py             # writes bench/RESULTS.md (section "compile_score")
    python bench/compile_score.py --quick     # smoke run, RESULTS.md untouched
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import _common as C

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _compile import TraceableSGD  # noqa: E402  (the tests' optimizer: the step the tests check is the step timed)

SECTION = "compile_score"
DIM, N = 64, 100_000


def _cases():
    from xrisk.losses import APLoss, AUCMLoss, CompositionalAUCLoss, OneWayPartialAUCLoss, TwoWayPartialAUCLoss
    from xrisk.optim import PDSCA, PESG

    sgd = lambda net, loss: TraceableSGD(net.parameters(), lr=0.01)  # noqa: E731
    return {
        "AUCMLoss + PESG": (AUCMLoss, lambda net, loss: PESG(net.parameters(), loss=loss, lr=0.01)),
        "CompositionalAUCLoss + PDSCA": (lambda: CompositionalAUCLoss(k=2),
                                         lambda net, loss: PDSCA(net.parameters(), loss=loss, lr=0.01)),
        "APLoss + SGD": (lambda: APLoss(N, gamma=0.9), sgd),
        "OneWayPartialAUCLoss(cvar) + SGD": (lambda: OneWayPartialAUCLoss(N, method="cvar"), sgd),
        "OneWayPartialAUCLoss(kl) + SGD": (lambda: OneWayPartialAUCLoss(N, method="kl"), sgd),
        "TwoWayPartialAUCLoss + SGD": (lambda: TwoWayPartialAUCLoss(N, tau=0.5, tau_outer=0.8), sgd),
    }


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 128), nn.ReLU(), nn.Linear(128, 1))


def _data(batch: int, count: int = 16):
    g = torch.Generator().manual_seed(batch)
    out = []
    for _ in range(count):
        y = (torch.rand(batch, generator=g) < 0.1 + 0.3 * torch.rand((), generator=g)).float()
        y[0], y[1] = 1.0, 0.0
        out.append((torch.randn(batch, DIM, generator=g), y, torch.randint(0, N, (batch,), generator=g)))
    return out


def _runner(step, data, validate: bool):
    import xrisk

    state = {"i": 0}

    def run() -> None:
        x, y, idx = data[state["i"] % len(data)]
        state["i"] += 1
        with xrisk.validation(validate):
            step(x, y, idx)

    return run


def _score_step(make_loss, make_opt):
    torch.manual_seed(0)
    net = _net()
    loss = make_loss()
    opt = make_opt(net, loss)

    def step(x, y, idx):
        out = loss(torch.sigmoid(net(x)).squeeze(1), y, idx)
        out.backward()
        opt.step()
        return out.detach()

    return _Step(step, opt)


def _bce_step():
    torch.manual_seed(0)
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step(x, y, idx):
        out = nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(1), y)
        out.backward()
        opt.step()
        return out.detach()

    return _Step(step, opt)


class _Step:
    """One training step (``fn``: forward, loss, backward, optimizer step), gradients cleared after it."""

    def __init__(self, fn, opt) -> None:
        self.fn, self.opt = fn, opt

    def __call__(self, x, y, idx) -> None:
        self.fn(x, y, idx)
        self.opt.zero_grad(set_to_none=True)


def _compiled(step: _Step, *, fullgraph: bool, data) -> tuple[Callable[[], None], float]:
    step.fn = torch.compile(step.fn, fullgraph=fullgraph)
    t0 = time.perf_counter()
    run = _runner(step, data, False)
    for _ in range(3):
        run()
    return run, time.perf_counter() - t0


def compile_bench_setup(script: str, doc: str, argv: list[str] | None):
    """The command line and settings of a compiled-step benchmark: ``(args, rounds, steps per round, command)``;
    one thread, ``trace_autograd_ops`` (backward inside the compiled step), room for every graph in the cache;
    ``--cpp-wrapper`` compiles every variant with inductor's C++ wrapper instead of its Python one."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps-per-round", type=int, default=4)
    ap.add_argument("--batches", default="128,512")
    ap.add_argument("--cpp-wrapper", action="store_true",
                    help="inductor's C++ wrapper (torch._inductor.config.cpp_wrapper) for every compiled variant, the "
                         "reference included; published as a section of its own")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from torch import _dynamo

    if args.cpp_wrapper:
        from torch._inductor import config as inductor_config

        inductor_config.cpp_wrapper = True

    _dynamo.config.trace_autograd_ops = True
    _dynamo.config.cache_size_limit = 64
    rounds, spr = (2, 2) if args.quick else (args.rounds, args.steps_per_round)
    cmd = f"python bench/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    return args, rounds, spr, cmd


def main(argv: list[str] | None = None) -> int:
    from torch import _dynamo

    args, rounds, spr, cmd = compile_bench_setup("compile_score.py", __doc__, argv)
    facts = C.machine_facts(threads=1)
    t0 = time.perf_counter()
    loads = [f"start {C.loadavg():.2f}"]
    cases = _cases()
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        data = _data(batch)
        for name, (make_loss, make_opt) in cases.items():
            variants = {"eager": _runner(_score_step(make_loss, make_opt), data, True),
                        "eager_off": _runner(_score_step(make_loss, make_opt), data, False)}
            variants["compiled"], compile_s = _compiled(_score_step(make_loss, make_opt), fullgraph=True, data=data)
            if name.startswith("AUCMLoss"):
                variants["bce_compiled"], _ = _compiled(_bce_step(), fullgraph=False, data=data)
            times = C.time_interleaved(variants, rounds=rounds, steps_per_round=spr)

            def paired(a: str, b: str) -> float:
                return C.paired_ratio(times[a], times[b], rounds, spr)

            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            vs_bce = ""
            if "bce_compiled" in times:
                r = paired("compiled", "bce_compiled")
                vs_bce = f"{r:.3f} vs BCE+Adam compiled ({ms['bce_compiled']:.2f} ms): goal 1.1 {'met' if r <= 1.1 else 'not met'}"
            rows.append([name, batch, f"{ms['eager']:.2f}", f"{ms['eager_off']:.2f}", f"{ms['compiled']:.2f}",
                         f"{paired('eager_off', 'eager'):.3f}", f"{paired('compiled', 'eager'):.3f}",
                         f"{compile_s:.0f}", vs_bce])
            loads.append(f"{name} B={batch} {C.loadavg():.2f}")
            print(f"[compile_score] {name} B={batch} done, {time.perf_counter() - t0:.0f} s: {rows[-1]}", flush=True)
        _dynamo.reset()
    table = C.md_table(["loss + optimizer", "B", "eager ms/step", "eager, validation off ms/step",
                        "compiled ms/step", "paired ratio off/eager", "paired ratio compiled/eager",
                        "compile s (3 calls)", "compiled vs BCE + Adam compiled"], rows)
    body = (
        "## Score losses: compiled vs eager step (`bench/compile_score.py`, issue 18"
        + (", inductor's C++ wrapper" if args.cpp_wrapper else "") + ")\n\n"
        + C.run_header(cmd, time.perf_counter() - t0, facts, loads)
        + f"{rounds} interleaved rounds of {spr} steps per variant (2 warm-up rounds dropped); MLP 64-128-1, one "
        "thread. `compiled`: validation off, `torch.compile(step, fullgraph=True)` (inductor) of forward + loss + "
        "backward + optimizer step. Ratios below 1: faster than the validated eager step. `compile s`: wall time of "
        "the first three compiled calls, with the on-disk inductor cache warm from earlier runs of the same graphs "
        "(not a cold compile time).\n\n" + table
    )
    C.publish(SECTION + ("_cpp" if args.cpp_wrapper else ""), body, write=not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
