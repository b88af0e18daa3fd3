"""Musical key labels and the MIREX weighted key score (through ``mir_eval``).

Keys are 24 labels ``2 * pitch_class + (mode == "minor")`` named as ``mir_eval`` expects
(:data:`KEY_NAMES`: ``"C major", "C minor", "Db major", ...``). :func:`key_weighted_score` is the mean of
``mir_eval.key.weighted_score(reference, estimate)`` over items: 1 for the same key, 0.5 for the
estimate a perfect fifth above in the same mode, 0.3 for the relative major/minor, 0.2 for the
parallel major/minor, else 0 (the MIREX key-detection score; the Myna/MARBLE key metric).

Example:
    >>> from xrisk.metrics.key import KEY_NAMES, key_weighted_score
    >>> KEY_NAMES[14], KEY_NAMES[19]
    ('G major', 'A minor')
    >>> key_weighted_score([0, 0, 0], [0, 14, 19])     # same, fifth above, relative minor  # doctest: +SKIP
    0.6
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["KEY_NAMES", "key_index", "key_weighted_score", "key_weighted_scores"]

_TONICS = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
#: The 24 keys in label order (``2 * pitch_class + minor``), in ``mir_eval`` format.
KEY_NAMES: tuple[str, ...] = tuple(f"{t} {m}" for t in _TONICS for m in ("major", "minor"))


def key_index(tonic_pitch_class: int, mode: str) -> int:
    """Label of a key: ``2 * (tonic mod 12) + (mode == "minor")``."""
    if mode not in ("major", "minor"):
        raise ValueError(f"mode must be 'major' or 'minor', got {mode!r}")
    return 2 * (int(tonic_pitch_class) % 12) + (mode == "minor")


def _mir_eval_key() -> Any:
    try:
        import mir_eval.key
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the key score needs mir_eval: pip install 'xrisk[audio]'") from e
    return mir_eval.key


def _labels(name: str, x: Sequence[int] | Tensor) -> list[int]:
    out = [int(v) for v in (x.tolist() if isinstance(x, Tensor) else x)]
    if any(not 0 <= v < 24 for v in out):
        raise ValueError(f"{name} must hold key labels in [0, 24)")
    return out


def key_weighted_scores(references: Sequence[int] | Tensor, estimates: Sequence[int] | Tensor) -> Tensor:
    """Per-item ``mir_eval.key.weighted_score`` ``[N]`` (float64) of key labels (indices of :data:`KEY_NAMES`)."""
    ref, est = _labels("references", references), _labels("estimates", estimates)
    if len(ref) != len(est):
        raise ValueError(f"references ({len(ref)}) and estimates ({len(est)}) must have the same length")
    score = _mir_eval_key().weighted_score
    return torch.tensor([score(KEY_NAMES[r], KEY_NAMES[e]) for r, e in zip(ref, est)], dtype=torch.float64)


def key_weighted_score(references: Sequence[int] | Tensor, estimates: Sequence[int] | Tensor) -> float:
    """Mean weighted key score (NaN for no items)."""
    s = key_weighted_scores(references, estimates)
    return float(s.mean()) if s.numel() else float("nan")
