"""Epoch schedules as plain callables ``epoch -> value`` (picklable, stateless).

A loss that accepts a schedule keeps the epoch counter itself (a buffer, so it is checkpointed)
and calls the schedule with it; see :meth:`xrisk.losses.GlobalContrastiveLoss.set_epoch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CosineGammaSchedule"]


@dataclass(frozen=True)
class CosineGammaSchedule:
    """FastCLIP's cosine decay of the moving-average weight ``gamma`` (weight on the new value).

    .. math::

        \\gamma(e) = \\begin{cases} 1 & e = 0 \\\\
        \\gamma_{min} + (1 - \\gamma_{min})\\, \\tfrac12 (1 + \\cos(\\pi e / E)) & 0 < e < E \\\\
        \\gamma_{min} & e \\ge E \\end{cases}

    with ``e`` the epoch (0-based), ``E = decay_epochs`` and ``gamma_min = gamma_min``. FastCLIP's
    README uses ``E`` = half the number of training epochs.

    Example:
        >>> s = CosineGammaSchedule(gamma_min=0.2, decay_epochs=10)
        >>> s(0), round(s(5), 3), s(10)
        (1.0, 0.6, 0.2)

    Paper: Wei et al., "FastCLIP: A Suite of Optimization Techniques to Accelerate CLIP Training
    with Limited Resources", arXiv:2407.01445.
    """

    gamma_min: float
    decay_epochs: int

    def __post_init__(self) -> None:
        if not 0.0 < float(self.gamma_min) <= 1.0:
            raise ValueError(f"gamma_min must be in (0, 1], got {self.gamma_min!r}")
        if int(self.decay_epochs) < 1:
            raise ValueError(f"decay_epochs must be >= 1, got {self.decay_epochs!r}")

    def __call__(self, epoch: int) -> float:
        e = int(epoch)
        if e <= 0:
            return 1.0
        if e >= self.decay_epochs:
            return float(self.gamma_min)
        return float(self.gamma_min + (1.0 - self.gamma_min) * 0.5 * (1.0 + math.cos(math.pi * e / self.decay_epochs)))
