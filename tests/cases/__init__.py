"""Conformance cases: every public loss registers one ``LossCase`` in a ``cases_*.py`` module here.

``tests/test_conformance.py`` collects ``CASES`` from every module in this package.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn


@dataclass
class LossCase:
    """How the conformance suite drives one loss.

    name: id shown by pytest.
    make: ``() -> nn.Module``, a fresh loss (deterministic; uses ``num_samples = 64``).
    batch: ``(seed) -> tuple`` of positional arguments for one forward call. The first
        floating tensor(s) listed in ``grad_args`` get ``requires_grad``. Batches of
        different seeds must reuse dataset indices so state is exercised.
    grad_args: positions in the batch tuple that are differentiable inputs.
    empty_batch: ``() -> tuple`` for the degenerate case (no positives; for the contrastive losses no pair
        at all), or None when the loss has no such case; the result must be a graph-connected zero and
        leave state unchanged.
    gradcheck: ``() -> None`` that runs ``torch.autograd.gradcheck`` on the loss's pure kernels in
        float64 (raising on failure).
    extra: optional keys. ``"degenerate"``: ``() -> list[tuple]`` of further batches that must give a
        graph-connected zero and leave state unchanged (e.g. a contrastive batch without negatives).

    A loss with ``objective()`` (every surrogate loss) must report a finite estimate after a batch; a loss
    whose value is the objective itself (FocalLoss) has no ``objective()``.
    ``tests/test_conformance.py`` fails for a loss exported from ``xrisk.losses`` that no case drives.

    Every case is also run in ``eval()`` mode (no state may change) and with a forced non-finite update
    (no state may change, the error names a cause); see ``tests/test_conformance.py``.
    """

    name: str
    make: Callable[[], nn.Module]
    batch: Callable[[int], tuple[Any, ...]]
    grad_args: tuple[int, ...] = (0,)
    empty_batch: Callable[[], tuple[Any, ...]] | None = None
    gradcheck: Callable[[], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def all_cases() -> list[LossCase]:
    out: list[LossCase] = []
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("cases_"):
            out.extend(importlib.import_module(f"{__name__}.{mod.name}").CASES)
    return out
