"""Helpers of the validation-off / ``torch.compile`` tests (issue 18, section 2): ``test_compile_score.py`` and
``test_compile_contrastive.py``.

* :class:`TraceableSGD`: plain SGD whose ``step`` Dynamo traces;
* :func:`count_host_reads`: counts every call that reads a tensor's values to the host;
* :func:`close`: ``allclose`` with the largest difference in the message;
* :func:`train` / :func:`host_reads_per_step`: a test's training loop and its host-read count, from a ``setup()``
  returning ``(model, loss, optimizer, step)``;
* :func:`compiled_without_recompiles`: runs a training function under ``torch.compile(fullgraph=True)`` and checks
  that no graph broke and no graph was compiled after the warm-up.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

import xrisk

__all__ = ["READS", "TraceableSGD", "close", "compiled_without_recompiles", "count_host_reads", "assert_no_host_reads", "host_reads_per_step",
           "train"]


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


def train(setup: Callable[[], tuple], validate: bool, batches, compiled: str | None = None, after_warmup=None):
    """``(values [steps], model, loss)`` of ``step(*batch)`` over ``batches`` (``setup()`` gives ``(model, loss,
    optimizer, step)``), with validation on or off, optionally ``torch.compile(fullgraph=True)`` with backend
    ``compiled``; ``after_warmup()`` is called before the third step."""
    net, loss, opt, step = setup()
    if compiled is not None:
        step = torch.compile(step, fullgraph=True, backend=compiled)
    values = []
    with xrisk.validation(validate):
        for i, batch in enumerate(batches):
            if i == 2 and after_warmup is not None:
                after_warmup()
            values.append(step(*batch))
            opt.zero_grad(set_to_none=True)
    return torch.stack(values), net, loss


def assert_no_host_reads(setup: Callable[[], tuple], batches) -> None:
    """:func:`host_reads_per_step` is empty with validation off, and not with validation on (the counter works)."""
    counts = host_reads_per_step(setup, batches)
    assert counts[True], "the counter sees the validated step's reads"
    assert counts[False] == [], f"host reads with validation off: {counts[False]}"


def host_reads_per_step(setup: Callable[[], tuple], batches) -> dict[bool, list[str]]:
    """Per validation setting, the host reads of ``batches[1:]`` after a first step (which creates the optimizer's
    lazy state), counted with :func:`count_host_reads`."""
    counts = {}
    for validate in (True, False):
        _, _, opt, step = setup()
        with xrisk.validation(validate):
            step(*batches[0])
            opt.zero_grad(set_to_none=True)
            with count_host_reads() as calls:
                for batch in batches[1:]:
                    step(*batch)
                    opt.zero_grad(set_to_none=True)
        counts[validate] = list(calls)
    return counts
