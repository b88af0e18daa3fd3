"""ICU stays as irregular ``(time, variable, value)`` triplets, and per-variable value statistics.

:class:`ClinicalStays` keeps every stay's measurements in three flat arrays with offsets (a CSR
layout): stay ``i`` owns rows ``offsets[i]:offsets[i + 1]``, sorted by time. Variables are numbered
``1..V`` in the order of ``variable_names``; ``0`` is reserved for padding (the model's padding id).

:class:`VariableStats` is the per-variable normalisation ``(value - mean_v) / std_v``, fitted on the
training split only (:meth:`VariableStats.fit`) and stored in the model
(:meth:`xrisk.models.TripletTransformer.set_value_stats`) and next to it as JSON.

Example:
    >>> import numpy as np
    >>> stays = ClinicalStays(stay_ids=("a", "b"), variable_names=("hr", "lactate"),
    ...     offsets=np.array([0, 2, 3]), times=np.array([0.0, 1.5, 0.2]),
    ...     variables=np.array([1, 2, 1]), values=np.array([80.0, 2.1, 110.0], dtype=np.float32),
    ...     labels=np.array([0.0, 1.0], dtype=np.float32))
    >>> len(stays), stays.lengths.tolist(), stays.stay(0)[1].tolist()
    (2, [2, 1], [1, 2])
    >>> VariableStats.fit(stays).mean.tolist()
    [95.0, 2.0999999046325684]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ClinicalStays", "VariableStats"]


@dataclass(frozen=True)
class ClinicalStays:
    """Stays of one split as flat arrays (see the module docstring).

    Attributes:
        stay_ids: ``n`` stay identifiers (strings, as in the CSV file).
        variable_names: ``V`` variable names; variable id ``k`` is ``variable_names[k - 1]``.
        offsets: ``[n + 1]`` int64 row offsets.
        times: ``[T]`` float64 hours since the stay's start, non-decreasing within a stay.
        variables: ``[T]`` int64 variable ids in ``1..V``.
        values: ``[T]`` float32 raw (unnormalised) values.
        labels: ``[n]`` float32 outcome (0/1), NaN where the stay has no label.
    """

    stay_ids: tuple[str, ...]
    variable_names: tuple[str, ...]
    offsets: np.ndarray
    times: np.ndarray
    variables: np.ndarray
    values: np.ndarray
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self) -> None:
        n = len(self.stay_ids)
        if self.labels.size == 0 and n:
            object.__setattr__(self, "labels", np.full(n, np.nan, np.float32))
        if self.offsets.shape != (n + 1,) or int(self.offsets[0]) != 0:
            raise ValueError(f"offsets must be [n + 1] = [{n + 1}] starting at 0, got shape {self.offsets.shape}")
        t = int(self.offsets[-1])
        if not (self.times.shape == self.variables.shape == self.values.shape == (t,)):
            raise ValueError(
                f"times, variables and values must all be [{t}], got {self.times.shape}, "
                f"{self.variables.shape}, {self.values.shape}"
            )
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be [{n}], got {self.labels.shape}")
        if t and (self.variables.min() < 1 or self.variables.max() > len(self.variable_names)):
            raise ValueError(f"variable ids must lie in 1..{len(self.variable_names)}")

    def __len__(self) -> int:
        return len(self.stay_ids)

    @property
    def num_variables(self) -> int:
        """``V``, the number of variable names."""
        return len(self.variable_names)

    @property
    def lengths(self) -> np.ndarray:
        """``[n]`` number of measurements of each stay."""
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        """Total number of measurements."""
        return int(self.offsets[-1])

    def stay(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(times, variables, values)`` of stay ``i`` (views into the flat arrays)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.times[a:b], self.variables[a:b], self.values[a:b]

    def subset(self, index: Sequence[int] | np.ndarray) -> ClinicalStays:
        """The stays ``index`` (in that order) as a new :class:`ClinicalStays`."""
        idx = np.asarray(index, dtype=np.int64)
        lengths = self.lengths[idx]
        offsets = np.zeros(idx.size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]) if idx.size else \
            np.zeros(0, np.int64)
        return ClinicalStays(
            stay_ids=tuple(self.stay_ids[i] for i in idx), variable_names=self.variable_names, offsets=offsets,
            times=self.times[rows], variables=self.variables[rows], values=self.values[rows],
            labels=self.labels[idx],
        )

    def with_labels(self, labels: Mapping[str, float]) -> ClinicalStays:
        """A copy whose ``labels`` come from ``{stay_id: 0/1}`` (NaN for stays not in the mapping)."""
        y = np.array([labels.get(s, np.nan) for s in self.stay_ids], dtype=np.float32)
        return ClinicalStays(self.stay_ids, self.variable_names, self.offsets, self.times, self.variables,
                             self.values, y)

    @property
    def labelled(self) -> np.ndarray:
        """Indices of the stays that have a label."""
        return np.flatnonzero(~np.isnan(self.labels))


@dataclass(frozen=True)
class VariableStats:
    """Per-variable mean and standard deviation of the raw values (the normalisation of the model inputs).

    ``normalised = (value - mean[v - 1]) / std[v - 1]`` for a measurement of variable id ``v``.
    A variable never observed in the fitting split gets ``mean = 0, std = 1``; ``std`` is at least
    ``min_std`` (a constant variable does not divide by zero).

    Attributes:
        variable_names: ``V`` names (the order of the ids).
        mean, std: ``[V]`` float64.
        count: ``[V]`` number of values each statistic was fitted on.
    """

    variable_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray

    @classmethod
    def fit(cls, stays: ClinicalStays, *, min_std: float = 1e-3) -> VariableStats:
        """Fit on ``stays`` (pass the training split only: test values must not leak into the model)."""
        v = stays.num_variables
        ids = stays.variables - 1
        x = stays.values.astype(np.float64)
        count = np.bincount(ids, minlength=v).astype(np.int64)
        total = np.bincount(ids, weights=x, minlength=v)
        mean = np.divide(total, count, out=np.zeros(v), where=count > 0)
        sq = np.bincount(ids, weights=(x - mean[ids]) ** 2, minlength=v)
        var = np.divide(sq, count - 1, out=np.ones(v), where=count > 1)
        std = np.maximum(np.sqrt(var), min_std)
        std[count == 0] = 1.0
        return cls(stays.variable_names, mean, std, count)

    def normalize(self, variables: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``(values - mean[variables - 1]) / std[variables - 1]`` as float32."""
        return ((values - self.mean[variables - 1]) / self.std[variables - 1]).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (``{"variables": [...], "mean": [...], "std": [...], "count": [...]}``)."""
        return {"variables": list(self.variable_names), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "count": self.count.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VariableStats:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(d["variables"]), np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64),
                   np.asarray(d["count"], np.int64))
