"""AUC-margin (AUC-M) min-max loss, optimised by :class:`xrisk.optim.PESG` (``AUCMLoss``)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from xrisk._validate import check_choice, check_positive, check_unit_interval
from xrisk.functional.aucm import aucm_objective, aucm_quadratic_form, aucm_surrogate
from xrisk.losses.base import ScoreLoss

__all__ = ["AUCMLoss"]

#: the largest batch whose one-task surrogate is computed as ``v^T M v`` with a ``[B + 4, B + 4]`` matrix kept while the
#: labels repeat (:func:`~xrisk.functional.aucm.aucm_quadratic_form`: three autograd nodes; small CPU batches, whose
#: labels the validation reads); larger batches, other devices and gathered batches use the ``O(B)`` form
_FORM_MAX_BATCH = 128


class AUCMLoss(ScoreLoss):
    """AUC-margin loss: the min-max surrogate of AUROC optimised by PESG.

    With ``f`` the ``scores``, ``m`` the ``margin`` and ``mean_+`` / ``mean_-`` the means
    over the batch positives / negatives, ``version="v2"`` (default, class-balanced) is

    .. math::

        F = \\operatorname{mean}_+ (f - a)^2 + \\operatorname{mean}_- (f - b)^2
            + 2\\alpha\\,(m + \\operatorname{mean}_- f - \\operatorname{mean}_+ f) - \\alpha^2

    (this is the intended formula; LibAUC's code mis-parenthesises the cross term into
    ``(n_-/B) mean_- f - mean_+ f``, its issue #74). ``version="v1"`` is the original AUC-M,
    weighted by the positive ratio ``p`` (``imratio`` if given, else the batch ratio of each
    task), with ``E`` the mean over the batch:

    .. math::

        F = (1-p) E[(f-a)^2 1_+] + p E[(f-b)^2 1_-]
            + 2\\alpha\\,(p(1-p) m + E[p f 1_- - (1-p) f 1_+]) - p(1-p)\\alpha^2 .

    Training solves ``min_{w, a, b} max_{alpha >= 0} F``: descend on the model and ``a, b``,
    ascend on ``alpha`` (that is what :class:`xrisk.optim.PESG` does; a plain torch optimizer
    would *descend* on ``alpha``, which is wrong). The returned value is this **surrogate**
    ``F`` (it can be negative and does not measure progress). :meth:`objective`
    (``objective_name = "auc_margin"``) reports the AUC-M objective that the min-max solves,

    .. math::

        A = \\operatorname{Var}_+ f + \\operatorname{Var}_- f
            + (m - \\operatorname{mean}_+ f + \\operatorname{mean}_- f)_+^2 ,

    which for scores in ``[0, 1]`` and ``m = 1`` equals the mean over all positive-negative
    pairs of the batch of ``(m - (f_i - f_j))^2`` (lower is better; ``O(B)`` to compute).

    **Scores are expected in** ``[0, 1]`` (sigmoid outputs) for the default ``margin = 1``.

    Args:
        margin: ``m >= 0``.
        num_tasks: number of labels ``T``; ``scores``/``targets`` are ``[B]`` or ``[B, T]``.
        version: ``"v2"`` (class-balanced) or ``"v1"`` (weighted by ``p``).
        imratio: ``p`` for ``v1``, the positive ratio of the training set, in ``(0, 1)``;
            ``None`` uses each batch's positive ratio. Ignored by ``v2``.

    Parameters (``nn.Parameter``, in ``state_dict``): ``a``, ``b``, ``alpha``, each ``[T]``,
    initialised at 0. No per-sample state, no ``index``; a forward pass writes nothing (in either
    mode; the parameters change only through the optimizer). Under ``torch.distributed`` the loss is
    computed on the gathered global batch, so ``a, b, alpha`` receive the single-process
    gradient on every rank without any reduction (see :mod:`xrisk.distributed`).

    One task, a small CPU batch (``B <= 128``): ``F`` is computed as ``v^T M v`` with ``v = (f, a, b, alpha, 1)``
    and ``M`` (:func:`~xrisk.functional.aucm.aucm_quadratic_form`) kept while the labels repeat, as they do with a
    :class:`~xrisk.data.DualSampler` (three autograd nodes; equal to the ``O(B)`` form up to float rounding).

    Multi-label ``[B, T]``: one ``(a, b, alpha)`` per task; the loss is the mean over the tasks
    that have both a positive and a negative in the batch (others contribute a connected zero).

    A batch in which no task has both classes returns a zero connected to the scores **and** to
    ``a, b, alpha``: every parameter gets a zero gradient, with validation on or off (the device path
    reaches ``a, b, alpha`` through its masks), so the optimizer step after it is a zero-gradient step
    for all of them (:class:`~xrisk.optim.PESG` still applies its decay and momentum to the model and
    ``a, b``, as torch optimizers do; ``alpha``'s ascent step is zero).

    Example:
        >>> import torch
        >>> from xrisk.losses import AUCMLoss
        >>> loss_fn = AUCMLoss()
        >>> logits = torch.randn(8, requires_grad=True)
        >>> targets = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0])
        >>> loss = loss_fn(torch.sigmoid(logits), targets)
        >>> loss.backward()
        >>> bool(loss_fn.objective() >= 0)
        True

    Paper: Yuan, Yan, Sonka, Yang, "Large-scale Robust Deep AUC Maximization: A New Surrogate
    Loss and Empirical Studies on Medical Image Classification", ICCV 2021, arXiv:2012.03173.
    """

    uses_index = False
    objective_name = "auc_margin"

    def __init__(
        self,
        margin: float = 1.0,
        *,
        num_tasks: int = 1,
        version: Literal["v1", "v2"] = "v2",
        imratio: float | None = None,
    ) -> None:
        super().__init__(num_tasks=num_tasks)
        self.margin = check_positive("margin", margin, allow_zero=True)
        self.version = check_choice("version", version, ("v1", "v2"))
        self.imratio = None if imratio is None else check_unit_interval("imratio", imratio, closed_right=False)
        self.a = nn.Parameter(torch.zeros(num_tasks))
        self.b = nn.Parameter(torch.zeros(num_tasks))
        self.alpha = nn.Parameter(torch.zeros(num_tasks))

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, num_tasks={self.num_tasks}, version={self.version!r}, "
                f"imratio={self.imratio}")

    def _loss(self, scores: Tensor, targets: Tensor, index: Tensor | None, pos_counts: list[int]) -> Tensor:
        return self._aucm(scores, targets, pos_counts)

    def _aucm(self, scores: Tensor, targets: Tensor, pos_counts: list[int]) -> Tensor:
        """Mean of the per-task surrogate over tasks with both classes; records the objective (lazily)."""
        size = scores.shape[0]
        if (len(pos_counts) == 1 and size <= _FORM_MAX_BATCH and 0 < pos_counts[0] < size
                and self.__dict__.get("_host_batch") is not None):  # a small CPU batch whose labels were read
            params = self._parameters
            a, b, alpha = params["a"], params["b"], params["alpha"]
            f = self._score_column(scores, 0)
            dtype = f.dtype
            if a.dtype == dtype and b.dtype == dtype and alpha.dtype == dtype:
                # one task: F = v^T M v with v = (f, a, b, alpha, 1), M kept while the labels repeat
                self._record_objective_from(_batch_objective, self._detached_column(scores, 0), targets, [True],
                                            self.margin)
                form, one = self._kept_for_labels(
                    (_form, self.margin, self.version, self.imratio, dtype, f.device), 0, _form, targets, self.margin,
                    self.version, self.imratio, pos_counts[0], dtype)
                v = torch.cat((f, a, b, alpha, one))
                return torch.dot(v, torch.mv(form, v))
        valid = [0 < c < size for c in pos_counts]
        if not any(valid):
            self._record_objective(None)
            return self._zero(scores)
        self._record_aucm_objective(scores, targets, valid)
        if all(valid):
            total = aucm_surrogate(scores, targets, self.a, self.b, self.alpha, margin=self.margin,
                                   version=self.version, p=self.imratio, pos_counts=pos_counts, reduction="sum")
            return total if len(valid) == 1 else total / len(valid)
        values = aucm_surrogate(scores, targets, self.a, self.b, self.alpha, margin=self.margin,
                                version=self.version, p=self.imratio, pos_counts=pos_counts)
        return scores.sum() * 0.0 + values[torch.tensor(valid, device=values.device)].mean()

    def _masked_loss(self, scores: Tensor, targets: Tensor, index: Tensor | None, pos_counts: Tensor) -> Tensor:
        return self._masked_aucm(scores, targets, pos_counts)

    def _masked_aucm(self, scores: Tensor, targets: Tensor, pos_counts: Tensor) -> Tensor:
        """:meth:`_aucm` with the counts on the device: every task computed, the invalid ones masked out."""
        valid = (pos_counts > 0) & (pos_counts < scores.shape[0])
        values = aucm_surrogate(scores, targets, self.a, self.b, self.alpha, margin=self.margin, version=self.version,
                                p=self.imratio, pos_counts=pos_counts)
        self._record_objective_from(_masked_objective, scores.detach(), targets, valid, self.margin)
        return torch.where(valid, values, torch.zeros_like(values)).sum() / valid.sum().clamp_min(1)

    def _record_aucm_objective(self, scores: Tensor, targets: Tensor, valid: list[bool]) -> None:
        """Save what :meth:`objective` needs (detached scores, targets, valid tasks); compute nothing."""
        if not any(valid):
            self._record_objective(None)
        else:
            self._record_objective_from(_batch_objective, scores.detach(), targets, valid, self.margin)


def _form(targets: Tensor, margin: float, version: str, imratio: float | None, n_pos: int,
          dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The quadratic form ``M`` of a one-task batch and the constant ``1`` that ends ``v`` (both kept)."""
    form = aucm_quadratic_form(targets.select(1, 0), margin=margin, version=version, p=imratio,  # type: ignore[arg-type]
                               pos_count=n_pos, dtype=dtype)
    with torch.inference_mode(False):
        return form, torch.ones(1, dtype=dtype, device=form.device)


def _masked_objective(scores: Tensor, targets: Tensor, valid: Tensor, margin: float) -> Tensor:
    """:func:`_batch_objective` with the valid tasks as a ``[T]`` bool tensor (NaN when there is none)."""
    per_task = aucm_objective(scores, targets, margin=margin)
    return torch.where(valid, per_task, torch.zeros_like(per_task)).sum() / valid.sum()


def _batch_objective(scores: Tensor, targets: Tensor, valid: list[bool], margin: float) -> Tensor:
    """Mean over the ``valid`` tasks of :func:`~xrisk.functional.aucm.aucm_objective` (a scalar); ``scores`` ``[B, T]``
    or the ``[B]`` scores of one task."""
    per_task = aucm_objective(scores.view(targets.shape), targets, margin=margin)
    return per_task[torch.tensor(valid, device=per_task.device)].mean()
