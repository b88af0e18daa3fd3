"""Fidelity of the global contrastive losses at small scale (issue 3): do the papers' claims hold?

(a) **Batch-size sweep** (SogCLR, Yuan et al. ICML 2022): Fashion-MNIST subset, the same encoder,
    augmentations, optimizer and number of epochs for every batch size in 32 / 64 / 128 / 256;
    SimCLR (mini-batch NT-Xent) vs SogCLR (``GlobalContrastiveLoss(mode="unimodal")``); linear-probe
    test accuracy of the frozen backbone. Claim: SogCLR at a small batch matches SimCLR at a large one.
(b) **GloFND** (Balmaseda et al. ICML 2025): ``FalseNegativeDetector`` run over frozen embeddings
    (from an encoder trained in (a)); learned per-anchor thresholds ``lambda_i`` vs the exact
    data-set ``(1 - alpha)`` quantile computed by brute force (mean absolute error), and
    precision / recall of the detected false negatives against the known classes.
(c) **Image-text retrieval**: mini-batch InfoNCE (ClipLoss formula) vs GCL (FastCLIP-v1 style,
    fixed tau) vs iSogCLR (individual tau) vs NUCLR, each GCL-type loss with and without GloFND;
    image->text and text->image recall@k on held-out pairs.

Every number is a mean +- std over seeds. CPU only: independent training runs go to 2 forked worker
processes of one thread each (``--workers``), which uses the 2 cores far better than 2 threads per run.

    .venv-bench/bin/python bench/fidelity_contrastive.py            # full (< 35 min on 2 cores)
    .venv-bench/bin/python bench/fidelity_contrastive.py --quick    # smoke run (< 2 min), prints only
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import _common
from _baselines_contrastive import clip_loss, nt_xent
from xrisk.functional.contrastive import masked_upper_quantile
from xrisk.losses import FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss

SECTION = "contrastive-fidelity"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle boot"]


@dataclass
class Config:
    quick: bool
    seeds: tuple[int, ...]
    # (a)
    a_train: int = 6000
    a_test: int = 2000
    a_epochs: int = 25
    a_batches: tuple[int, ...] = (32, 64, 128, 256)
    a_tau: float = 0.2
    a_gamma: float = 0.9
    # (b)
    b_alphas: tuple[float, ...] = (0.01, 0.05)
    b_epochs: int = 20
    b_batch: int = 256
    b_steps: tuple[tuple[str, float], ...] = (("sgd", 0.05), ("sgd", 0.5), ("adam", 0.05))  # (optimizer, lr)
    # (c)
    c_epochs: int = 30
    c_batch: int = 64
    workers: int = 2
    extra: dict = field(default_factory=dict)


def full_config() -> Config:
    return Config(quick=False, seeds=(0, 1, 2))


def quick_config() -> Config:
    return Config(quick=True, seeds=(0,), a_train=1000, a_test=500, a_epochs=2, a_batches=(32, 128),
                  b_alphas=(0.05,), b_epochs=3, c_epochs=2)


# ----------------------------------------------------------------------------- data
def _read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path).read()
    nd = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(shape)


def load_fmnist(n_train: int, n_test: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class-balanced subsets of Fashion-MNIST: images ``[n, 1, 28, 28]`` in [0, 1] and labels."""
    if not FMNIST.is_dir():
        raise FileNotFoundError(f"{FMNIST} missing: apt-get install dataset-fashion-mnist")
    out = []
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = _read_idx(FMNIST / f"{split}-images-idx3-ubyte.gz")
        y = _read_idx(FMNIST / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
        rng = np.random.default_rng(seed)
        pick = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: n // 10] for c in range(10)])
        pick = np.sort(pick)
        out += [torch.tensor(x[pick], dtype=torch.float32).div_(255).unsqueeze(1), torch.tensor(y[pick])]
    return out[0], out[1], out[2], out[3]


def augment(x: Tensor, g: torch.Generator) -> Tensor:
    """SimCLR-style batch augmentation for small grey images: random resized crop + flip (one affine
    warp), brightness/contrast jitter and Gaussian noise."""
    b = x.shape[0]
    u = lambda lo, hi, *shape: torch.empty(*(shape or (b,))).uniform_(lo, hi, generator=g)  # noqa: E731
    s = u(0.5, 1.0).sqrt()
    r = u(-0.15, 0.15).exp()
    sx, sy = s * r, s / r
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx * flip, sy
    theta[:, 0, 2], theta[:, 1, 2] = (1 - sx) * u(-1, 1), (1 - sy) * u(-1, 1)
    out = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    c, off = u(0.6, 1.4, b, 1, 1, 1), u(-0.2, 0.2, b, 1, 1, 1)
    return (out - 0.5) * c + 0.5 + off + 0.05 * torch.randn(out.shape, generator=g)


class Encoder(nn.Module):
    """MLP backbone (``784 -> 512 -> 256``) + projection head (``256 -> 128``), SimCLR layout."""

    def __init__(self, in_features: int = 784, width: int = 512, feat: int = 256, proj: int = 128) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, feat))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feat, proj))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def linear_probe(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor) -> float:
    """Test accuracy of a multinomial logistic regression on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(train_f.numpy())
    clf = LogisticRegression(max_iter=1000, C=1.0)
    clf.fit(sc.transform(train_f.numpy()), train_y.numpy())
    return float(clf.score(sc.transform(test_f.numpy()), test_y.numpy()))


def mean_std(xs: list[float], scale: float = 100.0, digits: int = 1) -> str:
    m, s = _common.mean_std([scale * x for x in xs])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


# ----------------------------------------------------------------------------- parallel runs
_SHARED: dict = {}  # data loaded once in the parent; forked workers inherit it


def _init_worker() -> None:
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # sklearn / numpy BLAS in the linear probe
    except ImportError:  # pragma: no cover
        pass


def run_tasks(fn: Callable, tasks: list[tuple], workers: int, log: Callable[[str], None],
              describe: Callable[[tuple, object], str]) -> list:
    """Run ``fn(*task)`` for every task, in ``workers`` forked processes of one thread each
    (independent training runs in parallel on the 2 cores); results in task order."""
    if workers <= 1:
        out = []
        for t in tasks:
            r = fn(*t)
            log(describe(t, r))
            out.append(r)
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out = [None] * len(tasks)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker) as pool:
        futs = {pool.submit(fn, *t): i for i, t in enumerate(tasks)}
        for f in as_completed(futs):
            i = futs[f]
            out[i] = f.result()
            log(describe(tasks[i], out[i]))
    return out


# ----------------------------------------------------------------------------- (a)
def train_unimodal(method: str, x: Tensor, batch: int, epochs: int, seed: int, cfg: Config) -> Encoder:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    n = x.shape[0]
    model = Encoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = GlobalContrastiveLoss(n, mode="unimodal", temperature="fixed", tau=cfg.a_tau, gamma=cfg.a_gamma)
    for epoch in range(epochs):
        loss_fn.set_epoch(epoch)
        perm = torch.randperm(n, generator=g)
        for k in range(0, n - batch + 1, batch):  # drop the last incomplete batch, as SimCLR does
            idx = perm[k:k + batch]
            xb = x[idx]
            z1, z2 = model(augment(xb, g)), model(augment(xb, g))
            loss = nt_xent(z1, z2, cfg.a_tau) if method == "SimCLR" else loss_fn(z1, z2, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


@torch.no_grad()
def embed(model: Encoder, x: Tensor, part: str = "backbone") -> Tensor:
    model.eval()
    f = model.backbone(x) if part == "backbone" else model(x)
    model.train()
    return f


def _task_a(method: str, batch: int, seed: int, cfg: Config, keep: bool) -> tuple[float, dict | None, float]:
    t0 = time.perf_counter()
    xtr, ytr, xte, yte = _SHARED["fmnist"]
    model = train_unimodal(method, xtr, batch, cfg.a_epochs, seed, cfg)
    a = linear_probe(embed(model, xtr), ytr, embed(model, xte), yte)
    return a, (model.state_dict() if keep else None), time.perf_counter() - t0


def part_a(cfg: Config, log: Callable[[str], None]) -> tuple[str, dict]:
    _SHARED["fmnist"] = xtr, ytr, xte, yte = load_fmnist(cfg.a_train, cfg.a_test)
    tasks = [(method, batch, seed, cfg, method == "SogCLR" and batch == 128 and seed == cfg.seeds[0])
             for batch in sorted(cfg.a_batches) for seed in cfg.seeds for method in ("SimCLR", "SogCLR")]
    results = run_tasks(_task_a, tasks, cfg.workers, log,
                        lambda t, r: f"(a) seed {t[2]} B={t[1]} {t[0]}: probe acc {r[0]:.4f} ({r[2]:.0f} s)")
    acc: dict[tuple[str, int], list[float]] = {}
    keep = {}
    for (method, batch, seed, _, k), (a, sd, _) in zip(tasks, results):
        acc.setdefault((method, batch), []).append(a)
        if k:
            keep["model"] = Encoder()
            keep["model"].load_state_dict(sd)
    raw_acc = linear_probe(xtr.flatten(1), ytr, xte.flatten(1), yte)
    rows = []
    for batch in cfg.a_batches:
        rows.append([batch, mean_std(acc[("SimCLR", batch)]), mean_std(acc[("SogCLR", batch)]),
                     f"{100 * (np.mean(acc[('SogCLR', batch)]) - np.mean(acc[('SimCLR', batch)])):+.1f}"])
    bmin, bmax = min(cfg.a_batches), max(cfg.a_batches)
    sog_small, sim_large = acc[("SogCLR", bmin)], acc[("SimCLR", bmax)]
    sim_small = acc[("SimCLR", bmin)]
    gap = 100 * (np.mean(sog_small) - np.mean(sim_large))
    noise = 100 * math.sqrt((np.var(sog_small, ddof=1) if len(sog_small) > 1 else 0)
                            + (np.var(sim_large, ddof=1) if len(sim_large) > 1 else 0))
    tol = max(0.5, noise)
    held = gap >= -tol
    sim_drop = 100 * (np.mean(sim_large) - np.mean(sim_small))
    sog_drop = 100 * (np.mean(acc[("SogCLR", bmax)]) - np.mean(sog_small))
    body = "\n".join([
        f"### (a) Batch-size sweep, Fashion-MNIST ({cfg.a_train} train images, class-balanced; probe tested on "
        f"{cfg.a_test} test images)",
        "",
        f"MLP encoder 784-512-256 (+ head 256-128), Adam lr 1e-3, {cfg.a_epochs} epochs for every batch size "
        f"(so smaller batches take more steps), tau = {cfg.a_tau} for both, SogCLR gamma = {cfg.a_gamma} "
        "(constant, first visit gamma = 1); augmentations: random resized crop (scale 0.5-1) + flip, "
        "brightness/contrast jitter, Gaussian noise. Linear probe: logistic regression on the standardised "
        f"256-d backbone features (train subset -> test subset). Test accuracy %, mean ± std over seeds "
        f"{list(cfg.seeds)}. Raw-pixel probe for scale: {100 * raw_acc:.1f} %.",
        "",
        _common.md_table(["batch", "SimCLR (NT-Xent)", "SogCLR (xrisk)", "SogCLR − SimCLR"], rows),
        "",
        f"Claim 'SogCLR at a small batch matches SimCLR at a large one': SogCLR B={bmin} "
        f"{mean_std(sog_small)} vs SimCLR B={bmax} {mean_std(sim_large)}: difference {gap:+.1f} points "
        f"(tolerance {tol:.1f} = max(0.5, combined std)) -> **{'held' if held else 'did not hold'}**. "
        f"Accuracy lost going from B={bmax} to B={bmin}: SimCLR {sim_drop:+.1f}, SogCLR {sog_drop:+.1f} points "
        f"(positive = the small batch is worse).",
    ])
    return body, keep


# ----------------------------------------------------------------------------- (b)
def exact_quantiles(feats: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Brute force: full similarity matrix and each anchor's ``(1 - alpha)`` quantile over its n-1 negatives
    (the order statistic with ``floor(alpha (n-1))`` negatives above it, as ``masked_upper_quantile``)."""
    n = feats.shape[0]
    sim = feats @ feats.T
    sim.fill_diagonal_(float("-inf"))
    k = int(math.floor(alpha * (n - 1)))
    q = sim.topk(k + 1, dim=1).values[:, k]
    return sim, q


def detection_scores(sim: Tensor, thr: Tensor, labels: Tensor) -> tuple[float, float, float]:
    """Micro precision / recall of ``{j != i: s_ij > thr_i}`` against same-class pairs, and the fraction
    of each anchor's negatives above its threshold (mean)."""
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    det = sim > thr[:, None]  # diagonal is -inf
    tp = (det & same).sum().item()
    nd = det.sum().item()
    prec = tp / nd if nd else float("nan")
    rec = tp / same.sum().item()
    frac = det.float().sum(1).div(sim.shape[0] - 1).mean().item()
    return prec, rec, frac


def run_detector(
    feats: Tensor, alpha: float, opt: str, lr: float, cfg: Config, seed: int, record: tuple[int, ...]
) -> dict:
    """Run ``FalseNegativeDetector`` (optimizer ``opt``) over frozen features; return its thresholds at the
    recorded epochs and the mini-batch quantiles of the last epoch (GloFND's local 'fnd' baseline)."""
    n = feats.shape[0]
    g = torch.Generator().manual_seed(seed)
    fnd = FalseNegativeDetector(n, alpha=alpha, lr=lr, start_epoch=0, init_quantile=True, optimizer=opt)  # type: ignore[arg-type]
    out: dict = {}
    batch_q = torch.zeros(n)
    for epoch in range(cfg.b_epochs):
        fnd.set_epoch(epoch)
        perm = torch.randperm(n, generator=g)
        for k in range(0, n, cfg.b_batch):
            idx = perm[k:k + cfg.b_batch]
            f = feats[idx]
            s = f @ f.T
            sim = torch.stack([s, s], 1)  # both sides see the same frozen embedding
            neg = (idx[:, None] != idx[None, :]).unsqueeze(1).expand(-1, 2, -1)
            fnd(sim, neg, idx)
            if epoch == cfg.b_epochs - 1:
                batch_q[idx] = masked_upper_quantile(sim[:, 0], neg[:, 0], alpha)
        if epoch + 1 in record:
            out[epoch + 1] = fnd.lam.value[:, 0].clone()
    out["batch"] = batch_q
    return out


def part_b(cfg: Config, model: Encoder | None, log: Callable[[str], None]) -> str:
    xtr, ytr, _, _ = load_fmnist(cfg.a_train, cfg.a_test)
    src = "the SogCLR encoder trained in (a) (B=128, first seed), projection-head output"
    if model is None:
        src = "a randomly initialised encoder (part (a) was not run)"
        torch.manual_seed(0)
        model = Encoder()
    feats = F.normalize(embed(model, xtr, "proj"), dim=1)
    n = feats.shape[0]
    record = tuple(sorted({1, min(5, cfg.b_epochs), cfg.b_epochs}))
    rows = []
    claims: list[str] = []
    verdicts: list[str] = []
    for alpha in cfg.b_alphas:
        sim, q = exact_quantiles(feats, alpha)
        rnd_prec = ((ytr[:, None] == ytr[None, :]).sum().item() - n) / (n * (n - 1))
        spread = q.std().item()
        for opt, lr in cfg.b_steps:
            res: dict = {}
            for seed in cfg.seeds:
                r = run_detector(feats, alpha, opt, lr, cfg, seed, record)
                for key, lam in r.items():
                    res.setdefault(key, []).append(lam)
            for key in list(record) + ["batch"]:
                if key == "batch" and (opt, lr) != cfg.b_steps[0]:
                    continue  # the one-batch quantile does not depend on the step
                maes = [(lam - q).abs().mean().item() for lam in res[key]]
                scores = [detection_scores(sim, lam, ytr) for lam in res[key]]
                label = (f"learned ({opt}, lr {lr}), after {key} epoch(s)" if key != "batch"
                         else "mini-batch quantile (one batch, GloFND's local 'fnd' baseline)")
                rows.append([alpha, label, mean_std(maes, 1.0, 4), mean_std([s[2] for s in scores], 100, 2),
                             mean_std([s[0] for s in scores], 100, 1), mean_std([s[1] for s in scores], 100, 2)])
                if key == cfg.b_epochs:
                    final_mae = float(np.mean(maes))
                    final_frac = float(np.mean([s[2] for s in scores]))
                    first_mae = float(np.mean([(lam - q).abs().mean().item() for lam in res[record[0]]]))
            mae_batch = float(np.mean([(lam - q).abs().mean().item() for lam in res["batch"]]))
            claims.append(
                f"alpha={alpha}, {opt} lr={lr}: MAE {first_mae:.4f} after {record[0]} epoch -> {final_mae:.4f} after "
                f"{cfg.b_epochs} (one mini-batch quantile: {mae_batch:.4f}; the exact quantiles spread across anchors "
                f"with std {spread:.3f}); {100 * final_frac:.2f} % of negatives above the learned thresholds "
                f"(target {100 * alpha:g} %)."
            )
            frac_ok = abs(final_frac - alpha) <= 0.2 * alpha
            if final_mae <= 0.5 * mae_batch and frac_ok:
                verdict = "held"
            elif final_mae < min(first_mae, mae_batch) and frac_ok:
                verdict = "partly (the error shrinks, but stays above half the one-batch error)"
            else:
                verdict = "did not hold"
            verdicts.append(f"alpha={alpha}, {opt} lr={lr}: **{verdict}**")
            log("(b) " + claims[-1])
        p_ex, r_ex, f_ex = detection_scores(sim, q, ytr)
        rows.append([alpha, "exact data-set quantile (brute force)", "0", f"{100 * f_ex:.2f}", f"{100 * p_ex:.1f}",
                     f"{100 * r_ex:.2f}"])
        rows.append([alpha, "random pairs (precision = same-class rate)", "", "", f"{100 * rnd_prec:.1f}", ""])
        del sim
    body = "\n".join([
        f"### (b) GloFND: learned thresholds vs the exact data-set quantile ({n} Fashion-MNIST images)",
        "",
        f"Frozen, L2-normalised embeddings from {src}. `FalseNegativeDetector(n, alpha, lr, "
        f"init_quantile=True, optimizer=...)` ((optimizer, lr) in {list(cfg.b_steps)}; Adam is GloFND's own "
        f"update with its lr 0.05) takes one step per anchor per epoch (batch {cfg.b_batch}, both sides fed the "
        f"same embedding); {cfg.b_epochs} epochs; seeds {list(cfg.seeds)} (batch order). Exact quantile: "
        "the order statistic with floor(alpha (n-1)) of the anchor's n-1 data-set negatives above it. "
        "Detection is scored over the whole data set (anchor i flags every j != i with s_ij > lambda_i); "
        "a flagged pair is a true false negative when both images have the same class.",
        "",
        _common.md_table(["alpha", "threshold", "MAE vs exact quantile", "% of negatives flagged",
                          "FN precision %", "FN recall %"], rows),
        "",
        "Claim 'lambda_i converges to the data-set (1-alpha) quantile': " + " ".join(claims)
        + " Verdict (held = after the last epoch the error is at most half that of a one-batch quantile and the "
        "flagged fraction is within 20 % of alpha): " + "; ".join(verdicts) + ".",
    ])
    return body


# ----------------------------------------------------------------------------- (c)
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")


def load_emoji(size: int = 32) -> tuple[Tensor, list[str]]:
    """Every fully-qualified emoji the Noto font renders as one glyph: RGB images ``[n, 3, size, size]``
    in [0, 1] (white background) and their CLDR English names as captions."""
    import emoji  # the PyPI package (CLDR names)
    from PIL import Image, ImageDraw, ImageFont

    if not EMOJI_FONT.is_file():
        raise FileNotFoundError(f"{EMOJI_FONT} missing: apt-get install fonts-noto-color-emoji")
    font = ImageFont.truetype(str(EMOJI_FONT), 109)  # the font's bitmap size
    imgs, caps = [], []
    for ch, data in emoji.EMOJI_DATA.items():
        if data.get("status") != emoji.STATUS["fully_qualified"]:
            continue
        im = Image.new("RGB", (160, 128), "white")
        ImageDraw.Draw(im).text((0, 0), ch, font=font, embedded_color=True)
        box = Image.eval(im.convert("L"), lambda v: 255 - v).getbbox()
        if box is None or box[2] - box[0] > 140:  # not rendered, or a sequence drawn as several glyphs
            continue
        crop = im.crop(box)
        side = max(crop.size)
        sq = Image.new("RGB", (side, side), "white")
        sq.paste(crop, ((side - crop.size[0]) // 2, (side - crop.size[1]) // 2))
        imgs.append(np.asarray(sq.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0)
        caps.append(data["en"].strip(":").replace("_", " "))
    x = torch.tensor(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    return x, caps


def tokenize(captions: list[str], buckets: int = 8192) -> tuple[Tensor, Tensor]:
    """Hashed words + character trigrams of each caption (``EmbeddingBag`` inputs ``(tokens, offsets)``).
    crc32 hashing keeps the ids stable across processes."""
    import re
    import zlib

    toks, offsets = [], []
    for cap in captions:
        offsets.append(len(toks))
        for w in re.findall(r"[a-z0-9]+", cap.lower()):
            grams = [w] + [f"<{w}>"[i:i + 3] for i in range(len(w))]
            toks += [zlib.crc32(g.encode()) % buckets for g in grams]
        if len(toks) == offsets[-1]:
            toks.append(0)
    return torch.tensor(toks), torch.tensor(offsets)


class TextEncoder(nn.Module):
    def __init__(self, buckets: int = 8192, dim: int = 128, out: int = 128) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(dim, out))

    def forward(self, tokens: Tensor, offsets: Tensor) -> Tensor:
        return self.mlp(self.bag(tokens, offsets))


class ImageEncoder(nn.Module):
    """Three stride-2 3x3 convolutions (16/32/64 channels), global average pool, linear head."""

    def __init__(self, out: int = 128) -> None:
        super().__init__()
        conv = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, stride=2, padding=1), nn.ReLU())  # noqa: E731
        self.body = nn.Sequential(conv(3, 16), conv(16, 32), conv(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = nn.Linear(64, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def augment_rgb(x: Tensor, g: torch.Generator) -> Tensor:
    """Random scale (0.75-1) and shift, white fill (colours kept: they carry meaning for emoji)."""
    b = x.shape[0]
    s = torch.empty(b).uniform_(0.75, 1.0, generator=g)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / s
    theta[:, :, 2] = torch.empty(b, 2).uniform_(-0.15, 0.15, generator=g)
    out = F.grid_sample(x - 1.0, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    return out + 1.0  # padding with zeros of (x - 1) = white


def sub_captions(tokens: Tensor, offsets: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    ends = torch.cat([offsets[1:], torch.tensor([tokens.numel()])])
    parts = [tokens[offsets[i]:ends[i]] for i in idx.tolist()]
    lens = torch.tensor([p.numel() for p in parts])
    return torch.cat(parts), torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)[:-1]])


def recall_at_k(img: Tensor, txt: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Image->text and text->image recall@k of paired rows (pair i is the only correct match)."""
    sim = F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    out = {}
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        rank = (s > s.diag()[:, None]).sum(1)  # number of candidates scored above the true match
        for k in ks:
            out[f"{name}@{k}"] = (rank < k).float().mean().item()
    return out


FndStep = tuple[str, float] | None  # GloFND's (optimizer, threshold step size), or None: no GloFND
C_METHODS: list[tuple[str, str, str | None, FndStep]] = [  # (label, loss kind, temperature mode, GloFND step)
    ("InfoNCE (CLIP loss, mini-batch)", "clip", None, None),
    ("GCL, fixed tau (SogCLR / FastCLIP-v1)", "gcl", "fixed", None),
    ("GCL + GloFND (SGD, lr 0.05)", "gcl", "fixed", ("sgd", 0.05)),
    ("GCL + GloFND (SGD, lr 0.5)", "gcl", "fixed", ("sgd", 0.5)),
    ("GCL + GloFND (Adam, lr 0.05)", "gcl", "fixed", ("adam", 0.05)),
    ("iSogCLR (individual tau)", "gcl", "individual", None),
    ("iSogCLR + GloFND (SGD, lr 0.05)", "gcl", "individual", ("sgd", 0.05)),
    ("NUCLR", "nuclr", None, None),
    ("NUCLR + GloFND (SGD, lr 0.05)", "nuclr", None, ("sgd", 0.05)),
]
FND_PAIRS = [(1, 2), (1, 3), (1, 4), (5, 6), (7, 8)]  # (without, with) GloFND, indices into C_METHODS
C_TAU, C_GAMMA, C_RHO, C_LR_ZETA, C_ALPHA = 0.07, 0.8, 2.0, 0.01, 0.01


def build_c_loss(kind: str, temp: str | None, fnd: FndStep, n: int, epochs: int) -> nn.Module | None:
    det = None
    if fnd is not None:
        det = FalseNegativeDetector(n, alpha=C_ALPHA, lr=fnd[1], optimizer=fnd[0],  # type: ignore[arg-type]
                                    start_epoch=epochs // 3, init_quantile=True)
    if kind == "gcl":
        return GlobalContrastiveLoss(n, mode="bimodal", temperature=temp, tau=C_TAU, gamma=C_GAMMA, rho=C_RHO,
                                     tau_min=0.01, tau_max=1.0, false_negatives=det)
    if kind == "nuclr":
        return NUCLRLoss(n, tau=C_TAU, gamma=C_GAMMA, lr_zeta=C_LR_ZETA, zeta_start_epoch=min(5, epochs // 3),
                         false_negatives=det)
    return None


def train_bimodal(kind: str, temp: str | None, fnd: FndStep, data: dict, cfg: Config, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(2000 + seed)
    x, tok, off = data["x_train"], data["tok_train"], data["off_train"]
    n = x.shape[0]
    img_enc, txt_enc = ImageEncoder(), TextEncoder()
    params = list(img_enc.parameters()) + list(txt_enc.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    loss_fn = build_c_loss(kind, temp, fnd, n, cfg.c_epochs)
    bsz = cfg.c_batch
    for epoch in range(cfg.c_epochs):
        if loss_fn is not None:
            loss_fn.set_epoch(epoch)
        perm = torch.randperm(n, generator=g)
        for k in range(0, n - bsz + 1, bsz):
            idx = perm[k:k + bsz]
            fi = img_enc(augment_rgb(x[idx], g))
            ft = txt_enc(*sub_captions(tok, off, idx))
            loss = clip_loss(fi, ft, 1.0 / C_TAU) if loss_fn is None else loss_fn(fi, ft, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        img_enc.eval()
        r = recall_at_k(img_enc(data["x_test"]), txt_enc(data["tok_test"], data["off_test"]))
        det = getattr(loss_fn, "false_negatives", None)
        if det is not None:  # fraction of each training image's negatives above its final threshold (target alpha)
            sim = F.normalize(img_enc(x), dim=1) @ F.normalize(txt_enc(tok, off), dim=1).T
            sim.fill_diagonal_(float("-inf"))
            r["flagged"] = (sim > det.lam.value[:, 0:1]).float().sum(1).div(n - 1).mean().item()
    return r


def _task_c(label: str, kind: str, temp: str | None, fnd: FndStep, seed: int, cfg: Config) -> tuple[dict, float]:
    t0 = time.perf_counter()
    r = train_bimodal(kind, temp, fnd, _SHARED["emoji"], cfg, seed)
    return r, time.perf_counter() - t0


def part_c(cfg: Config, log: Callable[[str], None]) -> str:
    x, caps = load_emoji()
    n_all = x.shape[0]
    perm = torch.randperm(n_all, generator=torch.Generator().manual_seed(0))
    n_test = n_all // 5
    test, train = perm[:n_test], perm[n_test:]
    if cfg.quick:
        train, test = train[:800], test[:300]
    tok_tr, off_tr = tokenize([caps[i] for i in train.tolist()])
    tok_te, off_te = tokenize([caps[i] for i in test.tolist()])
    _SHARED["emoji"] = {"x_train": x[train], "tok_train": tok_tr, "off_train": off_tr,
                        "x_test": x[test], "tok_test": tok_te, "off_test": off_te}
    tasks = [(label, kind, temp, fnd, seed, cfg) for seed in cfg.seeds for label, kind, temp, fnd in C_METHODS]
    results = run_tasks(_task_c, tasks, cfg.workers, log, lambda t, r: f"(c) seed {t[4]} {t[0]}: "
                        + " ".join(f"{k}={v:.3f}" for k, v in r[0].items()) + f" ({r[1]:.0f} s)")
    res: dict[str, list[dict[str, float]]] = {}
    for t, (r, _) in zip(tasks, results):
        res.setdefault(t[0], []).append(r)
    keys = ["i2t@1", "i2t@5", "i2t@10", "t2i@1", "t2i@5", "t2i@10"]
    rows, rsum = [], {}
    for label, *_ in C_METHODS:
        rs = res[label]
        rsum[label] = [sum(r[k] for k in keys) / len(keys) for r in rs]
        flagged = mean_std([r["flagged"] for r in rs], 100, 1) if "flagged" in rs[0] else ""
        rows.append([label] + [mean_std([r[k] for r in rs]) for k in keys] + [mean_std(rsum[label]), flagged])
    base = float(np.mean(rsum[C_METHODS[0][0]]))
    base_sd = float(np.std(rsum[C_METHODS[0][0]], ddof=1)) if len(cfg.seeds) > 1 else 0.0
    verdicts = []
    for label, *_ in C_METHODS[1:]:
        d = 100 * (np.mean(rsum[label]) - base)
        sd = 100 * math.sqrt(base_sd ** 2 + (np.var(rsum[label], ddof=1) if len(cfg.seeds) > 1 else 0.0))
        verdict = "better" if d > sd else ("worse" if d < -sd else "no clear difference")
        verdicts.append([label, f"{d:+.1f}", f"{sd:.1f}", verdict if len(cfg.seeds) > 1 else "n/a (one seed)"])
    fnd_rows = []
    for i, j in FND_PAIRS:
        d = 100 * (np.mean(rsum[C_METHODS[j][0]]) - np.mean(rsum[C_METHODS[i][0]]))
        fnd_rows.append([C_METHODS[j][0], f"{d:+.1f}"])
    return "\n".join([
        f"### (c) Image-text retrieval on emoji ({train.numel()} training pairs, {test.numel()} held-out pairs)",
        "",
        "Data: every fully-qualified emoji that Noto Color Emoji renders as one glyph (Debian "
        "`fonts-noto-color-emoji`), 32x32 RGB, captioned with its CLDR English name (PyPI `emoji` 2.16.0), "
        "random 80/20 split (fixed). Encoders trained from scratch: image = 3 stride-2 convolutions + linear "
        "(128-d), text = EmbeddingBag over hashed words and character trigrams + linear (128-d). Adam lr 1e-3, "
        f"batch {cfg.c_batch}, {cfg.c_epochs} epochs, image augmentation random scale/shift. tau = {C_TAU} "
        f"(InfoNCE and GCL fixed; iSogCLR initial tau, rho = {C_RHO}, tau in [0.01, 1]; NUCLR tau, "
        f"lr_zeta = {C_LR_ZETA}, zeta from epoch {min(5, cfg.c_epochs // 3)}); gamma = {C_GAMMA} constant; "
        f"GloFND `FalseNegativeDetector(alpha={C_ALPHA}, lr, optimizer, init_quantile=True, "
        f"start_epoch={cfg.c_epochs // 3})`: SGD with lr 0.05 (GloFND's ImageNet-100 value) or 0.5 (the xrisk "
        "default), or Adam with lr 0.05 (GloFND's own update). "
        f"Recall@k (%) on the held-out pairs against all {test.numel()} held-out candidates, mean ± std over "
        f"seeds {list(cfg.seeds)}; 'mean R' averages the six recalls. 'flagged' = fraction of each training "
        f"image's negatives (all other training texts) above its final threshold, with the final encoders "
        f"(GloFND's target: alpha = {100 * C_ALPHA:g} %).",
        "",
        _common.md_table(["method"] + [k.replace("@", " R@") for k in keys] + ["mean R", "flagged %"], rows),
        "",
        "Against mini-batch InfoNCE (difference in mean R, points; 'better'/'worse' only when it exceeds the "
        "combined seed std):",
        "",
        _common.md_table(["method", "Δ mean R vs InfoNCE", "combined std", "verdict"], verdicts),
        "",
        "Effect of GloFND (Δ mean R, points, with minus the same loss without): "
        + "; ".join(f"{a}: {d}" for a, d in fnd_rows) + ".",
    ])


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (< 2 min), prints only")
    p.add_argument("--parts", default="abc", help="which parts to run, e.g. 'ab'")
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="override the seeds (exploration)")
    p.add_argument("--workers", type=int, default=2, help="parallel single-thread training processes")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # before any work: forked workers must not inherit a busy thread pool
    cfg = quick_config() if args.quick else full_config()
    if args.seeds:
        cfg.seeds = tuple(args.seeds)
    cfg.workers = args.workers
    t_start = time.perf_counter()
    facts = _common.machine_facts(1)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    sections, kept = [], {}
    if "a" in args.parts:
        body, kept = part_a(cfg, log)
        sections.append(body)
    if "b" in args.parts:
        sections.append(part_b(cfg, kept.get("model"), log))
    if "c" in args.parts:
        sections.append(part_c(cfg, log))
    elapsed = time.perf_counter() - t_start
    cmd = ".venv-bench/bin/python bench/fidelity_contrastive.py" + (" --quick" if args.quick else "")
    if args.parts != "abc":
        cmd += f" --parts {args.parts}"
    if args.seeds:
        cmd += " --seeds " + " ".join(map(str, args.seeds))
    if args.workers != 2:
        cmd += f" --workers {args.workers}"
    text = "\n".join([
        "## Global contrastive losses: fidelity at small scale (issue 3)",
        "",
        f"Command: `{cmd}` ({elapsed / 60:.1f} min wall; {cfg.workers} worker process(es) of 1 thread each run "
        f"the independent trainings). Machine: {facts}.",
        "",
        "\n\n".join(sections),
    ])
    print(text)
    if not (args.no_write or args.quick):
        _common.write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
