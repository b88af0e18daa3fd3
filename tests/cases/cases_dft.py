"""Conformance cases of DFTLoss (DFT with reference log-probs, DFT2 without, the reference's u_init start)."""

from __future__ import annotations

import torch

from cases import LossCase
from xrisk.functional.dft import dft_log_terms, dft_objective, dft_surrogate
from xrisk.losses import DFTLoss

N = 64


def _batch(seed: int, *, ref: bool = True) -> tuple:
    g = torch.Generator().manual_seed(seed)
    logp_pos = -5.0 * torch.rand(6, generator=g)
    logp_neg = -8.0 * torch.rand(6, 3, generator=g)
    index = (torch.arange(6) + 4 * seed) % 20  # batches of different seeds share prompts
    ref_logp = logp_neg + 0.3 * torch.randn(6, 3, generator=g)
    return (logp_pos, logp_neg, index, ref_logp) if ref else (logp_pos, logp_neg, index)


def _empty(ref: bool) -> tuple:
    return (torch.zeros(0), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) + ((torch.zeros(0, 3),) if ref else ())


def _gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(4, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p, n: dft_objective(p, n, ref, 0.7), (pos, neg))
    assert torch.autograd.gradcheck(lambda p, n: dft_objective(p, n, None, 0.3), (pos, neg))
    d, log_new = dft_log_terms(neg, ref, 0.7)
    assert torch.autograd.gradcheck(lambda p, n: dft_surrogate(p, n, d, log_new), (pos, neg))


CASES = [
    LossCase("dft", lambda: DFTLoss(N), _batch, grad_args=(0, 1), empty_batch=lambda: _empty(True),
             gradcheck=_gradcheck),
    LossCase("dft2", lambda: DFTLoss(N, "dft2"), lambda s: _batch(s, ref=False), grad_args=(0, 1),
             empty_batch=lambda: _empty(False), gradcheck=_gradcheck),
    LossCase("dft-u_init0", lambda: DFTLoss(N, u_init=0.0, gamma=0.5), _batch, grad_args=(0, 1),
             empty_batch=lambda: _empty(True), gradcheck=_gradcheck),
]
