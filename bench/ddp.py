"""DDP step time with the loss as a submodule: default ``broadcast_buffers=True`` vs ``False`` (issue 10).

``DistributedDataParallel`` broadcasts every module buffer from rank 0 before each forward pass by
default. When the loss is a submodule of the DDP-wrapped model (the Lightning pattern), per-sample
state of ``O(num_samples)`` used to be such a buffer, so every step copied it. Goal: the default DDP
step within 1.05x of ``broadcast_buffers=False`` at ``num_samples = 2e6``.

Setup: 2 gloo processes on this machine, ``torch.set_num_threads(1)`` each; one step = DDP forward
(model + loss) + backward + SGD step + ``zero_grad``, fresh random dataset indices every step (the state
is read and written). Three models with the same weights, wrapped with default DDP, with
``broadcast_buffers=False``, and with default DDP again (an A/A control giving the noise floor), timed in
interleaved rounds (``_common.time_interleaved``, the order
rotating each round; both ranks run the same schedule). Reported from rank 0: median ms/step of each,
and the paired ratio (per round the ratio of the two medians, then the median over rounds).

* ``APLoss(num_samples)`` on an MLP 64-128-1, 64 samples per rank (2 ``SampleState [n, 1]``);
* ``GlobalContrastiveLoss(num_samples, mode="unimodal")`` on a linear encoder 64->128, 64 pairs per rank
  (``SampleState [n, 2]``).

``--baseline-src DIR`` measures the same with the xrisk package found in ``DIR`` (e.g. an export of an
older commit: ``git archive 8c9c2bc src | tar -x -C /tmp/xrisk-8c9c2bc``, then
``--baseline-src /tmp/xrisk-8c9c2bc/src``) in the same run and writes those rows too.

    python bench/ddp.py                   # writes bench/RESULTS.md (section "ddp")
    python bench/ddp.py --quick           # smoke run, RESULTS.md untouched
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.multiprocessing as mp

import _common as C

SECTION = "ddp"
GOAL = 1.05
BATCH = 64
DIM = 64
LOSSES = ("APLoss", "GlobalContrastiveLoss")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(kind: str, num_samples: int, broadcast: bool | None):
    """A model holding the loss as a submodule, wrapped in DDP (same weights for every call)."""
    from torch import nn

    from xrisk.losses import APLoss, GlobalContrastiveLoss

    torch.manual_seed(0)
    if kind == "APLoss":
        class ScoreModel(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = nn.Sequential(nn.Linear(DIM, 128), nn.ReLU(), nn.Linear(128, 1))
                self.loss = APLoss(num_samples, gamma=0.9)

            def forward(self, x, y, index):
                return self.loss(torch.sigmoid(self.net(x)).squeeze(1), y, index)

        model: nn.Module = ScoreModel()
    else:
        class PairModel(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = nn.Linear(DIM, 128)
                self.loss = GlobalContrastiveLoss(num_samples, mode="unimodal", gamma=0.9)

            def forward(self, xa, xb, index):
                return self.loss(self.net(xa), self.net(xb), index)

        model = PairModel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13: broadcast_buffers is deprecated (forward_sync_buffers)
        ddp = (nn.parallel.DistributedDataParallel(model) if broadcast is None
               else nn.parallel.DistributedDataParallel(model, broadcast_buffers=broadcast))
    return ddp, torch.optim.SGD(model.parameters(), lr=0.01)


def _worker(rank: int, world: int, port: int, src: str | None, num_samples: int, rounds: int, spr: int,
            out_dir: str) -> None:
    if src:
        sys.path.insert(0, src)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    import torch.distributed as dist

    import xrisk

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600))
    result = {"xrisk": os.path.dirname(xrisk.__file__), "losses": {}}
    try:
        for kind in LOSSES:
            g = torch.Generator().manual_seed(100 + rank)
            variants = {"default": _build(kind, num_samples, None), "no_broadcast": _build(kind, num_samples, False),
                        "default_copy": _build(kind, num_samples, None)}  # A/A control: the noise floor
            sent: list[int] = []
            ddp0 = variants["default"][0]
            original = ddp0._distributed_broadcast_coalesced  # DDP's buffer broadcast before each forward

            def counting(tensors, *a, _original=original, **k):
                sent.append(sum(t.numel() * t.element_size() for t in tensors))
                return _original(tensors, *a, **k)

            ddp0._distributed_broadcast_coalesced = counting

            def step(ddp, opt):
                index = torch.randint(0, num_samples, (BATCH,), generator=g)
                x = torch.randn(BATCH, DIM, generator=g)
                if kind == "APLoss":
                    y = (torch.arange(BATCH) % 4 == 0).float()
                    loss = ddp(x, y, index)
                else:
                    loss = ddp(x, x + 0.1 * torch.randn(BATCH, DIM, generator=g), index)
                loss.backward()
                opt.step()
                opt.zero_grad()

            steps = {name: (lambda v=v: step(*v)) for name, v in variants.items()}
            times = C.time_interleaved(steps, rounds=rounds, steps_per_round=spr)
            def paired(a: str, b: str) -> list[float]:
                return [statistics.median(times[a][r * spr : (r + 1) * spr])
                        / statistics.median(times[b][r * spr : (r + 1) * spr]) for r in range(rounds)]

            per_round = paired("default", "no_broadcast")
            control = paired("default_copy", "default")
            loss_state = variants["default"][0].module.loss.state_dict().values()
            state_mb = sum(v.numel() * v.element_size() for v in loss_state)
            result["losses"][kind] = {
                "default_ms": 1e3 * statistics.median(times["default"]),
                "off_ms": 1e3 * statistics.median(times["no_broadcast"]),
                "ratio": statistics.median(per_round),
                "ratio_iqr": C.iqr(per_round) if rounds > 1 else (per_round[0], per_round[0]),
                "control": statistics.median(control),
                "state_mb": state_mb / 1e6,
                "bytes_per_step": sum(sent) / max(len(times["default"]) + 2 * spr, 1),  # warm-up rounds included
            }
            del variants
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def measure(src: str | None, num_samples: int, rounds: int, spr: int) -> dict:
    """Run the 2-process measurement with the xrisk package in ``src`` (None: the importable one)."""
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_worker, args=(2, _free_port(), src, num_samples, rounds, spr, d), nprocs=2,
                           join=True, start_method="spawn")
        return torch.load(os.path.join(d, "rank0.pt"), weights_only=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (1e4 samples, few steps); RESULTS.md untouched")
    ap.add_argument("--num-samples", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--steps-per-round", type=int, default=5)
    ap.add_argument("--baseline-src", metavar="DIR", help="also measure the xrisk package in DIR (e.g. main)")
    ap.add_argument("--baseline-label", default="baseline", help="name of the baseline in the table")
    ap.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    args = ap.parse_args(argv)
    n, rounds, spr = (10_000, 3, 5) if args.quick else (args.num_samples, args.rounds, args.steps_per_round)
    cmd = "python bench/ddp.py " + " ".join(argv if argv is not None else sys.argv[1:])
    facts = C.machine_facts(threads=1)
    runs = [("this branch", None)] + ([(args.baseline_label, args.baseline_src)] if args.baseline_src else [])
    rows, loads = [], []
    t0 = time.perf_counter()
    for label, src in runs:
        load0 = C.loadavg()
        res = measure(src, n, rounds, spr)
        loads.append(f"{label}: {load0:.2f} -> {C.loadavg():.2f}")
        for kind, r in res["losses"].items():
            lo, hi = r["ratio_iqr"]
            verdict = "met" if r["ratio"] <= GOAL else "not met"
            rows.append([kind, f"{label} (`{res['xrisk']}`)" if src else label, f"{n:.0e}", f"{r['state_mb']:.1f}",
                         f"{r['bytes_per_step']:,.0f}",
                         f"{r['default_ms']:.2f}", f"{r['off_ms']:.2f}", f"{r['ratio']:.3f} ({lo:.3f}-{hi:.3f})",
                         f"{r['control']:.3f}", verdict])
        print(f"[ddp] {label}: done, {time.perf_counter() - t0:.0f} s", flush=True)
    table = C.md_table(
        ["loss", "xrisk", "num_samples", "state MB", "bytes broadcast per default step", "default DDP ms/step",
         "broadcast_buffers=False ms/step",
         "paired ratio (IQR over rounds)", "A/A control ratio", f"goal <= {GOAL}"], rows)
    body = (
        "## DDP with the loss as a submodule: default vs `broadcast_buffers=False` (`bench/ddp.py`)\n\n"
        + C.run_header(cmd, time.perf_counter() - t0, facts, loads, "1-min load average before -> after each run")
        + f"2 gloo processes, 1 thread each, {BATCH} samples per rank; {rounds} interleaved rounds of {spr} steps "
        "per variant (2 warm-up rounds dropped); one step = DDP forward + backward + SGD step. Paired ratio = "
        "median over rounds of (default median / `broadcast_buffers=False` median); rank 0's times. "
        "`state MB`: the loss's `state_dict()`. A/A control: a second default-DDP copy timed in the same rounds, "
        "paired with the first (its distance from 1 is the noise of this measurement on this machine).\n\n" + table
    )
    C.publish(SECTION, body, write=not (args.quick or args.no_write))
    return 0


if __name__ == "__main__":
    sys.exit(main())
