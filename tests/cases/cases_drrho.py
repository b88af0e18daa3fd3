"""Conformance cases of the DRRho risk (KL and CVaR) on per-sample losses and reference losses."""

from __future__ import annotations

import torch
from torch import Tensor

from cases import LossCase
from xrisk.functional.drrho import drrho_cvar, drrho_cvar_objective, drrho_kl, drrho_kl_objective
from xrisk.losses import DRRhoLoss


def _batch(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(10, generator=g) * 2.0
    ref = torch.rand(10, generator=g)
    return losses, ref, (torch.arange(10) + 3 * seed) % 16


def _empty() -> tuple[Tensor, Tensor, Tensor]:
    return torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long)


def _with_grad_of(value: Tensor, surrogate: Tensor) -> Tensor:
    """Forward ``value``, backward through ``surrogate`` (gradcheck then compares the estimator with the
    numerical gradient of the exact objective)."""
    return value.detach() + surrogate - surrogate.detach()


def _gradcheck() -> None:
    """float64: the exact objectives, and each kernel's surrogate as an estimator (state at its exact batch
    value: KL with gamma = 1, CVaR at the batch quantile) against the objective's numerical gradient."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros((), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: drrho_kl_objective(v, 0.7), (x,))
    assert torch.autograd.gradcheck(lambda v: drrho_cvar_objective(v, 0.3), (x,))

    def kl(v: Tensor) -> Tensor:
        step = drrho_kl(v, zero, False, tau=0.7, gamma=1.0)
        return _with_grad_of(drrho_kl_objective(v, 0.7), 0.7 * step.surrogate / 0.7)

    def cvar(v: Tensor) -> Tensor:  # alpha * n = 3 exactly: the RU minimiser is the 3rd largest entry
        step = drrho_cvar(v, zero, False, alpha=1.0 / 3.0, eta=0.1)
        return _with_grad_of(drrho_cvar_objective(v, 1.0 / 3.0), step.surrogate)

    assert torch.autograd.gradcheck(kl, (x,))
    assert torch.autograd.gradcheck(cvar, (x,))


def _case(name: str, make) -> LossCase:
    return LossCase(name=name, make=make, batch=_batch, grad_args=(0,), empty_batch=_empty, gradcheck=_gradcheck)


CASES = [
    _case("drrho-kl", lambda: DRRhoLoss(divergence="kl", tau=0.5, gamma=0.7)),
    _case("drrho-kl-gamma1", lambda: DRRhoLoss(divergence="kl", tau=0.05, gamma=1.0)),
    _case("drrho-cvar", lambda: DRRhoLoss(divergence="cvar", alpha=0.3, eta=0.1)),
    _case("drrho-cvar-alpha1", lambda: DRRhoLoss(divergence="cvar", alpha=1.0)),
]
