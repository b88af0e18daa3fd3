"""Batched generation (left padding equals one prompt at a time), seeds, system prompts, and
generate_negatives' JSONL: resumable after an interruption and after SIGKILL, reference log-probs stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from _llm import tiny
from xrisk.llm import (UNHELPFUL_SYSTEM_PROMPT, SamplingSettings, generate_completions, generate_negatives,
                       reference_logprobs)
from xrisk.llm.encoding import as_chat, encode_prompt

PROMPTS = ["12+7=", "3+45=", "1+1=", "99+99=", "40+2=", "7+0="]
GREEDY = SamplingSettings(do_sample=False, max_new_tokens=6)


def test_batched_greedy_generation_equals_one_prompt_at_a_time():
    model, tok = tiny(seed=1)
    batched = generate_completions(model, tok, PROMPTS, batch_size=4, settings=GREEDY)
    single = generate_completions(model, tok, PROMPTS, batch_size=1, settings=GREEDY)
    assert [r[0].text for r in batched] == [r[0].text for r in single]
    assert all(len(r) == 1 and 0 <= r[0].num_tokens <= 6 for r in batched)
    assert all(r[0].finished or r[0].num_tokens == 6 for r in batched)


def test_sampling_is_seeded_per_batch_and_leaves_the_global_rng_alone():
    model, tok = tiny(seed=1)
    settings = SamplingSettings(max_new_tokens=5, temperature=1.0)
    state = torch.get_rng_state()
    a = generate_completions(model, tok, PROMPTS, num_return_sequences=3, batch_size=2, settings=settings, seed=4)
    assert torch.equal(state, torch.get_rng_state())
    b = generate_completions(model, tok, PROMPTS, num_return_sequences=3, batch_size=2, settings=settings, seed=4)
    c = generate_completions(model, tok, PROMPTS, num_return_sequences=3, batch_size=2, settings=settings, seed=5)
    texts = lambda out: [[x.text for x in row] for row in out]  # noqa: E731
    assert texts(a) == texts(b) != texts(c)
    assert all(len(row) == 3 for row in a)
    assert len({x.text for row in a for x in row}) > 3  # samples differ


def test_system_prompt_is_used_for_sampling_only(tmp_path):
    model, tok = tiny(seed=1)
    seen = []
    original = model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs["input_ids"].clone())
        return original(*args, **kwargs)

    model.generate = spy
    records = [{"prompt": p, "answer": "x"} for p in PROMPTS[:3]]
    path = generate_negatives(model, tok, records, tmp_path / "neg.jsonl", num_negatives=2, batch_size=3,
                              settings=SamplingSettings(max_new_tokens=4), system_prompt=UNHELPFUL_SYSTEM_PROMPT,
                              chat_template=True, max_prompt_length=64, max_length=80)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    # sampling saw the system message; the stored prompt is the plain user message
    sampled = encode_prompt(tok, as_chat(PROMPTS[0]), system_prompt=UNHELPFUL_SYSTEM_PROMPT)
    plain = encode_prompt(tok, as_chat(PROMPTS[0]))
    row = seen[0][0][seen[0][0] != tok.pad_token_id].tolist()
    assert row == sampled and row != plain
    assert lines[0]["prompt"] == [{"role": "user", "content": PROMPTS[0]}]
    # the stored reference log-probs are those of the plain prompt
    want = reference_logprobs(model, tok, [ln["prompt"] for ln in lines], [ln["negatives"] for ln in lines],
                              max_prompt_length=64, max_length=80)
    for ln, w in zip(lines, want):
        assert ln["ref_logp"] == pytest.approx(w, abs=1e-5)
        assert len(ln["negatives"]) == 2 and ln["answer"] == "x"
    with pytest.raises(ValueError, match="chat prompts"):
        generate_negatives(model, tok, records, tmp_path / "other.jsonl", num_negatives=2,
                           system_prompt=UNHELPFUL_SYSTEM_PROMPT)


def _records(n: int = 10) -> list[dict]:
    return [{"prompt": f"{i}+{2 * i}=", "answer": str(3 * i), "id": i} for i in range(n)]


SETTINGS = SamplingSettings(max_new_tokens=4, temperature=1.0)


def test_resume_after_an_interruption_gives_the_uninterrupted_file(tmp_path):
    model, tok = tiny(seed=2)
    full = generate_negatives(model, tok, _records(), tmp_path / "full.jsonl", num_negatives=3, batch_size=3,
                              settings=SETTINGS, seed=7)
    assert len(full.read_text().splitlines()) == 10

    class Stop(Exception):
        pass

    def stop_after_two(done: int, total: int) -> None:
        if done >= 6:
            raise Stop

    part = tmp_path / "part.jsonl"
    with pytest.raises(Stop):
        generate_negatives(model, tok, _records(), part, num_negatives=3, batch_size=3, settings=SETTINGS, seed=7,
                           on_batch=stop_after_two)
    lines = part.read_text().splitlines(keepends=True)
    assert len(lines) == 6
    # a kill in the middle of the next write: one complete line of batch 3 and half of another
    part.write_text("".join(lines) + full.read_text().splitlines(keepends=True)[6] + '{"prompt": "6+1')
    generate_negatives(model, tok, _records(), part, num_negatives=3, batch_size=3, settings=SETTINGS, seed=7)
    assert part.read_bytes() == full.read_bytes()
    with pytest.raises(ValueError, match="other settings"):
        generate_negatives(model, tok, _records(), part, num_negatives=2, batch_size=3, settings=SETTINGS, seed=7)
    with pytest.raises(ValueError, match="record"):
        generate_negatives(model, tok, _records()[::-1], part, num_negatives=3, batch_size=3, settings=SETTINGS,
                           seed=7)
    (tmp_path / "foreign.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(FileExistsError):
        generate_negatives(model, tok, _records(), tmp_path / "foreign.jsonl", num_negatives=3)


WORKER = textwrap.dedent("""
    import sys, time, torch
    from xrisk.llm import SamplingSettings, char_tokenizer, generate_negatives, tiny_llama
    torch.set_num_threads(1)
    tok = char_tokenizer(); model = tiny_llama(len(tok), seed=2)
    records = [{"prompt": f"{i}+{2 * i}=", "answer": str(3 * i), "id": i} for i in range(10)]
    def on_batch(done, total):
        print(done, flush=True)
        time.sleep(60)  # killed here, after its first batch is on disk
    generate_negatives(model, tok, records, sys.argv[1], num_negatives=3, batch_size=3, seed=7,
                       settings=SamplingSettings(max_new_tokens=4, temperature=1.0), on_batch=on_batch)
""")


def test_resume_after_sigkill(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "neg.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "3"  # the first batch is on disk
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert len(out.read_text().splitlines()) == 3
    model, tok = tiny(seed=2)
    generate_negatives(model, tok, _records(), out, num_negatives=3, batch_size=3, settings=SETTINGS, seed=7)
    ref = generate_negatives(model, tok, _records(), tmp_path / "ref.jsonl", num_negatives=3, batch_size=3,
                             settings=SETTINGS, seed=7)
    got, want = ([json.loads(x) for x in p.read_text().splitlines()] for p in (out, ref))
    assert len(got) == len(want) == 10
    for g, w in zip(got, want):  # the killed process ran on one thread: log-probs equal up to rounding
        assert g["ref_logp"] == pytest.approx(w.pop("ref_logp"), abs=1e-5)
        g.pop("ref_logp")
        assert g == w
