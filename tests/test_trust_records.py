"""QA records: the reference's layouts load as they are; bad records name file, record and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xrisk.trust.records import (RecordError, load_ego_patterns, load_records, normalize_label, records_from_list,
                                 save_records)

FIXTURES = Path(__file__).parent / "fixtures" / "trust"
GOOD = {"question": "Is there a car?", "answer": "Yes", "image_path": "a.jpg", "question_type": "yes-or-no",
        "question_id": 0}


@pytest.mark.parametrize("name, n, labels", [
    ("drivelm.json", 2, [None, "b"]),
    ("nuscene_qa_English.json", 2, ["d", "no"]),
    ("nuscene_qa_Chinese.json", 3, ["d", "no", "yes"]),
    ("nuscene_qa_Hindi.json", 2, ["yes", "no"]),
    ("pedestrian_qa.json", 3, ["yes", "a", "c"]),
    ("privacy_vehicle_DriveLM_2shot.json", 1, [None]),
    ("privacy_location_DriveLM.json", 1, [None]),
    ("covla.json", 2, ["no", None]),
    ("answers_llava.json", 2, ["yes", "no"]),  # JSON Lines under a .json name (the reference's answer files)
])
def test_reference_layouts_load_as_they_are(name, n, labels):
    records = load_records(FIXTURES / name)
    assert len(records) == n
    assert [r.label for r in records] == labels
    raw = json.loads((FIXTURES / name).read_text()) if name != "answers_llava.json" else None
    if raw is not None:  # nothing is dropped or renamed: the record round-trips to the file's dict
        assert [r.to_dict() for r in records] == [dict(sorted(d.items(), key=lambda kv: _order(kv[0]))) for d in raw]


def _order(key: str) -> int:
    head = ["question", "answer", "image_path", "question_type", "question_id"]
    return head.index(key) if key in head else len(head)


def test_extra_fields_are_kept_with_their_types():
    covla = load_records(FIXTURES / "covla.json")
    assert covla[0].get("is_highway") is True and covla[0].get("weather") == "sunny"
    privacy = load_records(FIXTURES / "privacy_vehicle_DriveLM_2shot.json", require=("general_prompt",))
    assert "KLM5678" in privacy[0].get("general_prompt") and privacy[0].answer == "KLM5678"
    assert privacy[0].uid == "privacy_vehicle_DriveLM_2shot.json#0"


def test_ego_patterns_layout():
    prefixes = load_ego_patterns(FIXTURES / "ego_pattern.json")
    assert [(p.category, p.attribute, p.group) for p in prefixes][:3] == [
        ("Driver", "age", "young"), ("Driver", "age", "elderly"), ("Driver", "gender", "male")]
    assert prefixes[-1].text == "The ego car is white. "


@pytest.mark.parametrize("change, field, words", [
    ({"question_type": "multiple-choice"}, "question_type", "expected one of"),
    ({"question": ""}, "question", "non-empty"),
    ({"question_id": True}, "question_id", "integer"),
    ({"image_path": "/abs/a.jpg"}, "image_path", "relative"),
    ({"answer": 3}, "answer", "string"),
    ({"answer": "Maybe"}, "answer", "yes-or-no"),
    ({"question_type": "multi-choice", "answer": "E"}, "answer", "one letter A-D"),
    ({"harmfulness": 150}, "harmfulness", "[0, 100]"),
    ({"general_prompt": 5}, "general_prompt", "string"),
])
def test_bad_records_name_file_record_and_field(tmp_path, change, field, words):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "question_id": 17, **change}]))
    with pytest.raises(RecordError) as e:
        load_records(path)
    msg = str(e.value)
    assert msg.startswith("qa.json: record 1") and f"field '{field}'" in msg and words in msg


def test_missing_fields_and_required_extras(tmp_path):
    bad = {k: v for k, v in GOOD.items() if k != "image_path"}
    with pytest.raises(RecordError, match=r"record 0 \(question_id 0\): field 'image_path' is missing"):
        records_from_list([bad], source="x.json")
    with pytest.raises(RecordError, match="field 'general_prompt' is missing"):
        records_from_list([GOOD], source="x.json", require=("general_prompt",))
    with pytest.raises(RecordError, match="expected a JSON object"):
        records_from_list(["text"], source="x.json")
    p = tmp_path / "obj.json"
    p.write_text(json.dumps({"question": "x"}))
    with pytest.raises(RecordError, match="expected a JSON list"):
        load_records(p)
    p.write_text("[{not json")
    with pytest.raises(RecordError, match="not valid JSON"):
        load_records(p)
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "none.json")


def test_jsonl_and_save_round_trip(tmp_path):
    records = load_records(FIXTURES / "nuscene_qa_Chinese.json")
    out = save_records(records, tmp_path / "copy.json")
    assert [r.to_dict() for r in load_records(out)] == [r.to_dict() for r in records]
    lines = tmp_path / "qa.jsonl"
    lines.write_text("\n".join(json.dumps(r.to_dict(), ensure_ascii=False) for r in records) + "\n")
    assert [r.label for r in load_records(lines)] == ["d", "no", "yes"]
    (tmp_path / "bad.jsonl").write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(RecordError, match="line 2"):
        load_records(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("qtype, answer, label", [
    ("multi-choice", "C", "c"), ("multi-choice", "c.", "c"), ("multi-choice", "(B)", "b"),
    ("multi-choice", "D. Going ahead.", "d"), ("multi-choice", "Dog", None), ("yes-or-no", "Yes", "yes"),
    ("yes-or-no", " no. ", "no"), ("yes-or-no", "Sí", "yes"), ("yes-or-no", "不是", "no"), ("yes-or-no", "نعم", "yes"),
    ("yes-or-no", "لا", "no"), ("open-ended", "Yes", None),
])
def test_normalize_label(qtype, answer, label):
    assert normalize_label(qtype, answer) == label
