"""The generated suite: ground truth matches what is drawn, files in the reference format, determinism."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from _trust import TINY_SUITE, tiny_suite
from xrisk.trust.records import load_records
from xrisk.trust.scenes import object_masks, render_scene, sample_scene
from xrisk.trust.scoring import parse_options
from xrisk.trust.suite import ROLES, SuiteConfig, load_suite, make_suite, read_scenes
from xrisk.trust.templates import LANGUAGES, QUESTION_TEXT, TEMPLATES, VALUE_TEXT, YES_NO


def _suite(tmp_path_factory):
    return tiny_suite(str(tmp_path_factory.getbasetemp()))


def _option_value(record) -> str:
    """The template value the record's answer option names (English option text back to its key)."""
    text = parse_options(record.question)[record.label]
    return next(k for k, v in VALUE_TEXT.items() if v[0] == text)


def test_counts_in_the_records_are_the_drawn_objects(tmp_path_factory):
    root = _suite(tmp_path_factory)
    scenes = read_scenes(root)
    checked = 0
    for r in load_suite(root).records("trustfulness") + load_suite(root).records("train"):
        if r.get("template") not in ("count_vehicles", "count_pedestrians") or checked >= 12:
            continue
        scene = scenes[r.image_path]
        masks = object_masks(scene)
        kind = "vehicle" if r.get("template") == "count_vehicles" else "pedestrian"
        drawn = [m for name, m in masks.items() if name.startswith(kind)]
        assert all(m.sum() >= 30 for m in drawn), "every object of the ground truth is visible in the picture"
        assert _option_value(r) == str(len(drawn)) == str(scene.count(kind + "s"))
        checked += 1
    assert checked >= 8


def test_every_object_is_visible_and_nothing_else_is_counted():
    for seed in range(40):
        scene = sample_scene(seed, long_tail=seed % 3 == 0)
        masks = object_masks(scene)
        assert len([n for n in masks if n.startswith("vehicle")]) == len(scene.vehicles)
        assert len([n for n in masks if n.startswith("pedestrian")]) == len(scene.pedestrians)
        for name, mask in masks.items():
            assert mask.sum() >= 30, f"scene {seed}: {name} is (almost) invisible"


def test_near_plates_are_drawn_and_readable_size():
    for seed in range(200):
        scene = sample_scene(seed)
        ahead = scene.closest_ahead()
        if ahead is not None and ahead.scale > 0.8 and scene.lanes == 2:
            break
    else:  # pragma: no cover
        pytest.fail("no scene with a near vehicle ahead")
    other = replace(scene, vehicles=tuple(replace(v, plate="XXX0000") if v is ahead else v for v in scene.vehicles))
    diff = np.abs(np.asarray(render_scene(scene)).astype(int) - np.asarray(render_scene(other)).astype(int)).sum(2)
    ys, xs = np.nonzero(diff)
    assert len(ys) > 40  # the plate string is drawn
    assert xs.max() - xs.min() >= 30  # about 6 pixels per character: readable


def test_ground_truth_of_every_template(tmp_path_factory):
    root = _suite(tmp_path_factory)
    scenes = read_scenes(root)
    suite = load_suite(root)
    for r in suite.records("trustfulness") + suite.records("robustness_visual") + suite.records("fairness_groups"):
        if not r.closed:
            continue
        t = TEMPLATES[r.get("template")]
        truth = t.truth(scenes[r.image_path])
        if r.question_type == "multi-choice":
            assert _option_value(r) == truth
        else:
            assert r.label == truth
        assert r.get("weather") == scenes[r.image_path].weather


def test_translations_keep_the_answers(tmp_path_factory):
    suite = load_suite(_suite(tmp_path_factory))
    by_lang: dict[str, list] = {}
    for r in suite.records("robustness_language"):
        by_lang.setdefault(r.get("language"), []).append(r)
    assert set(by_lang) == {"English", *TINY_SUITE.languages}
    english = by_lang["English"]
    for lang, rs in by_lang.items():
        li = LANGUAGES.index(lang)
        assert len(rs) == len(english)
        for en, tr in zip(english, rs):
            assert tr.label == en.label and tr.image_path == en.image_path
            assert tr.question.startswith(QUESTION_TEXT[en.get("template")][li])
            if tr.question_type == "yes-or-no":
                assert tr.answer == YES_NO[lang][0 if en.label == "yes" else 1]
            else:
                assert [VALUE_TEXT[_option_value(en)][li]] == [parse_options(tr.question)[tr.label]]


def test_privacy_and_safety_fields(tmp_path_factory):
    suite = load_suite(_suite(tmp_path_factory))
    privacy = suite.records("privacy")
    assert {r.get("template_type") for r in privacy} >= {"vehicle", "location"}
    for r in privacy:
        assert r.answer and r.answer in r.get("general_prompt")
        assert r.answer not in r.get("positive_example") and r.question.startswith("##Question: ")
    for r in suite.records("safety"):
        assert r.closed and r.get("misinformation") and r.get("misinstruction")
        assert 0 <= r.get("harmfulness") <= 100
    prefixes = suite.ego_patterns()
    assert len(prefixes) == 24 and {p.attribute for p in prefixes} == {
        "race", "gender", "age", "vehicle_type", "vehicle_color", "vehicle_brand"}


def test_long_tail_and_fairness_files(tmp_path_factory):
    suite = load_suite(_suite(tmp_path_factory))
    visual = suite.records("robustness_visual")
    assert visual and all(r.get("hazard") for r in visual)
    groups = suite.records("fairness_groups")
    assert any(r.get("pedestrian_group") for r in groups) and any(r.get("vehicle_color") for r in groups)


def test_manifest_and_determinism(tmp_path):
    cfg = SuiteConfig(train_scenes=2, test_scenes=2, long_tail_scenes=1, fairness_scenes=2, seed=3,
                      languages=("Hindi",))
    a, b = make_suite(tmp_path / "a", cfg), make_suite(tmp_path / "b", cfg)
    manifest = json.loads(a.read_text())
    assert manifest["format"] == "xrisk-trust-suite/1" and set(manifest["files"]) <= {*ROLES, "ego_patterns"}
    for role, files in manifest["files"].items():
        for f in files:
            assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
            if role != "ego_patterns":
                assert load_records(tmp_path / "a" / f)
    first = sorted((tmp_path / "a" / "images").rglob("*.jpg"))[0]
    assert first.read_bytes() == (tmp_path / "b" / first.relative_to(tmp_path / "a")).read_bytes()
    with pytest.raises(FileExistsError):
        make_suite(tmp_path / "a", cfg)
    with pytest.raises(ValueError, match="language"):
        SuiteConfig(languages=("Klingon",))
    with pytest.raises(ValueError, match="train_scenes"):
        SuiteConfig(train_scenes=-1)
    with pytest.raises(FileNotFoundError, match="make-suite"):
        load_suite(tmp_path / "nothing")
