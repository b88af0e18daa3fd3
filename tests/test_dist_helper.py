"""The 2-process helper (tests/_dist.py) frees the process group before interpreter shutdown."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from _dist import run_distributed

pytestmark = pytest.mark.distributed


def _optimizer_after_init(rank: int, world: int) -> torch.Tensor:
    """What most 2-process tests do: the first optimizer is built after init_process_group (it imports
    torch._dynamo, and with it torch.distributed.nn.functional, lazily)."""
    model = torch.nn.Linear(2, 1)
    torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.full((1,), float(rank + 1))
    dist.all_reduce(x)
    return x


def test_destroy_process_group_frees_gloo_before_shutdown() -> None:
    """Regression (intermittent SIGABRT "terminate called without an active exception" in 2-process tests):
    torch.distributed.nn.functional, imported by the first optimizer after init, bound the live group as a
    default argument, so destroy_process_group could not free it and gloo's threads ran into interpreter
    shutdown. The helper imports it before init; strict_teardown fails when gloo or TCPStore threads outlive it."""
    assert [r.item() for r in run_distributed(_optimizer_after_init, timeout=60.0, strict_teardown=True)] == [3.0, 3.0]


def _sharded_rows_as_dtensor(rank: int, world: int) -> torch.Tensor:
    """What a sharded SampleState's state_dict does: this rank's rows as a DTensor over the default group's mesh."""
    from xrisk.sharding import as_dtensor

    rows = as_dtensor(torch.full((3,), float(rank)), 3 * world)
    return rows.to_local().clone()


def test_the_device_mesh_of_sharded_checkpoints_does_not_keep_the_group_alive() -> None:
    """xrisk.sharding cached the mesh (and with it the process group) for the life of the process
    (functools.lru_cache), so after a sharded state_dict destroy_process_group could not free the group, and a
    re-initialised group would have been handed the destroyed one's mesh."""
    assert [r.tolist() for r in run_distributed(_sharded_rows_as_dtensor, timeout=60.0,
                                                    strict_teardown=True)] == [[0.0] * 3, [1.0] * 3]
