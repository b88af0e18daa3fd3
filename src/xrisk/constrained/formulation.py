"""The template every constrained formulation follows (cooper's ``Formulation``).

``formulation(state) -> Tensor`` for a :class:`~xrisk.constrained.ProblemState`:

1. **validate**: a scalar objective, ``[k]`` constraint values, ``[k]`` distinct constraint ids in
   ``[0, m)`` (or none: all ``m`` in order), NaN/inf refused naming the culprit;
2. **sync** (``sync="mean"`` only): under ``torch.distributed`` the ranks' values are all-gathered
   (gradient policy ``"sum"``) and averaged;
3. **estimate**: the running estimates ``u_i`` of the observed constraints are refreshed by the
   moving-average or MSVR kernel (:mod:`xrisk.functional.constrained`; first visit takes the value); the
   shared :func:`~xrisk.constrained.full_index` (what the builders return for a batch that observes every
   constraint) counts as "all ``m``" without an index check;
4. call the subclass hook :meth:`ConstraintFormulation._weights`, which returns the detached weights
   ``w_i`` and may stage more writes (the Lagrangian's multiplier step);
5. **check, then write**: every new state value is computed first and checked finite by reading two values
   computed before either read (one wait for a device): the objective and the sum of the new estimates, which
   carry any NaN/inf of the values, before any is written (all or nothing; further writes a subclass stages go through a
   :class:`~xrisk.state.PendingWrites`); with :func:`xrisk.set_validation` off there is no host read: the
   same flag is required with a device assertion (on CPU it raises before any write) and masks the writes.
   State changes only in training mode (``eval()`` computes the same value and changes nothing, like
   BatchNorm's running estimates). Once this module has written every estimate, a step observing all of
   them is one ``lerp`` (no first-visit branch; ``seen``'s version counter tells whether anything else wrote
   it since);
6. return ``objective + scale(k) * sum_i w_i g_i``: its gradient is the formulation's stochastic
   gradient, its value a surrogate. :meth:`ConstraintFormulation.objective` estimates the penalised
   objective and :meth:`ConstraintFormulation.report` the violations and a KKT residual.

State (in ``state_dict``; see each subclass): ``u`` a :class:`~xrisk.state.SampleState` over the
``m`` constraints (``value``, ``seen``), ``num_steps`` the count of training steps.

**Distributed.** ``sync="replicated"`` (default): every rank passes the same constraint values,
computed on the global batch (the builders :func:`~xrisk.constrained.roc_fairness_constraints` and
:func:`~xrisk.constrained.non_forgetting_constraints` gather the batch with the ``"sum"`` policy), so
every rank applies the same update and, after DDP's gradient averaging, the gradient equals one
process on the concatenated batch (see :mod:`xrisk.distributed`). ``sync="mean"``: each rank passes
values computed on its own batch; they are gathered and averaged over the ranks (same ``index`` on
every rank), which is exact when the global constraint value is the mean of the ranks' values
(equal local batches of per-sample means).
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar, Iterable, Literal

import torch
from torch import Tensor

from xrisk import distributed as xdist
from xrisk._validate import all_finite, assert_async, check_choice, check_unit_interval, validation_enabled
from xrisk.constrained.problem import ConstraintReport, ProblemState, is_full_index
from xrisk.functional.constrained import moving_average_estimate, msvr_correction, msvr_estimate
from xrisk.state import PendingWrites, ReplicatedStateModule, SampleState, check_index_unique

__all__ = ["ConstraintFormulation", "Estimator"]

Estimator = Literal["ma", "msvr"]

_ONE = torch.ones((), dtype=torch.int64)  # the step count's increment (a constant, never written)


class ConstraintFormulation(ReplicatedStateModule):
    """Base class of the formulations; a subclass implements :meth:`_weights` and :meth:`_multipliers`.

    Args:
        num_constraints: number ``m`` of inequality constraints ``g_i(x) <= 0``.
        gamma: weight on the new value in the estimator of each ``g_i(x)``, in ``(0, 1]``
            (``(0, 1)`` for MSVR).
        estimator: ``"ma"`` (moving average) or ``"msvr"`` (moving average plus the correction
            ``gamma' (g(x_t) - g(x_{t-1}))``; needs ``ProblemState.previous``).
        msvr_weight: ``gamma'``; ``None`` uses :func:`~xrisk.functional.constrained.msvr_correction`
            with the number of constraints observed in the step.
        sync: ``"replicated"`` or ``"mean"`` (module docstring).
    """

    objective_name: ClassVar[str] = "penalized_objective"
    #: whether :meth:`_weights` stages writes (it then gets a :class:`~xrisk.state.PendingWrites`, else None)
    _stages_writes: ClassVar[bool] = True
    num_steps: Tensor

    def __init__(
        self,
        num_constraints: int,
        *,
        gamma: float = 0.9,
        estimator: Estimator = "ma",
        msvr_weight: float | None = None,
        sync: Literal["replicated", "mean"] = "replicated",
    ) -> None:
        super().__init__()
        if not isinstance(num_constraints, int) or isinstance(num_constraints, bool) or num_constraints < 1:
            raise ValueError(f"num_constraints must be a positive int, got {num_constraints!r}")
        self.num_constraints = num_constraints
        self.estimator = check_choice("estimator", estimator, ("ma", "msvr"))
        self.gamma = check_unit_interval("gamma", gamma)
        if self.estimator == "msvr" and self.gamma == 1.0:
            raise ValueError("estimator='msvr' needs gamma in (0, 1), got gamma=1.0")
        if msvr_weight is not None and not (math.isfinite(float(msvr_weight)) and float(msvr_weight) >= 0):
            raise ValueError(f"msvr_weight must be finite and >= 0, got {msvr_weight!r}")
        self.msvr_weight = None if msvr_weight is None else float(msvr_weight)
        self.sync = check_choice("sync", sync, ("replicated", "mean"))
        self.u = SampleState(num_constraints)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("_all_ids", torch.arange(num_constraints), persistent=False)  # index of "all of them"
        self.__dict__["_last"] = None  # the last step's objective (a float, or detached), for objective()

    def extra_repr(self) -> str:
        return f"num_constraints={self.num_constraints}, gamma={self.gamma}, estimator={self.estimator!r}"

    def checkpoint_settings(self) -> dict[str, object]:
        """Structural settings stored in checkpoints (:func:`xrisk.checkpoint.checkpoint_settings`)."""
        return {"num_constraints": self.num_constraints, "estimator": self.estimator}

    # ------------------------------------------------------------------ the template
    def forward(self, state: ProblemState) -> Tensor:
        """The scalar to back-propagate for one step (a surrogate; see the module docstring)."""
        if not isinstance(state, ProblemState):
            raise TypeError(f"{type(self).__name__} takes a ProblemState, got {type(state).__name__}")
        if self.sync == "mean" and xdist.is_distributed():  # every rank validates, then all agree, then gather
            (objective, values, index, previous), layout = xdist.agree_on_batch(
                type(self).__name__, functools.partial(self._validated, state, finite=True),
                lambda o: {"values": o[1], "index": o[2], "previous": o[3]})
            values, previous = self._rank_mean(values, index, previous, layout.sizes)
        else:
            objective, values, index, previous = self._validated(state)
        k = values.shape[0]
        if k == 0:
            self.__dict__["_last"] = objective.detach()
            return objective + values.sum() * 0.0
        value, seen = self._modules["u"].tensors()  # (not self.u: nn.Module's attribute fallback costs more here)
        detached = values.detach()
        dtype = detached.dtype
        if dtype != torch.float32:
            detached = detached.to(torch.float32)
        whole = index is None
        all_seen = whole and self._all_seen(seen)
        if all_seen and self.estimator == "ma":
            u_new = torch.lerp(value, detached, self.gamma)  # no first visit left: one kernel
        else:
            old, was_seen = (value, seen) if whole else (value.index_select(0, index), seen.index_select(0, index))
            if self.estimator == "ma":
                u_new = moving_average_estimate(old, was_seen, detached, self.gamma)
            else:
                weight = self.msvr_weight if self.msvr_weight is not None else msvr_correction(
                    self.num_constraints, k, self.gamma)
                assert previous is not None
                u_new = msvr_estimate(old, was_seen, detached, previous.detach().to(torch.float32), self.gamma,
                                      weight)
        writes = PendingWrites(f"{type(self).__name__}: a constraint estimate overflows float32") \
            if self._stages_writes else None
        weights = self._weights(u_new, detached, index, writes)  # may stage more writes (the multipliers)
        total = u_new.sum()  # u_new carries any NaN/inf of the values (and of previous)
        if validation_enabled():  # reads of two values computed before either (one wait for a device); the
            ok = None             # weights and multipliers are functions of finite values
            last: Tensor | float = objective.item()  # (a read that records nothing, unlike detach())
            if not (math.isfinite(float(total)) and math.isfinite(last)):
                self._raise_non_finite(objective, values)
        else:  # no host read: a device assertion (on CPU it raises here), and the writes masked by the same flag
            last = objective.detach()
            ok = torch.isfinite(last + total)
            assert_async(ok, f"{type(self).__name__}: the objective, a constraint value or a new estimate is NaN/inf; "
                             "no state was changed (validation is off: xrisk.set_validation(True) names the cause)")
        if self.training:
            self._write_estimates(u_new, index, ok, value, seen, all_seen)
            if writes is not None and len(writes):
                writes.commit(write=True, check=False)
            self.num_steps.add_(_ONE)
        self.__dict__["_last"] = last
        w = weights if dtype == torch.float32 else weights.to(dtype)
        return torch.add(objective, torch.dot(w, values), alpha=self._scale(k))

    def _all_seen(self, seen: Tensor) -> bool:
        """Whether every constraint has an estimate, known without reading ``seen``: true when this module itself
        marked them all (a whole-set write) and ``seen`` has not been written since (its version counter is the
        one recorded then; ``load_state_dict`` or any other in-place write changes it)."""
        mark = self.__dict__.get("_seen_mark")
        return mark is not None and mark[0] is seen and mark[1] == seen._version

    def _write_estimates(self, u_new: Tensor, index: Tensor | None, ok: Tensor | None, value: Tensor,
                         seen: Tensor, all_seen: bool) -> None:
        """Write the checked estimates of the observed constraints (all of them when ``index`` is None) into the
        state ``(value, seen)``; ``ok`` (validation off): a device flag, the writes keep the old state where it is
        false; ``all_seen``: :meth:`_all_seen` at the start of the step."""
        if ok is not None:
            if index is None:
                old, was_seen = value, seen
            else:
                old, was_seen = value.index_select(0, index), seen.index_select(0, index)
            u_new, mark = torch.where(ok, u_new, old), was_seen | ok
        if index is None:
            value.copy_(u_new)
            if not all_seen:
                if ok is None:
                    seen.fill_(True)
                    self.__dict__["_seen_mark"] = (seen, seen._version)
                else:
                    seen.copy_(mark)
        else:
            value.index_copy_(0, index, u_new)
            if ok is None:
                seen.index_fill_(0, index, True)
            else:
                seen.index_copy_(0, index, mark)

    # ------------------------------------------------------------------ hooks
    def _weights(self, u_new: Tensor, values: Tensor, index: Tensor | None, writes: PendingWrites | None) -> Tensor:
        """Detached weights ``w_i`` of the observed constraints (``[k]`` float32) given their refreshed
        estimates ``u_new``; stage further state writes in ``writes`` (``writes.after(fn)``; None when the class
        sets ``_stages_writes = False``)."""
        raise TypeError(f"{type(self).__name__} must override _weights(u_new, values, index, writes)")

    def _scale(self, k: int) -> float:
        """Factor of ``sum_i w_i g_i`` when ``k`` of the ``m`` constraints are observed."""
        raise TypeError(f"{type(self).__name__} must override _scale(k)")

    def _multipliers(self, estimates: Tensor, seen: Tensor) -> Tensor:
        """``[m]`` multipliers implied by the state (for :meth:`report`)."""
        raise TypeError(f"{type(self).__name__} must override _multipliers(estimates, seen)")

    def _penalty(self, estimates: Tensor, seen: Tensor) -> Tensor:
        """Estimate of what the formulation adds to the objective (for :meth:`objective`)."""
        raise TypeError(f"{type(self).__name__} must override _penalty(estimates, seen)")

    @staticmethod
    def _observed(estimates: Tensor, seen: Tensor) -> Tensor:
        """The estimates where a constraint was observed, 0 elsewhere."""
        return torch.where(seen, estimates, torch.zeros_like(estimates))

    # ------------------------------------------------------------------ validation
    def _validated(self, state: ProblemState, *,
                   finite: bool = False) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Shapes, dtypes and ids (and, with ``finite``, NaN/inf: for the ranks' agreement before a gather)."""
        objective, values, index, previous = state.objective, state.constraints, state.index, state.previous
        if not isinstance(objective, Tensor) or not objective.is_floating_point() or objective.numel() != 1:
            raise ValueError(f"{type(self).__name__}: the objective must be a floating-point scalar tensor, got "
                             f"{getattr(objective, 'shape', type(objective).__name__)}")
        if objective.dim():
            objective = objective.reshape(())
        if not isinstance(values, Tensor) or not values.is_floating_point():
            raise TypeError(f"{type(self).__name__}: constraint values must be a floating-point tensor, got "
                            f"{getattr(values, 'dtype', type(values).__name__)}")
        shape, m = values.shape, self.num_constraints
        if len(shape) != 1:
            raise ValueError(f"{type(self).__name__}: constraint values must be 1-D [k], got shape {tuple(shape)}")
        k = shape[0]
        if index is not None and k == m and is_full_index(index, m):
            index = None  # the shared "every constraint" index of a builder: no checks, no gather
        name = type(self).__name__
        if index is None:
            if k != m:
                raise ValueError(f"{name} was built for num_constraints={m} but got {k} "
                                 "constraint values and no index (pass index= for a subset)")
        else:
            index, unique = check_index_unique(index, self.num_constraints, batch_size=k)
            if not unique:
                raise ValueError(f"{name}: constraint index {index.tolist()} repeats a constraint; "
                                 "each constraint may be observed at most once per step")
            index = index.to(self.u.value.device)
        if self.estimator == "msvr":
            if previous is None:
                raise ValueError(f"{name}(estimator='msvr') needs ProblemState.previous: the step's constraint "
                                 "samples evaluated at the previous iterate")
        if previous is not None and (not isinstance(previous, Tensor) or previous.shape != values.shape):
            raise ValueError(f"{name}: previous must have the shape of the constraint values {tuple(values.shape)}, "
                             f"got {tuple(getattr(previous, 'shape', ()))}")
        if finite and not all_finite(objective, values, *(() if previous is None else (previous,))):
            if all_finite(objective, values):
                raise ValueError(f"{name}: previous holds NaN/inf values")
            self._raise_non_finite(objective, values)
        return objective, values, index, previous

    def _raise_non_finite(self, objective: Tensor, values: Tensor) -> None:
        name = type(self).__name__
        if not all_finite(objective):
            raise ValueError(f"{name}: the objective is NaN/inf ({float(objective.detach())}); no state was changed")
        if not all_finite(values):
            bad = torch.nonzero(~torch.isfinite(values.detach())).flatten().tolist()
            raise ValueError(f"{name}: constraint values at positions {bad} are NaN/inf; no state was changed")
        raise FloatingPointError(f"{name}: a constraint estimate overflows float32; no state was changed")

    def _rank_mean(self, values: Tensor, index: Tensor | None, previous: Tensor | None,
                   sizes: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
        """Mean over ranks of each rank's values (gradient policy ``"sum"``); the ranks must agree on ``index``
        (checked on the gathered ids, so every rank raises alike)."""
        world, k = len(sizes), values.shape[0]
        ids = torch.arange(k, device=values.device) if index is None else index.to(values.device)
        all_ids = xdist.all_gather_no_grad(ids, sizes=sizes)
        if len(set(sizes)) != 1 or not bool((all_ids.reshape(world, k) == all_ids[:k]).all()):
            raise ValueError(f"{type(self).__name__}(sync='mean'): the ranks observed different constraints "
                             f"(counts per rank {list(sizes)}); every rank must pass the same index")
        mean = xdist.all_gather(values, grad="sum", sizes=sizes).reshape(world, k).mean(0)
        prev = None if previous is None else xdist.all_gather_no_grad(previous, sizes=sizes).reshape(world, k).mean(0)
        return mean, prev

    # ------------------------------------------------------------------ reports
    def objective(self) -> Tensor:
        """Estimate of the penalised objective after the last step: the last objective value plus the
        formulation's term at the estimates (NaN before the first step)."""
        last = self.__dict__.get("_last")
        if last is None:
            return torch.full((), float("nan"))
        value, seen = self.u.tensors()
        with torch.no_grad():
            base = (torch.tensor(last, dtype=torch.float32, device=value.device) if isinstance(last, float)
                    else last.to(torch.float32))
            return (base + self._penalty(value, seen)).reshape(())

    def report(self, parameters: Iterable[Tensor] | None = None) -> ConstraintReport:
        """Violations, multipliers and a KKT-residual estimate from the current state (:class:`ConstraintReport`).

        Args:
            parameters: the model's parameters; when given, the norm of their ``.grad`` (left by the
                last backward pass of this formulation's output) is the stationarity term.
        """
        value, seen = self.u.tensors()
        with torch.no_grad():
            estimates = torch.where(seen, value, torch.full_like(value, float("nan")))
            violation = torch.where(seen, value.clamp_min(0.0), torch.zeros_like(value))
            multipliers = self._multipliers(value, seen)
            comp = torch.where(seen, multipliers * value.abs(), torch.zeros_like(value))
            max_violation, complementarity = torch.stack((violation.max(), comp.max())).tolist()
            stationarity = None
            if parameters is not None:
                grads = [p.grad.detach().reshape(-1) for p in parameters if p.grad is not None]
                stationarity = float(torch.cat(grads).norm()) if grads else 0.0
        kkt = max(max_violation, complementarity, stationarity or 0.0)
        return ConstraintReport(estimates, violation, max_violation, multipliers, complementarity, stationarity,
                                kkt, int(self.num_steps))


def check_beta(name: str, beta: float) -> float:
    """``beta`` as a float if finite and > 0; else a ValueError naming the value."""
    b = float(beta)
    if not math.isfinite(b) or b <= 0:
        raise ValueError(f"{name}: beta must be finite and > 0, got {beta!r}")
    return b
