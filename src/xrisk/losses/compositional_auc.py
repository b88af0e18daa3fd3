"""Compositional AUC loss: alternating cross-entropy and AUC-M steps, optimised by :class:`xrisk.optim.PDSCA`."""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from xrisk.losses.aucm import AUCMLoss

__all__ = ["CompositionalAUCLoss"]


class CompositionalAUCLoss(AUCMLoss):
    """Compositional AUC loss: AUC-M of the model after a cross-entropy step.

    The objective (Yuan, Guo, Chawla, Yang, ICLR 2022) is

    .. math::

        \\min_{w, a, b} \\max_{\\alpha \\ge 0}
            F_{\\mathrm{AUC}}\\big(w - \\eta_0 \\nabla L_{\\mathrm{CE}}(w), a, b, \\alpha\\big),

    with ``F_AUC`` the AUC-M min-max function of :class:`AUCMLoss` (same kernel, same ``v1``/``v2``
    forms, ``margin``) and ``L_CE`` the binary cross-entropy of the scores (probabilities in
    ``[0, 1]``). It is trained by alternation, driven by a step counter ``num_steps``: the calls
    ``n`` with ``n mod 2k < k`` return the **cross-entropy** ``mean_{i,t} BCE(f_it, y_it)``
    (the inner step), the next ``k`` calls return the **AUC-M surrogate** (the outer step).
    :class:`xrisk.optim.PDSCA` reads :meth:`last_phase` to apply the matching update. In the
    cross-entropy phase ``a``, ``b`` and ``alpha`` get a zero gradient (connected, with validation on as
    off), which PDSCA leaves unused; another optimizer sees the same gradients either way.

    The returned value is the surrogate of the current phase (the AUC-M part can be negative).
    :meth:`objective` (``objective_name = "auc_margin"``) reports the AUC-M objective estimate
    ``Var_+ f + Var_- f + (m - mean_+ f + mean_- f)_+^2`` of the batch in **both** phases, so
    it is a consistent progress measure.

    **Scores must be probabilities in** ``[0, 1]`` (sigmoid outputs): the cross-entropy phase
    raises :class:`ValueError` otherwise.

    Args:
        margin: ``m >= 0`` of AUC-M.
        k: number of consecutive cross-entropy steps, then of AUC-M steps (``>= 1``).
        num_tasks: number of labels ``T``.
        version: ``"v2"`` (class-balanced, default) or ``"v1"``; see :class:`AUCMLoss`.
        imratio: ``p`` of ``v1`` (``None``: batch ratio).

    State: parameters ``a, b, alpha`` ``[T]`` (as :class:`AUCMLoss`) and the buffer
    ``num_steps`` (int64 scalar, in ``state_dict``: resuming continues the same alternation).
    The counter advances on every training-mode call that reaches the loss, i.e. every batch with at
    least one positive (a batch without positives returns a connected zero and changes nothing); in
    ``eval()`` mode a call computes the current phase's value and leaves the counter as it is (and
    :meth:`last_phase` with it). A step that raises does not advance it.
    Under ``torch.distributed`` every rank sees the same global batch, so the counters agree.

    Example:
        >>> import torch
        >>> from xrisk.losses import CompositionalAUCLoss
        >>> loss_fn = CompositionalAUCLoss(k=1)
        >>> scores = torch.sigmoid(torch.randn(8, requires_grad=True))
        >>> targets = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0])
        >>> _ = loss_fn(scores, targets); loss_fn.last_phase()
        'ce'
        >>> _ = loss_fn(scores, targets); loss_fn.last_phase()
        'auc'

    Paper: Yuan, Guo, Chawla, Yang, "Compositional Training for End-to-End Deep AUC
    Maximization", ICLR 2022 (openreview gPvB4pdu_Z).
    """

    num_steps: Tensor

    def __init__(
        self,
        margin: float = 1.0,
        *,
        k: int = 1,
        num_tasks: int = 1,
        version: Literal["v1", "v2"] = "v2",
        imratio: float | None = None,
    ) -> None:
        super().__init__(margin, num_tasks=num_tasks, version=version, imratio=imratio)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.k = k
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", k={self.k}"

    def phase(self, step: int) -> Literal["ce", "auc"]:
        """Phase of the call number ``step`` (0-based): ``"ce"`` iff ``step mod 2k < k``."""
        return "ce" if step % (2 * self.k) < self.k else "auc"

    def last_phase(self) -> Literal["ce", "auc"]:
        """Phase of the most recent call (what the gradients in ``.grad`` come from)."""
        n = int(self.num_steps)
        if n == 0:
            raise RuntimeError("CompositionalAUCLoss has not been called yet: no phase to report")
        return self.phase(n - 1)

    def _loss(self, scores: Tensor, targets: Tensor, index: Tensor | None, pos_counts: list[int]) -> Tensor:
        phase = self.phase(int(self.num_steps))
        if phase == "ce":
            lo, hi = torch.aminmax(scores.detach())
            if float(lo) < 0 or float(hi) > 1:
                raise ValueError(
                    "CompositionalAUCLoss needs probabilities in [0, 1] (sigmoid outputs) for its "
                    f"cross-entropy phase; got scores in [{float(lo):.4g}, {float(hi):.4g}]"
                )
            size = scores.shape[0]
            self._record_aucm_objective(scores, targets, [0 < c < size for c in pos_counts])
            # + a zero connected to a, b, alpha: they get a zero gradient, as on the device path (_masked_loss)
            out = F.binary_cross_entropy(scores, targets.to(scores.dtype)) + self._zero(scores)
        else:
            out = self._aucm(scores, targets, pos_counts)
        self._writes.after(functools.partial(self.num_steps.add_, 1))  # training mode, committed step
        return out

    def _masked_loss(self, scores: Tensor, targets: Tensor, index: Tensor | None, pos_counts: Tensor) -> Tensor:
        """Both phases' values, the current one selected on the device (no read of ``num_steps``). The
        cross-entropy is taken of the scores clamped to ``[0, 1]`` (nothing is checked: out-of-range scores give
        no error), the counter advances on batches with a positive."""
        aucm = self._masked_aucm(scores, targets, pos_counts)
        ce = F.binary_cross_entropy(scores.clamp(0.0, 1.0), targets.to(scores.dtype))
        out = torch.where(self.phase_is_ce(self.num_steps), ce, aucm)
        has_positive = (pos_counts.sum() > 0).to(self.num_steps.dtype)
        self._writes.after(functools.partial(self.num_steps.add_, has_positive))
        return out

    def phase_is_ce(self, step: Tensor) -> Tensor:
        """:meth:`phase` on the device: a bool tensor, True where the call number ``step`` is a cross-entropy step."""
        return torch.remainder(step, 2 * self.k) < self.k

    def last_phase_is_ce(self) -> Tensor:
        """:meth:`last_phase` on the device, ``== "ce"`` as a 0-dim bool tensor (no host read, nothing checked)."""
        return self.phase_is_ce(self.num_steps - 1)
