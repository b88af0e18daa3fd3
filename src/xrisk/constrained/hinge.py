"""The single-loop hinge-penalty method with a constant penalty parameter (``HingePenalty``)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from xrisk.constrained.formulation import ConstraintFormulation, Estimator, check_beta
from xrisk.functional.constrained import hinge_weight, penalty_value
from xrisk.state import PendingWrites

__all__ = ["HingePenalty"]


class HingePenalty(ConstraintFormulation):
    """Exact hinge penalty ``F + (beta/m) sum_i [g_i]_+`` with one estimator per constraint.

    The method of Yang, Li, Hu, Lin, Yang (single-loop algorithms for weakly convex constraints)
    minimises the penalised objective

    .. math::

        \\Phi_\\beta(x) = F(x) + \\frac{\\beta}{m} \\sum_{i=1}^m \\psi\\big(g_i(x)\\big), \\qquad
        \\psi(u) = [u]_+ ,

    with a **constant** ``beta``: under a constraint qualification, ``beta`` above a finite threshold
    (about the objective's Lipschitz constant over the smallest subgradient norm of the violated
    constraints) makes nearly stationary points of ``Phi`` nearly KKT points of the constrained
    problem (an exact penalty; the squared hinge needs ``beta -> inf``). Each ``g_i(x) = E g_i(x; xi)``
    is tracked by a running estimate ``u_i`` refreshed when constraint ``i`` is observed (``gamma`` the
    weight on the new value; a constraint's first observation is taken as is):

    .. math::

        u_i \\leftarrow (1 - \\gamma) u_i + \\gamma\\, g_i(x_t; \\xi_t)
        \\quad [+\\ \\gamma' (g_i(x_t; \\xi_t) - g_i(x_{t-1}; \\xi_t)) \\text{ for MSVR}],

    and the returned scalar is ``F(x; zeta) + (beta/|S|) sum_{i in S} w_i g_i(x; xi_i)`` with the
    detached weights ``w_i = psi'(u_i) = 1[u_i > 0]`` (``S`` the observed constraints): its gradient is
    the method's stochastic gradient. ``smooth=nu`` replaces ``psi`` by its Moreau envelope (a
    Huber-like hinge), whose derivative is ``clip(u / nu, 0, 1)``. Works with any ``torch.optim``
    optimizer (the paper's analysis is for the subgradient step; momentum/Adam are what experiments use).

    **Reconstructed.** The paper's update rules were not available to us; this follows the reference
    notes (the authors' DevSafety code for the moving-average hinge penalty, the group's MSVR
    estimator, SONEX's smoothed hinge). The ``1/m`` normalisation of the penalty is the group's
    convention; ``beta`` here therefore multiplies the *mean* violation.

    Args:
        num_constraints: ``m``.
        beta: penalty parameter ``beta > 0`` (constant).
        gamma: estimator weight on the new value, in ``(0, 1]`` (``(0, 1)`` for MSVR).
        estimator: ``"ma"`` or ``"msvr"`` (needs ``ProblemState.previous``).
        smooth: ``None`` (the hinge) or ``nu > 0`` (its Moreau envelope).
        msvr_weight: MSVR's ``gamma'`` (default: :func:`~xrisk.functional.constrained.msvr_correction`).
        sync: ``"replicated"`` or ``"mean"`` (see :mod:`xrisk.constrained.formulation`).

    State: ``u`` (:class:`~xrisk.state.SampleState` over the ``m`` constraints: ``value``, ``seen``),
    ``num_steps``; all in ``state_dict``; written in training mode only, all or nothing.

    Example:
        >>> import torch
        >>> from xrisk.constrained import HingePenalty, ProblemState
        >>> w = torch.zeros(2, requires_grad=True)
        >>> penalty = HingePenalty(1, beta=10.0, gamma=1.0)
        >>> state = ProblemState(objective=((w - 2.0) ** 2).sum(), constraints=(w.sum() - 1.0).reshape(1))
        >>> penalty(state).backward()   # constraint satisfied at w = 0: only the objective's gradient
        >>> w.grad.tolist()
        [-4.0, -4.0]

    Paper: Yang, Li, Hu, Lin, Yang, "Single-loop Algorithms for Stochastic Non-convex Optimization with
    Weakly-Convex Constraints", arXiv:2504.15243 (2025).
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
        smooth: float | None = None,
        msvr_weight: float | None = None,
        sync: Literal["replicated", "mean"] = "replicated",
    ) -> None:
        super().__init__(num_constraints, gamma=gamma, estimator=estimator, msvr_weight=msvr_weight, sync=sync)
        self.beta = check_beta(type(self).__name__, beta)
        if smooth is not None:
            smooth = float(smooth)
            if not (smooth > 0 and smooth < float("inf")):
                raise ValueError(f"HingePenalty: smooth (nu) must be finite and > 0 or None, got {smooth!r}")
        self.smooth = smooth

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, smooth={self.smooth}"

    def _weights(self, u_new: Tensor, values: Tensor, index: Tensor | None,
                 writes: PendingWrites | None) -> Tensor:
        return hinge_weight(u_new, self.smooth)

    def _scale(self, k: int) -> float:
        return self.beta / k

    def _multipliers(self, estimates: Tensor, seen: Tensor) -> Tensor:
        return self._observed(hinge_weight(estimates, self.smooth), seen) * (self.beta / self.num_constraints)

    def _penalty(self, estimates: Tensor, seen: Tensor) -> Tensor:
        return penalty_value(self._observed(estimates, seen), self.beta, "hinge", self.smooth)
