"""2-process gloo: every contrastive loss/mode under DDP equals one process on the concatenated batch.

Pins two reference bugs:
* Optimization-AI/SogCLR#1: a gather whose backward keeps only the local slice drops the gradient
  through features that serve as negatives on other ranks (the ``naive-gather`` run below shows
  our test detects it; the real loss must match the single process).
* LibAUC #4: the bimodal loss paired image i with text i of the *global* batch only on rank 0; here
  rank 1 holds the uneven tail of the batch and every bimodal gradient/state must still match.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _dist import run_distributed
from xrisk.losses import FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss

N = 12
SIZES = (4, 3)  # uneven local batches
BATCHES = [torch.tensor([0, 1, 2, 3, 4, 2, 5]), torch.tensor([6, 2, 7, 8, 0, 9, 2])]  # duplicates across ranks

CONFIGS = {
    **{
        f"gcl-{m}-{t}": dict(kind="gcl", mode=m, temperature=t)
        for m in ("unimodal", "bimodal")
        for t in ("fixed", "global", "individual")
    },
    "gcl-bimodal-global-fnd": dict(kind="gcl", mode="bimodal", temperature="global", fnd=True),
    "gcl-unimodal-individual-fnd": dict(kind="gcl", mode="unimodal", temperature="individual", fnd=True),
    "nuclr": dict(kind="nuclr"),
    "nuclr-fnd": dict(kind="nuclr", fnd=True),
    "gcl-bimodal-individual-fnd-adam": dict(kind="gcl", mode="bimodal", temperature="individual", fnd="adam"),
    # DRRho-CLIP: reference features of a second (frozen) encoder of another width
    **{
        f"drrho-gcl-{m}-{t}": dict(kind="gcl", mode=m, temperature=t, ref=True)
        for m in ("unimodal", "bimodal")
        for t in ("fixed", "global", "individual")
    },
    "drrho-gcl-bimodal-global-fnd": dict(kind="gcl", mode="bimodal", temperature="global", fnd=True, ref=True),
    "drrho-nuclr": dict(kind="nuclr", ref=True),
}


def _make(cfg: dict) -> nn.Module:
    opt = "adam" if cfg.get("fnd") == "adam" else "sgd"
    fnd = FalseNegativeDetector(N, alpha=0.3, lr=0.5, optimizer=opt) if cfg.get("fnd") else None
    if cfg["kind"] == "nuclr":
        return NUCLRLoss(N, tau=0.1, gamma=0.7, zeta_start_epoch=0, lr_zeta=0.2, false_negatives=fnd)
    return GlobalContrastiveLoss(
        N, mode=cfg["mode"], temperature=cfg["temperature"], tau=0.2, gamma=0.7, rho=0.3, lr_tau=0.1,
        tau_min=0.05, false_negatives=fnd,
    )


def _train(rank: int, world: int, cfg: dict) -> list[dict]:
    """Two SGD steps of a linear encoder; returns grads and loss state after each step."""
    torch.manual_seed(0)
    enc = nn.Linear(6, 4).double()
    x_all = torch.randn(7, 6, dtype=torch.float64)
    ref_enc = nn.Linear(6, 3).double() if cfg.get("ref") else None
    model: nn.Module = enc
    if world > 1:
        model = nn.parallel.DistributedDataParallel(enc)
    loss_fn = _make(cfg).double()
    opt = torch.optim.SGD(list(model.parameters()) + list(loss_fn.parameters()), lr=0.1)
    lo = 0 if world == 1 else sum(SIZES[:rank])
    hi = 7 if world == 1 else lo + SIZES[rank]
    out = []
    for step, idx in enumerate(BATCHES):
        noise = torch.randn(7, 6, dtype=torch.float64)
        xa, xb = x_all[lo:hi], (x_all + 0.5 * noise)[lo:hi]
        opt.zero_grad()
        ref = None
        if ref_enc is not None:
            with torch.no_grad():
                ref = (ref_enc(xa), ref_enc(xb + 0.1))
        loss = loss_fn(model(xa), model(xb), idx[lo:hi], ref_feats=ref)
        loss.backward()
        rec = {f"grad.{k}": p.grad.clone() for k, p in enc.named_parameters()}
        rec.update({f"grad.loss.{k}": p.grad.clone() for k, p in loss_fn.named_parameters()})
        rec.update({f"state.{k}": v.clone() for k, v in loss_fn.state_dict().items()})
        rec["objective"] = loss_fn.objective()
        out.append(rec)
        opt.step()
        loss_fn.set_epoch(step + 1)
    return out


def _naive_gather_grad(rank: int, world: int) -> torch.Tensor:
    """SogCLR#1: gather whose backward returns only the own slice (no sum over ranks)."""
    import xrisk.distributed as xdist

    class _OwnSlice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[override]
            ctx.start, ctx.n = xdist.local_slice(x.shape[0])[0], x.shape[0]
            return xdist.all_gather_no_grad(x)

        @staticmethod
        def backward(ctx, g):  # type: ignore[override]
            return g[ctx.start : ctx.start + ctx.n]

    def with_extras(x, extras, *, grad, sizes, extra_sizes):  # the template gathers its features with the indices
        return _OwnSlice.apply(x), [xdist.all_gather_no_grad(e, sizes=extra_sizes) for e in extras]

    orig, orig_with = xdist.all_gather, xdist.all_gather_with
    xdist.all_gather = lambda x, grad, sizes=None: _OwnSlice.apply(x)  # type: ignore[assignment]
    xdist.all_gather_with = with_extras  # type: ignore[assignment]
    try:
        return _train(rank, world, CONFIGS["gcl-unimodal-fixed"])[0]["grad.weight"]
    finally:
        xdist.all_gather, xdist.all_gather_with = orig, orig_with


def _all_configs(rank: int, world: int) -> dict:
    res = {name: _train(rank, world, cfg) for name, cfg in CONFIGS.items()}
    res["naive"] = _naive_gather_grad(rank, world)
    return res


def _assert_close(got: dict, want: dict, where: str) -> None:
    assert got.keys() == want.keys(), where
    for k in want:
        g, w = got[k], want[k]
        if w.dtype in (torch.bool, torch.long) or not w.is_floating_point():
            assert torch.equal(g, w), f"{where}: {k} differs"
        else:
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, equal_nan=True, msg=f"{where}: {k} differs")


@pytest.mark.distributed
def test_ddp_equals_single_process_for_every_contrastive_loss():
    ranks = run_distributed(_all_configs)
    for name, cfg in CONFIGS.items():
        single = _train(0, 1, cfg)
        for r, res in enumerate(ranks):
            for step, (got, want) in enumerate(zip(res[name], single)):
                _assert_close(got, want, f"{name} rank {r} step {step}")
    # the SogCLR#1 gather really gives another gradient: the comparison above can fail
    single = _train(0, 1, CONFIGS["gcl-unimodal-fixed"])[0]["grad.weight"]
    assert not torch.allclose(ranks[0]["naive"], single, rtol=1e-3, atol=1e-5)
