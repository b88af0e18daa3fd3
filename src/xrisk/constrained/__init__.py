"""Re-exports only."""

from xrisk.constrained.problem import Constraints, ConstrainedProblem, ConstraintReport, ProblemState
from xrisk.constrained.problem import equality_as_inequalities, full_index
from xrisk.constrained.formulation import ConstraintFormulation
from xrisk.constrained.hinge import HingePenalty
from xrisk.constrained.squared_hinge import SquaredHingePenalty
from xrisk.constrained.lagrangian import Lagrangian
from xrisk.constrained.fairness import roc_fairness_constraints, roc_fairness_num_constraints
from xrisk.constrained.forgetting import non_forgetting_constraints

__all__ = ["ProblemState", "ConstrainedProblem", "Constraints", "ConstraintReport", "equality_as_inequalities",
           "full_index",
           "ConstraintFormulation", "HingePenalty", "SquaredHingePenalty", "Lagrangian",
           "roc_fairness_constraints", "roc_fairness_num_constraints", "non_forgetting_constraints"]
