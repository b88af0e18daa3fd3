"""Conformance cases of the global contrastive losses (GCL modes x temperatures, NUCLR, GloFND)."""

from __future__ import annotations

import torch

from cases import LossCase
from xrisk.functional.contrastive import detached_weights_dot, gcl_objective, masked_log_mean_exp, nuclr_objective
from xrisk.losses import FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss

N = 64


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(8, 5, generator=g)
    b = a + 0.5 * torch.randn(8, 5, generator=g)
    index = (torch.arange(8) + 5 * seed) % 20  # batches of different seeds share indices
    return a, b, index


def _gradcheck() -> None:
    """Exact objectives (the FCCO kernels' surrogate gradients are pinned to their gradients in
    tests/test_global_contrastive.py and tests/test_nuclr.py) and the surrogate's autograd node."""
    g = torch.Generator().manual_seed(0)
    diff = torch.randn(3, 2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 2, 6, generator=g) > 0.3
    mask[..., 0] = True
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    tau_i = (0.2 + torch.rand(3, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    zeta = (0.1 * torch.randn(1, 2, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d, t: gcl_objective(d, mask, t, eps=1e-3, rho=0.7), (diff, tau))
    assert torch.autograd.gradcheck(lambda d, t: gcl_objective(d, mask, t, rho=0.2), (diff, tau_i))
    assert torch.autograd.gradcheck(lambda d: masked_log_mean_exp(d, mask)[0], (diff,))
    assert torch.autograd.gradcheck(lambda d, z: nuclr_objective(d, mask, z, 0.2, -3.0), (diff, zeta))
    weights = torch.randn(3, 2, 6, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda d: detached_weights_dot(d, weights), (diff,))


def _empty() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """No pair at all."""
    return torch.empty(0, 5), torch.empty(0, 5), torch.empty(0, dtype=torch.long)


def _degenerate() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches in which no anchor has a negative: one pair; one sample twice."""
    g = torch.Generator().manual_seed(11)
    return [
        (torch.randn(1, 5, generator=g), torch.randn(1, 5, generator=g), torch.tensor([3])),
        (torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g), torch.tensor([4, 4])),
    ]


def _case(name: str, make) -> LossCase:
    return LossCase(name=name, make=make, batch=_batch, grad_args=(0, 1), empty_batch=_empty, gradcheck=_gradcheck,
                    extra={"degenerate": _degenerate})


CASES = [
    _case(
        f"contrastive-gcl-{mode}-{temp}",
        (lambda mode=mode, temp=temp: GlobalContrastiveLoss(N, mode=mode, temperature=temp, tau=0.2, rho=0.5)),
    )
    for mode in ("unimodal", "bimodal")
    for temp in ("fixed", "global", "individual")
] + [
    _case("contrastive-nuclr", lambda: NUCLRLoss(N, tau=0.1, zeta_start_epoch=0, lr_zeta=0.05)),
    _case(
        "contrastive-gcl-bimodal-fnd",
        lambda: GlobalContrastiveLoss(N, mode="bimodal", false_negatives=FalseNegativeDetector(N, alpha=0.2, lr=0.3)),
    ),
    _case(
        "contrastive-gcl-unimodal-individual-fnd",
        lambda: GlobalContrastiveLoss(
            N, temperature="individual", rho=0.5, false_negatives=FalseNegativeDetector(N, alpha=0.2, lr=0.3)
        ),
    ),
    _case(
        "contrastive-nuclr-fnd",
        lambda: NUCLRLoss(
            N, tau=0.1, zeta_start_epoch=0, lr_zeta=0.05, false_negatives=FalseNegativeDetector(N, alpha=0.2, lr=0.3)
        ),
    ),
]
