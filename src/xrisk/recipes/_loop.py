"""Small pieces every recipe's training loop shares: per-epoch generators, the step iterator with
in-epoch checkpoints, a silent progress bar, and a config dataclass from parsed flags."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

import torch

if TYPE_CHECKING:
    from xrisk.recipes.runner import RunContext

T = TypeVar("T")


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """A CPU generator for ``(seed, epoch, salt)``: each epoch (and each use, by ``salt``) its own stream, so
    a resumed run draws the same batches as an uninterrupted one."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + salt) % (2**63 - 1))


class NoProgress:
    """Progress-bar stand-in for a training function called without a :class:`RunContext`."""

    def update(self, n: int = 1, **values: object) -> None:
        return None

    def close(self) -> None:
        return None


def epoch_steps(ctx: RunContext | None, epoch: int, steps: range, state: dict[str, Any],
                g: torch.Generator) -> Iterable[int]:
    """The epoch's step numbers through :meth:`RunContext.steps` (checkpoints inside the epoch, ``state`` and
    ``g`` saved with them) when there is a run context, else as they are."""
    return steps if ctx is None else ctx.steps(epoch, steps, state=state, generators=[g])


def config_from_args(cls: type[T], args: argparse.Namespace, **fixed: Any) -> T:
    """The dataclass ``cls`` from the parsed flags of the same names (``fixed`` overrides)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}  # type: ignore[arg-type]
    values.update(fixed)
    return cls(**values)
