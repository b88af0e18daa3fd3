"""StratifiedBatches: every stratum in every batch with min(k, n_s) distinct rows, a pure function of (seed, step)."""

from __future__ import annotations

import pytest
import torch

from xrisk.data import StratifiedBatches


def _cells(sizes: list[int], seed: int = 0) -> torch.Tensor:
    cells = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return cells[torch.randperm(len(cells), generator=torch.Generator().manual_seed(seed))]


def test_every_cell_present_with_its_share_and_no_repeats() -> None:
    cells = _cells([500, 40, 120, 7])  # the last cell is smaller than per_stratum: all of its rows every step
    b = StratifiedBatches(cells, 16, seed=3)
    assert b.strata_ids.tolist() == [0, 1, 2, 3] and b.batch_size == 16 * 3 + 7
    for step in range(20):
        idx = b.batch(step)
        assert len(idx) == b.batch_size and len(set(idx.tolist())) == len(idx)  # distinct rows
        assert torch.bincount(cells[idx], minlength=4).tolist() == [16, 16, 16, 7]
        assert cells[idx].tolist() == sorted(cells[idx].tolist())  # strata in increasing id order
    assert sorted(b.batch(0)[cells[b.batch(0)] == 3].tolist()) == torch.nonzero(cells == 3).flatten().tolist()


def test_deterministic_in_seed_and_step_and_independent_of_global_rng() -> None:
    cells = _cells([200, 30, 90, 60])
    a, b = StratifiedBatches(cells, 8, seed=1), StratifiedBatches(cells, 8, seed=1)
    torch.manual_seed(0)
    first = [a.batch(t) for t in range(5)]
    torch.manual_seed(123)
    torch.rand(7)
    assert all(torch.equal(x, b.batch(t)) for t, x in zip(range(5), first))
    assert torch.equal(a.batch(3), first[3])  # asking again (a resumed run) gives the same batch
    assert not torch.equal(first[0], first[1])  # steps differ
    assert not torch.equal(first[0], StratifiedBatches(cells, 8, seed=2).batch(0))  # seeds differ


def test_draws_are_uniform_within_each_cell() -> None:
    """Over many steps every row of a cell is drawn about k / n_s of the time (so a cell's batch mean is unbiased
    for the cell's mean: a group rate)."""
    cells = _cells([60, 12, 30, 24])
    b = StratifiedBatches(cells, 6, seed=0)
    steps = 4000
    counts = torch.bincount(torch.cat([b.batch(t) for t in range(steps)]), minlength=len(cells)).double()
    sizes = torch.bincount(cells).double()
    expected = steps * 6 / sizes[cells]
    assert torch.allclose(counts / expected, torch.ones_like(counts), atol=0.12)
    values = torch.randn(len(cells), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for c in range(4):  # the mean over steps of the cell's batch mean is the cell's mean
        means = [values[i][cells[i] == c].mean() for i in (b.batch(t) for t in range(1000))]
        assert float(torch.stack(means).mean()) == pytest.approx(float(values[cells == c].mean()), abs=0.05)


@pytest.mark.parametrize("strata, per, seed, match", [
    (torch.tensor([0.0, 1.0]), 1, 0, "1-D integer"),
    (torch.zeros(2, 2, dtype=torch.long), 1, 0, "1-D integer"),
    (torch.tensor([True, False]), 1, 0, "1-D integer"),
    (torch.zeros(0, dtype=torch.long), 1, 0, "empty"),
    (torch.tensor([0, 1]), 0, 0, "per_stratum"),
    (torch.tensor([0, 1]), 2.0, 0, "per_stratum"),
    (torch.tensor([0, 1]), 1, -1, "seed"),
])
def test_bad_arguments_raise_naming_them(strata, per, seed, match) -> None:
    with pytest.raises(ValueError, match=match):
        StratifiedBatches(strata, per, seed=seed)


def test_bad_step_raises() -> None:
    with pytest.raises(ValueError, match="step"):
        StratifiedBatches(torch.tensor([0, 1]), 1).batch(-1)
