"""Discriminative fine-tuning of language models: ``DFTLoss`` (DFT and DFT2)."""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor

from xrisk import distributed as xdist
from xrisk._validate import all_finite, check_choice, check_finite, check_positive, check_unit_interval
from xrisk.checkpoint import default_checkpoint_settings
from xrisk.functional.dft import dft_log_estimate, dft_log_terms, dft_surrogate
from xrisk.state import PendingWrites, ReplicatedStateModule, SampleState, check_index_unique

__all__ = ["DFTLoss"]

Variant = Literal["dft", "dft2"]

#: The paper's settings of each variant: (tau, gamma).
PAPER_SETTINGS: dict[str, tuple[float, float]] = {"dft": (1.0, 0.85), "dft2": (0.3, 0.9)}


class DFTLoss(ReplicatedStateModule):
    """Discriminative likelihood of the supervised answer among all outputs (DFT / DFT2).

    With the score ``s(y, x) = log pi_theta(y | x)`` of an answer, DFT maximises the
    discriminative likelihood ``P(y_i | x_i) = exp(s(y_i, x_i)/tau) / sum_{y'} exp(s(y', x_i)/tau)``
    of each supervised pair, i.e. minimises

    .. math::

        F(\\theta) = \\frac{1}{n} \\sum_{i=1}^{n} \\Big[ -\\frac{s(y_i, x_i)}{\\tau}
            + \\log g_i \\Big], \\qquad
        g_i = \\mathbb{E}_{y' \\sim p_0(\\cdot|x_i)}
            \\Big[ \\exp\\big( s(y', x_i)/\\tau - \\log p_0(y'|x_i) \\big) \\Big],

    a finite-sum coupled compositional problem: the sum over all outputs is estimated by importance
    sampling with negatives ``y'`` drawn from the base model ``p_0``. For each prompt of the batch,
    with ``d_ij = logp_neg_ij / tau - ref_logp_neg_ij``, the estimate ``u_i`` of ``g_i`` is refreshed in
    log space, ``log u_i <- log((1 - gamma) u_i + gamma (1/m) sum_j exp(d_ij))``, and the returned
    surrogate is

    .. math::

        L = \\frac{1}{B} \\sum_i \\Big[ -\\mathrm{logp\\_pos}_i
            + \\frac{1}{m} \\sum_j w_{ij}\\, \\mathrm{logp\\_neg}_{ij} \\Big], \\qquad
        w_{ij} = \\mathrm{stopgrad}\\big(\\exp(d_{ij} - \\log u_i)\\big),

    whose gradient is ``tau`` times the stochastic gradient of ``F`` (the reference code's scaling).

    ``variant="dft2"`` (the reference's ``ref_free``) has no reference model: ``d_ij = logp_neg_ij / tau``,
    and the scores are **length-normalised** (divide the summed log-probabilities by the answers' token
    counts before calling, e.g. ``xrisk.llm.sequence_logprobs(..., normalize=True)``).

    :meth:`objective` (``objective_name = "neg_log_discriminative_likelihood"``) is the estimate
    ``mean_i (-logp_pos_i / tau + log u_i)`` of ``F`` on the last batch (lower is better).

    Args:
        num_prompts: number of training prompts ``n`` (``index`` runs over ``[0, n)``); also
            ``self.num_samples``.
        variant: ``"dft"`` (reference log-probs required) or ``"dft2"`` (none allowed).
        tau: temperature ``> 0``; default the paper's (DFT 1.0, DFT2 0.3).
        gamma: moving-average weight on the new value in ``(0, 1]``; default the paper's (0.85, 0.9).
        u_init: ``None`` (xrisk's first-visit rule: a prompt's first estimate is its batch estimate) or
            the value of ``log u`` every prompt starts from, as in the reference code (``u_init=0.0``:
            ``u = 1``; close to the truth for DFT with ``tau = 1`` at the start, where ``pi_theta = p_0``
            makes ``d = 0``; for DFT2 it makes the first weights ``exp(d)`` instead of about 1).
        gather: under ``torch.distributed``, compute the loss on the global batch (exact: see below).

    Shapes: ``logp_pos [B]``, ``logp_neg [B, m]`` (``m >= 1``), ``index [B]`` (dataset index of each
    prompt), ``ref_logp_neg [B, m]`` or None. Returns a scalar.

    State: ``log_u``, a :class:`~xrisk.state.SampleState` ``[n]`` of ``log u_i`` (float32, synced by
    ``index_scatter``), written only in training mode and only when the whole update is finite. A prompt
    repeated in a batch gets one update from the mean of its estimates (linear space). Under
    ``torch.distributed`` the scores are gathered with the ``"sum"`` gradient policy and every rank
    computes the same global loss and the same state update, so the gradient after DDP's averaging equals
    the one-process gradient on the concatenated batch and the state stays identical on every rank (no
    epoch-end averaging of ``u`` as in the reference code).

    Example:
        >>> import torch
        >>> from xrisk.losses import DFTLoss
        >>> loss_fn = DFTLoss(num_prompts=100)  # variant="dft": tau=1.0, gamma=0.85
        >>> logp_pos = -torch.rand(4, requires_grad=True) * 20
        >>> logp_neg = -torch.rand(4, 2, requires_grad=True) * 20
        >>> ref = logp_neg.detach() + 0.1 * torch.randn(4, 2)
        >>> loss = loss_fn(logp_pos, logp_neg, torch.tensor([0, 5, 7, 9]), ref_logp_neg=ref)
        >>> loss.backward()
        >>> bool(torch.isfinite(loss_fn.objective()))
        True

    Paper: Guo, Hong, Balmaseda, Yu, Qiu, Liu, Jiang, Zhao, Yang, "Discriminative Finetuning of
    Generative Large Language Models without Reward Models and Human Preference Data", ICML 2025,
    arXiv:2502.18679.
    """

    objective_name = "neg_log_discriminative_likelihood"
    _objective: Tensor

    def __init__(
        self,
        num_prompts: int,
        variant: Variant = "dft",
        *,
        tau: float | None = None,
        gamma: float | None = None,
        u_init: float | None = None,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.variant = check_choice("variant", variant, tuple(PAPER_SETTINGS))
        default_tau, default_gamma = PAPER_SETTINGS[variant]
        self.tau = check_positive("tau", default_tau if tau is None else tau)
        self.gamma = check_unit_interval("gamma", default_gamma if gamma is None else gamma)
        if u_init is not None:
            check_finite("u_init", torch.tensor(float(u_init)))
        self.u_init = None if u_init is None else float(u_init)
        self.num_prompts = num_prompts
        self.num_samples = num_prompts  # the library's name of the data-set size (checkpoint metadata)
        self.gather = bool(gather)
        self.log_u = SampleState(num_prompts, init=0.0 if u_init is None else float(u_init))
        self.register_buffer("_objective", torch.full((), float("nan")), persistent=False)

    def extra_repr(self) -> str:
        return (f"num_prompts={self.num_prompts}, variant={self.variant!r}, tau={self.tau}, gamma={self.gamma}, "
                f"u_init={self.u_init}")

    def forward(self, logp_pos: Tensor, logp_neg: Tensor, index: Tensor, ref_logp_neg: Tensor | None = None) -> Tensor:
        """Surrogate loss of a batch of prompts (scalar tensor); see the class docstring."""
        check = functools.partial(self._check, logp_pos, logp_neg, index, ref_logp_neg)
        if self.gather and xdist.is_distributed():  # every rank validates, then all agree, then gather
            (ref, idx, _), layout = xdist.agree_on_batch(
                type(self).__name__, check,
                lambda out: {"logp_pos": logp_pos, "logp_neg": logp_neg, "index": out[1], "ref_logp_neg": out[0]})
            logp_pos = xdist.all_gather(logp_pos, grad="sum", sizes=layout.sizes)
            logp_neg = xdist.all_gather(logp_neg, grad="sum", sizes=layout.sizes)
            idx = xdist.all_gather_no_grad(idx.to(logp_pos.device), sizes=layout.sizes)
            ref = None if ref is None else xdist.all_gather_no_grad(ref, sizes=layout.sizes)
            unique = bool(torch.unique(idx).numel() == idx.numel())
        else:
            ref, idx, unique = check()
        if logp_pos.shape[0] == 0:
            self._record(None)
            return logp_pos.sum() * 0.0 + logp_neg.sum() * 0.0
        d, log_new = dft_log_terms(logp_neg, ref, self.tau)
        writes = PendingWrites("the DFT estimate log u is not finite (scores or reference log-probs overflow)")
        log_u = self._estimate(idx, log_new, unique, writes)
        loss = dft_surrogate(logp_pos, logp_neg, d, log_u)
        writes.commit(write=self.training)  # all or nothing; state changes in training mode only
        self._record(functools.partial(_objective_estimate, logp_pos.detach(), log_u, self.tau))
        return loss

    def checkpoint_settings(self) -> dict[str, object]:
        """Stored with the state (a checkpoint loads only into a loss with equal settings): the variant and
        ``tau`` fix what ``log u`` estimates."""
        return {**default_checkpoint_settings(self), "variant": self.variant, "tau": self.tau}

    # ------------------------------------------------------------------ steps
    def _check(self, logp_pos: Tensor, logp_neg: Tensor, index: Tensor,
               ref: Tensor | None) -> tuple[Tensor | None, Tensor, bool]:
        """This rank's checks: ``(reference log-probs or None, index as int64, whether it is duplicate-free)``."""
        for name, x in (("logp_pos", logp_pos), ("logp_neg", logp_neg)):
            if not isinstance(x, Tensor) or not x.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
        if logp_pos.dim() != 1 or logp_neg.dim() != 2 or logp_neg.shape[0] != logp_pos.shape[0] or logp_neg.shape[1] < 1:
            raise ValueError(f"logp_pos must be [B] and logp_neg [B, m] with m >= 1, got shapes "
                             f"{tuple(logp_pos.shape)} and {tuple(logp_neg.shape)}")
        if self.variant == "dft" and ref is None:
            raise ValueError("variant='dft' needs ref_logp_neg (the reference model's log-probs of the negatives); "
                             "variant='dft2' needs none")
        if self.variant == "dft2" and ref is not None:
            raise ValueError("variant='dft2' takes no ref_logp_neg (it has no reference model)")
        if ref is not None and (not isinstance(ref, Tensor) or ref.shape != logp_neg.shape):
            raise ValueError(f"ref_logp_neg must have the shape of logp_neg {tuple(logp_neg.shape)}, got "
                             f"{tuple(getattr(ref, 'shape', ()))}")
        tensors = [logp_pos, logp_neg] + ([] if ref is None else [ref])
        if not all_finite(*tensors):
            for name, x in zip(("logp_pos", "logp_neg", "ref_logp_neg"), tensors):
                check_finite(name, x)
        idx, unique = check_index_unique(index, self.num_prompts, batch_size=logp_pos.shape[0])
        return (None if ref is None else ref.detach().to(logp_neg.device, logp_neg.dtype)), idx, unique

    def _estimate(self, idx: Tensor, log_new: Tensor, unique: bool, writes: PendingWrites) -> Tensor:
        """The refreshed ``log u`` at ``idx``, staged in ``writes``; returns the rows of every batch entry."""
        value, seen = self.log_u.tensors()
        idx = idx.to(value.device)
        rows, inv = (idx, None) if unique else torch.unique(idx, return_inverse=True)
        if inv is not None:  # a prompt seen several times: the log of the mean of its estimates (linear space)
            log_new = _log_mean_by_group(log_new.to(value.device), inv, rows.numel())
        seen_rows = seen.index_select(0, rows) if self.u_init is None else torch.ones_like(rows, dtype=torch.bool)
        old = value.index_select(0, rows).to(log_new.dtype)  # computed in the scores' precision, stored in float32
        log_u = dft_log_estimate(old, log_new.to(value.device), self.gamma, seen_rows)
        writes.stage(self.log_u, rows, log_u.float())
        return log_u if inv is None else log_u.index_select(0, inv)

    # ------------------------------------------------------------------ objective
    def _record(self, fn: functools.partial | None) -> None:
        self.__dict__["_pending_objective"] = fn
        self.__dict__["_objective_ready"] = False

    def objective(self) -> Tensor:
        """Estimate of ``F`` on the last (global) batch (NaN before the first batch or after an empty one)."""
        if not self.__dict__.get("_objective_ready", True):
            pending = self.__dict__["_pending_objective"]
            with torch.no_grad():
                value = torch.full((), float("nan")) if pending is None else pending()
            self._objective = value.detach().to(self._objective.device, torch.float32).reshape(())
            self.__dict__["_objective_ready"] = True
        return self._objective.clone()


def _objective_estimate(logp_pos: Tensor, log_u: Tensor, tau: float) -> Tensor:
    return (log_u.to(logp_pos.dtype) - logp_pos / tau).mean()


def _log_mean_by_group(log_x: Tensor, inv: Tensor, groups: int) -> Tensor:
    """``log((1/|G_k|) sum_{i in G_k} exp(log_x_i))`` for the groups ``G_k = {i: inv_i = k}`` (stable)."""
    top = torch.full((groups,), float("-inf"), dtype=log_x.dtype, device=log_x.device)
    top = top.scatter_reduce(0, inv, log_x, reduce="amax")
    total = torch.zeros_like(top).index_add_(0, inv, torch.exp(log_x - top[inv]))
    count = torch.zeros_like(top).index_add_(0, inv, torch.ones_like(log_x))
    return top + torch.log(total / count)
