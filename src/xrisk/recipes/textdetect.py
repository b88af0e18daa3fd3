"""``xrisk run textdetect``: detect machine-written text with AUROC / AP / partial-AUC losses, evaluated per
domain and per generator (Thorat & Yang, "Which LLMs are Difficult to Detect?", arXiv 2410.14875).

**Data** (``--data``): the bundled file (human BBC / ABC news / Usenet texts and SmolLM2-135M-Instruct
continuations of their openings under three decoding settings; see :mod:`xrisk.data.machine_text` and
``xrisk textdetect generate``) or any file in that format. The documents are split into train and test
(``--test-fraction`` of every domain's documents, all samples of a document on one side); the training
split is subsampled so that machine texts are a fraction ``--machine-ratio`` of it (the minority, as in
practice); the test split keeps every sample (its natural ratio).

**Encoders** (``--text-encoder``): ``tfidf`` (scikit-learn TF-IDF of word 1-2-grams fit on the training texts,
then an MLP), ``minilm`` (frozen all-MiniLM-L6-v2 sentence embeddings, cached, then an MLP), ``finetune``
(:func:`~xrisk.models.minilm_text_classifier`: MiniLM cut to ``--finetune-layers`` layers with its
pretrained weights, fine-tuned end to end with a linear head).

**Losses** (``--loss``, :mod:`xrisk.recipes.objectives`): ``ce`` (cross-entropy, shuffled batches),
``aucm`` (AUC-margin + PESG), ``ap`` (SOAP), ``pauc-cvar`` (one-way pAUC at ``FPR <= --max-fpr``), ``tpauc``
(two-way pAUC, ``FPR <= --max-fpr``, ``TPR >= --min-tpr``); the X-risk losses use the dual sampler.

**Evaluation** (every epoch: the test split; at the end also per domain, per generator, and per
generator within each domain): AUROC, AP, one-way pAUROC at ``FPR <= --max-fpr``, two-way pAUROC
(``FPR <= --max-fpr``, ``TPR >= --min-tpr``), TPR at 1 % FPR (:mod:`xrisk.metrics.detection`). A
generator's texts are scored against all human texts (of the domain). The run folder gets
``evaluation.json`` (every group's metrics and the feature analysis), ``roc_by_domain.png`` and
``roc_by_generator.png``. **Feature analysis**: per domain, how well each analysis feature stored with the
data (out-of-vocabulary ratio, word entropy, token NLL and entropy statistics under SmolLM2; see
:mod:`xrisk.data.text_features`) separates machine from human texts on its own (its AUROC), and the
Spearman correlation over domains between the detector's AUROC and each feature's separability
``|AUROC_f - 0.5|``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xrisk.recipes.flags import number, text
from xrisk.recipes.objectives import (SCORE_LOSSES, build_objective, build_sampler, count_batches, index_batches,
                                      loss_value)
from xrisk.recipes.registry import Recipe, UsageError, register
from xrisk.recipes.runner import RunContext, train_loss_key

__all__ = ["ENCODERS", "LOSSES", "ENCODER_DEFAULTS", "add_arguments", "validate", "run", "prepare_split",
           "evaluate_groups", "feature_analysis"]

ENCODERS: tuple[str, ...] = ("tfidf", "minilm", "finetune")
LOSSES: tuple[str, ...] = ("ce", "aucm", "ap", "pauc-cvar", "tpauc")
#: Defaults of the flags left at ``none``, per encoder (``lr`` by optimizer: PESG for aucm, Adam otherwise).
ENCODER_DEFAULTS: dict[str, dict[str, Any]] = {
    "tfidf": {"epochs": 20, "batch_size": 64, "lr_pesg": 0.1, "lr_adam": 1e-3},
    "minilm": {"epochs": 20, "batch_size": 64, "lr_pesg": 0.1, "lr_adam": 1e-3},
    "finetune": {"epochs": 3, "batch_size": 16, "lr_pesg": 0.01, "lr_adam": 5e-5},
}


def _data_choice(value: str) -> bool:
    return value == "builtin" or (value.endswith((".jsonl", ".jsonl.gz")) and Path(value).is_file())


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``xrisk run textdetect``."""
    g = p.add_argument_group("data")
    g.add_argument("--data", type=text(pattern_help="builtin or an existing .jsonl / .jsonl.gz file",
                                       check=_data_choice), default="builtin", help="builtin | PATH")
    g.add_argument("--domains", type=text(pattern_help="all or comma-separated domain names"), default="all",
                   help="domains to use")
    g.add_argument("--machine-ratio", type=number(float, gt=0, lt=1), default=0.1,
                   help="fraction of machine texts in the training split (subsampled)")
    g.add_argument("--test-fraction", type=number(float, gt=0, lt=1), default=0.4,
                   help="fraction of every domain's documents in the test split")
    g.add_argument("--max-train", type=number(int, ge=10, allow_none=True), default=None,
                   help="subsample the training split to at most this many texts, keeping the ratio (default: all)")
    g = p.add_argument_group("encoder")
    g.add_argument("--text-encoder", choices=ENCODERS, default="tfidf",
                   help="text representation")
    g.add_argument("--tfidf-features", type=number(int, ge=16), default=5000, help="TF-IDF vocabulary size")
    g.add_argument("--hidden", type=number(int, ge=0), default=64,
                   help="hidden units of the MLP on tfidf/minilm features (0: linear)")
    g.add_argument("--finetune-layers", type=number(int, ge=1, le=6), default=2,
                   help="MiniLM layers kept by --text-encoder finetune")
    g.add_argument("--max-length", type=number(int, ge=8, le=512), default=128,
                   help="tokens per text for --text-encoder finetune")
    g = p.add_argument_group("training")
    g.add_argument("--loss", choices=LOSSES, default="aucm", help="training objective")
    g.add_argument("--epochs", type=number(int, ge=1, allow_none=True), default=None,
                   help="epochs (default: 20 tfidf/minilm, 3 finetune; may grow on --resume)")
    g.add_argument("--batch-size", type=number(int, ge=2, allow_none=True), default=None,
                   help="mini-batch size (default: 64 tfidf/minilm, 16 finetune)")
    g.add_argument("--lr", type=number(float, gt=0, allow_none=True), default=None,
                   help="learning rate (default: aucm 0.1 / others 1e-3; finetune: aucm 0.01 / others 5e-5)")
    g.add_argument("--weight-decay", type=number(float, ge=0), default=1e-5, help="L2 weight decay")
    g.add_argument("--sampler", choices=("dual", "shuffle"), default=None,
                   help="batch sampler (default: dual for the X-risk losses, shuffle for ce)")
    g.add_argument("--batch-pos-ratio", type=number(float, gt=0, lt=1), default=0.5,
                   help="fraction of machine texts per batch with --sampler dual")
    g.add_argument("--margin", type=number(float, ge=0), default=1.0, help="margin of the AUC/AP/pAUC surrogates")
    g.add_argument("--seed", type=number(int, ge=0), default=0, help="seed of the split, subsampling, model and batches")
    g = p.add_argument_group("evaluation")
    g.add_argument("--max-fpr", type=number(float, gt=0, le=1), default=0.1,
                   help="FPR bound of the partial AUROCs (and the pAUC losses)")
    g.add_argument("--min-tpr", type=number(float, ge=0, lt=1), default=0.5,
                   help="TPR bound of the two-way partial AUROC (and the tpauc loss)")


def _resolved(args: argparse.Namespace) -> dict[str, Any]:
    d = ENCODER_DEFAULTS[args.text_encoder]
    lr = args.lr if args.lr is not None else d["lr_pesg" if args.loss == "aucm" else "lr_adam"]
    return {"epochs": args.epochs or d["epochs"], "batch_size": args.batch_size or d["batch_size"], "lr": lr,
            "sampler": args.sampler or ("dual" if args.loss in SCORE_LOSSES else "shuffle")}


def _load_data(args: argparse.Namespace) -> Any:
    from xrisk.data.machine_text import DOMAINS, bundled_data_path, load_text_detection

    path = bundled_data_path() if args.data == "builtin" else Path(args.data)
    domains = None if args.domains == "all" else [d.strip() for d in args.domains.split(",") if d.strip()]
    if args.data == "builtin":
        if not path.is_file():
            raise UsageError(f"argument --data: the bundled data file {path} is missing; reinstall xrisk")
        bad = [d for d in domains or [] if d not in DOMAINS]
        if bad:
            raise UsageError(f"argument --domains: unknown domain(s) {bad}; known: {', '.join(DOMAINS)}")
    try:
        return load_text_detection(path, domains=domains)
    except ValueError as e:
        raise UsageError(f"argument --{'domains' if 'no records of domain' in str(e) else 'data'}: {e}") from None


@dataclass
class Split:
    """The data and the train / test indices of one run."""

    data: Any
    train: Tensor
    test: Tensor


def _limit(labels: Tensor, index: Tensor, max_n: int, seed: int) -> Tensor:
    """A random subset of ``index`` of ``max_n`` items with the same share of label 1 (at least one of each)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    pos, neg = index[labels[index] == 1], index[labels[index] == 0]
    n_pos = min(max(1, round(max_n * pos.numel() / index.numel())), pos.numel())
    keep = torch.cat([pos[torch.randperm(pos.numel(), generator=g)[:n_pos]],
                      neg[torch.randperm(neg.numel(), generator=g)[:max_n - n_pos]]])
    return keep.sort().values


def prepare_split(data: Any, *, machine_ratio: float, test_fraction: float, seed: int,
                  max_train: int | None = None) -> Split:
    """Split ``data`` by source document (:func:`~xrisk.data.machine_text.split_by_source`), subsample the
    training split to ``machine_ratio`` machine texts and to at most ``max_train`` texts."""
    from xrisk.data.machine_text import split_by_source, subsample_to_ratio

    train, test = split_by_source(data.groups, data.domains, test_fraction=test_fraction, seed=seed)
    for name, idx in (("training", train), ("test", test)):
        y = data.labels[idx]
        if not (y == 1).any() or not (y == 0).any():
            raise ValueError(f"the {name} split has {int(y.sum())} machine and {int((y == 0).sum())} human texts; "
                             "both classes are needed")
    train = subsample_to_ratio(data.labels, train, machine_ratio, seed=seed)
    if max_train is not None and train.numel() > max_train:
        train = _limit(data.labels, train, max_train, seed)
    return Split(data, train, test)


def validate(args: argparse.Namespace) -> None:
    """Reads the data (one-line errors naming the file and line) and checks that both splits have both classes."""
    data = _load_data(args)
    try:
        prepare_split(data, machine_ratio=args.machine_ratio, test_fraction=args.test_fraction, seed=args.seed,
                      max_train=args.max_train)
    except ValueError as e:
        raise UsageError(f"argument --data: {e}") from None


# ----------------------------------------------------------------------------- encoders
def _encode(args: argparse.Namespace, split: Split) -> tuple[nn.Module, dict[str, Tensor], dict[str, Any]]:
    """``(model, inputs, info)``: the scorer and the inputs of every sample (rows in data order)."""
    texts = split.data.texts
    torch.manual_seed(args.seed)
    if args.text_encoder == "finetune":
        from xrisk.models import minilm_text_classifier

        model, tok = minilm_text_classifier(num_layers=args.finetune_layers)
        enc = tok(texts, padding="max_length", truncation=True, max_length=args.max_length, return_tensors="pt")
        torch.manual_seed(args.seed)
        model.head.reset_parameters()  # the head's initialisation depends on the seed only
        return model, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, {
            "model": f"MiniLM-L{args.finetune_layers}-H384 (pretrained) + linear head"}
    if args.text_encoder == "tfidf":
        try:
            from sklearn.feature_extraction.text import TfidfVectorizer
        except ImportError as e:
            raise UsageError("--text-encoder tfidf needs scikit-learn: pip install 'xrisk[text]'") from e
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=args.tfidf_features, sublinear_tf=True)
        vec.fit([texts[i] for i in split.train.tolist()])
        x = torch.from_numpy(vec.transform(texts).toarray()).float()
    else:
        from xrisk.data.text import embed_texts

        x = embed_texts(list(texts))
    from xrisk.models import MLP

    torch.manual_seed(args.seed)
    model = MLP(x.shape[1], hidden=(args.hidden,) if args.hidden else (), out_features=1)
    return model, {"x": x}, {"model": f"MLP {x.shape[1]}-{args.hidden or ''}-1".replace("--", "-"),
                             "feature_dim": int(x.shape[1])}


def _forward(model: nn.Module, inputs: dict[str, Tensor], index: Tensor) -> Tensor:
    if "x" in inputs:
        return model(inputs["x"][index]).reshape(-1)
    return model(inputs["input_ids"][index], inputs["attention_mask"][index]).reshape(-1)


@torch.no_grad()
def _scores(model: nn.Module, inputs: dict[str, Tensor], index: Tensor, batch_size: int = 256) -> Tensor:
    was = model.training
    model.eval()
    out = torch.cat([_forward(model, inputs, part) for part in index.split(batch_size)]) if index.numel() else \
        torch.zeros(0)
    model.train(was)
    return out.double()


# ----------------------------------------------------------------------------- evaluation
def evaluate_groups(scores: Tensor, labels: Tensor, domains: list[str], generators: list[str], *,
                    max_fpr: float, min_tpr: float) -> dict[str, Any]:
    """Metrics overall, per domain, per generator (against all human texts) and per generator within each
    domain (against the domain's human texts)."""
    from xrisk.data.machine_text import iter_domains
    from xrisk.metrics.detection import detection_metrics, grouped_detection_metrics

    kw = {"max_fpr": max_fpr, "min_tpr": min_tpr}
    by_domain = grouped_detection_metrics(scores, labels, domains, **kw)
    nested: dict[str, Any] = {}
    for d in iter_domains(domains):
        keep = torch.tensor([x == d for x in domains])
        idx = torch.nonzero(keep).flatten().tolist()
        nested[d] = grouped_detection_metrics(scores[keep], labels[keep], [generators[i] for i in idx],
                                              shared_negatives=True, **kw)
    return {"overall": detection_metrics(scores, labels, **kw),
            "by_domain": {d: by_domain[d] for d in iter_domains(domains)},
            "by_generator": dict(sorted(grouped_detection_metrics(scores, labels, generators, shared_negatives=True,
                                                                  **kw).items())),
            "by_domain_generator": nested}


def feature_analysis(features: dict[str, Tensor], labels: Tensor, domains: list[str],
                     detector_auroc: dict[str, float]) -> dict[str, Any]:
    """Per domain, each feature's separability (:func:`~xrisk.metrics.detection.feature_separability`); per
    feature, the Spearman correlation over domains of ``detector_auroc[domain]`` with the feature's
    ``|AUROC - 0.5|`` (positive: the domains where the feature separates the classes are the easier ones)."""
    from xrisk.data.machine_text import iter_domains
    from xrisk.metrics.detection import feature_separability, spearman

    sep = feature_separability(features, labels, domains)
    order = iter_domains(domains)
    corr = {f: spearman([detector_auroc[d] for d in order], [abs(sep[d][f]["auroc"] - 0.5) for d in order])
            for f in features}
    return {"by_domain": {d: sep[d] for d in order}, "spearman_detector_auroc_vs_separability": corr}


def _roc_plots(out_dir: Path, scores: Tensor, labels: Tensor, domains: list[str], generators: list[str],
               max_fpr: float) -> None:
    from xrisk.data.machine_text import iter_domains
    from xrisk.metrics.ranking import roc_curve
    from xrisk.recipes.plots import plot_roc_curves

    y = labels.bool()

    def curve(keep: Tensor) -> tuple[list[float], list[float]] | None:
        if not (y[keep].any() and (~y[keep]).any()):
            return None
        fpr, tpr, _ = roc_curve(scores[keep], y[keep])
        return fpr.tolist(), tpr.tolist()

    by_domain = {d: curve(torch.tensor([x == d for x in domains])) for d in iter_domains(domains)}
    gens = sorted({g for g, pos in zip(generators, y.tolist()) if pos})
    by_gen = {g: curve(torch.tensor([x == g for x in generators]) | ~y) for g in gens}
    plot_roc_curves({k: v for k, v in by_domain.items() if v}, out_dir / "roc_by_domain.png",
                    title="ROC per domain (test split)", max_fpr=max_fpr)
    plot_roc_curves({k: v for k, v in by_gen.items() if v}, out_dir / "roc_by_generator.png",
                    title="ROC per generator vs all human texts (test split)", max_fpr=max_fpr)


# ----------------------------------------------------------------------------- run
def run(args: argparse.Namespace, ctx: RunContext) -> dict[str, Any]:
    """Train and evaluate; see the module docstring. Returns the final test metrics."""
    r = _resolved(args)
    split = prepare_split(_load_data(args), machine_ratio=args.machine_ratio, test_fraction=args.test_fraction,
                          seed=args.seed, max_train=args.max_train)
    data = split.data
    model, inputs, info = _encode(args, split)
    train_inputs = {k: v[split.train] for k, v in inputs.items()}
    y_train = data.labels[split.train].float()
    y_test = data.labels[split.test]
    loss, optimizer = build_objective(args.loss, model.parameters(), num_samples=len(y_train), lr=r["lr"],
                                      weight_decay=args.weight_decay, margin=args.margin, max_fpr=args.max_fpr,
                                      min_tpr=args.min_tpr)
    sampler = build_sampler(r["sampler"], y_train, r["batch_size"], pos_ratio=args.batch_pos_ratio, seed=args.seed)
    test_domains = [data.domains[i] for i in split.test.tolist()]
    test_generators = [data.generators[i] for i in split.test.tolist()]
    ctx.update_config(**r, **info, data_description=data.describe(), loss_class=type(loss).__name__,
                      optimizer=type(optimizer).__name__, objective_name=getattr(loss, "objective_name", None),
                      num_train=len(y_train), num_train_machine=int(y_train.sum()), num_test=len(y_test),
                      num_test_machine=int(y_test.sum()))
    ctx.notice(f"{data.describe()}; train {len(y_train)} ({int(y_train.sum())} machine), test {len(y_test)} "
               f"({int(y_test.sum())} machine); {info['model']}, {type(loss).__name__} + {type(optimizer).__name__} "
               f"lr {r['lr']:g}, {r['sampler']} sampler")

    kw = {"max_fpr": args.max_fpr, "min_tpr": args.min_tpr}
    start = ctx.resume(model=model, loss=loss, optimizer=optimizer, sampler=sampler)
    key = train_loss_key(loss)
    steps = count_batches(sampler, r["batch_size"])
    bar = ctx.progress(max(r["epochs"] - start, 0) * steps - ctx.start_step, "")
    from xrisk.metrics.detection import detection_metrics

    for epoch in range(start + 1, r["epochs"] + 1):
        bar.set_description(f"epoch {epoch}/{r['epochs']}")
        sampler.set_epoch(epoch)
        model.train()
        t0 = time.monotonic()
        acc: dict[str, Any] = {"total": 0.0, "count": 0, "objectives": []}
        for index in ctx.steps(epoch, index_batches(sampler, r["batch_size"]), state=acc):
            value = loss_value(args.loss, loss, _forward(model, train_inputs, index), y_train[index], index)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            acc["total"] += float(value.detach())
            acc["count"] += 1
            if args.loss in SCORE_LOSSES:
                obj = float(loss.objective())
                if math.isfinite(obj):
                    acc["objectives"].append(obj)
            bar.update(**{key.removeprefix("train_"): float(value.detach())})
        metrics: dict[str, float] = {key: acc["total"] / max(acc["count"], 1)}
        if args.loss in SCORE_LOSSES:
            objs = acc["objectives"]
            metrics["train_objective"] = sum(objs) / len(objs) if objs else math.nan
        metrics.update({f"test_{k}": v for k, v in
                        detection_metrics(_scores(model, inputs, split.test), y_test, **kw).items()})
        metrics["epoch_seconds"] = time.monotonic() - t0
        ctx.log_epoch(epoch, metrics)
        ctx.save(epoch=epoch)
    bar.close()
    scores = _scores(model, inputs, split.test)
    result = evaluate_groups(scores, y_test, test_domains, test_generators, **kw)
    test_features = {k: v[split.test] for k, v in data.features.items()}
    if test_features:
        result["feature_analysis"] = feature_analysis(
            test_features, y_test, test_domains, {d: m["auroc"] for d, m in result["by_domain"].items()})
    result["settings"] = {**kw, "operating_fpr": 0.01, "encoder": args.text_encoder, "loss": args.loss}
    (ctx.out_dir / "evaluation.json").write_text(json.dumps(result, indent=1, allow_nan=True) + "\n")
    if ctx.plot:
        from xrisk.recipes.plots import PlotsUnavailable

        try:
            _roc_plots(ctx.out_dir, scores, y_test, test_domains, test_generators, args.max_fpr)
        except PlotsUnavailable as e:
            ctx.notice(str(e))
    for group in ("by_domain", "by_generator"):
        ctx.notice(f"test AUROC / TPR@1%FPR {group.replace('_', ' ')}: " + ", ".join(
            f"{g} {m['auroc']:.3f}/{m['tpr_at_1pct_fpr']:.2f}" for g, m in result[group].items()))
    final = {f"test_{k}": v for k, v in result["overall"].items()}
    dom = {d: m["auroc"] for d, m in result["by_domain"].items() if math.isfinite(m["auroc"])}
    gen = {g: m["auroc"] for g, m in result["by_generator"].items() if math.isfinite(m["auroc"])}
    if dom:
        final.update(hardest_domain=min(dom, key=dom.get), hardest_domain_auroc=min(dom.values()))
    if gen:
        final.update(hardest_generator=min(gen, key=gen.get), hardest_generator_auroc=min(gen.values()))
    return ctx.finish({**final, "epochs": r["epochs"]})


register(Recipe(
    name="textdetect",
    help="machine-written text detection: CE vs AUROC/AP/pAUC losses, per-domain and per-generator evaluation",
    add_arguments=add_arguments,
    run=run,
    validate=validate,
))
