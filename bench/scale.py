"""Sharded vs replicated per-sample state (issue 18): memory per rank and step time on gloo processes.

(a) **Memory**: for ``num_samples = 1e7`` and K = 1, 2, 4 gloo processes (one thread each), every rank builds
the loss with ``state_placement="sharded"`` and runs a few steps of ``B = 512`` pairs/samples per rank; reported
per rank: the bytes of its per-sample state (the shard's ``value`` + ``seen`` tensors of every
``SampleState``), the largest step window (the fetched rows of the global batch), the rows it owns, and the
growth of its resident memory (``/proc/self/statm``) from before the loss was built to after the steps. Goal:
``N / K`` rows per rank plus ``O(B)``. The replicated figure is what every rank holds with the default placement.

(b) **Step time**: K = 2 (and 4) gloo processes, ``B = 512`` per rank, ``num_samples = 1e7``. Each rank holds
the same model four times: with replicated state, with sharded state, with replicated state again (an A/A
control, the noise of this measurement), and with replicated state plus one more ``all_gather`` round of the
sharded fetch's size after the loss's forward (the *floor* of a sharded step that would fetch its rows in a round
of their own: the owners learn the global batch's indices only from a gather); one step = forward of a small
encoder + the loss + backward + SGD step, fresh random dataset indices each step; the variants are timed in
interleaved rounds (order rotating, ``_common.time_interleaved``). Paired ratio = median over rounds of (variant
median / replicated median), rank 0's times, with a bootstrap 90 % interval of that median. Goal: at most 1.1x.
Also the bytes the sharded step's row fetch receives per rank. Two more variants, in the same rounds, draw their
indices from the rank's own shard (owner-local batches): replicated state and ``state_placement="sharded_local"``
(the rows travel in the one gather the replicated step makes); their ratio is reported in rows of its own.

Losses: ``GlobalContrastiveLoss(mode="bimodal", temperature="individual")`` (3 states ``[n, 2]``: 30 bytes per
sample, the largest per-sample footprint of the library) on a linear encoder 64 -> 128, and ``APLoss`` (2 states
``[n, 1]``: 10 bytes per sample) on an MLP 64-128-1 with 1/4 positives.

    python bench/scale.py                 # writes bench/RESULTS.md (section "scale")
    python bench/scale.py --quick         # smoke run (1e5 samples, few steps), RESULTS.md untouched
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import random
import socket
import statistics
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

import _common as C

SECTION = "scale"
GOAL = 1.1
DIM = 64
LOSSES = ("GlobalContrastiveLoss", "APLoss")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _build(kind: str, num_samples: int, placement: str):
    from torch import nn

    from xrisk.losses import APLoss, GlobalContrastiveLoss

    torch.manual_seed(0)
    if kind == "APLoss":
        net: nn.Module = nn.Sequential(nn.Linear(DIM, 128), nn.ReLU(), nn.Linear(128, 1))
        loss = APLoss(num_samples, gamma=0.9, state_placement=placement)
    else:
        net = nn.Linear(DIM, 128)
        loss = GlobalContrastiveLoss(num_samples, mode="bimodal", temperature="individual", tau=0.1,
                                     state_placement=placement)
    return net, loss, torch.optim.SGD(net.parameters(), lr=0.01)


def _stepper(kind: str, net, loss, opt, batch: int, num_samples: int, g: torch.Generator, extra=None,
             rows: tuple[int, int] | None = None):
    """One training step; ``extra()``, if given, runs right after the loss's forward (the floor's extra round).
    ``rows``: draw the indices from ``[start, stop)`` (owner-local: the rank's own shard) instead of ``[0, n)``."""
    low, high = (0, num_samples) if rows is None else rows

    def step() -> None:
        index = torch.randint(low, high, (batch,), generator=g)
        x = torch.randn(batch, DIM, generator=g)
        if kind == "APLoss":
            y = (torch.arange(batch) % 4 == 0).float()
            out = loss(torch.sigmoid(net(x)).squeeze(1), y, index)
        else:
            out = loss(net(x), net(x + 0.1 * torch.randn(batch, DIM, generator=g)), index)
        if extra is not None:
            extra()
        out.backward()
        opt.step()
        opt.zero_grad()

    return step


def _fetch_round(kind: str, loss, batch: int, world: int):
    """The floor's extra round: one ``all_gather`` of as many bytes as the sharded fetch moves on average: every rank
    sends ``rows`` rows (the expected number of the global batch's state rows it owns: ``B / 4`` positives for
    APLoss, ``B`` pairs for GCL, with uniform random indices) of ``value`` + ``seen`` bytes of every state."""
    from xrisk import distributed as xdist
    from xrisk.state import SampleState

    width = sum(math.prod(m.shape) * 5 for m in loss.modules() if isinstance(m, SampleState) and m.num_samples > 1)
    rows = batch // 4 if kind == "APLoss" else batch
    payload = torch.zeros(rows, width, dtype=torch.uint8)

    def extra() -> None:
        xdist.all_gather_many([payload], sizes=[rows] * world)

    return extra


def _state_bytes(loss) -> tuple[int, int]:
    """(bytes of this rank's per-sample rows, rows owned) over the loss's SampleStates."""
    from xrisk.state import SampleState

    total, rows = 0, 0
    for m in loss.modules():
        if isinstance(m, SampleState) and m.num_samples > 1:
            v, s = m.shard_tensors()
            total += v.numel() * v.element_size() + s.numel() * s.element_size()
            rows = v.shape[0]
    return total, rows


def _watch_windows() -> list[int]:
    """Record the bytes of every step window (value + seen rows of each state) as it opens."""
    from xrisk.state import SampleState

    sizes: list[int] = []
    original = SampleState._begin_window

    def begin(self, uniq, cuts, value, seen, *rest, _orig=original):
        sizes.append(value.numel() * value.element_size() + seen.numel() * seen.element_size())
        return _orig(self, uniq, cuts, value, seen, *rest)

    SampleState._begin_window = begin  # type: ignore[method-assign]
    return sizes


def _memory(rank: int, world: int, num_samples: int, batch: int, steps: int, losses: tuple[str, ...] = LOSSES) -> dict:
    out = {}
    windows = _watch_windows()
    for kind in losses:
        before = _rss()
        net, loss, opt = _build(kind, num_samples, "sharded")
        step = _stepper(kind, net, loss, opt, batch, num_samples, torch.Generator().manual_seed(rank))
        windows.clear()
        for _ in range(steps):
            step()
        state, rows = _state_bytes(loss)
        per_step = len(windows) // steps if windows and steps else 0
        window = max(sum(windows[i : i + per_step]) for i in range(0, len(windows), per_step)) if per_step else 0
        out[kind] = {"state": state, "rows": rows, "window": window, "rss": _rss() - before}
        del net, loss, opt
    return out


def _timing(rank: int, world: int, num_samples: int, batch: int, rounds: int, spr: int,
            losses: tuple[str, ...] = LOSSES, local_only: bool = False) -> dict:
    from xrisk.sharding import shard_range
    from xrisk.state import SampleState

    out = {}
    fetched: list[int] = []
    carried: list[int] = []  # owner-local windows: the rows that travel in the scores' / features' gather
    original = SampleState._begin_window

    def begin(self, uniq, cuts, value, seen, *rest, _orig=original):  # bytes the fetch's all_gather brings in
        width = value[0].numel() if value.dim() > 1 else 1
        (carried if self.placement == "sharded_local" else fetched).append(
            value.shape[0] * width * (value.element_size() + seen.element_size()))
        return _orig(self, uniq, cuts, value, seen, *rest)

    SampleState._begin_window = begin  # type: ignore[method-assign]
    placements = (("replicated", "replicated"), ("sharded", "sharded"), ("replicated_copy", "replicated"),
                  ("floor", "replicated"), ("replicated_local", "replicated"), ("sharded_local", "sharded_local"))
    if local_only:  # the owner-local pair only (--local-only)
        placements = placements[4:]
    for kind in losses:
        g = torch.Generator().manual_seed(100 + rank)
        variants = {name: _build(kind, num_samples, placement) for name, placement in placements}
        # the owner-local pair: both variants draw their indices from this rank's shard (the same stream)
        own = shard_range(num_samples, world, rank)
        steps = {name: _stepper(kind, *v, batch, num_samples, g,
                                extra=_fetch_round(kind, v[1], batch, world) if name == "floor" else None,
                                rows=own if name.endswith("_local") else None)
                 for name, v in variants.items()}
        fetched.clear()
        carried.clear()
        times = C.time_interleaved(steps, rounds=rounds, steps_per_round=spr)

        def paired(a: str, base: str = "replicated") -> list[float]:
            return [statistics.median(times[a][r * spr : (r + 1) * spr])
                    / statistics.median(times[base][r * spr : (r + 1) * spr]) for r in range(rounds)]

        local = paired("sharded_local", "replicated_local")
        n_steps = (rounds + 2) * spr  # warm-up rounds included
        local_row = {"replicated_ms": 1e3 * statistics.median(times["replicated_local"]),
                     "sharded_ms": 1e3 * statistics.median(times["sharded_local"]),
                     "ratio": statistics.median(local), "ci": _median_interval(local),
                     "iqr": C.iqr(local) if rounds > 1 else (local[0], local[0]),
                     "window_bytes": sum(carried) / max(n_steps, 1)}
        if local_only:
            out[kind] = {"local": local_row}
            del variants, steps
            continue
        ratio = paired("sharded")
        out[kind] = {"replicated_ms": 1e3 * statistics.median(times["replicated"]),
                     "sharded_ms": 1e3 * statistics.median(times["sharded"]),
                     "ratio": statistics.median(ratio), "ci": _median_interval(ratio),
                     "iqr": C.iqr(ratio) if rounds > 1 else (ratio[0], ratio[0]),
                     "control": statistics.median(paired("replicated_copy")),
                     "floor": statistics.median(paired("floor")), "floor_ci": _median_interval(paired("floor")),
                     "fetch_bytes": sum(fetched) / max(n_steps, 1),  # the sharded variant's windows
                     "local": local_row}
        del variants, steps
    return out


def _median_interval(xs: list[float], level: float = 0.9, resamples: int = 2000) -> tuple[float, float]:
    """Bootstrap ``level`` interval of the median of ``xs`` (per-round ratios; resampled with a fixed seed)."""
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    lo = int((1 - level) / 2 * resamples)
    return meds[lo], meds[resamples - 1 - lo]


def _worker(rank: int, world: int, port: int, task: str, args: tuple, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=900))
    try:
        result = (_memory if task == "memory" else _timing)(rank, world, *args)
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def run(world: int, task: str, *args) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_worker, args=(world, _free_port(), task, args, d), nprocs=world, join=True,
                           start_method="spawn")
        return [torch.load(os.path.join(d, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def _mb(x: float) -> str:
    return f"{x / 1e6:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run; RESULTS.md untouched")
    ap.add_argument("--num-samples", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=512, help="samples (pairs) per rank")
    ap.add_argument("--rounds", type=int, default=80)
    ap.add_argument("--steps-per-round", type=int, default=4)
    ap.add_argument("--worlds", default="2,4", help="process counts of the timing runs")
    ap.add_argument("--losses", default=",".join(LOSSES), help=f"comma-separated subset of {','.join(LOSSES)}")
    ap.add_argument("--no-memory", action="store_true", help="skip part (a), the memory table")
    ap.add_argument("--local-only", action="store_true",
                    help="time the owner-local pair only (replicated vs sharded_local; faster)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    losses = tuple(k for k in args.losses.split(",") if k)
    if not losses or any(k not in LOSSES for k in losses):
        ap.error(f"--losses takes a comma-separated subset of {','.join(LOSSES)}, got {args.losses!r}")
    n, rounds, spr = (100_000, 2, 2) if args.quick else (args.num_samples, args.rounds, args.steps_per_round)
    cmd = "python bench/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    facts = C.machine_facts(threads=1)
    t0 = time.perf_counter()
    loads = [f"start {C.loadavg():.2f}"]
    mem_rows = []
    for world in () if args.no_memory else (1, 2, 4):
        res = run(world, "memory", n, args.batch, 3, losses)
        loads.append(f"memory K={world} {C.loadavg():.2f}")
        for kind in losses:
            per_byte = 30 if kind == "GlobalContrastiveLoss" else 10
            for r, rr in enumerate(res):
                m = rr[kind]
                target = -(-n // world)
                mem_rows.append([kind, world, r, f"{m['rows']:,}", f"{target:,}", _mb(m["state"]), _mb(n * per_byte),
                                 _mb(m["window"]), _mb(m["rss"])])
        print(f"[scale] memory K={world} done, {time.perf_counter() - t0:.0f} s", flush=True)
    time_rows = []
    for world in [int(w) for w in args.worlds.split(",") if w]:
        res = run(world, "timing", n, args.batch, rounds, spr, losses, args.local_only)[0]
        loads.append(f"timing K={world} {C.loadavg():.2f}")
        for kind in () if args.local_only else losses:
            r = res[kind]
            lo, hi = r["iqr"]
            time_rows.append([kind, world, args.batch, f"{r['replicated_ms']:.2f}", f"{r['sharded_ms']:.2f}",
                              f"**{r['ratio']:.3f}** ({r['ci'][0]:.3f}-{r['ci'][1]:.3f}; IQR {lo:.3f}-{hi:.3f})",
                              f"{r['control']:.3f}", f"{r['floor']:.3f} ({r['floor_ci'][0]:.3f}-{r['floor_ci'][1]:.3f})",
                              f"{r['fetch_bytes'] / 1e3:.1f}", "met" if r["ratio"] <= GOAL else "not met"])
        for kind in losses:
            r = res[kind]["local"]
            lo, hi = r["iqr"]
            time_rows.append([f"{kind}, owner-local batches (`sharded_local`)", world, args.batch,
                              f"{r['replicated_ms']:.2f}", f"{r['sharded_ms']:.2f}",
                              f"**{r['ratio']:.3f}** ({r['ci'][0]:.3f}-{r['ci'][1]:.3f}; IQR {lo:.3f}-{hi:.3f})",
                              "-", "-", f"{r['window_bytes'] / 1e3:.1f} (in the one gather)",
                              "met" if r["ratio"] <= GOAL else "not met"])
        print(f"[scale] timing K={world} done, {time.perf_counter() - t0:.0f} s", flush=True)
    mem = C.md_table(["loss", "K", "rank", "rows owned", "ceil(N/K)", "state MB (this rank)",
                      "replicated MB (every rank)", "largest step window MB", "RSS growth MB"], mem_rows)
    tim = C.md_table(["loss", "K", "B per rank", "replicated ms/step", "sharded ms/step",
                      "paired ratio sharded/replicated (90 % interval of the median; IQR of the rounds)",
                      "A/A control", "floor: replicated + one fetch-sized round (90 %)", "fetch kB received/step",
                      f"goal <= {GOAL}"], time_rows)
    body = (
        "## Sharded per-sample state: memory and step time (`bench/scale.py`, issue 18)\n\n"
        + C.run_header(cmd, time.perf_counter() - t0, facts, loads)
        + f"### (a) State per rank, num_samples = {n:.0e}, {args.batch} per rank, 3 steps\n\n"
        "`state MB`: the rank's `value` + `seen` rows of every per-sample `SampleState` (sharded); `replicated MB`: "
        "what every rank holds with the default placement; window: the fetched rows of one step (all states); "
        "RSS growth: resident memory after the steps minus before the loss was built (includes the model, "
        "activations and allocator slack).\n\n" + mem + "\n\n"
        f"### (b) Step time, num_samples = {n:.0e}\n\n"
        f"{rounds} interleaved rounds of {spr} steps per variant (2 warm-up rounds dropped; every row alike: 80 "
        "rounds from this version on, 30 before), one thread per process; rank 0's times. Ratios: the median over rounds of (round median / the replicated "
        "variant's round median), with a bootstrap 90 % interval of that median and the IQR of the rounds. "
        "A/A control: replicated state again. Floor: the replicated step plus one `all_gather` of the bytes the "
        "sharded fetch moves (`B/4` rows per rank for APLoss, `B` for GCL, 5 bytes per state entry), issued after "
        "the loss's forward: what a sharded step costs if its rows travel in a round of their own. The sharded "
        "score-loss step's rows ride on the scores' gather (`gather_and_open`), but the owners learn the indices "
        "from the round before it (the targets and indices), which the replicated step packs with the scores: "
        "one round more, as the floor; the contrastive step fetches in a round of its own. Fetch: bytes the sharded step's "
        "row fetch brings to each rank per step (values and flags as their bytes: 5 per state entry).\n\n"
        "*Owner-local batches* rows (`state_placement=\"sharded_local\"`): every rank draws its indices from its own "
        "shard (`xrisk.sharding.shard_range`, what `xrisk.data.ShardLocalSampler` yields), and so does the replicated "
        "variant it is compared with (two more variants in the same interleaved rounds: the ratio compares placement "
        "only). Each rank's state rows travel in the one gather of scores / features the replicated step makes "
        "(no extra round); the fetch column gives the window's bytes per step (every rank receives the global "
        "batch's `B_global` rows, its own included).\n\n" + tim
    )
    C.publish(SECTION, body, write=not (args.quick or args.no_write))
    return 0


if __name__ == "__main__":
    sys.exit(main())
