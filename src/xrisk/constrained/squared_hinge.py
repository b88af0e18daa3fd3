"""Squared-hinge penalty, the inexact baseline of the hinge penalty (``SquaredHingePenalty``)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from xrisk.constrained.formulation import ConstraintFormulation, Estimator, check_beta
from xrisk.functional.constrained import penalty_value, squared_hinge_weight
from xrisk.state import PendingWrites

__all__ = ["SquaredHingePenalty"]


class SquaredHingePenalty(ConstraintFormulation):
    """Squared-hinge penalty ``F + (beta / (2m)) sum_i [g_i]_+^2`` with one estimator per constraint.

    .. math::

        \\Phi_\\beta(x) = F(x) + \\frac{\\beta}{2m} \\sum_{i=1}^m [g_i(x)]_+^2 .

    The penalty is smooth but not exact: a minimiser of ``Phi`` violates an active constraint by about
    ``m |lambda_i| / beta`` (``lambda`` the KKT multipliers), so feasibility to ``eps`` needs
    ``beta ~ 1/eps`` (``beta -> inf``). Estimators as in :class:`~xrisk.constrained.HingePenalty`; the
    returned scalar is ``F(x; zeta) + (beta/|S|) sum_{i in S} [u_i]_+ g_i(x; xi_i)`` with the detached
    weights ``[u_i]_+`` (the DevSafety squared-hinge variant, reconstructed).

    Args:
        num_constraints: ``m``.
        beta: penalty parameter ``beta > 0``.
        gamma, estimator, msvr_weight, sync: as in :class:`~xrisk.constrained.HingePenalty`.

    State: ``u`` (:class:`~xrisk.state.SampleState` over the constraints) and ``num_steps``.

    Example:
        >>> import torch
        >>> from xrisk.constrained import ProblemState, SquaredHingePenalty
        >>> w = torch.zeros(1, requires_grad=True)
        >>> penalty = SquaredHingePenalty(1, beta=4.0, gamma=1.0)
        >>> penalty(ProblemState(objective=w.sum() * 0, constraints=1.0 - w)).backward()
        >>> w.grad.tolist()   # -(beta/m) [g]_+ = -4 * 1
        [-4.0]
    """

    objective_name = "penalized_objective"
    _stages_writes = False  # the weights are all it computes

    def __init__(
        self,
        num_constraints: int,
        beta: float,
        *,
        gamma: float = 0.9,
        estimator: Estimator = "ma",
        msvr_weight: float | None = None,
        sync: Literal["replicated", "mean"] = "replicated",
    ) -> None:
        super().__init__(num_constraints, gamma=gamma, estimator=estimator, msvr_weight=msvr_weight, sync=sync)
        self.beta = check_beta(type(self).__name__, beta)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}"

    def _weights(self, u_new: Tensor, values: Tensor, index: Tensor | None,
                 writes: PendingWrites | None) -> Tensor:
        return squared_hinge_weight(u_new)

    def _scale(self, k: int) -> float:
        return self.beta / k

    def _multipliers(self, estimates: Tensor, seen: Tensor) -> Tensor:
        return self._observed(squared_hinge_weight(estimates), seen) * (self.beta / self.num_constraints)

    def _penalty(self, estimates: Tensor, seen: Tensor) -> Tensor:
        return penalty_value(self._observed(estimates, seen), self.beta, "squared")
