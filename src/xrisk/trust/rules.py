"""Rule-based adapters: reference points for the benchmark and fixtures for tests.

* :class:`RefusingAdapter` (``refuse``): refuses everything. Refusal, abstention rate 1, leakage 0.
  Its closed-ended accuracy is what the reference's parsers make of a refusal: the yes/no
  heuristic reads it as "yes" and multiple choice falls back to the most similar option.
* :class:`RandomAdapter` (``random``): a uniformly random option letter for multiple choice,
  Yes/No at random for yes/no, a random "sure"/"not sure" for the follow-up, a random stock
  phrase for open-ended questions. Reproducible: the draw depends only on ``seed``, the prompt and
  the picture (so the same question about two pictures gets two independent draws).
* :class:`EchoAdapter` (``echo``): repeats the prompt, so it discloses every secret its context
  holds (privacy leakage 1 when the secret is in the prompt).

Example:
    >>> RandomAdapter(seed=0).generate(None, "Is it red?\\nAnswer with Yes or No directly.") in ("Yes", "No")
    True
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from xrisk.trust.adapters import ImageLike, register_adapter, to_pil
from xrisk.trust.prompts import read_prompt
from xrisk.trust.scoring import LETTERS, parse_options

__all__ = ["REFUSAL_REPLY", "RefusingAdapter", "RandomAdapter", "EchoAdapter"]

REFUSAL_REPLY = "I'm sorry, but I cannot answer this question."
_OPEN_PHRASES = ("The road ahead is clear.", "There is a vehicle ahead.", "It is a sunny day.",
                 "A pedestrian is on the sidewalk.", "The ego car should keep going.")


class RefusingAdapter:
    """Always replies :data:`REFUSAL_REPLY`."""

    name = "refuse"

    def generate(self, image: ImageLike, prompt: str, **gen: Any) -> str:
        """The refusal, whatever the prompt."""
        return REFUSAL_REPLY


class RandomAdapter:
    """Uniformly random answers of the right form, reproducible from ``seed`` and the prompt.

    Args:
        seed: the seed mixed with the prompt's hash for every draw.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.seed = seed

    def _rng(self, image: ImageLike, prompt: str) -> random.Random:
        h = hashlib.sha256(f"{self.seed}\x00{prompt}\x00".encode())
        if image is not None:
            h.update(to_pil(image).tobytes())
        return random.Random(int.from_bytes(h.digest()[:8], "little"))

    def generate(self, image: ImageLike, prompt: str, **gen: Any) -> str:
        """A random answer in the form the prompt asks for."""
        rng = self._rng(image, prompt)
        parts = read_prompt(prompt)
        if parts.follow_up is not None:
            return rng.choice(("Yes, I am sure.", "I am not sure."))
        if parts.kind == "multi-choice":
            letters = sorted(parse_options(parts.question)) or list(LETTERS)
            return rng.choice(letters).upper()
        if parts.kind == "yes-or-no":
            return rng.choice(("Yes", "No"))
        return rng.choice(_OPEN_PHRASES)


class EchoAdapter:
    """Replies with the prompt itself (every secret in the prompt leaks)."""

    name = "echo"

    def generate(self, image: ImageLike, prompt: str, **gen: Any) -> str:
        """The prompt, unchanged."""
        return prompt


register_adapter("refuse", RefusingAdapter, help="always refuses (reference point: refusal 1, leakage 0)")
register_adapter("random", RandomAdapter, help="answers at random, reproducibly (reference point: chance accuracy)",
                 options=("seed",))
register_adapter("echo", EchoAdapter, help="repeats the prompt (reference point: leaks every secret in its context)")
