"""Stochastic gradient descent-ascent on the Lagrangian (``Lagrangian``)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from xrisk._validate import check_positive
from xrisk.constrained.formulation import ConstraintFormulation, Estimator
from xrisk.state import PendingWrites

__all__ = ["Lagrangian"]


class Lagrangian(ConstraintFormulation):
    """Projected stochastic gradient descent-ascent on ``L(x, lambda) = F(x) + sum_i lambda_i g_i(x)``.

    .. math::

        \\min_x \\max_{\\lambda \\ge 0}\\; F(x) + \\sum_{i=1}^m \\lambda_i g_i(x) .

    The returned scalar is ``F(x; zeta) + (m/|S|) sum_{i in S} lambda_i g_i(x; xi_i)`` with the
    multipliers detached (the primal descent step is the user's ``torch.optim`` optimizer); in the same
    training step the multipliers of the observed constraints take a projected ascent step on the
    sampled constraint values,

    .. math::

        \\lambda_i \\leftarrow \\big[\\lambda_i + \\eta_\\lambda\\, g_i(x_t; \\xi_{i,t})\\big]_+ ,

    (simultaneous updates: the primal gradient uses ``lambda_t``; cooper's ``SimultaneousOptimizer``
    with SGD on a ``DenseMultiplier``). The estimators ``u_i`` (moving averages, as in the penalties)
    serve the violation reports only.

    Args:
        num_constraints: ``m``.
        dual_lr: ascent step ``eta_lambda > 0``.
        init: initial value of every multiplier (``>= 0``).
        gamma, estimator, msvr_weight, sync: the reporting estimators (see
            :class:`~xrisk.constrained.HingePenalty`).

    State: ``multipliers`` ``[m]`` (buffer, float32), ``u`` (:class:`~xrisk.state.SampleState`),
    ``num_steps``; written in training mode only, all or nothing.

    Example:
        >>> import torch
        >>> from xrisk.constrained import Lagrangian, ProblemState
        >>> w = torch.zeros(1, requires_grad=True)
        >>> lagrangian = Lagrangian(1, dual_lr=0.5)
        >>> _ = lagrangian(ProblemState(objective=w.sum() * 0, constraints=1.0 - w))
        >>> lagrangian.multipliers.tolist()   # [0 + 0.5 * 1]_+
        [0.5]
    """

    objective_name = "lagrangian"
    multipliers: Tensor

    def __init__(
        self,
        num_constraints: int,
        *,
        dual_lr: float,
        init: float = 0.0,
        gamma: float = 0.9,
        estimator: Estimator = "ma",
        msvr_weight: float | None = None,
        sync: Literal["replicated", "mean"] = "replicated",
    ) -> None:
        super().__init__(num_constraints, gamma=gamma, estimator=estimator, msvr_weight=msvr_weight, sync=sync)
        self.dual_lr = check_positive("Lagrangian: dual_lr", dual_lr)
        init = check_positive("Lagrangian: init", init, allow_zero=True)
        self.register_buffer("multipliers", torch.full((num_constraints,), init, dtype=torch.float32))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dual_lr={self.dual_lr}"

    def _weights(self, u_new: Tensor, values: Tensor, index: Tensor | None, writes: PendingWrites) -> Tensor:
        lam = self.multipliers
        current = lam.clone() if index is None else lam.index_select(0, index)
        new = (current + self.dual_lr * values).clamp_min(0.0)
        if index is None:
            writes.after(lambda: lam.copy_(new))
        else:
            writes.after(lambda: lam.index_copy_(0, index, new))
        return current

    def _scale(self, k: int) -> float:
        return self.num_constraints / k

    def _multipliers(self, estimates: Tensor, seen: Tensor) -> Tensor:
        return self.multipliers.clone()

    def _penalty(self, estimates: Tensor, seen: Tensor) -> Tensor:
        return (self.multipliers * self._observed(estimates, seen)).sum()
