"""``IndexedDataset``: make any map-style data set also return the dataset index of each sample.

Losses with per-sample state (``APLoss``, the pAUC losses, the contrastive losses) need the
index ``i`` of every sample in the batch; wrapping the data set adds it to each item, and the
default ``DataLoader`` collate turns it into the ``[B]`` LongTensor ``index``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """Wrap a map-style data set so that item ``i`` is ``(x, y, i)``.

    An inner item that is a tuple ``(x, y)`` (or ``(a, b, c, ...)``) becomes ``(x, y, i)``
    (``(a, b, c, ..., i)``); any other item ``x`` becomes ``(x, i)``.

    Args:
        dataset: a map-style data set (``__getitem__`` and ``__len__``).

    Attributes:
        targets: the inner data set's ``targets`` (or ``labels``; for a two-tensor
            ``TensorDataset`` its second tensor), for samplers such as
            :class:`~xrisk.data.DualSampler`. ``AttributeError`` if it has none.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = IndexedDataset(TensorDataset(torch.randn(5, 3), torch.tensor([0, 1, 0, 0, 1])))
        >>> x, y, i = ds[4]
        >>> int(y), i, ds.targets.tolist()
        (1, 4, [0, 1, 0, 0, 1])
    """

    def __init__(self, dataset: Dataset) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"IndexedDataset needs a map-style data set, got {type(dataset).__name__}")
        self.dataset = dataset

    def __len__(self) -> int:
        """Size of the inner data set."""
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        """``(*inner_item, index)``; negative indices are normalised like Python lists."""
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for a data set of {n} samples")
        item = self.dataset[i]
        if isinstance(item, tuple):
            return (*item, i)
        return (item, i)

    @property
    def targets(self) -> Any:
        """Labels of the inner data set (``targets``, else ``labels``, else a ``TensorDataset``'s
        second tensor)."""
        for name in ("targets", "labels"):
            if hasattr(self.dataset, name):
                return getattr(self.dataset, name)
        if isinstance(self.dataset, TensorDataset) and len(self.dataset.tensors) == 2:
            labels: Tensor = self.dataset.tensors[1]
            return labels
        raise AttributeError(f"the wrapped {type(self.dataset).__name__} exposes no targets/labels")
