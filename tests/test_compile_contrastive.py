"""Global contrastive losses with validation off (issue 18, section 2): no host read, one compiled graph, no recompiles.

For ``GlobalContrastiveLoss`` in both modes and every temperature mode (fixed, one learnable, per sample; with
``eps``), ``NUCLRLoss``, both with ``FalseNegativeDetector`` (GloFND, SGD and Adam, ``init_quantile``) and with a
reference model's features (DRRho-CLIP ``ref_feats``), each behind a small encoder trained with
:class:`~_compile.TraceableSGD` (the learnable temperature too):

* with ``xrisk.set_validation(False)`` training equals the validated default (values, parameters, per-sample
  state) over batches whose duplicated dataset indices change every step;
* after the first step, a step (forward, backward, optimizer step) reads nothing back to the host (counted as in
  ``test_compile_score.py``, and the counter sees the validated step's reads);
* ``torch.compile(step, fullgraph=True)`` takes the step, gives the eager result within float tolerance and compiles
  no new graph after the warm-up while the duplicates change.
"""

from __future__ import annotations

import functools
from typing import Callable

import pytest
import torch
from torch import nn

import xrisk
from _bench import load_bench
from _compile import TraceableSGD, close, compiled_without_recompiles, assert_no_host_reads, train
from xrisk.losses import FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss

N, B, DIM = 40, 12, 6


def _gcl(mode: str, temperature: str, fnd: dict | None = None, **kw) -> Callable[[], nn.Module]:
    return lambda: GlobalContrastiveLoss(N, mode=mode, temperature=temperature, tau=0.2, rho=0.3,
                                         false_negatives=_fnd(fnd), **kw)


def _nuclr(fnd: dict | None = None) -> Callable[[], nn.Module]:
    return lambda: NUCLRLoss(N, tau=0.05, zeta_start_epoch=0, lr_zeta=0.05, false_negatives=_fnd(fnd))


def _fnd(kw: dict | None) -> FalseNegativeDetector | None:
    return None if kw is None else FalseNegativeDetector(N, alpha=0.1, **kw)


CASES: dict[str, Callable[[], nn.Module]] = {
    "uni-fixed": _gcl("unimodal", "fixed"),
    "uni-global": _gcl("unimodal", "global"),
    "uni-individual": _gcl("unimodal", "individual"),
    "bi-fixed": _gcl("bimodal", "fixed"),
    "bi-fixed-eps": _gcl("bimodal", "fixed", eps=1e-3, normalize=False),
    "bi-global": _gcl("bimodal", "global"),
    "bi-individual": _gcl("bimodal", "individual"),
    "nuclr": _nuclr(),
    "bi-individual-glofnd": _gcl("bimodal", "individual", fnd={}),
    "uni-fixed-glofnd-adam": _gcl("unimodal", "fixed", fnd={"optimizer": "adam", "init_quantile": True}),
    "nuclr-glofnd": _nuclr(fnd={}),
    # DRRho-CLIP: a frozen reference model's features shift every pairwise difference (ref_feats)
    "uni-individual-ref": _gcl("unimodal", "individual"),
    "bi-fixed-ref": _gcl("bimodal", "fixed"),
    "bi-global-ref": _gcl("bimodal", "global"),
    "nuclr-ref": _nuclr(),
}


def _batches(steps: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches of B pairs whose indices repeat, 0 .. 3 duplicated pairs (a different number each step)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        index = torch.randperm(N, generator=g)[:B]
        for k in range(step % 4):
            index[2 * k + 1] = index[2 * k]
        out.append((torch.randn(B, DIM, generator=g), torch.randn(B, DIM, generator=g), index))
    return out


def _setup(case: str):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, 8))
    loss = CASES[case]()
    loss.set_epoch(0)  # validation off does not infer the epoch from the samples seen
    opt = TraceableSGD([*net.parameters(), *loss.parameters()], lr=0.1)
    ref_net = nn.Linear(DIM, 5).requires_grad_(False) if case.endswith("-ref") else None

    def step(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ref = None if ref_net is None else (ref_net(x), ref_net(y))
        out = loss(net(x), net(y), index, ref)
        out.backward()
        opt.step()
        return out.detach()

    return net, loss, opt, step


def _train(case: str, validate: bool, batches, compiled: str | None = None, after_warmup=None):
    return train(functools.partial(_setup, case), validate, batches, compiled, after_warmup)


def _same_training(a, b) -> None:
    (va, na, la), (vb, nb, lb) = a, b
    close(va, vb, "loss values")
    for (name, p), q in zip([*na.named_parameters(), *la.named_parameters()], [*nb.parameters(), *lb.parameters()]):
        close(p.detach(), q.detach(), f"parameter {name}")
    sa, sb = la.state_dict(), lb.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        close(sa[key], sb[key], f"loss state {key}")
    assert la.objective().isfinite() and torch.allclose(la.objective(), lb.objective(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_off_trains_like_validation_on(case):
    batches = _batches(10)
    _same_training(_train(case, True, batches), _train(case, False, batches))


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_host_read_per_step_with_validation_off(case):
    batches = _batches(5)
    assert_no_host_reads(functools.partial(_setup, case), batches)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_step_is_one_graph_matches_eager_and_does_not_recompile(case, backend):
    """``aot_eager`` in the default suite, the code-generating ``inductor`` backend in the slow suite."""
    batches = _batches(8)
    compiled = compiled_without_recompiles(  # the duplicated indices change every step
        lambda after_warmup: _train(case, False, batches, compiled=backend, after_warmup=after_warmup))
    _same_training(compiled, _train(case, False, batches))


@pytest.mark.parametrize("case", ["uni-individual", "nuclr-glofnd"])
def test_batch_of_one_index_gives_zero_and_writes_no_state_with_validation_off(case):
    """Every anchor's only other column is its own pair: no negative anywhere, as the validated path's early return."""
    _, loss, _, _ = _setup(case)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    a, b = torch.randn(B, DIM, requires_grad=True), torch.randn(B, DIM, requires_grad=True)
    with xrisk.validation(False):
        out = loss(a, b, torch.full((B,), 3))
    out.backward()
    assert out.item() == 0.0 and not a.grad.any() and not b.grad.any()
    for k, v in loss.state_dict().items():
        if k != "samples_seen":  # counted on the device (the validated path returns before counting)
            close(v, before[k], k, atol=0.0)


def test_device_checks_still_run_with_validation_off():
    loss = GlobalContrastiveLoss(N, mode="bimodal", temperature="individual")
    a, b = torch.randn(4, DIM), torch.randn(4, DIM)
    with xrisk.validation(False):
        with pytest.raises(RuntimeError, match="out of range"):
            loss(a, b, torch.tensor([0, 1, 2, N]))
        with pytest.raises(RuntimeError, match="NaN/inf"):
            loss(a.clone().index_fill_(0, torch.tensor([1]), float("nan")), b, torch.arange(4))
    assert not loss.log_u.seen.any() and not loss.tau_individual.seen.any(), "a failed step wrote"


def test_validation_off_counts_samples_and_the_validated_path_resumes_the_count():
    loss = GlobalContrastiveLoss(N, mode="bimodal")
    a, b = torch.randn(B, DIM), torch.randn(B, DIM)
    with xrisk.validation(False):
        loss(a, b, torch.arange(B))
    assert int(loss.samples_seen) == B and loss.current_epoch() == 0
    loss(a, b, torch.arange(B) + B)
    loss(a, b, torch.arange(B) + 2 * B)
    assert int(loss.samples_seen) == 3 * B and loss.current_epoch() == 3 * B // N


@pytest.mark.parametrize("case", ["bi-individual-glofnd", "nuclr"])
def test_eval_mode_with_validation_off_returns_the_training_value_and_writes_nothing(case):
    _, loss, _, _ = _setup(case)
    a, b = torch.randn(B, DIM, dtype=torch.float64), torch.randn(B, DIM, dtype=torch.float64)
    index = _batches(4)[3][2]  # with duplicates
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    with xrisk.validation(False):
        loss.eval()
        evaluated = loss(a, b, index)
        for k, v in loss.state_dict().items():
            close(v, before[k], k, atol=0.0)
        loss.train()
        trained = loss(a, b, index)
    assert evaluated.dtype == torch.float64
    close(evaluated, trained, "eval value", atol=1e-12)
    assert not torch.equal(loss.log_u.value, before["log_u.value"]), "the training call wrote"


def _same_steps(floor: nn.Module, loss: nn.Module, n: int, states: Callable[[torch.Tensor], list]) -> None:
    """Four steps of ``floor`` and ``loss`` on the same batches of distinct indices (samples revisited across batches):
    equal loss values, feature gradients and ``states(idx)`` pairs ``(floor's, library's, name)``."""
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        a, b = torch.randn(B, 16, generator=g), torch.randn(B, 16, generator=g)
        idx = torch.randperm(n, generator=g)[:B]  # distinct within a batch, samples revisited across batches
        grads = []
        for module in (floor, loss):
            fa, fb = a.clone().requires_grad_(), b.clone().requires_grad_()
            out = module(fa, fb, idx)
            out.backward()
            grads.append((out.detach(), fa.grad, fb.grad))
        for x, y, what in zip(*grads, ("loss", "grad a", "grad b")):
            close(x, y, f"step {step}: {what}")
        for x, y, what in states(idx):
            close(x, y, f"step {step}: {what}")


def test_bench_hand_written_gcl_is_the_per_sample_temperature_gcl_step_on_distinct_indices():
    """``bench/compile_contrastive.py``'s hand-written per-sample-temperature GCL step is the library's step when no
    index repeats: loss values, feature gradients and every per-sample state over steps that revisit samples."""
    n = 30
    floor = load_bench("compile_contrastive").HandWrittenGCL(n, 0.07)
    loss = GlobalContrastiveLoss(n, mode="bimodal", temperature="individual", tau=0.07, rho=6.5)
    _same_steps(floor, loss, n, lambda idx: [
        (floor.log_u[idx], loss.log_u.value[idx], "log u"),
        (floor.momentum[idx], loss.tau_momentum.value[idx], "momentum"),
        (floor.tau, loss.tau_individual.value, "temperatures"),
    ])


def test_bench_hand_written_nuclr_is_the_nuclr_step_on_distinct_indices():
    """``bench/compile_contrastive.py``'s hand-written NUCLR step is the library's step (zeta updated from the first
    step; a large ``lr_zeta`` so that ``zeta`` moves) when no index repeats: values, gradients, ``u``, ``zeta`` and
    its momentum."""
    n = 30
    floor = load_bench("compile_contrastive").HandWrittenNUCLR(n, 0.07, lr_zeta=0.5)
    loss = NUCLRLoss(n, tau=0.07, lr_zeta=0.5, zeta_start_epoch=0)
    loss.set_epoch(0)
    _same_steps(floor, loss, n, lambda idx: [
        (floor.log_u[idx], loss.log_u.value[idx], "log u"),
        (floor.momentum[idx], loss.zeta_momentum.value[idx], "zeta momentum"),
        (floor.zeta, loss.zeta.value, "zeta"),
    ])
