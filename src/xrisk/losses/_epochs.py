"""The epoch of a loss whose behaviour depends on it: set by ``set_epoch``, or inferred from the samples seen."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["EpochTracking"]


class EpochTracking:
    """Mixin of an ``nn.Module`` with ``num_samples``: the 0-based epoch that schedules and warm-ups read.

    **Explicit.** :meth:`set_epoch` (call it at the start of every epoch, as with a ``DistributedSampler``)
    sets the epoch, and from then on it always wins.

    **Inferred.** Until :meth:`set_epoch` is first called, the epoch is ``samples_seen // num_samples``:
    the number of samples of the training-mode steps so far (the global batch under
    ``torch.distributed``) divided by the data-set size, so epoch-dependent behaviour (a ``gamma``
    schedule, NUCLR's warm-up, GloFND's start epoch) starts even if ``set_epoch`` is never called. It
    is exact for loaders that yield every sample once per epoch (``drop_last`` or an oversampling
    sampler shift it). A loss with such behaviour warns once when it infers the epoch.

    Buffers (persistent, so resuming continues either way): ``epoch`` (long), ``samples_seen`` (long),
    ``epoch_is_set`` (bool).
    """

    num_samples: int
    epoch: Tensor
    samples_seen: Tensor
    epoch_is_set: Tensor

    def _init_epochs(self) -> None:
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))  # type: ignore[attr-defined]
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.long))  # type: ignore[attr-defined]
        self.register_buffer("epoch_is_set", torch.zeros((), dtype=torch.bool))  # type: ignore[attr-defined]
        # host copies of the buffers: read on every step without a device sync
        self._epoch_int = 0
        self._seen_int = 0
        self._epoch_set = False
        self._epoch_warned = False

    def set_epoch(self, epoch: int) -> None:
        """Set the 0-based epoch; from now on the epoch is never inferred (see the class docstring)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch!r}")
        self._epoch_set = True
        self.epoch_is_set.fill_(True)
        self._apply_epoch(int(epoch))

    def current_epoch(self) -> int:
        """The epoch as a Python int: of :meth:`set_epoch`, inferred from the samples seen, or of a loaded ``state_dict``."""
        return self._epoch_int

    def _apply_epoch(self, epoch: int) -> None:
        self.epoch.fill_(epoch)
        self._epoch_int = epoch
        self._on_epoch(epoch)

    def _on_epoch(self, epoch: int) -> None:
        """Hook for per-epoch work of a subclass (default: nothing)."""

    def _epoch_dependence(self) -> list[str]:
        """What reads the epoch in this configuration (empty: nothing, no warning when it is inferred)."""
        return []

    def _count_samples(self, num: int) -> None:
        """A training step on ``num`` samples is done: count them and, without :meth:`set_epoch`, advance the
        inferred epoch (warning once that it is inferred)."""
        if self.__dict__.pop("_seen_on_device", False):  # validation-off steps counted on the device since
            self._seen_int = int(self.samples_seen)
        seen = self.__dict__["_seen_int"] = self._seen_int + num  # a plain int: past nn.Module.__setattr__ (~2 us)
        self.samples_seen.fill_(seen)
        if self._epoch_set:
            return
        if not self._epoch_warned:
            self._epoch_warned = True
            depends = self._epoch_dependence()
            if depends:
                warnings.warn(
                    f"{type(self).__name__}: set_epoch() was never called, so the epoch that drives "
                    f"{', '.join(depends)} is inferred from the samples seen in training "
                    f"(epoch = samples_seen // num_samples = samples_seen // {self.num_samples}); call "
                    "loss.set_epoch(epoch) at the start of every epoch to set it exactly",
                    UserWarning,
                    stacklevel=6,  # the caller of loss(...) (through Module.__call__ and forward)
                )
        epoch = self._seen_int // self.num_samples
        if epoch != self._epoch_int:
            self._apply_epoch(epoch)

    def _count_samples_on_device(self, num: int) -> None:
        """:meth:`_count_samples` of a validation-off step (:func:`xrisk.set_validation`): the samples are added to
        the ``samples_seen`` buffer on the device, with no host read and nothing a compiled step would recompile
        for; the epoch is **not** inferred from them (call :meth:`set_epoch`). The next validated step reads the
        buffer back once."""
        self.samples_seen.add_(num)
        self.__dict__["_seen_on_device"] = True

    def _load_epochs(self, state_dict: dict[str, Any], prefix: str) -> None:
        """Before loading: a checkpoint written before the epoch was inferred has no ``samples_seen`` /
        ``epoch_is_set``; its epoch came from ``set_epoch``."""
        if prefix + "epoch" in state_dict and prefix + "samples_seen" not in state_dict:
            state_dict[prefix + "samples_seen"] = torch.zeros((), dtype=torch.long)
            state_dict[prefix + "epoch_is_set"] = torch.ones((), dtype=torch.bool)

    def _loaded_epochs(self) -> None:
        """After loading: refresh the host copies from the buffers."""
        self._epoch_int = int(self.epoch)
        self._seen_int = int(self.samples_seen)
        self._epoch_set = bool(self.epoch_is_set)
