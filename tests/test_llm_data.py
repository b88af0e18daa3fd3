"""The DFT JSONL format: errors name the file and line, left truncation is counted, the collator's
layout, per-epoch negative columns."""

from __future__ import annotations

import json

import pytest
import torch

from _llm import records, tiny
from xrisk.llm import DFTCollator, DFTDataset, negative_columns, read_jsonl, select_negatives


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD = {"prompt": "1+2=", "answer": "3", "negatives": ["4", "5"], "ref_logp": [-1.0, -2.0]}


@pytest.mark.parametrize("bad,message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ({"answer": "3"}, "field 'prompt' is missing"),
    ({"prompt": "", "answer": "3"}, "prompt is empty"),
    ({"prompt": [{"role": "user"}], "answer": "3"}, "chat message 0"),
    ({"prompt": "1+2="}, "field 'answer' is missing"),
    ({"prompt": "1+2=", "answer": "  "}, "the answer is empty"),
    ({"prompt": "1+2=", "answer": 3}, "'answer' must be a string"),
    ({**GOOD, "negatives": ["4"], "ref_logp": [-1.0]}, "1 negatives, but earlier lines have 2"),
    ({**GOOD, "negatives": "4"}, "'negatives' must be a non-empty list"),
    ({**GOOD, "ref_logp": [-1.0]}, "one number per negative"),
    ({**GOOD, "ref_logp": [-1.0, float("nan")]}, "finite numbers"),
])
def test_bad_lines_raise_naming_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "data.jsonl", [GOOD, "", bad])
    with pytest.raises(ValueError, match=f"data.jsonl:3: .*{message}" if message[0] != "'" else "data.jsonl:3: "):
        read_jsonl(path)


def test_required_fields_and_good_files(tmp_path):
    sft_only = _write(tmp_path / "sft.jsonl", [{"prompt": "1+2=", "answer": "3"}])
    assert read_jsonl(sft_only)[0]["_line"] == 1
    with pytest.raises(ValueError, match="sft.jsonl:1: field 'negatives' is missing"):
        read_jsonl(sft_only, need_negatives=True)
    no_ref = _write(tmp_path / "noref.jsonl", [{k: v for k, v in GOOD.items() if k != "ref_logp"}])
    with pytest.raises(ValueError, match="noref.jsonl:1: field 'ref_logp' is missing"):
        read_jsonl(no_ref, need_ref_logp=True)
    mixed = _write(tmp_path / "mixed.jsonl", [GOOD, {"prompt": "2+2=", "answer": "4"}])
    with pytest.raises(ValueError, match="mixed.jsonl:2: field 'negatives' is missing"):
        read_jsonl(mixed)
    with pytest.raises(ValueError, match="no records"):
        read_jsonl(_write(tmp_path / "empty.jsonl", [""]))
    chat = _write(tmp_path / "chat.jsonl", [{**GOOD, "prompt": [{"role": "user", "content": "1+2="}]}])
    assert read_jsonl(chat, need_negatives=True, need_ref_logp=True)[0]["negatives"] == ["4", "5"]


def test_left_truncation_keeps_the_end_of_the_prompt_and_is_counted():
    _, tok = tiny()
    recs = [{"prompt": "1234567890+1=", "answer": "1234567891", "_line": 7},
            {"prompt": "1+1=", "answer": "2"}]
    ds = DFTDataset(recs, tok, max_prompt_length=6, max_length=10)
    assert tok.decode(ds[0]["prompt_ids"]) == "7890+1="[-6:]
    assert ds.truncation.prompts == 1 and ds.truncation.lines == [7]
    assert ds.truncation.answers == 1  # 11 answer tokens (with EOS) for 4 places
    assert len(ds[0]["completion_ids"][0]) == 4
    assert ds[1]["prompt_ids"] == tok("1+1=")["input_ids"]
    assert ds[1]["completion_ids"][0] == tok("2", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ds.truncation.as_dict() == {"truncated_prompts": 1, "truncated_answers": 1}


def test_collator_layout_and_column_selection():
    _, tok = tiny()
    ds = DFTDataset(records(3, k=4), tok, max_prompt_length=16, max_length=24)
    batch = DFTCollator(tok.pad_token_id)([ds[i] for i in range(3)])
    assert batch["index"].tolist() == [0, 1, 2]
    b, g, lc = batch["completion_input_ids"].shape
    assert (b, g) == (3, 5) and batch["ref_logp"].shape == (3, 4)
    # prompts end in the last column (left padding); answers start in the first (right padding)
    assert bool(batch["prompt_attention_mask"][:, -1].all())
    assert bool(batch["completion_attention_mask"][:, :, 0].all())
    sel = select_negatives(batch, [2, 3])
    assert sel["completion_input_ids"].shape[:2] == (3, 3)
    assert torch.equal(sel["ref_logp"], batch["ref_logp"][:, [2, 3]])
    width = sel["completion_input_ids"].shape[2]
    assert torch.equal(sel["completion_input_ids"][:, 1], batch["completion_input_ids"][:, 3, :width])
    sft = select_negatives(batch, None)
    assert sft["completion_input_ids"].shape[1] == 1 and sft["ref_logp"].shape == (3, 0)
    assert int(sft["completion_attention_mask"].sum(-1).max()) == sft["completion_input_ids"].shape[2]
    with pytest.raises(ValueError, match="out of range"):
        select_negatives(batch, [4])
    fixed = DFTCollator(tok.pad_token_id, columns=[1])([ds[0]])
    assert fixed["completion_input_ids"].shape[1] == 2
    assert fixed["ref_logp"].tolist() == [[pytest.approx(ds[0]["ref_logp"][1])]]


def test_negative_columns_are_fresh_every_epoch():
    assert [negative_columns(e, 2, 4) for e in range(3)] == [[0, 1], [2, 3], [0, 1]]
    assert [negative_columns(e, 2, 5) for e in range(3)] == [[0, 1], [2, 3], [0, 1]]
    assert [negative_columns(e, 1, 3) for e in range(4)] == [[0], [1], [2], [0]]
    assert [negative_columns(e, 2, 4, fresh=False) for e in range(2)] == [[0, 1], [0, 1]]
    with pytest.raises(ValueError):
        negative_columns(0, 3, 2)
