"""Data selection with a reference model: RHO-LOSS top-k selection and JEST joint selection (pure functions).

The baselines DRRho risk minimisation is compared with (:class:`~xrisk.losses.DRRhoLoss`, DRRho-CLIP): instead of
re-weighting every sample, they draw a larger batch and train on a selected part of it.

* :func:`rho_select`: keep the ``k`` samples with the largest excess loss ``l_i - l_ref_i`` (the "reducible
  holdout loss" of Mindermann et al., "Prioritized Training on Points that are Learnable, Worth Learning, and
  Not Yet Learnt", ICML 2022, arXiv:2206.07137). DRRho's CVaR with ``alpha = k / B`` gives the same weights
  inside one batch; RHO selection has no state and spends a forward pass on the samples it drops.
* :func:`jest_select`: joint example selection for image-text batches (Evans et al., "Data curation via joint
  example selection further accelerates multimodal learning", NeurIPS 2024, arXiv:2406.17711). The learnability
  of a sub-batch ``S`` is ``sum_{i, j in S} A_ij`` with ``A = L^learner - L^ref`` the difference of per-pair
  sigmoid losses (:func:`pairwise_sigmoid_losses`, which decompose over pairs); the sub-batch is sampled in
  ``n_chunks`` chunks, each ``proportional to exp(conditional learnability)`` of the candidates given the
  pairs already chosen, without replacement (Gumbel top-k).

Differences from the DRRho-CLIP repository's JEST baseline (``train.py: jointly_sample_batch_softmax``): its
first chunk is drawn proportionally to the shifted scores (linear), here every chunk uses ``exp`` as in the
JEST paper; its scores come from a softmax approximation, here from the sigmoid pair losses the paper
defines; and it all-gathers without checking for a process group (fails on one process), here the function
is pure and runs on whatever batch it is given (one process, or a batch the caller gathered).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rho_select", "pairwise_sigmoid_losses", "jest_learnability", "jest_select"]


def rho_select(losses: Tensor, ref_losses: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` largest excess losses ``losses - ref_losses`` (both ``[B]``, detached), in
    decreasing order of excess loss (ties: the earlier position first). ``1 <= k <= B``."""
    if losses.dim() != 1 or ref_losses.shape != losses.shape:
        raise ValueError(f"losses and ref_losses must both be [B], got {tuple(losses.shape)} and {tuple(ref_losses.shape)}")
    if not 1 <= k <= losses.shape[0]:
        raise ValueError(f"k must be in [1, {losses.shape[0]}], got {k}")
    excess = losses.detach() - ref_losses.detach()
    return torch.sort(excess, descending=True, stable=True).indices[:k]


def pairwise_sigmoid_losses(sim: Tensor, tau: float, bias: float = 0.0) -> Tensor:
    """Per-pair sigmoid losses ``L_ij = softplus(-z_ij (s_ij / tau + bias))`` of an image-text similarity matrix
    ``sim [B, B]`` (``z_ii = 1`` for the matched pairs, ``z_ij = -1`` otherwise): the SigLIP loss, whose batch
    loss is the sum over pairs (Zhai et al., ICCV 2023, arXiv:2303.15343)."""
    z = 2.0 * torch.eye(sim.shape[0], dtype=sim.dtype, device=sim.device) - 1.0
    return F.softplus(-z * (sim / tau + bias))


def jest_learnability(learner_sim: Tensor, ref_sim: Tensor, tau: float, ref_tau: float | None = None) -> Tensor:
    """``A = L(learner_sim) - L(ref_sim)`` (``[B, B]``, detached) with :func:`pairwise_sigmoid_losses`: high where
    the learner still errs on a pair the reference gets right."""
    ref_tau = tau if ref_tau is None else ref_tau
    return pairwise_sigmoid_losses(learner_sim.detach(), tau) - pairwise_sigmoid_losses(ref_sim.detach(), ref_tau)


def jest_select(
    learner_sim: Tensor,
    ref_sim: Tensor,
    k: int,
    *,
    tau: float,
    ref_tau: float | None = None,
    n_chunks: int = 2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """JEST: jointly select ``k`` of the ``B`` pairs of a super-batch by learnability (see the module docstring).

    Chunk ``c`` (sizes as equal as possible, the first ones larger) draws, without replacement, candidates ``i``
    not yet chosen with probability proportional to ``exp(A_ii + sum_{j in S} (A_ij + A_ji))``, ``S`` the pairs
    chosen so far (the first chunk: ``exp(A_ii)``).

    Args:
        learner_sim: ``[B, B]`` similarities of the learner's image ``i`` and text ``j`` embeddings.
        ref_sim: the same of the reference model.
        k: pairs to keep, ``1 <= k <= B``; tau, ref_tau: temperatures of the learner's and the reference's pair
            losses (``ref_tau`` defaults to ``tau``); n_chunks: ``>= 1``; generator: for the Gumbel noise.

    Returns:
        ``[k]`` positions in the super-batch, in the order they were drawn.
    """
    b = learner_sim.shape[0]
    if learner_sim.shape != (b, b) or ref_sim.shape != (b, b):
        raise ValueError(f"learner_sim and ref_sim must be [B, B], got {tuple(learner_sim.shape)} and {tuple(ref_sim.shape)}")
    if not 1 <= k <= b:
        raise ValueError(f"k must be in [1, {b}], got {k}")
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    a = jest_learnability(learner_sim, ref_sim, tau, ref_tau)
    sym = a + a.T
    scores = a.diagonal().clone()  # conditional learnability given the chosen pairs
    chosen = torch.zeros(b, dtype=torch.bool, device=a.device)
    sizes = [k // n_chunks + (1 if c < k % n_chunks else 0) for c in range(n_chunks)]
    picks = []
    for size in sizes:
        if size == 0:
            continue
        u = torch.rand(b, generator=generator, dtype=a.dtype, device=a.device if generator is None else "cpu").to(a.device)
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
        keyed = torch.where(chosen, float("-inf"), scores + gumbel)
        pick = torch.topk(keyed, size).indices
        chosen[pick] = True
        scores = scores + sym[:, pick].sum(1)
        picks.append(pick)
    return torch.cat(picks)
