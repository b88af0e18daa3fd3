"""Run a function in 2 gloo processes and collect what each rank returns."""

from __future__ import annotations

import datetime
import os
import socket
import sys
import tempfile
import time
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401 - imported before init_process_group on purpose, see _worker
import torch.multiprocessing as mp

# threads of a live gloo process group (torch 2.x names): gloo's work loops, its TCP event loop, the TCPStore server
_COMM_THREADS = ("pt_gloo", "gloo_", "pt_tcpstore")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _comm_threads() -> list[str]:
    """Names of this process's threads that belong to a process group (Linux; [] where /proc is missing)."""
    names = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return names
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if name.startswith(_COMM_THREADS):
            names.append(name)
    return sorted(names)


def _worker(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, out_dir: str,
            timeout: float, strict_teardown: bool) -> None:
    """One rank: init, ``fn``, save its result, then a teardown that leaves no gloo thread to interpreter shutdown.

    The process group must be freed by ``destroy_process_group``, while Python is fully alive: gloo's threads are
    then joined in order. If something still references it, it is freed during interpreter shutdown instead,
    with its threads running, and the process can die with SIGABRT ("terminate called without an active
    exception"). The reference came from ``torch.distributed.nn.functional``, which binds ``group.WORLD`` as
    a default argument when first imported; the first ``torch.optim`` optimizer imports it (through
    ``torch._dynamo``), so in every test that builds an optimizer after ``init_process_group`` the group
    outlived ``destroy_process_group``. Imported at the top of this module (before init), it binds ``None``.
    Other references remain inside torch (DDP, ``torch.distributed.checkpoint``, ``torch.compile`` keep the group
    in 2-process tests of those): when gloo threads outlive the teardown, the rank skips interpreter shutdown
    (``os._exit`` after its result is saved), and with ``strict_teardown`` the leak fails the test instead.
    """
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    # a collective that waits longer than this fails instead of hanging the test
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout))
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        # no rank closes its connections while a peer still finishes the last collective
        dist.barrier()
    finally:
        dist.destroy_process_group()
    left = _comm_threads()
    if left and not strict_teardown:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # the result is saved: no interpreter shutdown with the group's threads running
    if left:
        raise RuntimeError(f"rank {rank}: the process group outlived destroy_process_group ({', '.join(left)} still "
                           "running): something still references it (a default argument bound to group.WORLD, a "
                           "global); it would be torn down during interpreter shutdown, which can abort the process")


def run_distributed(fn: Callable[..., Any], *args: Any, world_size: int = 2, timeout: float = 300.0,
                    strict_teardown: bool = False) -> list[Any]:
    """``fn(rank, world_size, *args)`` in ``world_size`` gloo processes; returns results by rank.

    ``fn`` must be a module-level function (it is pickled into the spawned processes) and
    return tensors / plain containers of tensors. A worker that dies (e.g. SIGABRT inside gloo)
    or raises makes this raise; after ``timeout`` seconds (also each collective's timeout) the
    workers still running are terminated and :class:`TimeoutError` is raised, so a hang fails the
    test instead of blocking the suite. ``strict_teardown``: fail when the process group outlives
    ``destroy_process_group`` (see ``_worker``).
    """
    with tempfile.TemporaryDirectory() as d:
        ctx = mp.start_processes(
            _worker, args=(world_size, _free_port(), fn, args, d, timeout, strict_teardown), nprocs=world_size,
            join=False, start_method="spawn",
        )
        deadline = time.monotonic() + timeout + 30.0  # spawning and imports come on top of the collectives
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                for p in ctx.processes:  # only the processes started here, by handle
                    if p.is_alive():
                        p.terminate()
                for p in ctx.processes:
                    p.join(5.0)
                raise TimeoutError(f"{getattr(fn, '__name__', fn)} did not finish in {timeout:.0f} s (hang?)")
        return [torch.load(os.path.join(d, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]


def ddp_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, rank: int | None,
             world: int, record: dict[str, list]) -> None:
    """``loss.backward()``, then what DDP does to the gradients (their mean over ranks; ``rank=None``: one
    process), recorded in ``record["grads"]`` / ``record["losses"]``, then the optimizer step."""
    optimizer.zero_grad()
    loss.backward()
    if rank is not None:
        for p in model.parameters():
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world
    record.setdefault("grads", []).append([p.grad.clone() for p in model.parameters()])
    record.setdefault("losses", []).append(loss.detach().clone())
    optimizer.step()


def assert_same_as_one_process(got: dict[str, Any], ref: dict[str, Any], label: str) -> None:
    """A rank's ``{"grads", "losses", "state", "objective"}`` equal one process's on the concatenated batches."""
    for step, (gg, rg) in enumerate(zip(got["grads"], ref["grads"])):
        for a, b in zip(gg, rg):
            assert b.abs().sum() > 0
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m: f"{label} step {step}: {m}")
    torch.testing.assert_close(torch.stack(got["losses"]), torch.stack(ref["losses"]), rtol=1e-5, atol=1e-7)
    assert got["state"].keys() == ref["state"].keys()
    for k in ref["state"]:
        torch.testing.assert_close(got["state"][k], ref["state"][k], rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{label} state {k}: {m}")
    torch.testing.assert_close(got["objective"], ref["objective"], rtol=1e-5, atol=1e-6)
