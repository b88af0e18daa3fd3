"""Shared fixtures of the trust tests: one tiny generated suite and one tiny trained VQA model per session.

Built once per test session (``functools.lru_cache`` on the session's base temporary folder), so the
test files that use them share the few seconds they cost.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from xrisk.trust.suite import SuiteConfig, make_suite
from xrisk.trust.vqa import train_vqa

TINY_SUITE = SuiteConfig(train_scenes=32, test_scenes=4, long_tail_scenes=2, fairness_scenes=4,
                         languages=("Spanish", "Chinese"), seed=5)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block (the trust tests are small; two threads only wait on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def tiny_suite(base: str) -> Path:
    """A suite of 42 scenes (written under ``base``)."""
    root = Path(base) / "trust-suite"
    if not (root / "suite.json").exists():
        make_suite(root, TINY_SUITE)
    return root


@functools.lru_cache(maxsize=None)
def tiny_model(base: str) -> Path:
    """A small VQA model trained for a few seconds on :func:`tiny_suite` (file path)."""
    from xrisk.trust.suite import load_suite, read_scenes

    path = Path(base) / "trust-vqa.pt"
    if not path.exists():
        root = tiny_suite(base)
        suite = load_suite(root)
        with one_thread():
            adapter = train_vqa(suite.records("train"), suite.image_root, epochs=12, images_per_batch=8, dim=32,
                                lr=3e-3, seed=0, scenes=read_scenes(root))
        adapter.save(path)
    return path


class CountingAdapter:
    """Wraps an adapter, counts ``generate`` calls, and can raise KeyboardInterrupt at call ``stop_at``."""

    def __init__(self, inner, stop_at: int | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0
        self.stop_at = stop_at

    def generate(self, image, prompt, **gen):
        self.calls += 1
        if self.stop_at is not None and self.calls >= self.stop_at:
            raise KeyboardInterrupt
        return self.inner.generate(image, prompt, **gen)
