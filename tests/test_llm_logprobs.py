"""sequence_logprobs: exact against a slow per-token loop (flat, grouped with the prompt encoded once,
grouped concatenated), padding and prompt tokens never scored, length normalisation, equal gradients of
both grouped paths, one prompt forward per group."""

from __future__ import annotations

import pytest
import torch

from _llm import gpt2_float64, tiny
from xrisk.llm import sequence_logprobs, supports_shared_prompt
from xrisk.llm.encoding import left_pad, pad_completions

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
GROUPS = [[[20, 21], [22], [23, 2, 14]], [[16, 17, 18, 19], [3], [21, 2]], [[3], [4, 5, 6, 7, 8], [9]]]


def _slow(model, prompt, answer) -> float:
    """sum_t log p(answer_t | prompt, answer_<t), one unpadded forward per token."""
    total = 0.0
    for t in range(len(answer)):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer[:t]])).logits[0, -1]
        total += float(logits.double().log_softmax(-1)[answer[t]])
    return total


def _grouped(prompts=PROMPTS, groups=GROUPS, pad=0):
    pi, pm = left_pad(prompts, pad)
    ci, cm = pad_completions(groups, pad)
    return {"prompt_input_ids": pi, "prompt_attention_mask": pm, "completion_input_ids": ci,
            "completion_attention_mask": cm}


def _flat(prompts=PROMPTS, groups=GROUPS, pad=0):
    seqs = [p + c for p, grp in zip(prompts, groups) for c in grp]
    labels = [[-100] * len(p) + c for p, grp in zip(prompts, groups) for c in grp]
    width = max(map(len, seqs))
    return {"input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in seqs]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
            "labels": torch.tensor([s + [-100] * (width - len(s)) for s in labels])}


MODELS = {"llama": lambda: tiny()[0], "gpt2": gpt2_float64}


@pytest.mark.parametrize("name", list(MODELS))
def test_exact_against_a_slow_per_token_loop(name):
    model = MODELS[name]()
    want = torch.tensor([[_slow(model, p, c) for c in grp] for p, grp in zip(PROMPTS, GROUPS)], dtype=torch.float64)
    counts = [[len(c) for c in grp] for grp in GROUPS]
    shared, n = sequence_logprobs(model, _grouped())
    concat, n2 = sequence_logprobs(model, _grouped(), share_prompt=False)
    flat, n3 = sequence_logprobs(model, _flat())
    tol = {"rtol": 0, "atol": 2e-5 if name == "llama" else 1e-12}
    torch.testing.assert_close(shared.double(), want, **tol)
    torch.testing.assert_close(concat.double(), want, **tol)
    torch.testing.assert_close(flat.double(), want.flatten(), **tol)
    assert n.tolist() == n2.tolist() == counts and n3.tolist() == sum(counts, [])
    normalized, _ = sequence_logprobs(model, _grouped(), normalize=True)
    torch.testing.assert_close(normalized, shared / n, rtol=0, atol=0)
    assert supports_shared_prompt(model)


def test_padding_never_contributes():
    """Other padding ids (left of prompts, right of answers, and after the flat sequences) change nothing."""
    model, _ = tiny()
    for layout in (_grouped, _flat):
        a, na = sequence_logprobs(model, layout(pad=0))
        b, nb = sequence_logprobs(model, layout(pad=25))
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert torch.equal(na, nb)
    a, _ = sequence_logprobs(model, _grouped(), share_prompt=False)
    b, _ = sequence_logprobs(model, _grouped(pad=40), share_prompt=False)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_prompt_tokens_are_never_scored():
    """Scoring a prompt token (label it) changes the result by exactly its log-probability; unlabelled, it
    only conditions. The answer alone matters."""
    model, _ = tiny()
    flat = _flat()
    base, n = sequence_logprobs(model, flat)
    labels = flat["labels"].clone()
    labels[0, 2] = flat["input_ids"][0, 2]  # score the last prompt token of the first sequence
    more, n_more = sequence_logprobs(model, {**flat, "labels": labels})
    assert int(n_more[0]) == int(n[0]) + 1
    extra = _slow(model, PROMPTS[0][:2], [PROMPTS[0][2]])
    assert float((more[0] - base[0]).detach()) == pytest.approx(extra, abs=2e-5)
    torch.testing.assert_close(more[1:], base[1:], rtol=0, atol=0)


def test_shared_prompt_and_concatenated_paths_have_equal_gradients():
    model = gpt2_float64()
    params = list(model.parameters())
    a, _ = sequence_logprobs(model, _grouped())
    ga = torch.autograd.grad((a * torch.arange(1.0, 10.0, dtype=a.dtype).reshape(3, 3)).sum(), params)
    b, _ = sequence_logprobs(model, _grouped(), share_prompt=False)
    gb = torch.autograd.grad((b * torch.arange(1.0, 10.0, dtype=b.dtype).reshape(3, 3)).sum(), params)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert sum(float(x.abs().sum()) for x in ga) > 0


def test_one_prompt_forward_per_group_and_one_for_all_answers():
    model, _ = tiny()
    rows = []

    def hook(mod, args, kwargs):
        rows.append(tuple(kwargs["input_ids"].shape))

    h = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        sequence_logprobs(model, _grouped())
        shared = list(rows)
        rows.clear()
        sequence_logprobs(model, _grouped(), share_prompt=False)
    finally:
        h.remove()
    assert shared == [(3, 5), (9, 5)]  # 3 prompts once, then the 9 answers (3 per prompt) on their cache
    assert rows == [(9, 10)]  # one concatenated forward of the 9 full sequences


def test_bad_batches_raise():
    model, _ = tiny()
    with pytest.raises(ValueError, match="keys"):
        sequence_logprobs(model, {"input_ids": torch.zeros(1, 3, dtype=torch.long)})
    bad = _grouped()
    bad["completion_attention_mask"] = bad["completion_attention_mask"][:, :2]
    with pytest.raises(ValueError, match="grouped"):
        sequence_logprobs(model, bad)


def test_a_model_without_a_cache_argument_uses_the_concatenated_path():
    model, _ = tiny()

    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    assert not supports_shared_prompt(Plain(model))
    a, _ = sequence_logprobs(Plain(model), _grouped())
    b, _ = sequence_logprobs(model, _grouped())
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
