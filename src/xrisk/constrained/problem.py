"""The problem side of constrained learning: what the user states (cooper's vocabulary).

A constrained minimisation problem is

.. math::

    \\min_x F(x) \\quad \\text{s.t.} \\quad g_i(x) \\le 0, \\quad i = 1, \\dots, m ,

with ``F`` and each ``g_i`` observed through mini-batch estimates. The user computes one step's
:class:`ProblemState` (the objective value and the values of the constraints observed in the step,
each a tensor computed on its own data and connected to the model) either directly or with a
:class:`ConstrainedProblem` subclass; a *formulation* (:class:`~xrisk.constrained.HingePenalty`,
:class:`~xrisk.constrained.SquaredHingePenalty`, :class:`~xrisk.constrained.Lagrangian`) turns it into
the scalar whose gradient any ``torch.optim`` optimizer follows. Swapping formulations is a one-line
change; the problem does not change.

Equality constraints ``h(x) = 0`` enter as the two inequalities ``h - tol <= 0`` and ``-h - tol <= 0``
(:func:`equality_as_inequalities`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["Constraints", "ProblemState", "ConstrainedProblem", "ConstraintReport", "equality_as_inequalities",
           "full_index", "is_full_index"]


def full_index(m: int, device: torch.device | str | None = None) -> Tensor:
    """The index ``0..m-1`` ("every constraint, in order") as one shared tensor per ``(m, device)``.

    A formulation recognises this very tensor (unmodified: its version counter is 0) as "all ``m``
    constraints" and skips the checks and the gather an arbitrary index needs; a builder that observes every
    constraint returns it. Do not write into it (a written one is no longer recognised, and is replaced).
    """
    key = (m if type(m) is int else int(m), device if type(device) is torch.device else torch.device(
        "cpu" if device is None else device))
    ids = _FULL.get(key)
    if ids is None or ids._version != 0:
        if ids is not None:
            _FULL_IDS.pop(id(ids), None)
        ids = _FULL[key] = torch.arange(key[0], device=key[1])
        _FULL_IDS[id(ids)] = (ids, key[0])
    return ids


def is_full_index(index: Tensor, m: int) -> bool:
    """Whether ``index`` is :func:`full_index` of ``m`` constraints on its device (unmodified)."""
    hit = _FULL_IDS.get(id(index))
    return hit is not None and hit[0] is index and hit[1] == m and index._version == 0


_FULL: dict[tuple[int, torch.device], Tensor] = {}
_FULL_IDS: dict[int, tuple[Tensor, int]] = {}  # id of each tensor in _FULL -> (it, m): recognised without its device


class Constraints(NamedTuple):
    """Values of the constraints observed in a step, and which constraints they are.

    Attributes:
        values: ``[k]`` constraint values ``g_i(x; xi)`` (``<= 0`` means satisfied), with graph.
        index: ``[k]`` int64 ids in ``[0, m)`` of those constraints (each at most once).
    """

    values: Tensor
    index: Tensor


@dataclass
class ProblemState:
    """One step of a constrained problem (cooper's ``CMPState``).

    Attributes:
        objective: scalar objective estimate ``F(x; zeta)`` with graph; may be the surrogate of any
            xrisk X-risk loss (its own estimators are updated by its own forward pass).
        constraints: ``[k]`` constraint values ``g_i(x; xi_i)`` with graph (``<= 0`` is feasible).
        index: ``[k]`` ids of the observed constraints in ``[0, m)``; ``None`` means all ``m``
            constraints in order (then ``k`` must equal ``m``).
        previous: ``[k]`` the same samples' constraint values at the previous iterate (detached),
            needed by the MSVR estimator only.
        misc: anything the caller wants to keep with the step (logits, metrics); unused here.
    """

    objective: Tensor
    constraints: Tensor
    index: Tensor | None = None
    previous: Tensor | None = None
    misc: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_constraints(cls, objective: Tensor, constraints: Constraints, **kwargs: Any) -> ProblemState:
        """A state from an objective and a :class:`Constraints` pair (what the builders return)."""
        return cls(objective, constraints.values, constraints.index, **kwargs)


class ConstrainedProblem(abc.ABC):
    """Template of a constrained problem (cooper's ``ConstrainedMinimizationProblem``).

    A subclass states its number of constraints and computes a step's :class:`ProblemState`:

    Example:
        >>> class Budget(ConstrainedProblem):
        ...     num_constraints = 1
        ...     def compute_state(self, w: Tensor) -> ProblemState:
        ...         return ProblemState(objective=((w - 2.0) ** 2).sum(), constraints=(w.sum() - 1.0).reshape(1))
        >>> state = Budget().compute_state(torch.zeros(2, requires_grad=True))
        >>> state.constraints.tolist()
        [-1.0]
    """

    #: Number ``m`` of inequality constraints; the formulation must be built with the same number.
    num_constraints: int

    @abc.abstractmethod
    def compute_state(self, *args: Any, **kwargs: Any) -> ProblemState:
        """The objective and the observed constraint values at the current parameters."""


@dataclass(frozen=True)
class ConstraintReport:
    """What a formulation reports after a step (:meth:`ConstraintFormulation.report`).

    Attributes:
        estimates: ``[m]`` the estimates ``u_i`` of ``g_i(x)`` (NaN for a constraint never observed).
        violation: ``[m]`` estimated violations ``[u_i]_+`` (0 for a constraint never observed).
        max_violation: the largest estimated violation.
        multipliers: ``[m]`` the multipliers the formulation implies: ``(beta/m) psi'(u_i)`` for a
            penalty, ``lambda_i`` for the Lagrangian.
        complementarity: ``max_i lambda_i |u_i|`` over the observed constraints.
        stationarity: the norm of the gradient left in ``parameters`` by the last backward pass of the
            formulation's output (the stochastic gradient of the Lagrangian at the implied
            multipliers); ``None`` when no parameters were given.
        kkt_residual: ``max(max_violation, complementarity, stationarity)``: an estimate of how far
            the iterate is from an approximate KKT point (a stochastic, one-batch estimate).
        steps: training steps taken.
    """

    estimates: Tensor
    violation: Tensor
    max_violation: float
    multipliers: Tensor
    complementarity: float
    stationarity: float | None
    kkt_residual: float
    steps: int


def equality_as_inequalities(h: Tensor, tol: float = 0.0) -> Tensor:
    """Equality constraints ``h(x) = 0`` (``[k]``) as ``2k`` inequalities ``[h - tol, -h - tol] <= 0``.

    Example:
        >>> equality_as_inequalities(torch.tensor([0.5]), tol=0.25).tolist()
        [0.25, -0.75]
    """
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    h = h.reshape(-1)
    return torch.cat((h - tol, -h - tol))
