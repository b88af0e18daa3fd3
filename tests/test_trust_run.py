"""End to end: every dimension on a tiny suite, expected scores of rule adapters, resume, the CLI."""

from __future__ import annotations

import json
import shutil

import pytest

from _trust import CountingAdapter, one_thread, tiny_model, tiny_suite
from xrisk.cli import main
from xrisk.recipes.runner import RunContext
from xrisk.trust.adapters import ADAPTERS, get_adapter, register_adapter
from xrisk.trust.dimensions import DIMENSIONS, TrustSettings, evaluate_dimension
from xrisk.trust.engine import AnswerCache, Session
from xrisk.trust.records import records_from_list
from xrisk.trust.rules import EchoAdapter, RandomAdapter, RefusingAdapter
from xrisk.trust.run import run_evaluation
from xrisk.trust.suite import load_suite
from xrisk.trust.vqa import load_vqa

FAST = TrustSettings(attacks=(), pgd_epsilons=(), noise_variances=(), ego_records=4)


def _base(tmp_path_factory) -> str:
    return str(tmp_path_factory.getbasetemp())


def _ctx(out, name="random", resume=False):
    return RunContext(out, recipe="trust", args={"adapter": name, "suite": "tiny"}, quiet=True, resume=resume,
                      plot=False)


def _evaluate(out, adapter, *, resume=False, name="random", **kw):
    """run_evaluation in a fresh RunContext that is closed (its folder lock released) whatever happens."""
    ctx = _ctx(out, name, resume)
    try:
        return run_evaluation(ctx, adapter=adapter, **kw)
    finally:
        ctx.close()


def test_rule_adapters_get_their_expected_scores(tmp_path_factory, tmp_path):
    suite = load_suite(tiny_suite(_base(tmp_path_factory)))
    closed = [r for r in suite.records("trustfulness") if r.closed]
    yes_share = sum(r.label == "yes" for r in closed if r.question_type == "yes-or-no") / sum(
        r.question_type == "yes-or-no" for r in closed)
    results = {}
    for adapter in (RefusingAdapter(), EchoAdapter(), RandomAdapter(seed=1)):
        session = Session(adapter, suite.image_root, tmp_path / adapter.name)
        results[adapter.name] = {d: evaluate_dimension(d, session, suite, FAST, work_dir=tmp_path) for d in DIMENSIONS}
    refuse, echo = results["refuse"], results["echo"]
    for regime in ("zero-shot", "protective", "leaking"):
        assert refuse["privacy"].metrics[f"refusal_{regime}"] == 1.0
        assert refuse["privacy"].metrics[f"leakage_{regime}"] == 0.0
        assert echo["privacy"].metrics[f"leakage_{regime}"] == 1.0  # every secret is in its context
    # the reference's yes/no heuristic reads a refusal as "yes": accuracy = share of "yes" answers
    assert refuse["trustfulness"].metrics["yes_no_accuracy"] == pytest.approx(yes_share)
    assert refuse["trustfulness"].metrics["over_confidence"] == 0.0  # never says it is sure
    for key, value in refuse["robustness"].metrics.items():
        if key.endswith("_abstention"):
            assert value == 1.0, key
    assert refuse["safety"].metrics["clean_accuracy"] == refuse["safety"].metrics["misinformation_accuracy"]
    assert "white-box attacks skipped" in " ".join(refuse["safety"].notes) or not FAST.attacks
    for res in results["random"].values():
        assert res.asked > 0 and res.records > 0


def test_random_adapter_scores_chance_on_many_questions(tmp_path):
    rows = []
    for i in range(600):
        if i % 2:
            rows.append({"question": f"Q{i}? Please select the correct answer from the following options: A. x{i}. "
                                     f"B. y{i}. C. z{i}. D. w{i}.", "answer": "ABCD"[i % 4], "image_path": None,
                         "question_type": "multi-choice", "question_id": i})
        else:
            rows.append({"question": f"Is Q{i} true?", "answer": "Yes" if i % 4 else "No", "image_path": None,
                         "question_type": "yes-or-no", "question_id": i})
    records = records_from_list(rows, source="synthetic.json")

    class Suite:
        image_root = tmp_path

        def records(self, role):
            return records if role == "trustfulness" else []

        def ego_patterns(self):
            return []

    res = evaluate_dimension("trustfulness", Session(RandomAdapter(seed=0), tmp_path, tmp_path / "a"), Suite(), FAST)
    assert abs(res.metrics["mc_accuracy"] - 0.25) < 0.06 and abs(res.metrics["yes_no_accuracy"] - 0.5) < 0.07
    assert abs(res.metrics["sure_rate"] - 0.5) < 0.07  # a random "sure" half the time
    assert abs(res.metrics["over_confidence"] - 0.5 * (1 - res.metrics["accuracy"])) < 0.06
    # the same question about different pictures: independent draws, not one answer for all
    import numpy as np

    adapter = RandomAdapter(seed=0)
    prompt = "Is it night time?\nAnswer with Yes or No directly."
    pictures = [np.full((8, 8, 3), i, dtype=np.uint8) for i in range(200)]
    yes = sum(adapter.generate(p, prompt) == "Yes" for p in pictures)
    assert 70 < yes < 130 and adapter.generate(pictures[3], prompt) == adapter.generate(pictures[3].copy(), prompt)


def test_full_run_with_the_trained_model(tmp_path_factory, tmp_path):
    base = _base(tmp_path_factory)
    suite_dir = tiny_suite(base)
    adapter = load_vqa(tiny_model(base))
    settings = TrustSettings(attacks=("pgd", "bim", "cw"), attack_records=2, pgd_epsilons=(4.0,),
                             noise_variances=(100.0,), ego_records=3, surrogate=load_vqa(tiny_model(base)))
    out = tmp_path / "run"
    with one_thread():
        final = _evaluate(out, adapter, name="vqa", suite=suite_dir, settings=settings, plot=True)
    for dim in DIMENSIONS:
        assert (out / "results" / f"{dim}.json").is_file() and (out / "answers" / f"{dim}.jsonl").is_file()
        answers = json.loads((out / "answers" / f"{dim}.json").read_text())
        assert answers and "vqa_answer" in answers[0] and "question_type" in answers[0]
    for key in ("trustfulness.accuracy", "trustfulness.over_confidence", "trustfulness.open_score",
                "safety.pgd_accuracy", "safety.bim_accuracy", "safety.cw_accuracy", "safety.black-box_accuracy",
                "safety.pgd-eps4_accuracy", "robustness.noise_100_accuracy", "robustness.spanish_abstention",
                "privacy.leakage_zero-shot", "fairness.ego_age_spread"):
        assert key in final and 0.0 <= final[key] <= 1.0, key
    assert final["safety.pgd_max_linf"] <= 16 / 255 + 1e-6 and final["safety.bim_max_linf"] <= 8 / 255 + 1e-6
    assert final["safety.pgd-eps4_max_linf"] <= 4 / 255 + 1e-6
    assert len(list((out / "transfer").glob("*.png"))) == 2
    for name in ("report.md", "report.html", "report.json", "metrics.json", "config.json", "checkpoint.pt"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html and "http" not in html.replace(
        "http-equiv", "").split("<body>", 1)[1]
    md = (out / "report.md").read_text()
    assert "## Safety" in md and "seconds per 1,000 records" in md


def test_resume_re_asks_nothing(tmp_path_factory, tmp_path):
    suite_dir = tiny_suite(_base(tmp_path_factory))
    full = CountingAdapter(RandomAdapter(seed=2))
    final_full = _evaluate(tmp_path / "full", full, suite=suite_dir, settings=FAST, plot=False)
    total = full.calls
    assert total > 100
    stop = total // 2
    part = CountingAdapter(RandomAdapter(seed=2), stop_at=stop)
    with pytest.raises(KeyboardInterrupt):
        _evaluate(tmp_path / "part", part, suite=suite_dir, settings=FAST, plot=False)
    again = CountingAdapter(RandomAdapter(seed=2))
    final_part = _evaluate(tmp_path / "part", again, resume=True, suite=suite_dir, settings=FAST, plot=False)
    assert again.calls == total - (stop - 1)  # exactly the questions not answered before the interruption
    assert final_part == final_full
    once_more = CountingAdapter(RandomAdapter(seed=2))
    _evaluate(tmp_path / "part", once_more, resume=True, suite=suite_dir, settings=FAST, plot=False)
    assert once_more.calls == 0


def test_a_truncated_cache_line_is_asked_again(tmp_path):
    (r,) = records_from_list([{"question": "Is it red?", "answer": "No", "image_path": None,
                               "question_type": "yes-or-no", "question_id": 1}])
    s = Session(CountingAdapter(RefusingAdapter()), tmp_path, tmp_path)
    s.ask("d", r, "p1")
    s.ask("d", r, "p2")
    s.close()
    path = tmp_path / "d.jsonl"
    path.write_text(path.read_text()[:-20])  # cut the last line
    cache = AnswerCache(path)
    assert len(cache.rows) == 1
    adapter = CountingAdapter(RefusingAdapter())
    s2 = Session(adapter, tmp_path, tmp_path)
    s2.ask("d", r, "p1")
    s2.ask("d", r, "p2")
    assert adapter.calls == 1


def test_registry():
    assert {"vqa", "hf", "refuse", "random", "echo"} <= set(ADAPTERS) | {"vqa", "hf"}
    assert get_adapter("random", seed=3).seed == 3
    with pytest.raises(KeyError, match="unknown adapter 'nope'"):
        get_adapter("nope")
    with pytest.raises(TypeError, match="does not take model"):
        get_adapter("refuse", model="x")
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("refuse", EchoAdapter, help="x")
    with pytest.raises(FileNotFoundError, match="xrisk trust train"):
        get_adapter("vqa", model="/nonexistent/vqa.pt")


# ----------------------------------------------------------------------------- command line
# Every flag's bad values and the cross-flag rules that need no suite: tests/test_cli.py (the flag walk).
def _one_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xrisk: error: ") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_cli_make_suite_train_run_report(tmp_path, capsys):
    suite = tmp_path / "suite"
    assert main(["trust", "make-suite", "--out", str(suite), "--train-scenes", "6", "--test-scenes", "2",
                 "--long-tail-scenes", "1", "--fairness-scenes", "2", "--languages", "Arabic", "--quiet"]) == 0
    assert not (suite / "run.lock").exists()
    before = (suite / "suite.json").read_text()
    assert main(["trust", "make-suite", "--out", str(suite), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, "--out", "already holds a suite")
    assert (suite / "suite.json").read_text() == before
    model = tmp_path / "m.pt"
    assert main(["trust", "train", "--suite", str(suite), "--out", str(model), "--epochs", "1", "--dim", "16",
                 "--quiet"]) == 0
    surrogate = tmp_path / "s.pt"
    assert main(["trust", "train", "--suite", str(suite), "--out", str(surrogate), "--epochs", "1", "--dim", "16",
                 "--seed", "1", "--quiet"]) == 0
    run = tmp_path / "run"
    argv = ["trust", "run", "--adapter", "vqa", "--model", str(model), "--suite", str(suite), "--out", str(run),
            "--dimensions", "trustfulness,privacy", "--attacks", "none", "--quiet", "--no-plot"]
    assert main(argv) == 0
    assert sorted(p.name for p in (run / "results").iterdir()) == ["privacy.json", "trustfulness.json"]
    assert not (run / "run.lock").exists()  # the RunContext was closed
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err  # never overwrites a run
    assert main([*argv, "--resume"]) == 0
    changed = [*argv, "--resume", "--seed", "4"]
    assert main(changed) == 2 and "CheckpointMismatchError" in capsys.readouterr().err
    (run / "report.html").unlink()
    assert main(["trust", "report", str(run), "--no-plot"]) == 0 and (run / "report.html").is_file()
    # the black-box transfer test from the command line: the surrogate's images, then the target's answers
    transfer = tmp_path / "transfer"
    assert main(["trust", "run", "--adapter", "vqa", "--model", str(model), "--surrogate", "vqa", "--surrogate-model",
                 str(surrogate), "--suite", str(suite), "--out", str(transfer), "--dimensions", "safety",
                 "--attacks", "none", "--attack-records", "2", "--max-records", "4", "--pgd-epsilons", "", "--quiet",
                 "--no-plot"]) == 0
    metrics = json.loads((transfer / "metrics.json").read_text())
    assert 0.0 <= metrics["safety.black-box_accuracy"] <= 1.0 and len(list((transfer / "transfer").glob("*.png"))) == 2


def test_cli_checks_the_data_before_the_run_folder(tmp_path_factory, tmp_path, capsys):
    suite = tiny_suite(_base(tmp_path_factory))
    bad = tmp_path / "bad-suite"
    shutil.copytree(suite, bad)
    qa = bad / "trustfulness" / "qa.json"
    rows = json.loads(qa.read_text())
    rows[1]["question_type"] = "multiple choice"
    qa.write_text(json.dumps(rows))
    out = tmp_path / "run"
    assert main(["trust", "run", "--adapter", "refuse", "--suite", str(bad), "--out", str(out), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, "--suite", "qa.json: record 1", "'question_type'")
    assert not out.exists()
    (bad / "suite.json").write_text("{not json")
    assert main(["trust", "train", "--suite", str(bad), "--out", str(tmp_path / "m.pt"), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, "--suite", "suite.json is not a suite manifest")
    foreign = tmp_path / "foreign.pt"
    foreign.write_text("not a model")
    for argv, flag in ((["--adapter", "vqa", "--model", str(foreign)], "--model"),
                       (["--adapter", "refuse", "--surrogate", "vqa", "--surrogate-model", str(foreign)],
                        "--surrogate-model"),
                       (["--adapter", "refuse", "--surrogate", "random"], "--surrogate")):
        assert main(["trust", "run", *argv, "--suite", str(suite), "--out", str(out), "--quiet"]) == 2
        _one_line(capsys.readouterr().err, flag)
        assert not out.exists()


def test_report_refuses_a_folder_in_use(tmp_path, capsys):
    from xrisk.recipes.lock import RunLock

    run = tmp_path / "run"
    with RunLock(run):  # a run writing into the folder
        assert main(["trust", "report", str(run), "--no-plot"]) == 2
    _one_line(capsys.readouterr().err, "in use by another run")


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["trust", "demo", "--out", str(out), "--train-scenes", "16", "--test-scenes", "3", "--long-tail-scenes",
            "2", "--fairness-scenes", "2", "--epochs", "2", "--surrogate-epochs", "1", "--attack-records", "2",
            "--ego-records", "2", "--pgd-epsilons", "4", "--noise-variances", "100", "--quiet"]
    with one_thread():
        assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| dimension | measure | vqa | random | refuse |" in table
    for name in ("vqa", "random", "refuse"):
        assert (out / f"run-{name}" / "report.html").is_file()
    assert (out / "comparison.md").is_file() and (out / "vqa.pt").is_file() and (out / "surrogate.pt").is_file()
    with one_thread():
        assert main(argv) == 0  # a second call reuses the suite, the models and the finished runs
