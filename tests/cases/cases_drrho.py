"""Conformance cases of the DRRho risk (KL and CVaR) on per-sample losses and reference losses."""

from __future__ import annotations

import torch
from torch import Tensor

from cases import LossCase
from cases.cases_contrastive import _gradcheck as contrastive_gradcheck
from xrisk.functional.drrho import drrho_cvar, drrho_cvar_objective, drrho_kl, drrho_kl_objective
from xrisk.losses import DRRhoLoss, FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss


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


def _clip_batch(seed: int) -> tuple:
    """DRRho-CLIP: a contrastive batch plus the reference model's features ``(ref_a, ref_b)`` of another width."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(8, 5, generator=g)
    b = a + 0.5 * torch.randn(8, 5, generator=g)
    ref = (torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g))
    return a, b, (torch.arange(8) + 5 * seed) % 20, ref


def _clip_empty() -> tuple:
    return torch.empty(0, 5), torch.empty(0, 5), torch.empty(0, dtype=torch.long), (torch.empty(0, 3), torch.empty(0, 3))


def _clip_degenerate() -> list[tuple]:
    """No anchor has a negative: one pair; one sample twice (with its reference features)."""
    g = torch.Generator().manual_seed(11)
    return [(*(torch.randn(k, 5, generator=g) for _ in range(2)), torch.tensor(i),
             tuple(torch.randn(k, 3, generator=g) for _ in range(2))) for k, i in ((1, [3]), (2, [4, 4]))]


def _clip_case(name: str, make) -> LossCase:
    return LossCase(name=name, make=make, batch=_clip_batch, grad_args=(0, 1), gradcheck=contrastive_gradcheck,
                    empty_batch=_clip_empty, extra={"degenerate": _clip_degenerate})


CASES = [
    _case("drrho-kl", lambda: DRRhoLoss(divergence="kl", tau=0.5, gamma=0.7)),
    _case("drrho-kl-gamma1", lambda: DRRhoLoss(divergence="kl", tau=0.05, gamma=1.0)),
    _case("drrho-cvar", lambda: DRRhoLoss(divergence="cvar", alpha=0.35, eta=0.1)),  # alpha B is not an integer
    _case("drrho-cvar-alpha1", lambda: DRRhoLoss(divergence="cvar", alpha=1.0)),
    _clip_case("drrho-clip-gcl-bimodal-global",
               lambda: GlobalContrastiveLoss(64, mode="bimodal", temperature="global", tau=0.2, rho=0.5)),
    _clip_case("drrho-clip-gcl-bimodal-individual",  # one process, unique indices: the square kernel
               lambda: GlobalContrastiveLoss(64, mode="bimodal", temperature="individual", tau=0.2, rho=0.5)),
    _clip_case("drrho-clip-gcl-unimodal-individual",
               lambda: GlobalContrastiveLoss(64, mode="unimodal", temperature="individual", tau=0.2, rho=0.5)),
    _clip_case("drrho-clip-gcl-bimodal-fnd",
               lambda: GlobalContrastiveLoss(64, mode="bimodal", false_negatives=FalseNegativeDetector(64, alpha=0.2, lr=0.3))),
    _clip_case("drrho-clip-nuclr", lambda: NUCLRLoss(64, tau=0.1, zeta_start_epoch=0, lr_zeta=0.05)),
]
