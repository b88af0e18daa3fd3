"""Fashion-MNIST (Xiao, Rasul, Vollgraf, 2017, arXiv:1708.07747) from the Debian package files.

The Debian package ``dataset-fashion-mnist`` installs the original gzipped IDX files in
``/usr/share/datasets/fashion-mnist``: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
(60,000 training and 10,000 test images of 28x28 grey pixels, 10 classes). They are read with
numpy; nothing is downloaded. The folder is, in order of priority, the ``root`` argument, the
``XRISK_FASHION_MNIST_DIR`` environment variable, or the Debian location.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from xrisk.data.errors import DataNotInstalledError

__all__ = ["FASHION_MNIST_CLASSES", "DEFAULT_FASHION_MNIST_DIR", "fashion_mnist_dir", "load_fashion_mnist"]

#: Class names in label order.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fashion_mnist_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the IDX files: ``root``, else ``$XRISK_FASHION_MNIST_DIR``, else the Debian path."""
    return Path(root if root is not None else os.environ.get("XRISK_FASHION_MNIST_DIR") or DEFAULT_FASHION_MNIST_DIR)


@functools.lru_cache(maxsize=4)
def _read_idx(path: str) -> np.ndarray:
    """One gzipped IDX file of unsigned bytes as a read-only uint8 array (cached per process)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {data.size} bytes of data for the declared shape {shape}")
    return data.reshape(shape)


def load_fashion_mnist(split: str = "train", *, root: str | os.PathLike[str] | None = None) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST ``split`` (``"train"`` or ``"test"``).

    Returns:
        ``(images, labels)``: ``[N, 1, 28, 28]`` float32 in ``[0, 1]`` (pixel / 255) and ``[N]``
        int64 class ids (see :data:`FASHION_MNIST_CLASSES`); ``N`` is 60,000 or 10,000.

    Raises:
        DataNotInstalledError: the files are missing; the message gives
            ``apt-get install dataset-fashion-mnist``.

    Example:
        >>> x, y = load_fashion_mnist("test")  # doctest: +SKIP
        >>> x.shape, y[:3].tolist()            # doctest: +SKIP
        (torch.Size([10000, 1, 28, 28]), [9, 2, 1])
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = fashion_mnist_dir(root)
    paths = [folder / name for name in _FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataNotInstalledError(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}); install it with "
            "`apt-get install dataset-fashion-mnist`, or point XRISK_FASHION_MNIST_DIR at a folder "
            "holding the original IDX .gz files"
        )
    images = torch.from_numpy(_read_idx(str(paths[0])).astype(np.float32) / 255.0).unsqueeze(1)
    labels = torch.from_numpy(_read_idx(str(paths[1])).astype(np.int64))
    if images.shape[0] != labels.shape[0] or images.shape[2:] != (28, 28):
        raise ValueError(f"inconsistent Fashion-MNIST files in {folder}: images {tuple(images.shape)}, "
                         f"labels {tuple(labels.shape)}")
    return images, labels
