"""``xrisk run ehr``: contrastive + imputation pretraining on ICU time series, then outcome prediction.

::

    xrisk run ehr --data generated --pretrain gcl --labels 0.05
    xrisk run ehr --data DIR --pretrain infonce --labels 0.01 --bad-rows skip

**Data.** ``--data generated`` writes ICU-like stays (:mod:`xrisk.data.clinical.generator`: latent
state, variable-specific sampling rates, state-dependent missingness, ~10 % in-hospital deaths;
``--stays`` training stays, ``--eval-stays`` test stays and as many stays of the second hospital)
into ``<out>/data`` in the long CSV layout and reads them back with the real reader;
``--data DIR`` reads a folder in that layout (:func:`xrisk.data.clinical.load_clinical_dir`;
``--bad-rows raise|skip`` is the reader's bad-row policy). The per-variable normalisation is fitted
on the training split only, stored in the model's buffers (so in ``checkpoint.pt``) and written to
``<out>/normalization.json``.

**Model.** :class:`~xrisk.models.TripletTransformer` (``--dim``, ``--heads``, ``--ff-dim``, ``--layers``;
the reference's 64 / 8 / 128 / 2), stays cut to ``--max-tokens`` by ordered random subsampling,
length buckets on (``--no-bucketing`` turns them off; results do not change).

**Pretraining** (``--pretrain-epochs`` epochs over all training stays, labelled or not; AdamW at a
constant ``--lr``). Per stay and step: the global view (whole budgeted stay, ``--mask-fraction`` of
its values hidden) and a local view (contiguous crop, ordered subset or value jitter, at most
``--crop`` tokens; :func:`xrisk.data.clinical.pretraining_views`). Loss =
``--imputation-weight`` x masked-value MSE (:func:`xrisk.functional.imputation.masked_mse`) +
``--contrastive-weight`` x the contrastive loss of the two views' sequence embeddings:

* ``gcl``: :class:`~xrisk.losses.GlobalContrastiveLoss` (``mode="unimodal"``, fixed ``--tau``,
  per-sample moving-average estimators with weight ``--gamma``): the data-set-wide negative term
  of SogCLR, which does not need large batches;
* ``infonce``: mini-batch NT-Xent (:func:`xrisk.recipes.contrastive.nt_xent_loss`), the loss of the
  reference's headline model (its ``SIMCLRLoss``);
* ``none``: no pretraining (the from-scratch baseline).

**Evaluation.** ``--labels`` is the fraction of labelled training stays available downstream
(stratified: each class keeps ``max(1, round(fraction x count))`` stays, seeded). Linear probe:
logistic regression (:func:`xrisk.metrics.fit_linear_classifier`) on the frozen class-token
features of those stays. Fine-tuning: encoder + linear head trained with binary cross-entropy for
``--finetune-epochs`` x ``--finetune-steps`` steps (optimizer state reset, ``--finetune-lr``). Both
are scored on the test stays and on the second hospital's stays (normalised with the training
statistics, as a deployed model would), with :func:`xrisk.metrics.auroc` and
:func:`xrisk.metrics.average_precision`. Imputation error: the pretrained model's MSE on 10 % hidden
test values (normalised units), next to predicting the training mean (``imputation_mse_mean``) and
the last visible value of the variable in the stay (``imputation_mse_locf``).

**Run folder.** ``metrics.jsonl`` has one row per epoch: pretraining epochs ``1..P`` (the total
``train_surrogate`` with gcl, whose value is a surrogate, or ``train_loss`` with infonce;
``train_imputation_loss``; ``train_contrastive_surrogate`` / ``train_contrastive_loss``;
``train_objective``, the GCL objective estimate), then fine-tuning epochs ``P+1..P+F``
(``finetune_loss``, ``test_auroc``, ``test_auprc``, ``external_auroc``, ``external_auprc``).
``checkpoint.pt`` (model = encoder and classifier, the GCL estimators, one AdamW) is written after
every epoch, every ``--checkpoint-every`` steps inside both phases, on Ctrl-C, and at the switch
to fine-tuning (with the probe and imputation results, so a resume inside fine-tuning does not
recompute them); ``--resume`` continues bit-identically: data order, views, masks and token subsets
come from generators seeded by ``(seed, epoch)`` and checkpointed by
:meth:`~xrisk.recipes.runner.RunContext.steps`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xrisk.recipes._loop import config_from_args, epoch_generator
from xrisk.recipes.flags import number, text
from xrisk.recipes.registry import Recipe, UsageError, register

if TYPE_CHECKING:
    from xrisk.data.clinical import ClinicalStays, Tokens
    from xrisk.models.timeseries import TripletTransformer
    from xrisk.recipes.runner import RunContext

__all__ = ["EHRConfig", "PRETRAIN_METHODS", "train_ehr", "StayTensors", "build_encoder", "pretrain_step", "pretrain_epoch",
           "encode_stays", "eval_sequences", "select_labelled", "imputation_errors", "classifier_scores", "probe_scores",
           "finetune_epoch", "prepare_data"]

PRETRAIN_METHODS: tuple[str, ...] = ("gcl", "infonce", "none")

T = TypeVar("T")


class StepsFn(Protocol):
    """Iterates an epoch's batches (``RunContext.steps`` or the plain iteration)."""

    def __call__(self, epoch: int, batches: Sequence[T], *, state: dict[str, Any] | None = ...,
                 generators: Sequence[torch.Generator] = ...) -> Iterator[T]: ...


@dataclass
class EHRConfig:
    """Settings of :func:`train_ehr` (CLI flags of the same names; see the module docstring).

    Attributes:
        data: ``"generated"`` or a data folder.
        stays, eval_stays, hours: size of the generated data.
        bad_rows: the reader's bad-row policy (``"raise"`` or ``"skip"``).
        pretrain: one of :data:`PRETRAIN_METHODS`.
        labels: labelled fraction in ``(0, 1]``.
        dim, heads, ff_dim, layers, max_tokens, crop, bucketing: model, token budget and views.
        pretrain_epochs, batch_size, lr, weight_decay: pretraining (AdamW, constant rate).
        tau, gamma: temperature; GCL moving-average weight on the new value.
        mask_fraction, imputation_weight, contrastive_weight: the pretraining loss.
        finetune_epochs, finetune_steps, finetune_batch_size, finetune_lr: fine-tuning.
        seed: seed of data generation, model, views and the label subset.
        max_steps: cap on pretraining steps per epoch (smoke runs).
        num_threads: ``torch.set_num_threads`` (None: leave as is).
    """

    data: str = "generated"
    stays: int = 2000
    eval_stays: int = 1000
    hours: float = 48.0
    bad_rows: Literal["raise", "skip"] = "raise"
    pretrain: Literal["gcl", "infonce", "none"] = "gcl"
    labels: float = 0.05
    dim: int = 64
    heads: int = 8
    ff_dim: int = 128
    layers: int = 2
    max_tokens: int = 1024
    crop: int = 512
    bucketing: bool = True
    pretrain_epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    tau: float = 0.1
    gamma: float = 0.9
    mask_fraction: float = 0.1
    imputation_weight: float = 1.0
    contrastive_weight: float = 1.0
    finetune_epochs: int = 10
    finetune_steps: int = 20
    finetune_batch_size: int = 32
    finetune_lr: float = 1e-3
    seed: int = 0
    max_steps: int | None = None
    num_threads: int | None = None


# --------------------------------------------------------------------------------------------- data
class StayTensors:
    """The stays of one split as flat torch tensors (``tokens(i)`` slices one stay without copying)."""

    def __init__(self, stays: ClinicalStays) -> None:
        self.stays = stays
        self.offsets = stays.offsets.tolist()
        self.times = torch.from_numpy(np.ascontiguousarray(stays.times, dtype=np.float32))
        self.variables = torch.from_numpy(np.ascontiguousarray(stays.variables, dtype=np.int64))
        self.values = torch.from_numpy(np.ascontiguousarray(stays.values, dtype=np.float32))
        self.labels = torch.from_numpy(np.ascontiguousarray(stays.labels, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def tokens(self, i: int) -> Tokens:
        """Stay ``i``'s tokens."""
        from xrisk.data.clinical import Tokens

        a, b = self.offsets[i], self.offsets[i + 1]
        return Tokens(self.times[a:b], self.variables[a:b], self.values[a:b])


def prepare_data(config: EHRConfig, out_dir: Path | None) -> tuple[Any, Path]:
    """Write the generated data (``config.data == "generated"``, into ``out_dir/data``) and read the
    folder; returns ``(ClinicalSplits, folder)``. Reader errors become :class:`UsageError`."""
    from xrisk.data.clinical import ClinicalFormatError, load_clinical_dir, write_generated_dataset

    if config.data == "generated":
        if out_dir is None:
            raise ValueError("generated data needs an output folder")
        folder = Path(out_dir) / "data"
        write_generated_dataset(folder, num_train=config.stays, num_test=config.eval_stays,
                                num_external=config.eval_stays, hours=config.hours, seed=config.seed)
    else:
        folder = Path(config.data)
    try:
        splits = load_clinical_dir(folder, on_bad_row=config.bad_rows)
    except ClinicalFormatError as e:
        raise UsageError(f"{e} (fix the file, or pass --bad-rows skip to drop and count bad rows)") from None
    except FileNotFoundError as e:
        raise UsageError(f"--data {config.data}: {e}") from None
    if len(splits.train) < 2:
        raise UsageError(f"--data {config.data}: the training split has {len(splits.train)} stays (need >= 2)")
    return splits, folder


def select_labelled(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Stratified subset of the labelled entries: ``max(1, round(fraction * n_c))`` of each class ``c``.

    Raises:
        UsageError: the split lacks one of the two classes.
    """
    g = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    known = ~torch.isnan(labels)
    parts = []
    for c in (0.0, 1.0):
        idx = torch.nonzero(known & (labels == c)).flatten()
        if idx.numel() == 0:
            raise UsageError(f"the training labels have no stay of class {int(c)}; --labels needs both classes")
        k = max(1, int(round(fraction * idx.numel())))
        parts.append(idx[torch.randperm(idx.numel(), generator=g)[:k]])
    return torch.cat(parts).sort().values


# --------------------------------------------------------------------------------------------- model
def build_encoder(num_variables: int, config: EHRConfig) -> TripletTransformer:
    """The :class:`~xrisk.models.TripletTransformer` of ``config``."""
    from xrisk.models.timeseries import TripletTransformer

    return TripletTransformer(num_variables, dim=config.dim, heads=config.heads, ff_dim=config.ff_dim,
                              layers=config.layers, bucket_ratio=1.5 if config.bucketing else None)


def pretrain_step(
    encoder: TripletTransformer, loss_fn: nn.Module | None, data: StayTensors, index: Tensor, config: EHRConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, imputation_loss, contrastive_loss)`` of one pretraining batch ``index`` (both views in one forward)."""
    from xrisk.data.clinical import pretraining_views
    from xrisk.functional.imputation import masked_mse
    from xrisk.models.timeseries import TokenBatch
    from xrisk.recipes.contrastive import nt_xent_loss

    globals_, masks, locals_ = [], [], []
    for i in index.tolist():
        g, m, loc, _ = pretraining_views(data.tokens(i), budget=config.max_tokens, crop_size=config.crop,
                                         mask_fraction=config.mask_fraction, value_std=encoder.value_std,
                                         generator=generator)
        globals_.append(g)
        masks.append(m)
        locals_.append(loc)
    batch = TokenBatch.pad(globals_ + locals_)
    b = len(globals_)
    mask = torch.zeros_like(batch.variables, dtype=torch.bool)
    for k, m in enumerate(masks):
        mask[k, : m.numel()] = m
    out = encoder(batch, value_mask=mask)
    target = encoder.normalize(batch.variables, batch.values)
    imputation = masked_mse(out.imputation, target, mask)
    if config.contrastive_weight == 0 or config.pretrain == "none":
        contrastive = out.embedding.sum() * 0.0  # a connected zero
    elif loss_fn is not None:
        contrastive = loss_fn(out.embedding[:b], out.embedding[b:], index)
    else:
        contrastive = nt_xent_loss(out.embedding[:b], out.embedding[b:], config.tau)
    loss = config.imputation_weight * imputation + config.contrastive_weight * contrastive
    return loss, imputation.detach(), contrastive.detach()


def _plain_steps(epoch: int, batches: Sequence[T], *, state: dict[str, Any] | None = None,
                 generators: Sequence[torch.Generator] = ()) -> Iterator[T]:
    """The batches as they are (what :meth:`RunContext.steps` does without checkpoints)."""
    return iter(batches)


def pretrain_epoch(
    encoder: TripletTransformer, loss_fn: nn.Module | None, optimizer: torch.optim.Optimizer, data: StayTensors,
    config: EHRConfig, epoch: int, *, steps: StepsFn = _plain_steps, progress: Callable[[float], None] | None = None,
) -> dict[str, float]:
    """One pretraining epoch (``epoch`` counts from 1); returns the epoch's mean losses.

    Keys: the total (``train_surrogate`` with GCL, whose value is a surrogate; ``train_loss`` with
    InfoNCE), ``train_imputation_loss``, ``train_contrastive_surrogate`` / ``train_contrastive_loss``
    and, with GCL, ``train_objective`` (mean of ``loss_fn.objective()``). ``steps`` iterates the
    batches (:meth:`~xrisk.recipes.runner.RunContext.steps` checkpoints inside the epoch).
    """
    encoder.train()
    if loss_fn is not None:
        loss_fn.set_epoch(epoch - 1)
    g = epoch_generator(config.seed, epoch, 1)
    perm = torch.randperm(len(data), generator=g)
    b = config.batch_size
    batches = [perm[k * b : (k + 1) * b] for k in range(_pretrain_steps(len(data), config))]
    acc = {"total": 0.0, "imputation": 0.0, "contrastive": 0.0, "objective": 0.0, "count": 0}
    for idx in steps(epoch, batches, state=acc, generators=[g]):
        loss, imp, con = pretrain_step(encoder, loss_fn, data, idx, config, g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        acc["total"] += float(loss.detach())
        acc["imputation"] += float(imp)
        acc["contrastive"] += float(con)
        if loss_fn is not None:
            acc["objective"] += float(loss_fn.objective())
        acc["count"] += 1
        if progress is not None:
            progress(float(loss.detach()))
    n = max(1, int(acc["count"]))
    kind = "surrogate" if loss_fn is not None else "loss"
    out = {f"train_{kind}": acc["total"] / n, "train_imputation_loss": acc["imputation"] / n,
           f"train_contrastive_{kind}": acc["contrastive"] / n}
    if loss_fn is not None:
        out["train_objective"] = acc["objective"] / n
    return out


def _pretrain_steps(n: int, config: EHRConfig) -> int:
    steps = n // config.batch_size
    return steps if config.max_steps is None else min(steps, int(config.max_steps))


def eval_sequences(data: StayTensors, budget: int, seed: int) -> list[Tokens]:
    """Every stay cut to the token budget by a fixed-seed ordered subsample (the same tokens in every run)."""
    from xrisk.data.clinical import ordered_subsample

    g = epoch_generator(seed, 0, 99)
    out = []
    for i in range(len(data)):
        t = data.tokens(i)
        out.append(t.take(ordered_subsample(int(t.times.numel()), budget, g)))
    return out


@torch.no_grad()
def encode_stays(encoder: TripletTransformer, sequences: list[Tokens], *, batch_size: int = 128,
                 value_masks: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
    """``(features [n, d], imputations)`` of ``sequences`` in eval mode, in chunks of stays of similar
    length (sorted by length: less padding, same results). ``imputations[i]``: ``[n_i]`` predictions
    of stay ``i`` (with ``value_masks[i]`` hidden when given)."""
    from xrisk.models.timeseries import TokenBatch

    was_training = encoder.training
    encoder.eval()
    n = len(sequences)
    order = sorted(range(n), key=lambda i: int(sequences[i].times.numel()))
    feats = torch.zeros(n, encoder.dim)
    imputations: list[Tensor] = [torch.zeros(0)] * n
    for s in range(0, n, batch_size):
        chunk = order[s : s + batch_size]
        batch = TokenBatch.pad([sequences[i] for i in chunk])
        mask = None
        if value_masks is not None:
            mask = torch.zeros_like(batch.variables, dtype=torch.bool)
            for k, i in enumerate(chunk):
                mask[k, : value_masks[i].numel()] = value_masks[i]
        out = encoder(batch, value_mask=mask)
        feats[torch.tensor(chunk)] = out.features.float()
        for k, i in enumerate(chunk):
            imputations[i] = out.imputation[k, : int(batch.lengths[k])]
    encoder.train(was_training)
    return feats, imputations


def imputation_errors(encoder: TripletTransformer, sequences: list[Tokens], *, fraction: float = 0.1,
                      seed: int = 0) -> dict[str, float]:
    """MSE (normalised units) on ``fraction`` of hidden values: the model, the training mean (0) and
    the last visible value of the same variable in the stay (LOCF; the mean when there is none)."""
    from xrisk.data.clinical import value_mask

    g = epoch_generator(seed, 0, 7)
    masks = [value_mask(int(s.times.numel()), fraction, g) for s in sequences]
    _, preds = encode_stays(encoder, sequences, value_masks=masks)
    sq_model, sq_mean, sq_locf, count = 0.0, 0.0, 0.0, 0
    for s, m, p in zip(sequences, masks, preds):
        if not bool(m.any()):
            continue
        x = encoder.normalize(s.variables, s.values)
        last: dict[int, float] = {}
        locf = torch.zeros_like(x)
        for k, (v, hidden) in enumerate(zip(s.variables.tolist(), m.tolist())):
            if hidden:
                locf[k] = last.get(v, 0.0)
            else:
                last[v] = float(x[k])
        sq_model += float(((p - x)[m] ** 2).sum())
        sq_mean += float((x[m] ** 2).sum())
        sq_locf += float(((locf - x)[m] ** 2).sum())
        count += int(m.sum())
    c = max(count, 1)
    return {"imputation_mse": sq_model / c, "imputation_mse_mean": sq_mean / c, "imputation_mse_locf": sq_locf / c}


def classifier_scores(encoder: TripletTransformer, classifier: Callable[[Tensor], Tensor], sequences: list[Tokens],
                      labels: Tensor, prefix: str) -> dict[str, float]:
    """``{prefix}auroc`` and ``{prefix}auprc`` of ``classifier(features)`` on the labelled ``sequences``."""
    from xrisk.metrics import auroc, average_precision

    known = torch.nonzero(~torch.isnan(labels)).flatten()
    feats, _ = encode_stays(encoder, [sequences[i] for i in known.tolist()])
    with torch.no_grad():
        s = classifier(feats).reshape(-1)
    y = labels[known]
    return {f"{prefix}auroc": float(auroc(s, y)), f"{prefix}auprc": float(average_precision(s, y))}


def finetune_epoch(
    encoder: TripletTransformer, classifier: nn.Module, optimizer: torch.optim.Optimizer, data: StayTensors,
    labelled: Tensor, config: EHRConfig, epoch: int, *, steps: StepsFn = _plain_steps,
    progress: Callable[[float], None] | None = None,
) -> float:
    """``config.finetune_steps`` BCE steps on batches of the ``labelled`` stays; returns the mean loss."""
    from xrisk.data.clinical import ordered_subsample
    from xrisk.models.timeseries import TokenBatch

    encoder.train()
    classifier.train()
    g = epoch_generator(config.seed, epoch, 2)
    b = min(config.finetune_batch_size, labelled.numel())
    need = config.finetune_steps * b
    draws = torch.cat([labelled[torch.randperm(labelled.numel(), generator=g)]
                       for _ in range(math.ceil(need / labelled.numel()))])
    batches = [draws[k * b : (k + 1) * b] for k in range(config.finetune_steps)]
    acc = {"total": 0.0, "count": 0}
    for idx in steps(epoch, batches, state=acc, generators=[g]):
        seqs = []
        for i in idx.tolist():
            t = data.tokens(i)
            seqs.append(t.take(ordered_subsample(int(t.times.numel()), config.max_tokens, g)))
        logits = classifier(encoder(TokenBatch.pad(seqs)).features).reshape(-1)
        loss = F.binary_cross_entropy_with_logits(logits, data.labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        acc["total"] += float(loss.detach())
        acc["count"] += 1
        if progress is not None:
            progress(float(loss.detach()))
    return acc["total"] / max(1, int(acc["count"]))


# --------------------------------------------------------------------------------------------- the run
def probe_scores(encoder: TripletTransformer, train_seqs: list[Tokens], labels: Tensor, labelled: Tensor,
                 test: tuple[list[Tokens], Tensor], external: tuple[list[Tokens], Tensor] | None) -> dict[str, float]:
    """Linear probe on the frozen features of the ``labelled`` training stays, scored on ``test`` and
    ``external`` (``(sequences, labels)``): ``probe_auroc``, ``probe_auprc``, ``probe_external_*``."""
    from xrisk.metrics import fit_linear_classifier

    feats, _ = encode_stays(encoder, [train_seqs[i] for i in labelled.tolist()])
    clf = fit_linear_classifier(feats, labels[labelled].long(), num_classes=2)

    def score(f: Tensor) -> Tensor:
        z = clf.logits(f)
        return z[:, 1] - z[:, 0]

    out = classifier_scores(encoder, score, *test, "probe_")
    if external is not None:
        out.update(classifier_scores(encoder, score, *external, "probe_external_"))
    return out


def _pretrain_state(encoder: TripletTransformer, train_seqs: list[Tokens], data: StayTensors, labelled: Tensor,
                    test: tuple[list[Tokens], Tensor], external: tuple[list[Tokens], Tensor] | None,
                    config: EHRConfig) -> dict[str, float]:
    """Metrics of the encoder as pretraining left it: linear probe and (after pretraining) imputation error."""
    out = probe_scores(encoder, train_seqs, data.labels, labelled, test, external)
    if config.pretrain != "none" and config.imputation_weight > 0 and config.pretrain_epochs > 0:
        out.update(imputation_errors(encoder, test[0], fraction=config.mask_fraction, seed=config.seed))
    return out


def train_ehr(config: EHRConfig, ctx: RunContext | None = None, *, out_dir: Path | None = None) -> dict[str, float]:
    """Pretrain, probe, fine-tune and score (see the module docstring); returns the final metrics.

    ``out_dir`` (default ``ctx.out_dir``) receives ``data/`` (generated data) and ``normalization.json``.
    """
    from xrisk.data.clinical import VariableStats

    if config.pretrain not in PRETRAIN_METHODS:
        raise UsageError(f"--pretrain must be one of {PRETRAIN_METHODS}, got {config.pretrain!r}")
    if config.dim % config.heads:
        raise UsageError(f"--dim {config.dim} must be divisible by --heads {config.heads}")
    if config.num_threads is not None:
        torch.set_num_threads(int(config.num_threads))
    out = out_dir if out_dir is not None else (ctx.out_dir if ctx is not None else None)
    splits, folder = prepare_data(config, out)
    train = StayTensors(splits.train)
    if config.batch_size > len(train):
        raise UsageError(f"--batch-size {config.batch_size} exceeds the {len(train)} training stays")
    stats = VariableStats.fit(splits.train)
    if out is not None:
        (Path(out) / "normalization.json").write_text(json.dumps(stats.to_dict(), indent=1) + "\n")
    labelled = select_labelled(train.labels, config.labels, config.seed)
    torch.manual_seed(config.seed)
    encoder = build_encoder(splits.train.num_variables, config)
    encoder.set_value_stats(stats.mean, stats.std)
    classifier = nn.Linear(config.dim, 1)
    model = nn.ModuleDict({"encoder": encoder, "classifier": classifier})
    loss_fn: nn.Module | None = None
    if config.pretrain == "gcl":
        from xrisk.losses import GlobalContrastiveLoss

        loss_fn = GlobalContrastiveLoss(len(train), mode="unimodal", temperature="fixed", tau=config.tau,
                                        gamma=config.gamma)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    p_epochs = 0 if config.pretrain == "none" else config.pretrain_epochs
    total_epochs = p_epochs + config.finetune_epochs
    start = 0
    if ctx is not None:
        ctx.update_config(data_folder=str(folder), num_train=len(train), num_test=len(splits.test),
                          num_external=len(splits.external) if splits.external is not None else 0,
                          num_labelled=int(labelled.numel()), num_labelled_positive=int(train.labels[labelled].sum()),
                          train_tokens=splits.train.num_tokens, pretrain_epochs=p_epochs,
                          steps_per_epoch=_pretrain_steps(len(train), config),
                          loss_class=type(loss_fn).__name__ if loss_fn is not None else
                          ("nt_xent_loss" if config.pretrain == "infonce" else "none"),
                          reader=[r.summary() for r in splits.reports])
        for r in splits.reports:
            if r.num_skipped:
                ctx.notice(r.summary() + "; first: " + r.examples[0])
        start = ctx.resume(model=model, loss=loss_fn, optimizer=opt)
    train_seqs = eval_sequences(train, config.max_tokens, config.seed)
    test = (eval_sequences(StayTensors(splits.test), config.max_tokens, config.seed), torch.from_numpy(splits.test.labels))
    external = None
    if splits.external is not None:
        external = (eval_sequences(StayTensors(splits.external), config.max_tokens, config.seed),
                    torch.from_numpy(splits.external.labels))
    steps_left = max(0, p_epochs - start) * _pretrain_steps(len(train), config) + \
        (total_epochs - max(start, p_epochs)) * config.finetune_steps - (ctx.start_step if ctx is not None else 0)
    bar = ctx.progress(steps_left, f"ehr/{config.pretrain}") if ctx is not None else None
    update = (lambda v: bar.update(loss=v)) if bar is not None else None
    steps: StepsFn = ctx.steps if ctx is not None else _plain_steps
    last: dict[str, float] = {}
    for epoch in range(start + 1, p_epochs + 1):
        last = pretrain_epoch(encoder, loss_fn, opt, train, config, epoch, steps=steps, progress=update)
        if ctx is not None:
            ctx.log_epoch(epoch, last)
            ctx.save(epoch=epoch)
    # the switch to fine-tuning happens once and is checkpointed (a resume inside fine-tuning keeps it)
    pretrained = ctx.resume_extra().get("pretrained") if ctx is not None else None
    if pretrained is None:
        pretrained = _pretrain_state(encoder, train_seqs, train, labelled, test, external, config)
        opt.state.clear()  # fine-tuning starts with fresh optimizer state at the fine-tuning rate
        for group in opt.param_groups:
            group["lr"] = config.finetune_lr
        if ctx is not None:
            ctx.save(epoch=p_epochs, pretrained=pretrained)
    for epoch in range(max(start, p_epochs) + 1, total_epochs + 1):
        loss = finetune_epoch(encoder, classifier, opt, train, labelled, config, epoch, steps=steps, progress=update)
        last = {"finetune_loss": loss}
        last.update(classifier_scores(encoder, classifier, *test, "test_"))
        if external is not None:
            last.update(classifier_scores(encoder, classifier, *external, "external_"))
        if ctx is not None:
            ctx.log_epoch(epoch, last)
            ctx.save(epoch=epoch, pretrained=pretrained)
    if bar is not None:
        bar.close()
    if not last and ctx is not None and ctx.history:  # resumed after the last epoch
        last = {k: v for k, v in ctx.history[-1].items() if k != "epoch"}
    return {**last, **pretrained, "num_labelled": float(labelled.numel()),
            "num_labelled_positive": float(train.labels[labelled].sum())}


# --------------------------------------------------------------------------------------------- CLI
def _data_flag(value: str) -> bool:
    return value == "generated" or Path(value).is_dir()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``xrisk run ehr``."""
    g = p.add_argument_group("data")
    g.add_argument("--data", type=text(pattern_help="'generated' or an existing folder", check=_data_flag),
                   default="generated", help="'generated' (written to <out>/data) or a folder with train/ test/ [external/]")
    g.add_argument("--stays", type=number(int, ge=20), default=2000, help="generated training stays")
    g.add_argument("--eval-stays", type=number(int, ge=20), default=1000,
                   help="generated test stays (and as many second-hospital stays)")
    g.add_argument("--hours", type=number(float, gt=0), default=48.0, help="generated observation window (hours)")
    g.add_argument("--bad-rows", choices=("raise", "skip"), default="raise", help="reader policy for bad CSV rows")
    g = p.add_argument_group("model")
    g.add_argument("--dim", type=number(int, ge=2), default=64, help="token width")
    g.add_argument("--heads", type=number(int, ge=1), default=8, help="attention heads (must divide --dim)")
    g.add_argument("--ff-dim", type=number(int, ge=1), default=128, help="feed-forward width")
    g.add_argument("--layers", type=number(int, ge=1), default=2, help="transformer layers")
    g.add_argument("--max-tokens", type=number(int, ge=2), default=1024, help="token budget per stay")
    g.add_argument("--crop", type=number(int, ge=1), default=512, help="largest local view (tokens)")
    g.add_argument("--no-bucketing", dest="bucketing", action="store_false", help="one padded batch, no length buckets")
    g = p.add_argument_group("pretraining")
    g.add_argument("--pretrain", choices=PRETRAIN_METHODS, default="gcl", help="contrastive loss, or none")
    g.add_argument("--pretrain-epochs", type=number(int, ge=0), default=10)
    g.add_argument("--batch-size", type=number(int, ge=2), default=64, help="stays per pretraining step")
    g.add_argument("--lr", type=number(float, gt=0), default=1e-3, help="AdamW learning rate (pretraining)")
    g.add_argument("--weight-decay", type=number(float, ge=0), default=1e-5)
    g.add_argument("--tau", type=number(float, gt=0), default=0.1, help="temperature")
    g.add_argument("--gamma", type=number(float, gt=0, le=1), default=0.9,
                   help="gcl: moving-average weight on the new value")
    g.add_argument("--mask-fraction", type=number(float, ge=0, lt=1), default=0.1, help="values hidden for imputation")
    g.add_argument("--imputation-weight", type=number(float, ge=0), default=1.0)
    g.add_argument("--contrastive-weight", type=number(float, ge=0), default=1.0)
    g.add_argument("--max-steps", type=number(int, ge=1), default=None,
                   help="cap on pretraining steps per epoch, for smoke runs (default: full epochs)")
    g = p.add_argument_group("downstream")
    g.add_argument("--labels", type=number(float, gt=0, le=1), default=0.05, help="labelled fraction of training stays")
    g.add_argument("--finetune-epochs", type=number(int, ge=0), default=10)
    g.add_argument("--finetune-steps", type=number(int, ge=1), default=20, help="steps per fine-tuning epoch")
    g.add_argument("--finetune-batch-size", type=number(int, ge=1), default=32)
    g.add_argument("--finetune-lr", type=number(float, gt=0), default=1e-3)
    g.add_argument("--seed", type=number(int, ge=0), default=0)
    g.add_argument("--num-threads", type=number(int, ge=1), default=None,
                   help="torch threads (default: torch's choice)")


def validate(args: argparse.Namespace) -> None:
    """Rules across flags: ``--dim`` divisible by ``--heads``; a data folder has ``train/`` and ``test/``."""
    if args.dim % args.heads:
        raise UsageError(f"--dim {args.dim} must be divisible by --heads {args.heads}")
    if args.data != "generated":
        missing = [s for s in ("train", "test") if not (Path(args.data) / s).is_dir()]
        if missing:
            raise UsageError(f"--data {args.data}: no {' or '.join(m + '/' for m in missing)} folder")


def run(args: argparse.Namespace, ctx: RunContext) -> dict[str, float]:
    """``xrisk run ehr``."""
    return ctx.finish(train_ehr(config_from_args(EHRConfig, args), ctx))


register(Recipe("ehr", "contrastive (GCL/InfoNCE) + imputation pretraining on ICU time series; outcome AUROC/AUPRC",
                add_arguments, run, validate))
