"""Helpers of the validation-off / ``torch.compile`` tests (issue 18, section 2): ``test_compile_score.py`` and
``test_compile_contrastive.py``.

* :class:`TraceableSGD`: plain SGD whose ``step`` Dynamo traces;
* :func:`count_host_reads`: counts every call that reads a tensor's values to the host;
* :func:`close`: ``allclose`` with the largest difference in the message;
* :func:`compiled_without_recompiles`: runs a training function under ``torch.compile(fullgraph=True)`` and checks
  that no graph broke and no graph was compiled after the warm-up.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

__all__ = ["READS", "TraceableSGD", "close", "compiled_without_recompiles", "count_host_reads"]


class TraceableSGD(torch.optim.Optimizer):
    """Plain SGD whose ``step`` Dynamo traces (``torch.optim.SGD.step`` breaks the graph on purpose, see
    ``torch.optim.optimizer._use_grad``; PESG and PDSCA are traced as they are)."""

    def __init__(self, params, lr: float = 0.05) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])


READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy")


@contextlib.contextmanager
def count_host_reads() -> Iterator[list[str]]:
    """Count every call that reads a tensor's values to the host (patched on ``torch.Tensor``)."""
    calls: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def patched(name: str, fn):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return fn(self, *args, **kwargs)
        return wrapper

    for name, fn in saved.items():
        setattr(torch.Tensor, name, patched(name, fn))
    try:
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def close(a: torch.Tensor, b: torch.Tensor, what: str, atol: float = 2e-5) -> None:
    assert a.shape == b.shape, what
    assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=atol, equal_nan=True), (
        f"{what}: max diff {(a.float() - b.float()).abs().max().item()}")


def compiled_without_recompiles(train: Callable[[Callable[[], None]], object]):
    """``train(after_warmup)`` under ``trace_autograd_ops`` (``backward()`` inside the compiled step); ``train``
    compiles its step with ``fullgraph=True`` and calls ``after_warmup()`` once its warm-up steps are done. Asserts
    no graph break and no graph compiled after the warm-up; returns what ``train`` returned."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    dynamo.reset()
    counters.clear()
    seen: dict[str, int] = {}
    try:
        with dynamo.config.patch(trace_autograd_ops=True):
            out = train(lambda: seen.setdefault("graphs", counters["stats"]["unique_graphs"]))
        assert not counters["graph_break"], dict(counters["graph_break"])
        assert seen["graphs"] >= 1
        assert counters["stats"]["unique_graphs"] == seen["graphs"], "a step after the warm-up compiled a new graph"
    finally:
        dynamo.reset()
    return out
