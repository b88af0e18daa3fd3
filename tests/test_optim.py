"""PESG and PDSCA: parameter groups, dual ascent, proximal regularizer, momentum convention, resume, training."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from sklearn.metrics import roc_auc_score

from xrisk.losses import APLoss, AUCMLoss, CompositionalAUCLoss
from xrisk.optim import PDSCA, PESG


def _batch(seed: int = 0, n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = (torch.rand(n, generator=g) < 0.3).float()
    y[0], y[1] = 1.0, 0.0
    return x, y


def _forward(model: torch.nn.Module, loss: torch.nn.Module, seed: int) -> torch.Tensor:
    x, y = _batch(seed)
    return loss(torch.sigmoid(model(x)).squeeze(1), y)


def _train_steps(model, loss, opt, seeds) -> None:
    for s in seeds:
        opt.zero_grad()
        _forward(model, loss, s).backward()
        opt.step()


# ----------------------------------------------------------------------------- construction
def test_cpu_without_device_argument():
    """LibAUC #6: PDSCA defaulted to device='cuda'. Nothing here takes a device."""
    for loss_cls, opt_cls in ((AUCMLoss, PESG), (CompositionalAUCLoss, PDSCA)):
        model = torch.nn.Linear(3, 1)
        loss = loss_cls()
        opt = opt_cls(model.parameters(), loss=loss)
        _train_steps(model, loss, opt, range(2))
        for state in opt.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    assert v.device.type == "cpu"
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_groups_layout_and_validation():
    model = torch.nn.Linear(3, 1)
    loss = AUCMLoss()
    opt = PESG(model.parameters(), loss=loss, lr=0.2, alpha_lr=0.05)
    assert len(opt.param_groups) == 3
    assert opt.param_groups[1]["params"] == [loss.a, loss.b] and not opt.param_groups[1]["dual"]
    assert opt.param_groups[2]["params"] == [loss.alpha] and opt.param_groups[2]["dual"]
    assert opt.param_groups[2]["lr"] == 0.05
    # a, b given by the user stay in the user's group (no duplicate group)
    opt = PESG([{"params": list(model.parameters()) + [loss.a, loss.b], "lr": 0.3}], loss=loss)
    assert len(opt.param_groups) == 2 and opt.param_groups[0]["lr"] == 0.3
    # the loss's parameters in `params` (loss as a submodule): alpha moves to the dual group only
    opt = PESG(list(model.parameters()) + list(loss.parameters()), loss=loss)
    assert [g["params"] for g in opt.param_groups] == [list(model.parameters()) + [loss.a, loss.b], [loss.alpha]]
    assert [g["dual"] for g in opt.param_groups] == [False, True]
    with pytest.raises(ValueError, match="besides loss.alpha"):
        PESG([loss.alpha], loss=loss)
    with pytest.raises(TypeError, match="AUCMLoss"):
        PESG(model.parameters(), loss=APLoss(10))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="CompositionalAUCLoss"):
        PDSCA(model.parameters(), loss=AUCMLoss())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="momentum"):
        PESG(model.parameters(), loss=loss, momentum=1.0)
    with pytest.raises(ValueError, match="mode"):
        PESG(model.parameters(), loss=loss, mode="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta1"):
        PDSCA(model.parameters(), loss=CompositionalAUCLoss(), beta1=0.0)
    with pytest.raises(ValueError, match="lr"):
        PESG(model.parameters(), loss=loss, lr=-1.0)


def test_parameter_groups_are_honoured():
    """LibAUC #10: PESG crashed on parameter groups. Each group uses its own options."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    loss = AUCMLoss()
    groups = [
        {"params": model[0].parameters(), "lr": 0.1, "weight_decay": 0.0},
        {"params": model[2].parameters(), "lr": 0.01, "weight_decay": 0.5},
    ]
    opt = PESG(groups, loss=loss, momentum=0.0, epoch_decay=0.0, clip_value=None)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    _forward(model, loss, 0).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for i, p in enumerate(model.parameters()):
        lr, wd = (0.1, 0.0) if i < 2 else (0.01, 0.5)
        assert torch.allclose(p, before[i] - lr * (grads[i] + wd * before[i]), atol=1e-7)
    # a, b: the defaults (lr 0.1, weight_decay 1e-5)
    assert loss.a.grad is not None


# ----------------------------------------------------------------------------- dual ascent
@pytest.mark.parametrize("version,imratio", [("v2", None), ("v1", None), ("v1", 0.4)])
def test_alpha_ascent_matches_hand_computed_value(version, imratio):
    m, lr = 0.8, 0.3
    loss = AUCMLoss(m, version=version, imratio=imratio)
    with torch.no_grad():
        loss.a.fill_(0.4)
        loss.b.fill_(0.2)
        loss.alpha.fill_(0.1)
    values = [0.9, 0.3, 0.6, 0.1, 0.2]
    y = [1, 0, 1, 0, 0]
    f = torch.tensor(values, requires_grad=True)
    opt = PESG([f], loss=loss, lr=lr)
    loss(f, torch.tensor(y)).backward()
    opt.step()
    mp = (0.9 + 0.6) / 2
    mn = (0.3 + 0.1 + 0.2) / 3
    if version == "v2":
        grad = 2 * (m + mn - mp) - 2 * 0.1
    else:
        p = imratio if imratio is not None else 2 / 5
        grad = 2 * (p * (1 - p) * m + p * (3 / 5) * mn - (1 - p) * (2 / 5) * mp) - 2 * p * (1 - p) * 0.1
    assert abs(grad) > 0.05
    assert loss.alpha.item() == pytest.approx(max(0.0, 0.1 + lr * grad), abs=1e-6)


def test_alpha_is_projected_onto_nonnegatives():
    loss = AUCMLoss(0.0)
    with torch.no_grad():
        loss.alpha.fill_(0.1)
    f = torch.tensor([0.9, 0.1], requires_grad=True)  # m + mean_- f - mean_+ f = -0.8
    opt = PESG([f], loss=loss, lr=1.0)
    loss(f, torch.tensor([1, 0])).backward()
    assert loss.alpha.grad.item() == pytest.approx(2 * -0.8 - 0.2)
    opt.step()
    assert loss.alpha.item() == 0.0  # 0.1 + (2 * (-0.8) - 0.2) < 0


def test_pesg_does_not_ascend_a_or_b():
    loss = AUCMLoss()
    f = torch.tensor([0.9, 0.2, 0.4], requires_grad=True)
    opt = PESG([f], loss=loss, lr=0.1, momentum=0.0, weight_decay=0.0, epoch_decay=0.0, clip_value=None)
    loss(f, torch.tensor([1, 0, 0])).backward()
    ga, gb = loss.a.grad.clone(), loss.b.grad.clone()
    opt.step()
    assert torch.allclose(loss.a.detach(), -0.1 * ga) and torch.allclose(loss.b.detach(), -0.1 * gb)


# ----------------------------------------------------------------------------- proximal term
def _manual_grad_step(opt, params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


def test_reference_starts_at_initial_weights():
    """With a zero gradient and no weight decay, the first step does not move (LibAUC: noise reference)."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    loss = AUCMLoss()
    opt = PESG([w], loss=loss, momentum=0.0, weight_decay=0.0, epoch_decay=0.5)
    _manual_grad_step(opt, [w], [torch.zeros(2)])
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0]))
    assert torch.equal(opt.state[w]["ref"], torch.tensor([1.0, -2.0]))


def test_update_regularizer_semantics():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    loss = AUCMLoss()
    lr, lam = 0.1, 0.5
    opt = PESG([w], loss=loss, lr=lr, momentum=0.0, weight_decay=0.0, epoch_decay=lam, clip_value=0.3)
    iterates = []
    for g in ([1.0, 2.0], [-0.5, 0.1], [0.2, -4.0]):
        _manual_grad_step(opt, [w], [torch.tensor(g)])
        iterates.append(w.detach().clone())
    # clipping is element-wise: the -4.0 became -0.3
    assert opt.state[w]["avg_count"] == 3
    opt.update_regularizer(decay_factor=4.0)
    mean = torch.stack(iterates).mean(0)
    assert torch.allclose(opt.state[w]["ref"], mean, atol=1e-7)
    assert opt.state[w]["avg_count"] == 0 and torch.equal(opt.state[w]["iterate_avg"], torch.zeros(2))
    assert all(g["lr"] == pytest.approx(lr / 4) for g in opt.param_groups)
    # next step: w <- w - lr/4 * (clip(0) + lam (w - mean))
    before = w.detach().clone()
    _manual_grad_step(opt, [w], [torch.zeros(2)])
    assert torch.allclose(w.detach(), before - lr / 4 * lam * (before - mean), atol=1e-7)
    # a parameter never updated since the reset keeps its reference
    ref_a = opt.state[loss.a]["ref"].clone()
    opt.update_regularizer()
    assert torch.equal(opt.state[loss.a]["ref"], ref_a)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr / 4)


def test_clip_then_decay_order():
    w = torch.nn.Parameter(torch.tensor([3.0]))
    opt = PESG([w], loss=AUCMLoss(), lr=1.0, momentum=0.0, weight_decay=0.1, epoch_decay=0.0, clip_value=0.5)
    _manual_grad_step(opt, [w], [torch.tensor([10.0])])
    assert w.item() == pytest.approx(3.0 - (0.5 + 0.1 * 3.0))


# ----------------------------------------------------------------------------- momentum convention
def test_momentum_is_torch_convention():
    w = torch.nn.Parameter(torch.tensor([0.0]))
    opt = PESG([w], loss=AUCMLoss(), lr=1.0, momentum=0.9, weight_decay=0.0, epoch_decay=0.0, clip_value=None)
    ref = torch.nn.Parameter(torch.tensor([0.0]))
    sgd = torch.optim.SGD([ref], lr=1.0, momentum=0.9)
    for g in (1.0, -2.0, 0.5, 3.0):
        _manual_grad_step(opt, [w], [torch.tensor([g])])
        _manual_grad_step(sgd, [ref], [torch.tensor([g])])
        assert torch.allclose(w, ref)


def test_libauc_momentum_maps_to_momentum_and_dampening():
    """LibAUC: buf <- (1 - m) buf + m d (first buf = d); here momentum = dampening = 1 - m."""
    m, lr = 0.9, 0.1
    w = torch.nn.Parameter(torch.tensor([0.5]))
    opt = PESG([w], loss=AUCMLoss(), lr=lr, momentum=1 - m, dampening=1 - m, weight_decay=0.0,
               epoch_decay=0.0, clip_value=None)
    v, buf = 0.5, None
    for g in (1.0, -2.0, 0.5, 3.0):
        _manual_grad_step(opt, [w], [torch.tensor([g])])
        buf = g if buf is None else (1 - m) * buf + m * g
        v -= lr * buf
        assert w.item() == pytest.approx(v, abs=1e-6)


# ----------------------------------------------------------------------------- PDSCA
def test_pdsca_ce_and_auc_steps_by_hand():
    lr, lr0, b1, b2 = 0.2, 0.05, 0.7, 0.6
    loss = CompositionalAUCLoss(k=1)
    f = torch.nn.Parameter(torch.tensor([0.7, 0.3, 0.6]))
    y = torch.tensor([1, 0, 0])
    opt = PDSCA([f], loss=loss, lr=lr, lr0=lr0, beta1=b1, beta2=b2, weight_decay=0.0, epoch_decay=0.0,
                clip_value=None)
    a0, b0, al0 = (getattr(loss, n).detach().clone() for n in ("a", "b", "alpha"))
    # step 1: CE. w <- w - lr0 g; u = w (first); w <- u
    opt.zero_grad()
    loss(f, y).backward()
    assert loss.last_phase() == "ce" and torch.equal(loss.alpha.grad, torch.zeros(1))  # connected, unused
    w1 = f.detach() - lr0 * f.grad
    opt.step()
    assert torch.allclose(f.detach(), w1)
    assert torch.equal(loss.a.detach(), a0) and torch.equal(loss.b.detach(), b0)
    assert torch.equal(loss.alpha.detach(), al0)
    # step 2: AUC. z = d (first); w <- w - lr z; alpha ascends
    opt.zero_grad()
    loss(f, y).backward()
    g2, ga2, gal2 = f.grad.clone(), loss.a.grad.clone(), loss.alpha.grad.clone()
    w2 = f.detach() - lr * g2
    opt.step()
    assert torch.allclose(f.detach(), w2)
    assert torch.allclose(loss.a.detach(), a0 - lr * ga2)
    assert torch.allclose(loss.alpha.detach(), (al0 + lr * gal2).clamp_min(0))
    # step 3: CE again: u <- (1 - b1) u + b1 (w - lr0 g)
    opt.zero_grad()
    loss(f, y).backward()
    w3 = (1 - b1) * w1 + b1 * (f.detach() - lr0 * f.grad)
    opt.step()
    assert torch.allclose(f.detach(), w3, atol=1e-7)
    # step 4: AUC again: z <- (1 - b2) z + b2 g
    opt.zero_grad()
    loss(f, y).backward()
    z = (1 - b2) * g2 + b2 * f.grad
    w4 = f.detach() - lr * z
    opt.step()
    assert torch.allclose(f.detach(), w4, atol=1e-7)


def test_pdsca_update_regularizer_divides_both_rates():
    loss = CompositionalAUCLoss()
    opt = PDSCA(torch.nn.Linear(3, 1).parameters(), loss=loss, lr=0.1, lr0=0.4)
    opt.update_regularizer(decay_factor=10, decay_factor0=2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01) and opt.param_groups[0]["lr0"] == pytest.approx(0.2)
    opt.update_lr(decay_factor0=4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01) and opt.param_groups[0]["lr0"] == pytest.approx(0.05)


def test_lr_scheduler_scales_every_group_including_alpha():
    loss = AUCMLoss()
    opt = PESG(torch.nn.Linear(3, 1).parameters(), loss=loss, lr=0.1, alpha_lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.05, 0.1])
    opt.update_lr(5.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.01, 0.02])


def test_pdsca_needs_a_forward_first():
    loss = CompositionalAUCLoss()
    opt = PDSCA(torch.nn.Linear(3, 1).parameters(), loss=loss)
    with pytest.raises(RuntimeError, match="not been called"):
        opt.step()


# ----------------------------------------------------------------------------- resume
def _roundtrip(obj_state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(obj_state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("kind", ["pesg-sgd", "pesg-adam", "pdsca"])
def test_state_dict_round_trip_continues_bit_identically(kind):
    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
        if kind == "pdsca":
            loss = CompositionalAUCLoss(k=2)
            opt = PDSCA(model.parameters(), loss=loss, lr=0.1, lr0=0.05)
        else:
            loss = AUCMLoss()
            opt = PESG([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.03}],
                       loss=loss, lr=0.1, mode=kind.split("-")[1])
        return model, loss, opt

    m1, l1, o1 = build()
    _train_steps(m1, l1, o1, range(3))
    o1.update_regularizer(decay_factor=2)
    _train_steps(m1, l1, o1, range(3, 4))
    m2, l2, o2 = build()
    _train_steps(m2, l2, o2, range(7, 9))  # different history, overwritten by the load
    m2.load_state_dict(_roundtrip(m1.state_dict()))
    l2.load_state_dict(_roundtrip(l1.state_dict()))
    o2.load_state_dict(_roundtrip(o1.state_dict()))
    for opt in (o1, o2):
        _train_steps(*((m1, l1) if opt is o1 else (m2, l2)), opt, range(4, 9))
        opt.update_regularizer(decay_factor=3)
    _train_steps(m1, l1, o1, range(9, 11))
    _train_steps(m2, l2, o2, range(9, 11))
    for a, b in zip(list(m1.parameters()) + list(l1.parameters()), list(m2.parameters()) + list(l2.parameters())):
        assert torch.equal(a, b)
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        for key, v in s1["state"][k].items():
            assert torch.equal(v, s2["state"][k][key]) if isinstance(v, torch.Tensor) else v == s2["state"][k][key]


class _WithLoss(torch.nn.Module):
    """The Lightning pattern: the loss is a submodule, ``model.parameters()`` holds ``a, b, alpha`` too."""

    def __init__(self, net: torch.nn.Module, loss: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, seed: int) -> torch.Tensor:
        return _forward(self.net, self.loss, seed)


@pytest.mark.parametrize("kind", ["pesg-sgd", "pesg-adam", "pdsca"])
def test_loss_as_submodule_equals_separate_loss_bit_for_bit(kind):
    """Issue 10: PESG/PDSCA(model.parameters(), loss=model.loss) raised; now every parameter of the loss is
    updated once, by its own rule (alpha by the dual ascent), exactly as with the loss outside the model."""

    def build(submodule: bool):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
        loss = CompositionalAUCLoss(k=2) if kind == "pdsca" else AUCMLoss()
        params = _WithLoss(net, loss).parameters() if submodule else net.parameters()
        if kind == "pdsca":
            opt = PDSCA(params, loss=loss, lr=0.1, lr0=0.05, alpha_lr=0.2)
        else:
            opt = PESG(params, loss=loss, lr=0.1, mode=kind.split("-")[1], alpha_lr=0.2)
        return net, loss, opt

    results = []
    for submodule in (False, True):
        net, loss, opt = build(submodule)
        _train_steps(net, loss, opt, range(4))
        opt.update_regularizer(decay_factor=2)
        _train_steps(net, loss, opt, range(4, 8))
        assert float(loss.alpha.detach().sum()) > 0  # the dual variable moved (ascent), so the routing is exercised
        results.append((list(net.parameters()) + list(loss.parameters()), opt))
    (p_sep, o_sep), (p_sub, o_sub) = results
    for a, b in zip(p_sep, p_sub):
        assert torch.equal(a, b)
    for a, b in zip(p_sep, p_sub):  # same per-parameter optimizer state (alpha has none: no proximal state)
        sa, sb = o_sep.state.get(a, {}), o_sub.state.get(b, {})
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]) if isinstance(sa[key], torch.Tensor) else sa[key] == sb[key]
    assert o_sub.param_groups[-1]["params"] == [p_sub[-1]] and o_sub.param_groups[-1]["dual"]


# ----------------------------------------------------------------------------- training
def _imbalanced(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.1).float()
    x = torch.randn(n, 6, generator=g)
    x[:, 0] += 2.0 * y  # positives shifted along two directions (Bayes AUROC ~0.96)
    x[:, 1] -= 1.5 * y
    return x, y


@pytest.mark.parametrize("kind", ["pesg", "pesg-libauc-momentum", "pesg-adam", "pdsca"])
def test_training_raises_auroc_well_above_chance(kind):
    torch.manual_seed(0)
    x, y = _imbalanced(0, 800)
    x_test, y_test = _imbalanced(1, 800)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    if kind == "pdsca":
        loss = CompositionalAUCLoss()
        opt = PDSCA(model.parameters(), loss=loss, lr=0.1)
    else:
        loss = AUCMLoss()
        extra = {"pesg": {}, "pesg-libauc-momentum": {"momentum": 0.1, "dampening": 0.1},
                 "pesg-adam": {"mode": "adam", "lr": 0.01}}[kind]
        opt = PESG(model.parameters(), loss=loss, **{"lr": 0.1, **extra})
    with torch.no_grad():
        before = roc_auc_score(y_test.numpy(), model(x_test).squeeze(1).numpy())
    pos, neg = torch.nonzero(y).flatten(), torch.nonzero(y == 0).flatten()
    g = torch.Generator().manual_seed(2)
    objectives = []
    for epoch in range(6):
        for _ in range(20):  # batches of 32 with ~25% positives (oversampled, as DualSampler does)
            idx = torch.cat([pos[torch.randint(len(pos), (8,), generator=g)],
                             neg[torch.randint(len(neg), (24,), generator=g)]])
            opt.zero_grad()
            loss(torch.sigmoid(model(x[idx])).squeeze(1), y[idx]).backward()
            opt.step()
            objectives.append(loss.objective().item())
        if epoch == 3:
            opt.update_regularizer(decay_factor=10)
    with torch.no_grad():
        after = roc_auc_score(y_test.numpy(), model(x_test).squeeze(1).numpy())
    assert after > 0.85 and after > before + 0.05, (before, after)
    assert sum(objectives[-20:]) < sum(objectives[:20])  # the AUC-M objective went down


@pytest.mark.parametrize("momentum,dampening,clip_value,epoch_decay,weight_decay", [
    (0.1, 0.1, 1.0, 3e-3, 1e-4), (0.9, 0.0, 0.05, 2e-3, 1e-5), (0.0, 0.0, None, 0.0, 0.0), (0.5, 0.2, None, 1e-2, 0.0),
    (0.9, 0.0, 0.5, 0.0, 1e-3),
])
def test_pesg_fused_sgd_equals_the_list_ops(monkeypatch, momentum, dampening, clip_value, epoch_decay, weight_decay):
    """PESG's sgd update through ``torch._fused_sgd_`` (eager CPU/CUDA) equals the ``_foreach`` list ops (the path of
    other devices and of ``torch.compile``) up to float rounding, first step and stage end included, on a
    non-contiguous parameter too; the gradients are not modified."""
    import xrisk.optim.pesg as pesg_module

    def run(fused: bool):
        monkeypatch.setattr(pesg_module, "_fusable", lambda params: fused)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
        with torch.no_grad():  # a transposed (non-contiguous) weight
            model[0].weight = torch.nn.Parameter(torch.randn(3, 5).t())
        loss = AUCMLoss()
        opt = PESG(model.parameters(), loss=loss, lr=0.1, momentum=momentum, dampening=dampening,
                   clip_value=clip_value, epoch_decay=epoch_decay, weight_decay=weight_decay)
        g = torch.Generator().manual_seed(1)
        for step in range(6):
            x, y = torch.randn(16, 3, generator=g), (torch.arange(16) % 4 == 0).float()
            opt.zero_grad()
            loss(torch.sigmoid(model(x)).squeeze(1), y).backward()
            grads = [p.grad.clone() for p in model.parameters()]
            opt.step()
            assert all(torch.equal(p.grad, q) for p, q in zip(model.parameters(), grads))
            if step == 2:
                opt.update_regularizer(decay_factor=2)
        return [p.detach() for p in list(model.parameters()) + list(loss.parameters())], opt.state_dict()["state"]

    (fused, s1), (lists, s2) = run(True), run(False)
    for a, b in zip(fused, lists):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    for k in s1:
        assert s1[k].keys() == s2[k].keys()
        for key, v in s1[k].items():
            assert torch.allclose(v, s2[k][key], rtol=1e-5, atol=1e-7) if isinstance(v, torch.Tensor) else v == s2[k][key]


def test_pesg_falls_back_to_list_ops_without_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the torch build lacks ``torch._fused_sgd_`` for a device, PESG's sgd mode takes the ``_foreach`` list ops
    and gives the same update as the fused kernel (up to float rounding)."""
    from xrisk.optim import pesg as pesg_module

    def run() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        loss_fn = AUCMLoss()
        opt = PESG(list(model.parameters()) + list(loss_fn.parameters()), loss=loss_fn, lr=0.1, momentum=0.9,
                   epoch_decay=0.01)
        x, y = torch.randn(16, 4), torch.tensor([1, 0] * 8)
        for _ in range(3):
            opt.zero_grad()
            loss_fn(torch.sigmoid(model(x)).squeeze(1), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    fused = run()
    monkeypatch.setattr(pesg_module, "_fused_sgd_available", lambda device_type: False)
    listed = run()
    for a, b in zip(fused, listed):
        torch.testing.assert_close(a, b)
