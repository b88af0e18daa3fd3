"""Score losses with validation off (issue 18, section 2): no host read, one compiled graph, no recompiles.

For AUC-M + PESG (sgd and adam), compositional AUC + PDSCA (both phases), AP, one-way partial AUC (CVaR and
KL) and two-way partial AUC, each with its optimizer and a small MLP:

* with ``xrisk.set_validation(False)`` training equals the validated default (values, parameters, per-sample
  state) over batches whose positive count changes every step and whose dataset indices repeat;
* after the first step (which creates the optimizer's lazy state), a step reads nothing back to the host:
  ``Tensor.item``/``tolist``/``__bool__``/``__int__``/``__float__``/``__index__``/``numpy`` are counted and the
  count is pinned at zero (with validation on the same counter sees reads, so the counter works);
* ``torch.compile(step, fullgraph=True)`` (forward, backward and optimizer step in one function) takes the
  step, gives the eager result within float tolerance, and compiles no new graph after the warm-up while the
  number of positives keeps changing.
"""

from __future__ import annotations

import functools
from typing import Callable

import pytest
import torch
from torch import nn

import xrisk
from _compile import TraceableSGD, close as _close, compiled_without_recompiles, assert_no_host_reads, train
from xrisk.losses import APLoss, AUCMLoss, CompositionalAUCLoss, OneWayPartialAUCLoss, TwoWayPartialAUCLoss
from xrisk.optim import PDSCA, PESG

N, B, DIM = 40, 16, 6


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module, nn.Module], torch.optim.Optimizer]]] = {
    "aucm-pesg": (lambda: AUCMLoss(), lambda net, loss: PESG(net.parameters(), loss=loss, lr=0.05)),
    "aucm-pesg-adam": (lambda: AUCMLoss(version="v1"),
                       lambda net, loss: PESG(net.parameters(), loss=loss, lr=0.01, mode="adam")),
    "compauc-pdsca": (lambda: CompositionalAUCLoss(k=2),
                      lambda net, loss: PDSCA(net.parameters(), loss=loss, lr=0.05, lr0=0.05)),
    "ap-sgd": (lambda: APLoss(N, gamma=0.7), lambda net, loss: TraceableSGD(net.parameters())),
    "pauc-cvar": (lambda: OneWayPartialAUCLoss(N, method="cvar", max_fpr=0.4, eta=0.2),
                  lambda net, loss: TraceableSGD(net.parameters())),
    "pauc-kl": (lambda: OneWayPartialAUCLoss(N, method="kl", tau=0.5, gamma=0.6),
                lambda net, loss: TraceableSGD(net.parameters())),
    "tpauc-kl": (lambda: TwoWayPartialAUCLoss(N, tau=0.5, tau_outer=0.8, gamma0=0.7, gamma1=0.5),
                 lambda net, loss: TraceableSGD(net.parameters())),
}


def _batches(steps: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches of B samples with 1 .. B-1 positives (a different count each step) and repeated indices."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        n_pos = 1 + (3 * step) % (B - 1)
        y = torch.zeros(B)
        y[torch.randperm(B, generator=g)[:n_pos]] = 1.0
        index = torch.randint(0, N, (B,), generator=g)
        index[1] = index[0]  # a duplicate in every batch
        out.append((torch.randn(B, DIM, generator=g), y, index))
    return out


def _setup(case: str):
    make_loss, make_opt = CASES[case]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, 1))
    loss = make_loss()
    opt = make_opt(net, loss)

    def step(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        out = loss(torch.sigmoid(net(x)).squeeze(1), y, index)
        out.backward()
        opt.step()
        return out.detach()

    return net, loss, opt, step


def _train(case: str, validate: bool, batches, compiled: str | None = None, after_warmup=None):
    return train(functools.partial(_setup, case), validate, batches, compiled, after_warmup)


def _same_training(a, b) -> None:
    (va, na, la), (vb, nb, lb) = a, b
    _close(va, vb, "loss values")
    for (name, p), q in zip(na.named_parameters(), nb.parameters()):
        _close(p.detach(), q.detach(), f"model parameter {name}")
    sa, sb = la.state_dict(), lb.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        _close(sa[key], sb[key], f"loss state {key}")


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
    """``aot_eager`` (Dynamo capture + AOT autograd, no code generation) in the default suite; the code-generating
    ``inductor`` backend, what users run, in the slow suite (about 1.5 min per case on this machine)."""
    batches = _batches(8)
    compiled = compiled_without_recompiles(  # the positive counts change every step
        lambda after_warmup: _train(case, False, batches, compiled=backend, after_warmup=after_warmup))
    _same_training(compiled, _train(case, False, batches))


def test_fullgraph_compile_of_a_validated_step_fails():
    """The switch is what makes the step whole: with validation on, fullgraph compilation stops at a host read."""
    import torch._dynamo as dynamo

    dynamo.reset()
    _, _, _, step = _setup("ap-sgd")
    x, y, index = _batches(1)[0]
    with xrisk.validation(True), pytest.raises(Exception):
        torch.compile(lambda *a: step(*a), fullgraph=True)(x, y, index)
    dynamo.reset()


def test_batch_without_positives_gives_zero_and_writes_nothing_with_validation_off():
    loss = APLoss(N, gamma=0.7)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    s = torch.rand(B, requires_grad=True)
    with xrisk.validation(False):
        out = loss(s, torch.zeros(B), torch.arange(B))
    out.backward()
    assert out.item() == 0.0 and torch.equal(s.grad, torch.zeros(B))
    for k, v in loss.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_device_checks_still_run_with_validation_off():
    loss = OneWayPartialAUCLoss(N, method="kl", tau=0.5)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    with xrisk.validation(False):
        with pytest.raises(RuntimeError, match="out of range"):
            loss(torch.rand(4), y, torch.tensor([0, 1, 2, N]))
        before = loss.state_dict()["log_u.value"].clone() if "log_u.value" in loss.state_dict() else None
        with pytest.raises(RuntimeError, match="NaN/inf"):
            loss(torch.tensor([float("nan"), 0.2, 0.3, 0.4]), y, torch.tensor([0, 1, 2, 3]))
    if before is not None:
        assert torch.equal(loss.state_dict()["log_u.value"], before)
    assert not any(v.any() for k, v in loss.state_dict().items() if k.endswith("seen")), "a failed step wrote"


def test_set_validation_is_global_and_restored():
    assert xrisk.validation_enabled()
    with xrisk.validation(False):
        assert not xrisk.validation_enabled()
    assert xrisk.validation_enabled()
    with pytest.raises(TypeError):
        xrisk.set_validation("no")  # type: ignore[arg-type]


def _gathered(rank: int, world: int) -> dict:
    """Each rank trains on its half of the batches, losses gather the global batch; validation on and off,
    replicated and sharded state (the score losses with per-sample state). Even halves: with validation off every
    rank's batch size must be equal (``xrisk.distributed.agree_on_shapes``); uneven batches of the validated path are
    tested in the other 2-process tests."""
    out = {}
    for case in ("aucm-pesg", "compauc-pdsca", "ap-sgd", "pauc-kl", "tpauc-kl"):
        for placement in ("replicated", "sharded"):
            if placement == "sharded" and case.startswith(("aucm", "compauc")):
                continue
            for validate in (True, False):
                make_loss, make_opt = CASES[case]
                torch.manual_seed(0)
                net = nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, 1))
                loss = make_loss()
                if placement == "sharded":
                    loss = type(loss)(N, **{k: getattr(loss, k) for k in _KNOBS[case]}, state_placement="sharded")
                opt = make_opt(net, loss)
                values = []
                with xrisk.validation(validate):
                    for x, y, index in _batches(6):
                        part = slice(0, B // 2) if rank == 0 else slice(B // 2, B)
                        out_v = loss(torch.sigmoid(net(x[part])).squeeze(1), y[part], index[part])
                        out_v.backward()
                        for p in net.parameters():  # what DDP does with the model's gradients
                            torch.distributed.all_reduce(p.grad)
                            p.grad /= world
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                        values.append(out_v.detach())
                state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone()
                         for k, v in loss.state_dict().items()}
                out[(case, placement, validate)] = (torch.stack(values), [p.detach().clone() for p in net.parameters()],
                                                    state)
    return out


_KNOBS = {"ap-sgd": ("gamma",), "pauc-kl": ("method", "tau", "gamma"),
          "tpauc-kl": ("tau", "tau_outer", "gamma0", "gamma1")}


@pytest.mark.distributed
def test_validation_off_on_two_ranks_equals_validation_on():
    from _dist import run_distributed

    per_rank = run_distributed(_gathered, timeout=240.0)
    for rank_out in per_rank:
        for (case, placement, validate), (values, params, state) in rank_out.items():
            if validate:
                continue
            ref_values, ref_params, ref_state = rank_out[(case, placement, True)]
            _close(values, ref_values, f"{case} {placement}: loss values")
            for p, q in zip(params, ref_params):
                _close(p, q, f"{case} {placement}: parameters")
            for key in ref_state:
                _close(state[key], ref_state[key], f"{case} {placement}: state {key}")


@pytest.mark.parametrize("case", ["aucm-pesg", "aucm-pesg-adam", "compauc-pdsca"])
@pytest.mark.parametrize("labels", ["no positive", "no negative"])
def test_degenerate_batch_steps_aucm_parameters_alike_with_validation_on_and_off(case, labels):
    """A batch without a task that has both classes: a zero-gradient step for the model and for a, b, alpha with
    validation on and off alike (the device path cannot leave a, b, alpha without a gradient, so the validated path
    connects its zero to them too); the parameters and the optimizer state end equal."""
    batches = _batches(3)
    x, _, index = batches[2]
    batches[2] = (x, torch.zeros(B) if labels == "no positive" else torch.ones(B), index)
    runs = {}
    for validate in (True, False):
        net, loss, opt, step = _setup(case)
        with xrisk.validation(validate):
            for batch in batches:
                before = {k: v.detach().clone() for k, v in loss.named_parameters()}
                step(*batch)
                grads = {k: v.grad for k, v in loss.named_parameters()}
                opt.zero_grad(set_to_none=True)
        assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads.values()), (validate, grads)
        assert torch.equal(loss.alpha.detach(), before["alpha"]), "a zero gradient leaves alpha where it was"
        runs[validate] = (net, loss, opt)
    (net_on, loss_on, opt_on), (net_off, loss_off, opt_off) = runs[True], runs[False]
    for (name, p), q in zip([*net_on.named_parameters(), *loss_on.named_parameters()],
                            [*net_off.parameters(), *loss_off.parameters()]):
        _close(p.detach(), q.detach(), f"parameter {name}")
    for p, q in zip([*net_on.parameters(), *loss_on.parameters()], [*net_off.parameters(), *loss_off.parameters()]):
        state_on, state_off = opt_on.state.get(p, {}), opt_off.state.get(q, {})
        assert state_on.keys() <= state_off.keys()  # the device path may keep extra flags (PDSCA)
        for key in state_on:
            a, b = state_on[key], state_off[key]
            _close(torch.as_tensor(a).float(), torch.as_tensor(b).float(), f"optimizer state {key}")


@pytest.mark.parametrize("case", ["ap-sgd", "pauc-cvar", "pauc-kl", "tpauc-kl"])
def test_two_forwards_then_backwards_with_validation_off(case):
    """The device path keeps its ``[B, B]`` work matrices per loss and hands the forward's slope matrix to the
    backward only while no later forward has overwritten it: the gradient of a step whose backward runs after a
    second forward equals the gradient of a backward taken at once (eval mode: no state is written in between)."""
    loss = CASES[case][0]()
    batches = _batches(3)
    with xrisk.validation(False):
        loss(torch.rand(B), batches[0][1], batches[0][2])  # state to read
        loss.eval()
        scores = [torch.rand(B, requires_grad=True) for _ in range(2)]
        alone = []
        for s, (_, y, index) in zip(scores, batches[1:]):
            s2 = s.detach().clone().requires_grad_()
            loss(s2, y, index).backward()
            alone.append(s2.grad)
        outs = [loss(s, y, index) for s, (_, y, index) in zip(scores, batches[1:])]
        outs[0].backward()  # after the second forward
        outs[1].backward()
    for s, g in zip(scores, alone):
        _close(s.grad, g, "gradient")
