"""The model-agnostic adapter protocol and the registry of adapters by name.

A vision-language model enters the benchmark through a :class:`VLMAdapter`:

* ``generate(image, prompt, **gen) -> str`` (required): the model's reply. ``image`` is a PIL
  image, an ``H x W x 3`` uint8 array, a ``3 x H x W`` float tensor in ``[0, 1]`` (what the attacks
  produce) or None for a text-only record.

An adapter that also has the two methods of :class:`WhiteBoxAdapter` can be attacked with
white-box PGD / BIM / C&W (:mod:`xrisk.trust.attacks`):

* ``preprocess(image) -> Tensor``: the ``3 x H x W`` float image in ``[0, 1]`` the attack perturbs
  (e.g. resized to the model's input size); everything after it must be differentiable;
* ``choice_logits(image_tensor, prompt, candidates) -> Tensor``: one logit per candidate answer
  (``["A", "B", "C", "D"]`` or ``["Yes", "No"]``) for the answer's first token, differentiable
  with respect to ``image_tensor``.

Adapters are registered by name (:func:`register_adapter`) and built with
:func:`get_adapter` (``xrisk trust run --adapter NAME``), never chosen by matching substrings of a
model path. Built in:

========== ==================================================================================
``vqa``     the in-library driving VQA model (:mod:`xrisk.trust.vqa`; ``model=`` its file)
``hf``      any Hugging Face image-text-to-text model (:mod:`xrisk.trust.hf`; ``model=`` a
            local folder or a hub id)
``refuse``  always refuses (:class:`~xrisk.trust.rules.RefusingAdapter`)
``random``  answers at random, reproducibly (:class:`~xrisk.trust.rules.RandomAdapter`)
``echo``    repeats the prompt, so it leaks every secret of its context
            (:class:`~xrisk.trust.rules.EchoAdapter`)
========== ==================================================================================

Example:
    >>> adapter = get_adapter("refuse")
    >>> adapter.generate(None, "Is there a car?\\nAnswer with Yes or No directly.")
    "I'm sorry, but I cannot answer this question."
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageLike", "VLMAdapter", "WhiteBoxAdapter", "AdapterSpec", "ADAPTERS", "register_adapter",
           "get_adapter", "adapter_names", "supports_white_box", "to_tensor", "to_pil", "open_image"]

ImageLike = Any
"""A PIL image, an ``H x W x 3`` uint8 array, a ``3 x H x W`` float tensor in [0, 1], or None."""


@runtime_checkable
class VLMAdapter(Protocol):
    """A vision-language model answering one prompt about one image."""

    name: str

    def generate(self, image: ImageLike, prompt: str, **gen: Any) -> str:
        """The model's reply to ``prompt`` about ``image``."""
        ...


@runtime_checkable
class WhiteBoxAdapter(VLMAdapter, Protocol):
    """A :class:`VLMAdapter` with differentiable answer logits (needed by white-box attacks)."""

    def preprocess(self, image: ImageLike) -> Tensor:
        """The ``3 x H x W`` float image in [0, 1] that attacks perturb."""
        ...

    def choice_logits(self, image_tensor: Tensor, prompt: str, candidates: Sequence[str]) -> Tensor:
        """One logit per candidate answer, differentiable with respect to ``image_tensor``."""
        ...


def supports_white_box(adapter: Any) -> bool:
    """Whether ``adapter`` has callable ``preprocess`` and ``choice_logits``."""
    return callable(getattr(adapter, "preprocess", None)) and callable(getattr(adapter, "choice_logits", None))


@dataclass(frozen=True)
class AdapterSpec:
    """A registered adapter.

    Attributes:
        name: the registry name (``--adapter NAME``).
        factory: builds the adapter from keyword options.
        help: one line for ``xrisk trust run --help``.
        options: the keyword options ``factory`` accepts (``model``, ``seed``, ``device`` ...).
    """

    name: str
    factory: Callable[..., Any]
    help: str
    options: tuple[str, ...] = ()


ADAPTERS: dict[str, AdapterSpec] = {}
_BUILTIN_MODULES = ("xrisk.trust.rules", "xrisk.trust.vqa", "xrisk.trust.hf")
_loaded = False


def register_adapter(name: str, factory: Callable[..., Any], *, help: str, options: Sequence[str] = ()) -> AdapterSpec:
    """Register ``factory`` under ``name`` (re-registering the same factory is allowed).

    Raises:
        ValueError: empty name, or another factory already holds the name.
    """
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"adapter name must be a non-empty word, got {name!r}")
    old = ADAPTERS.get(name)
    if old is not None and old.factory is not factory:
        raise ValueError(f"an adapter named {name!r} is already registered")
    spec = AdapterSpec(name, factory, help, tuple(options))
    ADAPTERS[name] = spec
    return spec


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded = True


def adapter_names() -> list[str]:
    """The registered adapter names, sorted (built-ins included)."""
    _load_builtins()
    return sorted(ADAPTERS)


def get_adapter(name: str, /, **options: Any) -> Any:
    """Build the adapter registered as ``name``; ``None`` options are dropped.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        TypeError: an option this adapter does not take (the message names it).
    """
    _load_builtins()
    if name not in ADAPTERS:
        raise KeyError(f"unknown adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    spec = ADAPTERS[name]
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        takes = ", ".join(spec.options) or "no options"
        raise TypeError(f"adapter {name!r} does not take {', '.join(unknown)} (it takes {takes})")
    return spec.factory(**given)


def to_tensor(image: ImageLike) -> Tensor:
    """A ``3 x H x W`` float32 tensor in [0, 1] from any :data:`ImageLike` (None is refused).

    Raises:
        TypeError: unsupported type; ValueError: wrong shape or range.
    """
    if image is None:
        raise TypeError("no image (None) to convert")
    if isinstance(image, Tensor):
        x = image.detach() if image.requires_grad else image
        if x.dim() != 3 or x.shape[0] != 3 or not x.is_floating_point():
            raise ValueError(f"an image tensor must be float 3 x H x W, got {tuple(x.shape)} {x.dtype}")
        return x.float()
    if hasattr(image, "convert"):  # PIL
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"an image array must be uint8 H x W x 3, got {image.shape} {image.dtype}")
        return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float() / 255.0
    raise TypeError(f"unsupported image type {type(image).__name__}")


def to_pil(image: ImageLike) -> Any:
    """A PIL RGB image from any :data:`ImageLike` (float tensors are rounded to uint8)."""
    from PIL import Image

    if hasattr(image, "convert"):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    x = to_tensor(image)
    arr = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def open_image(root: str | Path, relative: str | None) -> Any:
    """The RGB PIL image ``root / relative`` (None for a text-only record).

    Raises:
        FileNotFoundError: the image is missing (the message names both paths).
    """
    if relative is None:
        return None
    from PIL import Image

    path = Path(root) / relative
    if not path.is_file():
        raise FileNotFoundError(f"image {relative!r} not found under {root} ({path})")
    with Image.open(path) as im:
        return im.convert("RGB")
