"""Per-sample estimator state for finite-sum coupled compositional objectives.

An X-risk objective has the form ``(1/n) sum_i f(g_i(w))`` where the inner function
``g_i(w) = E_j[ell(w; x_i, x_j)]`` is an average over the whole data set. Stochastic
methods (SOAP, SOPA-s, SogCLR, ...) keep one running estimate ``u_i ~ g_i(w)`` per
sample and refresh it when sample ``i`` is in the batch:

.. math::

    u_i \\leftarrow (1 - \\gamma)\\, u_i + \\gamma\\, \\hat g_i(w_t)

Throughout xrisk ``gamma`` is **the weight on the new value** (``gamma = 1`` forgets the
past entirely), in every moving average of the library.

:class:`SampleState` owns those estimates as registered buffers, so ``state_dict()``
checkpoints them, ``.to(device)`` moves them, and ``model.half()`` leaves them in
float32. Rules it enforces:

* **Index validation.** ``index`` must be an integer tensor of dataset indices in
  ``[0, num_samples)``; anything else raises :class:`IndexError` / :class:`TypeError`.
* **First visit.** A sample (and task) whose estimate was never written takes the new
  value as is (``gamma`` is treated as 1 for it), so the initial value never biases
  the estimator.
* **Duplicates.** When the same index occurs several times in one update (samplers that
  recycle positives produce this), its new values are **averaged** and one moving-average
  step is applied with that mean; every occurrence then reads the same updated value.
  The result does not depend on the order of the batch.
* **Masking.** An optional boolean ``mask`` (same shape as ``new``) restricts the update
  to some entries (e.g. the positives of each task); masked-out entries are untouched.
* **Distributed sync** (``sync="index_scatter"``): after every update all processes hold
  identical state. Losses in xrisk compute their update on the *global* batch on every
  rank, so every rank applies the same update; a caller that updates with rank-local
  indices passes ``local=True`` and the state all-gathers indices and values first.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from xrisk import distributed as xdist

__all__ = ["SampleState", "check_index"]


def check_index(index: Tensor, num_samples: int, *, batch_size: int | None = None) -> Tensor:
    """Validate a tensor of dataset indices and return it as ``int64``.

    Args:
        index: ``[B]`` integer tensor of dataset indices.
        num_samples: size of the data set the state was built for.
        batch_size: if given, ``index`` must have exactly this many entries.

    Raises:
        TypeError: ``index`` is not an integer tensor.
        ValueError: wrong shape.
        IndexError: an entry is negative or ``>= num_samples``.
    """
    if not isinstance(index, Tensor):
        raise TypeError(f"index must be a torch.Tensor of dataset indices, got {type(index).__name__}")
    if index.dtype.is_floating_point or index.dtype == torch.bool or index.is_complex():
        raise TypeError(f"index must be an integer tensor (dataset indices), got dtype {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"index must be 1-D [B], got shape {tuple(index.shape)}")
    if batch_size is not None and index.numel() != batch_size:
        raise ValueError(f"index has {index.numel()} entries but the batch has {batch_size} samples")
    if index.numel():
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= num_samples:
            bad = lo if lo < 0 else hi
            raise IndexError(
                f"dataset index {bad} is out of range for a state built with num_samples={num_samples}"
            )
    return index.long()


class SampleState(nn.Module):
    """Moving-average estimates ``u[i, ...]``, one per dataset sample (and per task).

    Args:
        num_samples: number of samples ``n`` in the data set (indices run over ``[0, n)``).
        shape: trailing shape of one sample's estimate, e.g. ``(num_tasks,)``; ``()`` for a scalar.
        init: value of never-visited entries (only visible through :meth:`read`).
        sync: distributed sync rule; only ``"index_scatter"`` exists (see module docstring).

    Buffers (in ``state_dict``):
        ``value``: ``[n, *shape]`` float32 estimates.
        ``seen``: ``[n, *shape]`` bool, whether the entry has been written.

    Example:
        >>> s = SampleState(10)
        >>> s.update(torch.tensor([3, 3, 5]), torch.tensor([1.0, 3.0, 4.0]), gamma=0.5)
        tensor([2., 2., 4.])
        >>> s.update(torch.tensor([3]), torch.tensor([4.0]), gamma=0.5)
        tensor([3.])
    """

    value: Tensor
    seen: Tensor

    def __init__(
        self,
        num_samples: int,
        shape: Sequence[int] = (),
        *,
        init: float = 0.0,
        sync: Literal["index_scatter"] = "index_scatter",
    ) -> None:
        super().__init__()
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        shape = tuple(int(s) for s in shape)
        if any(s <= 0 for s in shape):
            raise ValueError(f"shape entries must be positive, got {shape}")
        if sync != "index_scatter":
            raise ValueError(f"sync must be 'index_scatter', got {sync!r}")
        self.num_samples = num_samples
        self.shape = shape
        self.sync = sync
        self.init = float(init)
        self.register_buffer("value", torch.full((num_samples, *shape), self.init, dtype=torch.float32))
        self.register_buffer("seen", torch.zeros((num_samples, *shape), dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, shape={self.shape}, sync={self.sync!r}"

    # ----------------------------------------------------------------------------- device policy
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "SampleState":  # type: ignore[override]
        # Follow device moves, never dtype casts: the estimates stay float32 under .half()/.double().
        probe = fn(torch.empty(0, device=self.value.device, dtype=torch.float32))
        self.value = self.value.to(device=probe.device)
        self.seen = self.seen.to(device=probe.device)
        return self

    # ----------------------------------------------------------------------------- checkpoints
    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "value"
        if key in state_dict:
            got = tuple(state_dict[key].shape)
            want = tuple(self.value.shape)
            if got != want:
                raise ValueError(
                    f"checkpoint state '{key}' has shape {got} (num_samples={got[0] if got else '?'}), "
                    f"but this loss was built for shape {want} (num_samples={self.num_samples}); "
                    "was the checkpoint made for another data set or another number of tasks?"
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ----------------------------------------------------------------------------- access
    def read(self, index: Tensor) -> Tensor:
        """Return ``value[index]`` (float32, on the state's device) without changing anything."""
        index = check_index(index, self.num_samples).to(self.value.device)
        return self.value[index]

    def reset(self) -> None:
        """Forget everything: every entry becomes unseen again."""
        self.value.fill_(self.init)
        self.seen.zero_()

    @torch.no_grad()
    def update(
        self,
        index: Tensor,
        new: Tensor,
        gamma: float | Tensor,
        *,
        mask: Tensor | None = None,
        local: bool = False,
    ) -> Tensor:
        """Apply ``u[i] <- (1 - gamma) u[i] + gamma * new_i`` and return the updated ``u[index]``.

        Args:
            index: ``[B]`` dataset indices.
            new: ``[B, *shape]`` new estimates (detached; any float dtype/device).
            gamma: weight on the new value, in ``(0, 1]``; a float, or a tensor broadcastable to
                ``[B, *shape]`` (e.g. a per-sample schedule).
            mask: optional bool ``[B, *shape]``; entries where it is False are not updated.
            local: ``index`` holds this rank's samples only; under ``torch.distributed`` indices and
                values of all ranks are gathered first, so every rank applies the same update.

        Returns:
            ``[B, *shape]`` updated estimates for ``index`` in ``new``'s dtype and device. Entries
            excluded by ``mask`` return their current (possibly never-seen) value.
        """
        index = check_index(index, self.num_samples)
        if new.shape != (index.numel(), *self.shape):
            raise ValueError(
                f"new values must have shape {(index.numel(), *self.shape)} for index of "
                f"{index.numel()} entries, got {tuple(new.shape)}"
            )
        if isinstance(gamma, float) or isinstance(gamma, int):
            if not 0.0 < float(gamma) <= 1.0:
                raise ValueError(f"gamma (weight on the new value) must be in (0, 1], got {gamma}")
            gamma_t: Tensor | float = float(gamma)
        else:
            gamma_t = gamma.detach().to(torch.float32).expand(new.shape).to(self.value.device)
        if not torch.isfinite(new).all():
            raise FloatingPointError("refusing to store a non-finite estimate in SampleState")
        out_dtype, out_device = new.dtype, new.device
        m = torch.ones_like(new, dtype=torch.bool) if mask is None else mask.to(torch.bool).expand(new.shape)
        n_local = index.numel()
        gathered = local and xdist.is_distributed()
        if gathered:
            index = xdist.all_gather_no_grad(index)
            new = xdist.all_gather_no_grad(new)
            m = xdist.all_gather_no_grad(m)
            if isinstance(gamma_t, Tensor):
                gamma_t = xdist.all_gather_no_grad(gamma_t)
        dev = self.value.device
        index, new, m = index.to(dev), new.to(dev, torch.float32), m.to(dev)
        uniq, inv = torch.unique(index, return_inverse=True)
        mf = m.to(torch.float32)
        count = torch.zeros((uniq.numel(), *self.shape), device=dev).index_add_(0, inv, mf)
        total = torch.zeros((uniq.numel(), *self.shape), device=dev).index_add_(0, inv, new * mf)
        touched = count > 0
        mean_new = total / count.clamp_min(1.0)
        if isinstance(gamma_t, Tensor):  # per-entry gamma: average over duplicates the same way
            g_sum = torch.zeros_like(total).index_add_(0, inv, gamma_t * mf)
            g = g_sum / count.clamp_min(1.0)
        else:
            g = torch.full_like(total, gamma_t)
        old = self.value[uniq]
        seen = self.seen[uniq]
        g = torch.where(seen, g, torch.ones_like(g))  # first visit takes the new value
        upd = torch.where(touched, (1.0 - g) * old + g * mean_new, old)
        self.value[uniq] = upd
        self.seen[uniq] = seen | touched
        if gathered:  # return only this rank's rows
            start, stop = xdist.local_slice(n_local)
            return upd[inv][start:stop].to(out_device, out_dtype)
        return upd[inv].to(out_device, out_dtype)
