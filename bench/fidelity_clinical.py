"""Fidelity of contrastive + imputation pretraining on ICU time series at small scale (issue 15).

Paper: King et al., "An Efficient Contrastive Unimodal Pretraining Method for EHR Time Series Data",
IEEE BHI 2024, arXiv:2410.09199. Data: the generator of :mod:`xrisk.data.clinical.generator` (written
as CSV and read back through the reader, like ``xrisk run ehr --data generated``); hospital A for
training and testing, hospital B (other sampling rates, missingness and offsets) for external
validation. For every seed, the same initial encoder is pretrained with the global contrastive loss
(``gcl``: ``GlobalContrastiveLoss``, per-sample estimators) or mini-batch InfoNCE (``infonce``, the
reference's headline estimator) at the same small batch, both plus masked-value imputation, or not
pretrained (``none``); then linear probes and fine-tuning on 1 % / 5 % / 100 % of the training labels.

(a) with 1 % and 5 % labels, does pretrained + fine-tuned beat training from scratch (the paper's claim)?
(b) the global contrastive loss vs mini-batch InfoNCE at the same small batch (probe and fine-tuned);
(c) the drop from the internal test set to the second hospital, with and without pretraining.
Speed: pretraining tokens per second at 256 / 1024 / 4096 tokens per stay and the growth of the step
time with length; length buckets vs one padded batch on the generated lengths (paired, interleaved).

One process, one thread (run it under ``nice``).

    .venv-bench/bin/python bench/fidelity_clinical.py            # full run, table into bench/RESULTS.md
    .venv-bench/bin/python bench/fidelity_clinical.py --quick    # smoke run (a few minutes), prints only
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

import _common
from xrisk.data.clinical import VariableStats, generate_stays, load_clinical_dir, write_generated_dataset
from xrisk.losses import GlobalContrastiveLoss
from xrisk.recipes.ehr import (
    EHRConfig, StayTensors, build_encoder, classifier_scores, eval_sequences, finetune_epoch, imputation_errors,
    pretrain_epoch, pretrain_step, probe_scores, select_labelled,
)

SECTION = "clinical-fidelity"
METHODS = ("gcl", "infonce", "none")


@dataclass
class Config:
    quick: bool
    seeds: tuple[int, ...]
    num_train: int = 5000
    num_test: int = 1000
    num_external: int = 1000
    hours: float = 24.0
    model: dict = field(default_factory=lambda: {"dim": 32, "heads": 2, "ff_dim": 64, "layers": 2})
    batch: int = 32
    epochs: int = 5
    tau: float = 0.1
    gamma: float = 0.9
    fractions: tuple[float, ...] = (0.01, 0.05, 1.0)
    finetune_epochs: int = 10
    finetune_steps: int = 20
    speed_lengths: tuple[int, ...] = (256, 1024, 4096)
    speed_batch: int = 4
    speed_steps: int = 2
    bucket_rounds: int = 6


def full_config() -> Config:
    return Config(quick=False, seeds=(0, 1, 2))


def quick_config() -> Config:
    return Config(quick=True, seeds=(0,), num_train=300, num_test=200, num_external=200, epochs=1,
                  finetune_epochs=1, finetune_steps=3, speed_lengths=(64, 256), speed_steps=1, bucket_rounds=1)


def _ehr_config(cfg: Config, method: str, seed: int) -> EHRConfig:
    return EHRConfig(pretrain=method, batch_size=cfg.batch, tau=cfg.tau, gamma=cfg.gamma, seed=seed,
                     pretrain_epochs=cfg.epochs, finetune_epochs=cfg.finetune_epochs,
                     finetune_steps=cfg.finetune_steps, **cfg.model)


# ----------------------------------------------------------------------------- quality
def run_seed(cfg: Config, seed: int, root: Path, log: Callable[[str], None]) -> dict[str, dict]:
    """Every method's probe / fine-tune / imputation results for one seed."""
    write_generated_dataset(root, num_train=cfg.num_train, num_test=cfg.num_test, num_external=cfg.num_external,
                            hours=cfg.hours, seed=seed)
    splits = load_clinical_dir(root)
    train = StayTensors(splits.train)
    stats = VariableStats.fit(splits.train)
    base = _ehr_config(cfg, "gcl", seed)
    train_seqs = eval_sequences(train, base.max_tokens, seed)
    test = (eval_sequences(StayTensors(splits.test), base.max_tokens, seed), torch.from_numpy(splits.test.labels))
    external = (eval_sequences(StayTensors(splits.external), base.max_tokens, seed),
                torch.from_numpy(splits.external.labels))
    labelled = {f: select_labelled(train.labels, f, seed) for f in cfg.fractions}
    results: dict[str, dict] = {}
    for method in METHODS:
        ecfg = _ehr_config(cfg, method, seed)
        torch.manual_seed(seed)
        encoder = build_encoder(splits.train.num_variables, ecfg)
        encoder.set_value_stats(stats.mean, stats.std)
        res: dict = {"pretrain_minutes": 0.0}
        if method != "none":
            loss_fn = GlobalContrastiveLoss(len(train), mode="unimodal", temperature="fixed", tau=cfg.tau,
                                            gamma=cfg.gamma) if method == "gcl" else None
            opt = torch.optim.AdamW(encoder.parameters(), lr=ecfg.lr, weight_decay=ecfg.weight_decay)
            t0 = time.perf_counter()
            for epoch in range(1, cfg.epochs + 1):
                m = pretrain_epoch(encoder, loss_fn, opt, train, ecfg, epoch)
            res["pretrain_minutes"] = (time.perf_counter() - t0) / 60
            res["last_epoch"] = m
            res.update(imputation_errors(encoder, test[0], fraction=ecfg.mask_fraction, seed=seed))
        state = {k: v.clone() for k, v in encoder.state_dict().items()}
        for f in cfg.fractions:
            res[("probe", f)] = probe_scores(encoder, train_seqs, train.labels, labelled[f], test, external)
            torch.manual_seed(seed + 1)
            tuned = build_encoder(splits.train.num_variables, ecfg)
            tuned.load_state_dict(state)
            head = nn.Linear(ecfg.dim, 1)
            opt = torch.optim.AdamW([*tuned.parameters(), *head.parameters()], lr=ecfg.finetune_lr,
                                    weight_decay=ecfg.weight_decay)
            for epoch in range(1, cfg.finetune_epochs + 1):
                finetune_epoch(tuned, head, opt, train, labelled[f], ecfg, epoch)
            out = classifier_scores(tuned, head, *test, "")
            out.update(classifier_scores(tuned, head, *external, "external_"))
            res[("finetune", f)] = out
        log(f"seed {seed} {method}: pretrain {res['pretrain_minutes']:.1f} min; "
            + "; ".join(f"{int(100 * f)}%: probe {res[('probe', f)]['probe_auroc']:.3f} "
                        f"ft {res[('finetune', f)]['auroc']:.3f} ext {res[('finetune', f)]['external_auroc']:.3f}"
                        for f in cfg.fractions))
        results[method] = res
    return results


def _ms(xs: list[float], digits: int = 3) -> str:
    m = statistics.fmean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _paired(a: list[float], b: list[float]) -> tuple[float, float, int]:
    """Mean and std of ``a - b`` over seeds and the number of seeds where ``a > b``."""
    d = [x - y for x, y in zip(a, b)]
    return statistics.fmean(d), (statistics.stdev(d) if len(d) > 1 else 0.0), sum(x > 0 for x in d)


def _verdict(mean: float, std: float, wins: int, n: int) -> str:
    if n > 1 and wins == n and mean > std / math.sqrt(n):
        return "holds"
    if n > 1 and wins == 0 and -mean > std / math.sqrt(n):
        return "reversed"
    return "not shown (mixed)"


def part_quality(cfg: Config, log: Callable[[str], None]) -> str:
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="xrisk-clinical-") as tmp:
        for seed in cfg.seeds:
            per_seed.append(run_seed(cfg, seed, Path(tmp) / f"seed{seed}", log))

    def col(method: str, kind: str, f: float, key: str) -> list[float]:
        return [r[method][(kind, f)][key] for r in per_seed]

    n = len(per_seed)
    rows = []
    for method in METHODS:
        for f in cfg.fractions:
            ft_int, ft_ext = col(method, "finetune", f, "auroc"), col(method, "finetune", f, "external_auroc")
            rows.append([method, f"{100 * f:g} %", _ms(col(method, "probe", f, "probe_auroc")),
                         _ms(col(method, "probe", f, "probe_auprc")), _ms(ft_int), _ms(col(method, "finetune", f, "auprc")),
                         _ms(ft_ext), _ms([a - b for a, b in zip(ft_int, ft_ext)])])
    verdicts = []
    for f in (0.01, 0.05):
        if f not in cfg.fractions:
            continue
        for method in ("gcl", "infonce"):
            m, s, w = _paired(col(method, "finetune", f, "auroc"), col("none", "finetune", f, "auroc"))
            verdicts.append(f"- (a) {int(100 * f)} % labels, {method} pretrained + fine-tuned vs from scratch: "
                            f"AUROC {m:+.3f} ± {s:.3f} (paired over seeds; better in {w}/{n}): **{_verdict(m, s, w, n)}**.")
    for f in cfg.fractions:
        for kind, key, name in (("probe", "probe_auroc", "linear probe"), ("finetune", "auroc", "fine-tuned")):
            m, s, w = _paired(col("gcl", kind, f, key), col("infonce", kind, f, key))
            verdicts.append(f"- (b) {100 * f:g} % labels, {name}: GCL - InfoNCE AUROC {m:+.3f} ± {s:.3f} "
                            f"(GCL better in {w}/{n}): **{_verdict(m, s, w, n)}**.")
    for f in cfg.fractions:
        drops = {meth: [a - b for a, b in zip(col(meth, "finetune", f, "auroc"), col(meth, "finetune", f, "external_auroc"))]
                 for meth in METHODS}
        text = (f"- (c) {100 * f:g} % labels, internal - external AUROC: from scratch {_ms(drops['none'])}, "
                f"GCL-pretrained {_ms(drops['gcl'])}, InfoNCE-pretrained {_ms(drops['infonce'])}")
        scratch = statistics.fmean(drops["none"])
        scratch_se = (statistics.stdev(drops["none"]) if n > 1 else 0.0) / math.sqrt(n)
        if n > 1 and scratch <= max(scratch_se, 0.01):  # no drop for pretraining to shrink
            verdicts.append(text + ": **no drop** (hospital B is not harder than A for the model trained from "
                                   "scratch), so there is nothing for pretraining to shrink.")
            continue
        m, s, w = _paired(drops["none"], drops["gcl"])
        verdicts.append(text + f"; pretraining (GCL) shrinks the drop by {m:+.3f} ± {s:.3f} (in {w}/{n} seeds): "
                               f"**{_verdict(m, s, w, n)}**.")
    imp_rows = []
    for method in ("gcl", "infonce"):
        imp_rows.append([method, _ms([r[method]["imputation_mse"] for r in per_seed]),
                         _ms([r[method]["imputation_mse_locf"] for r in per_seed]),
                         _ms([r[method]["imputation_mse_mean"] for r in per_seed]),
                         _ms([r[method]["last_epoch"]["train_contrastive_" + ("surrogate" if method == "gcl" else "loss")]
                              for r in per_seed]),
                         _ms([r[method]["pretrain_minutes"] for r in per_seed], 1)])
    m = cfg.model
    return "\n".join([
        f"Data: generated, {cfg.num_train} training / {cfg.num_test} test stays of hospital A and "
        f"{cfg.num_external} stays of hospital B per seed, windows of up to {cfg.hours:g} h (about 10 % deaths). "
        f"Model: `TripletTransformer(dim={m['dim']}, heads={m['heads']}, ff_dim={m['ff_dim']}, layers={m['layers']})`, "
        f"token budget 1024, local crop 512. Pretraining: {cfg.epochs} epochs, batch {cfg.batch}, AdamW lr 1e-3, "
        f"tau {cfg.tau}, GCL gamma {cfg.gamma}, imputation weight 1 (10 % of values hidden), contrastive weight 1. "
        f"Downstream: stratified label subsets (each class keeps max(1, round(fraction x count)) stays); probe = "
        f"logistic regression on frozen features; fine-tuning = encoder + linear head, BCE, "
        f"{cfg.finetune_epochs} x {cfg.finetune_steps} steps of batch 32, AdamW lr 1e-3, the same steps for every "
        f"method. AUROC/AUPRC on the {cfg.num_test} test stays ('internal') and on hospital B ('external'); "
        f"mean ± std over seeds {list(cfg.seeds)}.",
        "",
        _common.md_table(["pretraining", "labels", "probe AUROC", "probe AUPRC", "fine-tuned AUROC",
                          "fine-tuned AUPRC", "external AUROC", "internal - external"], rows),
        "",
        "Verdicts ('holds' = better in every seed and the mean difference exceeds its standard error):",
        "",
        *verdicts,
        "",
        "Masked-value imputation on the test stays (MSE in normalised units, 10 % of values hidden), the last "
        "pretraining epoch's contrastive loss (a surrogate for GCL) and the pretraining time:",
        "",
        _common.md_table(["pretraining", "model MSE", "last value carried forward", "training mean",
                          "contrastive loss", "minutes"], imp_rows),
    ])


# ----------------------------------------------------------------------------- speed
def _synthetic(num: int, length: int, num_variables: int, seed: int) -> StayTensors:
    from xrisk.data.clinical import ClinicalStays

    g = np.random.default_rng(seed)
    times = np.sort(g.uniform(0, length / 10.0, (num, length)), axis=1).ravel()
    stays = ClinicalStays(
        stay_ids=tuple(str(i) for i in range(num)), variable_names=tuple(f"v{k}" for k in range(num_variables)),
        offsets=np.arange(num + 1, dtype=np.int64) * length, times=times,
        variables=g.integers(1, num_variables + 1, num * length), values=g.standard_normal(num * length).astype(np.float32),
    )
    return StayTensors(stays)


def _step_fn(encoder: nn.Module, loss_fn: nn.Module, opt: torch.optim.Optimizer, data: StayTensors, ecfg: EHRConfig,
             batch: int, seed: int) -> Callable[[], None]:
    """One pretraining step on a random batch of ``data`` per call."""
    g = torch.Generator().manual_seed(seed)

    def step() -> None:
        idx = torch.randperm(len(data), generator=g)[:batch]
        loss, _, _ = pretrain_step(encoder, loss_fn, data, idx, ecfg, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def part_speed(cfg: Config, log: Callable[[str], None]) -> str:
    rows, times = [], {}
    sizes = {"study": cfg.model, "reference": {"dim": 64, "heads": 8, "ff_dim": 128, "layers": 2}}
    for name, model in sizes.items():
        for length in cfg.speed_lengths:
            ecfg = replace(_ehr_config(cfg, "gcl", 0), max_tokens=length, **model)
            data = _synthetic(4 * cfg.speed_batch, length, 12, 0)
            torch.manual_seed(0)
            enc = build_encoder(12, ecfg)
            loss_fn = GlobalContrastiveLoss(len(data), mode="unimodal", tau=cfg.tau, gamma=cfg.gamma)
            opt = torch.optim.AdamW(enc.parameters(), lr=1e-3)
            step = _step_fn(enc, loss_fn, opt, data, ecfg, cfg.speed_batch, 0)
            step()  # warm-up
            ts = []
            for _ in range(cfg.speed_steps):
                t0 = time.perf_counter()
                step()
                ts.append(time.perf_counter() - t0)
            t = statistics.median(ts)
            local = min(ecfg.crop, length // 2)  # crop / subset views; the jitter view has `length` tokens
            per_step = cfg.speed_batch * (length + (2 * local + length) / 3)
            times[(name, length)] = t
            rows.append([name, length, f"{t:.2f}", f"{per_step / t:,.0f}"])
            log(f"speed {name} L={length}: {t:.2f} s/step")
    growth = []
    for name in sizes:
        ls = list(cfg.speed_lengths)
        for a, b in zip(ls, ls[1:]):
            r = times[(name, b)] / times[(name, a)]
            growth.append(f"{name} {a} -> {b}: x{r:.1f} (exponent {math.log(r) / math.log(b / a):.2f})")
    # length buckets vs one padded batch on the generated length distribution (hours 48: the long tail)
    stays, _ = generate_stays(8 * cfg.batch, hours=48.0, seed=0)
    data = StayTensors(stays)
    st = VariableStats.fit(stays)
    steps, check = {}, {}
    for label, ratio in (("buckets", 1.5), ("padded", None)):
        ecfg = _ehr_config(cfg, "gcl", 0)
        torch.manual_seed(0)
        enc = build_encoder(stays.num_variables, ecfg)
        enc.bucket_ratio = ratio
        enc.set_value_stats(st.mean, st.std)
        loss_fn = GlobalContrastiveLoss(len(data), mode="unimodal", tau=cfg.tau, gamma=cfg.gamma)
        opt = torch.optim.AdamW(enc.parameters(), lr=1e-3)
        steps[label] = _step_fn(enc, loss_fn, opt, data, ecfg, cfg.batch, 1)
        g = torch.Generator().manual_seed(5)
        check_loss = GlobalContrastiveLoss(len(data), mode="unimodal", tau=cfg.tau, gamma=cfg.gamma)
        loss, _, _ = pretrain_step(enc, check_loss, data, torch.arange(cfg.batch), ecfg, g)
        loss.backward()
        check[label] = (float(loss.detach()), torch.cat([p.grad.reshape(-1) for p in enc.parameters() if p.grad is not None]))
        opt.zero_grad(set_to_none=True)
    dl = abs(check["buckets"][0] - check["padded"][0])
    dg = float((check["buckets"][1] - check["padded"][1]).abs().max())
    timing = _common.time_interleaved(steps, rounds=cfg.bucket_rounds, steps_per_round=1, warmup_rounds=1)
    ratios = [a / b for a, b in zip(timing["buckets"], timing["padded"])]
    lengths = stays.lengths
    return "\n".join([
        f"Pretraining step (both views, GCL + imputation, forward + backward + AdamW) at exactly L tokens per stay "
        f"(synthetic stays, token budget L, local views of min(512, L/2) tokens or L for jitter), batch "
        f"{cfg.speed_batch}, median of {cfg.speed_steps} steps after one warm-up; 'study' is the model of the "
        f"table above, 'reference' the reference's size (d 64, 8 heads, ff 128, 2 layers). Tokens/s counts the "
        f"tokens of both views (expected local size).",
        "",
        _common.md_table(["model", "tokens per stay", "s / step", "tokens / s"], rows),
        "",
        "Growth of the step time with length: " + "; ".join(growth) + " (exponent 1 = linear, 2 = quadratic).",
        "",
        f"Length buckets (`bucket_ratio=1.5`) vs one padded batch: generated stays (48 h windows: "
        f"{int(np.median(lengths))} tokens median, {int(np.percentile(lengths, 95))} at the 95th percentile, "
        f"{int(lengths.max())} max), study model, batch {cfg.batch}, {cfg.bucket_rounds} interleaved rounds: "
        f"step time ratio buckets / padded **{statistics.median(ratios):.2f}** (median of paired rounds, range "
        f"{min(ratios):.2f}-{max(ratios):.2f}; {statistics.median(timing['buckets']):.2f} s vs "
        f"{statistics.median(timing['padded']):.2f} s). Same batch both ways: loss differs by {dl:.1e}, "
        f"gradients by at most {dg:.1e} (float rounding).",
    ])


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run, prints only")
    p.add_argument("--parts", default="qs", help="q = quality (a, b, c), s = speed")
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="override the seeds (exploration)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = quick_config() if args.quick else full_config()
    if args.seeds:
        cfg.seeds = tuple(args.seeds)
    t_start = time.perf_counter()
    facts = _common.machine_facts(1)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    sections = []
    if "q" in args.parts:
        sections.append("### Quality: pretraining, label fractions, external hospital\n\n" + part_quality(cfg, log))
    if "s" in args.parts:
        sections.append("### Speed: long stays\n\n" + part_speed(cfg, log))
    elapsed = time.perf_counter() - t_start
    cmd = "nice -n 10 .venv-bench/bin/python bench/fidelity_clinical.py" + (" --quick" if args.quick else "")
    if args.parts != "qs":
        cmd += f" --parts {args.parts}"
    if args.seeds:
        cmd += " --seeds " + " ".join(map(str, args.seeds))
    text = "\n".join([
        "## Clinical time series: contrastive + imputation pretraining at small scale (issue 15)",
        "",
        f"Command: `{cmd}` ({elapsed / 60:.1f} min wall, one process, one thread). Machine: {facts}; "
        f"load average at the end {_common.loadavg():.2f}.",
        "",
        "\n\n".join(sections),
    ])
    print(text)
    if not (args.no_write or args.quick):
        _common.write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
