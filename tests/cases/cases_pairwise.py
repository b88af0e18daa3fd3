"""Conformance cases of the pairwise X-risk losses: AP (SOAP), one-way pAUC (SOPA, SOPA-s), two-way pAUC (SOTA-s)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from cases import LossCase
from xrisk.functional.ap import ap_inner_estimates, ap_surrogate
from xrisk.functional.pauc import pauc_cvar_surrogate, pauc_kl_surrogate, tpauc_kl_surrogate
from xrisk.functional.surrogates import (
    SHORTFALL_LOSSES, SURROGATES, pairwise_shortfall, pairwise_surrogate, weighted_pairwise_mean,
    weighted_pairwise_mean_of,
)
from xrisk.losses import APLoss, OneWayPartialAUCLoss, TwoWayPartialAUCLoss

NUM_SAMPLES = 64
POOL = 16  # batches draw their indices from [0, POOL), so indices repeat within and across batches


def _labels(num_tasks: int) -> Tensor:
    """Fixed labels of the data set: ``[NUM_SAMPLES, T]`` bool; each task has positives and negatives in the pool."""
    g = torch.Generator().manual_seed(1234)
    y = torch.rand(NUM_SAMPLES, num_tasks, generator=g) < 0.3
    y[0], y[1] = True, False
    return y


def _batch(num_tasks: int) -> Callable[[int], tuple]:
    labels = _labels(num_tasks)

    def batch(seed: int) -> tuple:
        g = torch.Generator().manual_seed(seed)
        index = torch.cat([torch.tensor([0, 1]), torch.randint(0, POOL, (10,), generator=g)])
        scores = torch.randn(12, num_tasks, generator=g)
        targets = labels[index].float()
        if num_tasks == 1:
            return scores[:, 0], targets[:, 0], index
        return scores, targets, index

    return batch


def _empty(num_tasks: int) -> Callable[[], tuple]:
    def empty() -> tuple:
        shape = (6,) if num_tasks == 1 else (6, num_tasks)
        return torch.randn(shape), torch.zeros(shape), torch.arange(6) + 1

    return empty


def _with_grad_of(value: Tensor, surrogate: Tensor) -> Tensor:
    """Forward value ``value``, backward through ``surrogate`` (so gradcheck compares the two)."""
    return value.detach() + surrogate - surrogate.detach()


def _gradcheck() -> None:
    """float64 gradchecks of the kernels through every surrogate.

    Fixed-state kernels (AP, CVaR) are gradchecked as they are. Kernels whose weights are
    detached functions of the losses (KL) and AP are also checked as *estimators*: with the state
    set to its exact batch value at ``x``, the analytic gradient of the surrogate must equal the
    numerical gradient of the objective, written here directly from the paper's formula.
    """
    g = torch.Generator().manual_seed(7)
    s = torch.randn(9, generator=g, dtype=torch.float64)
    y = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0, 0], dtype=torch.bool)
    P = int(y.sum())
    u_all = torch.rand(P, generator=g, dtype=torch.float64) + 0.5
    u_pos = torch.rand(P, generator=g, dtype=torch.float64) * 0.4
    thr = torch.rand(P, generator=g, dtype=torch.float64) + 0.3
    tau, tau2, beta = 0.5, 2.0, 0.4
    for name in SURROGATES:
        def pairs(x: Tensor) -> Tensor:
            return pairwise_surrogate(x[y], x[~y], margin=0.7, surrogate=name)

        def ap_exact(x: Tensor) -> Tensor:
            L, g_all, g_pos = ap_inner_estimates(x[y], x, y, margin=0.7, surrogate=name)
            objective = -(((L * y).mean(1)) / L.mean(1)).mean()
            return _with_grad_of(objective, ap_surrogate(L, y, g_all, g_pos))

        def kl_exact(x: Tensor) -> Tensor:
            L = pairs(x)
            objective = (tau * torch.log(torch.exp(L / tau).mean(1))).mean()
            return _with_grad_of(objective, pauc_kl_surrogate(L, torch.log(torch.exp(L.detach() / tau).mean(1)), tau))

        def tp_exact(x: Tensor) -> Tensor:
            L = pairs(x)
            inner = torch.exp(L / tau).mean(1)
            objective = tau2 * torch.log((inner ** (tau / tau2)).mean())
            log_u = torch.log(inner.detach())
            log_w = torch.log((inner.detach() ** (tau / tau2)).mean())
            return _with_grad_of(objective, tpauc_kl_surrogate(L, log_u, log_w, tau, tau2))

        def cvar_fixed(x: Tensor) -> Tensor:
            L = pairs(x)
            objective = (thr + (L - thr[:, None]).clamp_min(0).mean(1) / beta).mean()
            return _with_grad_of(objective, pauc_cvar_surrogate(L, thr, beta))

        checks = [
            lambda x: ap_surrogate(ap_inner_estimates(x[y], x, y, margin=0.7, surrogate=name)[0], y, u_all, u_pos),
            lambda x: pauc_cvar_surrogate(pairs(x), thr, beta),
            ap_exact, kl_exact, tp_exact, cvar_fixed,
        ]
        for fn in checks:
            assert torch.autograd.gradcheck(fn, (s.clone().requires_grad_(True),))
        # the fused estimator the modules call: same value as, and closed-form gradient of,
        # mean(W * L) with W constant (with and without precomputed detached losses)
        W_pn = torch.rand(P, len(y) - P, generator=g, dtype=torch.float64) - 0.3
        W_pb = torch.rand(P, len(y), generator=g, dtype=torch.float64) - 0.3
        pi, ni = y.nonzero().view(-1), (~y).nonzero().view(-1)

        def fused_of(x: Tensor, j_idx: Tensor | None, w: Tensor) -> Tensor:  # losses and shortfall of x, held constant
            r = pairwise_shortfall(x.detach()[pi], x.detach() if j_idx is None else x.detach()[j_idx], margin=0.7)
            return weighted_pairwise_mean_of(x, pi, j_idx, w, losses=SHORTFALL_LOSSES[name](r), shortfall=r,
                                             surrogate=name)

        fused = [
            lambda x: weighted_pairwise_mean(x[y], x[~y], W_pn, margin=0.7, surrogate=name),
            lambda x: weighted_pairwise_mean(x[y], x[~y], W_pn, margin=0.7, surrogate=name,
                                             losses=pairs(x).detach()),
            lambda x: weighted_pairwise_mean(x[y], x, W_pb, margin=0.7, surrogate=name),
            lambda x: fused_of(x, ni, W_pn),
            lambda x: fused_of(x, None, W_pb),
        ]
        for fn in fused:
            assert torch.autograd.gradcheck(fn, (s.clone().requires_grad_(True),))
        torch.testing.assert_close(fused[0](s), (W_pn * pairs(s)).mean())


def _case(name: str, num_tasks: int, make: Callable[[], torch.nn.Module]) -> LossCase:
    return LossCase(
        name=name,
        make=make,
        batch=_batch(num_tasks),
        empty_batch=_empty(num_tasks),
        gradcheck=_gradcheck if num_tasks == 1 else None,
    )


CASES = [
    _case("APLoss", 1, lambda: APLoss(NUM_SAMPLES, gamma=0.9)),
    _case("APLoss-T3", 3, lambda: APLoss(NUM_SAMPLES, num_tasks=3, gamma=0.5)),
    _case("OneWayPartialAUCLoss-cvar", 1, lambda: OneWayPartialAUCLoss(NUM_SAMPLES, method="cvar", max_fpr=0.3)),
    _case("OneWayPartialAUCLoss-cvar-T3", 3,
          lambda: OneWayPartialAUCLoss(NUM_SAMPLES, num_tasks=3, method="cvar", max_fpr=0.5, eta=0.05)),
    _case("OneWayPartialAUCLoss-kl", 1, lambda: OneWayPartialAUCLoss(NUM_SAMPLES, method="kl", tau=0.5)),
    _case("OneWayPartialAUCLoss-kl-T3", 3,
          lambda: OneWayPartialAUCLoss(NUM_SAMPLES, num_tasks=3, method="kl", tau=0.1, gamma=0.7)),
    _case("TwoWayPartialAUCLoss", 1, lambda: TwoWayPartialAUCLoss(NUM_SAMPLES, tau=0.5, tau_outer=1.0)),
    _case("TwoWayPartialAUCLoss-T3", 3,
          lambda: TwoWayPartialAUCLoss(NUM_SAMPLES, num_tasks=3, tau=0.2, tau_outer=0.5, gamma0=0.8, gamma1=0.6)),
]
