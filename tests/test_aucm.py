"""AUCMLoss and CompositionalAUCLoss: oracles from the paper's formulas, LibAUC bug pins, alternation, DDP."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from _bench import load_bench
from _dist import run_distributed
from xrisk.functional.aucm import aucm_alpha_grad, aucm_objective, aucm_quadratic_form, aucm_surrogate
from xrisk.losses import AUCMLoss, CompositionalAUCLoss


# ----------------------------------------------------------------------------- slow oracles
def _oracle_v2(f: list[float], y: list[bool], a: float, b: float, alpha: float, m: float) -> float:
    pos = [s for s, t in zip(f, y) if t]
    neg = [s for s, t in zip(f, y) if not t]
    mean_pos = sum(pos) / len(pos)
    mean_neg = sum(neg) / len(neg)
    sq_pos = sum((s - a) ** 2 for s in pos) / len(pos)
    sq_neg = sum((s - b) ** 2 for s in neg) / len(neg)
    return sq_pos + sq_neg + 2 * alpha * (m + mean_neg - mean_pos) - alpha**2


def _oracle_v1(f: list[float], y: list[bool], a: float, b: float, alpha: float, m: float, p: float | None) -> float:
    n = len(f)
    if p is None:
        p = sum(y) / n
    total = 0.0
    cross = 0.0
    for s, t in zip(f, y):
        if t:
            total += (1 - p) * (s - a) ** 2 / n
            cross -= (1 - p) * s / n
        else:
            total += p * (s - b) ** 2 / n
            cross += p * s / n
    return total + 2 * alpha * (p * (1 - p) * m + cross) - p * (1 - p) * alpha**2


def _oracle_pairs(f: list[float], y: list[bool], m: float) -> float:
    """Mean over positive-negative pairs of (m - (f_i - f_j))^2."""
    vals = [(m - (fi - fj)) ** 2 for fi, yi in zip(f, y) if yi for fj, yj in zip(f, y) if not yj]
    return sum(vals) / len(vals)


def _oracle_multitask(scores: torch.Tensor, targets: torch.Tensor, loss: AUCMLoss) -> float:
    vals = []
    for t in range(scores.shape[1]):
        f = scores[:, t].tolist()
        y = [bool(v) for v in targets[:, t].tolist()]
        if not any(y) or all(y):
            continue
        a, b, al = (float(getattr(loss, n).detach()[t]) for n in ("a", "b", "alpha"))
        if loss.version == "v2":
            vals.append(_oracle_v2(f, y, a, b, al, loss.margin))
        else:
            vals.append(_oracle_v1(f, y, a, b, al, loss.margin, loss.imratio))
    return sum(vals) / len(vals)


def _random_batch(seed: int, num_tasks: int, n: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.sigmoid(2 * torch.randn(n, num_tasks, generator=g, dtype=torch.float64))
    targets = torch.rand(n, num_tasks, generator=g) < 0.35
    targets[0], targets[1] = True, False
    return scores, targets


def _set_params(loss: AUCMLoss, seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for p in (loss.a, loss.b, loss.alpha):
            p.copy_(torch.rand(p.shape, generator=g))


@pytest.mark.parametrize("version,imratio,margin", [("v2", None, 1.0), ("v2", None, 0.6), ("v1", None, 1.0),
                                                    ("v1", 0.1, 0.7)])
@pytest.mark.parametrize("num_tasks", [1, 3, 12])  # 12 > 8: the uncached coefficient path
def test_module_matches_formula_loop(version, imratio, margin, num_tasks):
    loss = AUCMLoss(margin, num_tasks=num_tasks, version=version, imratio=imratio)
    for seed in range(4):
        _set_params(loss, seed)
        scores, targets = _random_batch(seed, num_tasks)
        if num_tasks == 3 and seed == 2:
            targets[:, 1] = True  # task 1 has no negative: excluded from the mean
        out = loss(scores, targets)
        assert out.item() == pytest.approx(_oracle_multitask(scores, targets, loss), rel=1e-10, abs=1e-12)


def test_objective_is_pairwise_square_loss_and_hinge():
    for seed in range(3):
        scores, targets = _random_batch(seed, 2)
        loss = AUCMLoss(num_tasks=2)
        loss(scores, targets)
        expect = sum(_oracle_pairs(scores[:, t].tolist(), targets[:, t].tolist(), 1.0) for t in range(2)) / 2
        assert loss.objective().item() == pytest.approx(expect, rel=1e-6)
    # well separated with a small margin: the mean term is hinged away, only the variances remain
    f = [0.9, 0.8, 0.1, 0.2, 0.15]
    y = [True, True, False, False, False]
    var_pos = sum((v - 0.85) ** 2 for v in f[:2]) / 2
    var_neg = sum((v - 0.15) ** 2 for v in f[2:]) / 3
    got = aucm_objective(torch.tensor(f, dtype=torch.float64)[:, None], torch.tensor(y)[:, None], margin=0.1)
    assert got.item() == pytest.approx(var_pos + var_neg, rel=1e-12)


def test_objective_is_not_the_surrogate_and_decreases_with_separation():
    loss = AUCMLoss()
    y = torch.tensor([1, 0, 0, 0])
    _set_params(loss, 0)
    loss(torch.tensor([0.5, 0.5, 0.5, 0.5]), y)
    mixed = loss.objective().item()
    loss(torch.tensor([1.0, 0.0, 0.0, 0.0]), y)
    separated = loss.objective().item()
    assert mixed == pytest.approx(1.0) and separated == pytest.approx(0.0)


# ----------------------------------------------------------------------------- LibAUC bug pins
def test_v2_cross_term_is_the_formula_not_libauc_misparenthesised_form():
    """LibAUC #1 / issue #74: its v2 cross term is (n_-/B) mean_- f - mean_+ f."""
    f = torch.tensor([0.8, 0.6, 0.3, 0.1])
    y = torch.tensor([1, 0, 0, 0])
    loss = AUCMLoss(1.0)
    with torch.no_grad():
        loss.alpha.fill_(1.0)
    # formula: 0.64 + (0.36 + 0.09 + 0.01)/3 + 2 (1 + 1/3 - 0.8) - 1
    formula = 0.64 + 0.46 / 3 + 2 * (1 + 1 / 3 - 0.8) - 1
    libauc = 0.64 + 0.46 / 3 + 2 * (1 + (3 / 4) * (1 / 3) - 0.8) - 1
    out = loss(f, y).item()
    assert out == pytest.approx(formula, abs=1e-6) and formula == pytest.approx(0.86)
    assert abs(out - libauc) > 0.15  # 0.860 vs 0.693


def test_means_use_class_masks_not_count_nonzero():
    """An exact 0 score is a sample too (LibAUC divides by count_nonzero of the masked values)."""
    loss = AUCMLoss(1.0)
    with torch.no_grad():
        loss.alpha.fill_(0.5)
    f = torch.tensor([1.0, 0.0, 0.5])
    y = torch.tensor([1, 0, 0])
    expect = _oracle_v2(f.tolist(), [True, False, False], 0.0, 0.0, 0.5, 1.0)  # mean_- f = 0.25, not 0.5
    assert loss(f, y).item() == pytest.approx(expect, abs=1e-6)


def test_v1_uses_imratio_when_given():
    """LibAUC #3: imratio was overwritten by the batch ratio on every call."""
    f = torch.tensor([0.7, 0.2, 0.4, 0.3])
    y = torch.tensor([1, 0, 0, 0])  # batch ratio 0.25
    fixed, batch = AUCMLoss(version="v1", imratio=0.5), AUCMLoss(version="v1")
    for m in (fixed, batch):
        _set_params(m, 1)
    a, b, al = (float(getattr(fixed, n).detach()) for n in ("a", "b", "alpha"))
    yl = [True, False, False, False]
    assert fixed(f, y).item() == pytest.approx(_oracle_v1(f.tolist(), yl, a, b, al, 1.0, 0.5), abs=1e-6)
    assert batch(f, y).item() == pytest.approx(_oracle_v1(f.tolist(), yl, a, b, al, 1.0, 0.25), abs=1e-6)
    assert abs(fixed(f, y).item() - batch(f, y).item()) > 1e-3
    for _ in range(2):  # and it stays fixed
        assert fixed(f, y).item() == pytest.approx(_oracle_v1(f.tolist(), yl, a, b, al, 1.0, 0.5), abs=1e-6)


def test_multilabel_v1_keeps_the_margin():
    """LibAUC #2: its multi-label v1 used p(1-p) instead of p(1-p) m."""
    scores, targets = _random_batch(5, 3)
    values = []
    for m in (1.0, 0.1):
        loss = AUCMLoss(m, num_tasks=3, version="v1")
        _set_params(loss, 2)
        values.append(loss(scores, targets).item())
        assert values[-1] == pytest.approx(_oracle_multitask(scores, targets, loss), rel=1e-10)
    assert abs(values[0] - values[1]) > 1e-3


def test_alpha_grad_closed_form_matches_autograd():
    for version, p in (("v2", None), ("v1", None), ("v1", 0.3)):
        loss = AUCMLoss(0.8, num_tasks=3, version=version, imratio=p)
        _set_params(loss, 0)
        scores, targets = _random_batch(0, 3)
        loss(scores, targets).backward()
        closed = aucm_alpha_grad(scores, targets, loss.alpha, margin=0.8, version=version, p=p) / 3
        assert torch.allclose(loss.alpha.grad.double(), closed, atol=1e-6)


def test_degenerate_batches():
    loss = AUCMLoss()
    s = torch.rand(4, requires_grad=True)
    out = loss(s, torch.ones(4))  # no negative: connected zero, objective NaN
    assert out.item() == 0.0 and out.requires_grad and torch.isnan(loss.objective())
    with pytest.raises(ValueError, match="imratio"):
        AUCMLoss(imratio=1.0)
    with pytest.raises(ValueError, match="version"):
        AUCMLoss(version="v3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="margin"):
        AUCMLoss(-1.0)


def test_half_and_double_scores():
    loss = AUCMLoss()
    s = torch.rand(6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 0, 1, 0, 0, 0])
    assert loss(s, y).dtype == torch.float64
    assert loss(s.half().detach(), y).dtype == torch.float32  # promoted to the parameters' dtype


# ----------------------------------------------------------------------------- one-task quadratic form
def _kernel_step(loss: AUCMLoss, scores: torch.Tensor, targets: torch.Tensor) -> tuple:
    """Value and gradients (scores, a, b, alpha) of :func:`aucm_surrogate` on copies of the loss's parameters."""
    s = scores.detach().clone().requires_grad_()
    a, b, alpha = (getattr(loss, n).detach().clone().requires_grad_() for n in ("a", "b", "alpha"))
    out = aucm_surrogate(s.view(-1, 1), targets.view(-1, 1).bool(), a, b, alpha, margin=loss.margin,
                         version=loss.version, p=loss.imratio, reduction="sum")
    out.backward()
    return out.detach(), s.grad, a.grad, alpha.grad, b.grad


def _module_step(loss: AUCMLoss, scores: torch.Tensor, targets: torch.Tensor) -> tuple:
    s = scores.detach().clone().requires_grad_()
    for p in loss.parameters():
        p.grad = None
    out = loss(s, targets)
    out.backward()
    return out.detach(), s.grad, loss.a.grad, loss.alpha.grad, loss.b.grad


@pytest.mark.parametrize("version,imratio,margin", [("v2", None, 1.0), ("v2", None, 0.6), ("v1", None, 1.0),
                                                    ("v1", 0.1, 0.7)])
@pytest.mark.parametrize("size", [8, 128, 129])  # 129 > _FORM_MAX_BATCH: the O(B) kernel
def test_one_task_form_follows_the_labels_and_equals_the_kernel(version, imratio, margin, size):
    """One task: ``F = v^T M v`` with ``M`` kept while the labels repeat; every step (labels repeated, moved with the
    same count, another count, float / bool / [B, 1] targets) equals :func:`aucm_surrogate` and the formula loop in
    value and in every gradient."""
    loss = AUCMLoss(margin, version=version, imratio=imratio).double()
    g = torch.Generator().manual_seed(size)
    base = (torch.arange(size) % 4 == 0).double()
    moved = base.roll(1)
    other = (torch.arange(size) % 3 == 0).double()
    for step, y in enumerate([base, base, moved, base, other, other.bool(), moved.view(-1, 1), base]):
        _set_params(loss, step)
        scores = torch.sigmoid(2 * torch.randn(y.shape, generator=g, dtype=torch.float64))
        got, want = _module_step(loss, scores, y), _kernel_step(loss, scores, y)
        for x, w, what in zip(got, want, ("value", "scores", "a", "alpha", "b")):
            assert torch.allclose(x.view(-1), w.view(-1), rtol=1e-12, atol=1e-12), (step, what)
        oracle = _oracle_multitask(scores.view(-1, 1), y.view(-1, 1).bool(), loss)
        assert got[0].item() == pytest.approx(oracle, rel=1e-10, abs=1e-12)
        assert loss.objective().item() == pytest.approx(
            aucm_objective(scores.view(-1, 1), y.view(-1, 1).bool(), margin=margin).item(), rel=1e-6)
    assert ("_label_cache" in loss.__dict__) == (size <= 128)


def test_one_task_form_gradcheck_and_gradgradcheck():
    """The module's one-task path (``cat``, ``mv``, ``dot``) in float64: first and second derivatives in the scores
    and in ``a, b, alpha`` (the kept ``M`` is a constant)."""
    for version, imratio in (("v2", None), ("v1", None), ("v1", 0.2)):
        loss = AUCMLoss(0.8, version=version, imratio=imratio).double()
        y = torch.tensor([1.0, 0, 0, 1, 0, 0, 1])

        s = torch.rand(7, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda s: loss(s, y), (s,))
        assert torch.autograd.gradgradcheck(lambda s: loss(s, y), (s,))
        for name in ("a", "b", "alpha"):
            p = getattr(loss, name)

            def of_param(x, name=name):
                with torch.no_grad():
                    getattr(loss, name).copy_(x.detach())
                return _substitute(loss, name, x, s.detach(), y)

            assert torch.autograd.gradcheck(of_param, (p.detach().clone().requires_grad_(),)), name
            assert torch.autograd.gradgradcheck(of_param, (p.detach().clone().requires_grad_(),)), name


def _substitute(loss: AUCMLoss, name: str, x: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``loss(s, y)`` as a function of its parameter ``name`` set to ``x`` (differentiable in ``x``)."""
    param = loss._parameters[name]
    loss._parameters[name] = x  # a plain tensor for this call: the graph reaches x
    try:
        return loss(s, y)
    finally:
        loss._parameters[name] = param


def test_quadratic_form_kernel_equals_surrogate_and_is_built_outside_inference_mode():
    y = torch.tensor([True, False, False, True, False])
    f, z = torch.rand(5, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    for version, p in (("v2", None), ("v1", None), ("v1", 0.25)):
        with torch.inference_mode():
            form = aucm_quadratic_form(y, margin=0.7, version=version, p=p, dtype=torch.float64)
        assert not form.is_inference()
        v = torch.cat((f, z, torch.ones(1, dtype=torch.float64)))
        want = aucm_surrogate(f.view(5, 1), y.view(5, 1), z[:1], z[1:2], z[2:], margin=0.7, version=version, p=p)
        assert torch.allclose(torch.dot(v, form @ v), want[0], rtol=1e-12)
    loss = AUCMLoss()
    with torch.inference_mode():  # the kept M first built under inference_mode, then used with autograd
        loss(torch.rand(5), y)
    s = torch.rand(5, requires_grad=True)
    loss(s, y).backward()
    assert s.grad is not None and loss.alpha.grad is not None


def _closure(fn, name: str):
    """The variable ``name`` that the function ``fn`` closes over."""
    return fn.__closure__[fn.__code__.co_freevars.index(name)].cell_contents


def test_bench_floor_is_the_library_aucm_pesg_step():
    """``bench/auc.py``'s hand-written AUC-M + PESG step (its timing floor) is the library's step: the same model,
    ``a, b, alpha`` after steps on the benchmark's batches, across a stage end (lr / 10, reference reset)."""
    import numpy as np

    bench = load_bench("auc")
    hp = bench.HP()
    y_np = (np.random.default_rng(0).random(512) < 0.1).astype(np.int64)
    x = torch.randn(512, 30, generator=torch.Generator().manual_seed(0))
    y = torch.from_numpy(y_np).float()
    batches = bench.dual_batches(y_np, batch_size=32, pos_per_batch=8, num_batches=12, seed=0)
    base = bench.make_model(30, (64,), seed=0)
    lib = bench._xrisk_aucm_pesg(copy.deepcopy(base), 512, hp, None)
    floor = bench._floor_aucm_pesg(copy.deepcopy(base), 512, hp, None)
    for i, b in enumerate(batches):
        for tr in (lib, floor):
            tr.step(x[b], y[b], torch.from_numpy(b))
        if i == 5:
            lib.end_stage(), floor.end_stage()
    for (name, p), q in zip(lib.model.named_parameters(), floor.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), name
    lib_loss = _closure(lib.step, "loss_fn")
    for name in ("a", "b", "alpha"):
        assert torch.allclose(getattr(lib_loss, name), _closure(floor.step, name), rtol=1e-6, atol=1e-7), name
    assert not torch.equal(lib.model.head.weight, base.head.weight)  # the steps moved the model


# ----------------------------------------------------------------------------- compositional
def test_compositional_alternation_values_and_resume():
    comp = CompositionalAUCLoss(0.9, k=2, version="v2")
    _set_params(comp, 3)
    ref = AUCMLoss(0.9, version="v2")
    ref.load_state_dict({k: v for k, v in comp.state_dict().items() if k != "num_steps"})
    with pytest.raises(RuntimeError, match="not been called"):
        comp.last_phase()
    phases = []
    for seed in range(6):
        scores, targets = _random_batch(seed, 1)
        s, y = scores[:, 0], targets[:, 0]
        out = comp(s, y)
        phases.append(comp.last_phase())
        if phases[-1] == "ce":
            assert out.item() == pytest.approx(F.binary_cross_entropy(s, y.double()).item(), rel=1e-12)
        else:
            assert out.item() == pytest.approx(ref(s, y).item(), rel=1e-12)
        assert comp.objective().item() == pytest.approx(_oracle_pairs(s.tolist(), y.tolist(), 0.9), rel=1e-6)
        if seed == 2:
            resumed = CompositionalAUCLoss(0.9, k=2)
            resumed.load_state_dict(copy.deepcopy(comp.state_dict()))
    assert phases == ["ce", "ce", "auc", "auc", "ce", "ce"]
    assert int(comp.num_steps) == 6
    # the copy taken after 3 calls continues with the 4th phase
    resumed(torch.tensor([0.9, 0.1]), torch.tensor([1, 0]))
    assert resumed.last_phase() == "auc" and int(resumed.num_steps) == 4


def test_compositional_ce_phase_needs_probabilities():
    comp = CompositionalAUCLoss()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        comp(torch.tensor([1.5, -0.2]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="k must"):
        CompositionalAUCLoss(k=0)


# ----------------------------------------------------------------------------- distributed
SPLIT = 5  # global batch of 8: rank 0 holds 5 samples, rank 1 holds 3
VERSIONS = ("v2", "v1")


def _dist_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(21)
    x = torch.randn(8, 4, generator=g)
    y = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [0, 1], [0, 0], [0, 1], [0, 0]], dtype=torch.float32)
    return x, y  # rank 1 has no positive of task 0


def _make(version: str) -> tuple[torch.nn.Module, AUCMLoss]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    loss = AUCMLoss(0.9, num_tasks=2, version=version)
    with torch.no_grad():
        loss.a.copy_(torch.tensor([0.6, 0.5]))
        loss.b.copy_(torch.tensor([0.3, 0.4]))
        loss.alpha.copy_(torch.tensor([0.2, 0.7]))
    return model, loss


def _grads(model: torch.nn.Module, loss: AUCMLoss) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": p.grad.clone() for k, p in model.named_parameters()}
    out.update({n: getattr(loss, n).grad.clone() for n in ("a", "b", "alpha")})
    return out


def _dist_worker(rank: int, world: int) -> dict:
    return {version: _dist_one(rank, version) for version in VERSIONS}


def _dist_one(rank: int, version: str) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from xrisk.optim import PESG

    model, loss = _make(version)
    ddp = DDP(model)
    x, y = _dist_data()
    part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
    value = loss(torch.sigmoid(ddp(x[part])), y[part])
    value.backward()
    grads = _grads(model, loss)
    opt = PESG(model.parameters(), loss=loss, lr=0.1, momentum=0.0)
    opt.step()
    params = {k: v.detach().clone() for k, v in list(model.state_dict().items()) + list(loss.state_dict().items())}
    return {"value": value.detach(), "objective": loss.objective(), "grads": grads, "params": params}


@pytest.fixture(scope="module")
def dist_results() -> list[dict]:
    return run_distributed(_dist_worker)


@pytest.mark.distributed
@pytest.mark.parametrize("version", VERSIONS)
def test_ddp_gradients_equal_single_process_on_concatenated_batch(version, dist_results):
    """Uneven local batches (5 and 3); DDP averages the model gradients, a/b/alpha need no reduction."""
    from xrisk.optim import PESG

    model, loss = _make(version)
    x, y = _dist_data()
    value = loss(torch.sigmoid(model(x)), y)
    value.backward()
    ref = _grads(model, loss)
    PESG(model.parameters(), loss=loss, lr=0.1, momentum=0.0).step()
    ref_params = {k: v.detach() for k, v in list(model.state_dict().items()) + list(loss.state_dict().items())}
    for res in (r[version] for r in dist_results):
        assert torch.allclose(res["value"], value.detach(), atol=1e-6)
        assert torch.allclose(res["objective"], loss.objective(), atol=1e-6)
        for k, g in ref.items():
            assert torch.allclose(res["grads"][k], g, atol=1e-6), k
        for k, p in ref_params.items():
            assert torch.allclose(res["params"][k], p, atol=1e-6), k
