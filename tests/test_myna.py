"""Myna end to end on generated audio: training lowers the loss, probes, key score, key corpus, recipes, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xrisk.cli import main
from xrisk.data.audio import AudioSet, CropPairs
from xrisk.losses import GlobalContrastiveLoss
from xrisk.metrics.probe import ChunkFeatures, ProbeSetting, chunk_features, clip_logits, fit_probe
from xrisk.models.audio import MelSpectrogram
from xrisk.recipes import myna
from xrisk.recipes.myna import MynaConfig, ProbeTask, build_model, train_myna

sf = pytest.importorskip("soundfile", reason="the audio extra (soundfile) is not installed")

SR = 16_000


def tone_track(pitch_class: int, seconds: float, rng: np.random.Generator) -> torch.Tensor:
    """Half-second notes of one pitch class in random octaves (4 harmonics) plus a little noise."""
    n, seg = int(seconds * SR), SR // 2
    out = np.zeros(n)
    for s in range(0, n, seg):
        f = 440.0 * 2 ** ((12 * int(rng.integers(3, 6)) + pitch_class - 57) / 12)
        t = np.arange(min(seg, n - s)) / SR
        out[s : s + t.size] = sum(np.sin(2 * np.pi * k * f * t) / k for k in range(1, 5))
    return torch.tensor(0.2 * out + 0.01 * rng.standard_normal(n), dtype=torch.float32)


@pytest.fixture(scope="module")
def tone_tracks() -> AudioSet:
    rng, mel = np.random.default_rng(0), MelSpectrogram(log=True)
    waves = [tone_track(i % 12, 6.0, rng) for i in range(24)]
    return AudioSet([Path(f"t{i}") for i in range(24)], [mel(w) for w in waves], waves=waves)


def _exact_objective(model, pairs: CropPairs, kind: str, seed: int) -> float:
    """The GCL objective of all items at once (gamma = 1: u = g) on fixed crops and masks."""
    g = torch.Generator().manual_seed(seed)
    a, b, idx = pairs.batch(torch.arange(len(pairs)), g)
    loss = GlobalContrastiveLoss(len(pairs), mode="unimodal", tau=0.1, gamma=1.0)
    with torch.no_grad():
        loss(model(a, kind, mask_ratio=0.9, generator=g), model(b, kind, mask_ratio=0.9, generator=g), idx)
    return float(loss.objective())


def test_tiny_hybrid_model_lowers_the_loss_and_a_pitch_class_probe_beats_chance(tone_tracks):
    config = MynaConfig(data=".", patch="hybrid", preset="tiny", batch_size=12, epochs=20, lr=1e-3, segment_seconds=None,
                        probe="none", log_mel=True)
    pairs = CropPairs(tone_tracks.mels, 96)
    torch.manual_seed(config.seed)
    before = build_model(config)
    result = train_myna(config, tracks=tone_tracks, probe_tasks=[])
    assert result.metrics["steps"] == 2.0 and result.metrics["epochs"] == 20.0
    for kind in ("square", "vertical"):
        old = np.mean([_exact_objective(before, pairs, kind, s) for s in range(3)])
        new = np.mean([_exact_objective(result.model, pairs, kind, s) for s in range(3)])
        assert new < old - 0.05, (kind, old, new)
    rng, mel = np.random.default_rng(1), MelSpectrogram(log=True)
    parts = []
    for n in (48, 24, 24):  # fresh clips, label = pitch class (12 classes, chance 1/12)
        labels = torch.arange(n) % 12
        mels = [mel(tone_track(int(c), 3.2, rng)) for c in labels]
        parts.append(chunk_features(result.model.eval().features, mels, labels, frames=96))
    probe = fit_probe(*parts, num_classes=12, grid=[ProbeSetting("linear", lr=1e-2)], epochs=40)
    assert probe.test_score > 0.5


def test_pitch_shift_views_train(tone_tracks):
    config = MynaConfig(data=".", patch="square", preset="tiny", batch_size=8, epochs=1, mask=0.0, pitch_shift=3,
                        segment_seconds=None, probe="none", log_mel=True)
    result = train_myna(config, tracks=tone_tracks, probe_tasks=[])
    assert result.metrics["steps"] == 3.0 and np.isfinite(result.metrics["train_surrogate"])
    g = torch.Generator().manual_seed(0)
    pairs = CropPairs(tone_tracks.mels, 96)
    a, b = myna._views(pairs, torch.arange(4), g, config, MelSpectrogram())
    g = torch.Generator().manual_seed(0)
    a0, b0, _ = pairs.batch(torch.arange(4), g)
    assert a.shape == a0.shape and not torch.equal(a, a0)  # shifted (a draw of 0 for all 4 views is unlikely)


def test_key_score_matches_mir_eval_on_fixed_pairs():
    mir_key = pytest.importorskip("mir_eval.key", reason="the audio extra (mir_eval) is not installed")
    from xrisk.metrics.key import KEY_NAMES, key_index, key_weighted_score, key_weighted_scores

    c, cm, g, am, a, d = (key_index(0, "major"), key_index(0, "minor"), key_index(7, "major"), key_index(9, "minor"),
                          key_index(9, "major"), key_index(2, "major"))
    refs = [c, c, c, am, c, c, g, cm, key_index(11, "major")]
    ests = [c, g, am, c, cm, d, c, key_index(3, "major"), key_index(6, "major")]
    expected = [1.0, 0.5, 0.3, 0.3, 0.2, 0.0, 0.0, 0.3, 0.5]  # same, fifth, relative x2, parallel, other, fourth, ...
    scores = key_weighted_scores(refs, ests)
    assert scores.tolist() == expected
    assert scores.tolist() == [mir_key.weighted_score(KEY_NAMES[r], KEY_NAMES[e]) for r, e in zip(refs, ests)]
    assert key_weighted_score(torch.tensor(refs), torch.tensor(ests)) == pytest.approx(sum(expected) / 9)
    assert KEY_NAMES[a] == "A major" and KEY_NAMES[key_index(13, "minor")] == "Db minor"
    with pytest.raises(ValueError, match="same length"):
        key_weighted_scores([0], [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 24\)"):
        key_weighted_scores([24], [0])


def test_key_labels_from_scores_and_transpositions(monkeypatch):
    m21 = pytest.importorskip("music21", reason="the audio extra (music21) is not installed")
    from xrisk.data import key_corpus
    from xrisk.metrics.key import KEY_NAMES

    def score(sig, last_bass, key_obj=None):
        s, part = m21.stream.Score(), m21.stream.Part()
        part.append(key_obj if key_obj is not None else m21.key.KeySignature(sig))
        for p in ("C4", "E4", "G4", "A4"):
            part.append(m21.note.Note(p, quarterLength=1.0))
        part.append(m21.note.Note(last_bass, quarterLength=2.0))
        s.insert(0, part)
        return s

    assert key_corpus.score_key(score(0, "C3")) == (0, "major")
    assert key_corpus.score_key(score(0, "A2")) == (9, "minor")  # bare signature: the final bass picks the key
    assert key_corpus.score_key(score(0, "E3")) is None  # neither C major nor A minor
    assert key_corpus.score_key(score(0, "C3", m21.key.Key("a"))) is None  # encoded a minor, ends on C
    assert key_corpus.score_key(score(0, "A2", m21.key.Key("a"))) == (9, "minor")
    notes = key_corpus.score_notes(score(0, "C3"), tempo_qpm=120.0)
    assert notes.tolist()[0] == [0.0, 0.5, 60.0] and notes.tolist()[-1] == [2.0, 1.0, 48.0]
    assert key_corpus.score_notes(score(0, "C3"), tempo_qpm=120.0, max_seconds=1.2)[:, 1].max() <= 0.5
    # synthesis: a C4 (261.6 Hz) sine, transposed up a fifth, peaks at G4 (392 Hz)
    wave = key_corpus.synthesize(np.array([[0.0, 1.0, 60.0]]), timbre="sine", transpose=7)
    assert wave.shape == (SR,) and abs(np.argmax(np.abs(np.fft.rfft(wave))) - 392) <= 1
    assert abs(float(np.abs(wave).max()) - 0.5) < 1e-6
    # render_key_corpus: labels follow the transpositions exactly (corpus replaced by two pieces)
    pieces = [("a.mxl", 0, "major", notes), ("b.mxl", 9, "minor", notes)]
    monkeypatch.setattr(key_corpus, "_corpus_notes", lambda *a: pieces)
    clips = key_corpus.render_key_corpus(transpositions_per_piece=3, timbres=("organ", "plucked"))
    assert len(clips) == 6 and clips.pieces == [0, 0, 0, 1, 1, 1] and clips.piece_names == ["a.mxl", "b.mxl"]
    for k, p, t in zip(clips.keys, clips.pieces, clips.transpositions):
        tonic, mode = pieces[p][1], pieces[p][2]
        assert KEY_NAMES[k] == KEY_NAMES[2 * ((tonic + t) % 12) + (mode == "minor")] and -5 <= t <= 6
    assert len(set(clips.transpositions[:3])) == 3 and set(clips.timbres) == {"organ", "plucked"}
    with pytest.raises(ValueError, match="timbre"):
        key_corpus.render_key_corpus(timbres=("violin",))


def test_probe_picks_the_best_validation_setting_and_averages_chunks():
    logits = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]])
    torch.testing.assert_close(clip_logits(logits, torch.tensor([0, 0, 1]), 2), torch.tensor([[0.5, 1.5], [2.0, 0.0]]))
    g = torch.Generator().manual_seed(0)

    def part(n):  # class from feature 0 only; two chunks per clip
        y = torch.arange(n) % 2
        x = torch.randn(2 * n, 6, generator=g)
        x[:, 0] += 3.0 * (2 * y.repeat_interleave(2) - 1)
        return ChunkFeatures(x, torch.arange(n).repeat_interleave(2), y)

    grid = [ProbeSetting("linear", lr=1e-6), ProbeSetting("linear", lr=1e-2), ProbeSetting("mlp", lr=1e-3)]
    result = fit_probe(part(40), part(20), part(20), num_classes=2, grid=grid, epochs=15)
    best = max(result.per_setting, key=lambda r: r[1])
    assert result.valid_score == best[1] and result.test_score == best[2] and result.setting == best[0]
    assert result.per_setting[0][1] < result.valid_score and result.test_score >= 0.75
    assert 1 <= result.epoch <= 15
    again = fit_probe(part(40), part(20), part(20), num_classes=2, grid=grid, epochs=15)
    assert again.per_setting[0][0] == grid[0]
    with pytest.raises(ValueError, match="NaN/inf"):
        ChunkFeatures(torch.full((2, 3), float("nan")), torch.arange(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie"):
        fit_probe(part(4), part(4), part(4), num_classes=1, grid=grid[:1], epochs=1)


def test_stratified_split_keeps_every_class_in_train():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 2)
    split = myna._stratified_split(labels, 0)
    assert split[:10].bincount(minlength=3).tolist() == [6, 2, 2]
    assert split[10:13].bincount(minlength=3).tolist() == [1, 1, 1]
    assert split[13:].tolist() == [0, 0]
    assert torch.equal(split, myna._stratified_split(labels, 0))


# --------------------------------------------------------------------------------------------- recipes
@pytest.fixture(scope="module")
def music_dir(tmp_path_factory) -> Path:
    """Six generated tracks of 8 s (WAV and FLAC) and one unreadable file."""
    folder = tmp_path_factory.mktemp("music")
    rng = np.random.default_rng(2)
    for i in range(6):
        sf.write(folder / f"track{i}.{'wav' if i % 2 else 'flac'}", tone_track(i, 8.0, rng).numpy(), SR)
    (folder / "broken.wav").write_bytes(b"RIFF????WAVEjunk")
    return folder


def _run_args(music_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "myna", "--data", str(music_dir), "--preset", "tiny", "--batch-size", "4", "--segment-seconds", "4",
            "--probe", "none", "--num-threads", "1", "--quiet", "--no-plot", "--out", str(out), *extra]


def _history(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("epoch_seconds")
    return rows


def test_myna_recipe_writes_the_run_folder_and_counts_skipped_files(music_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _run_args(music_dir, out, "--epochs", "2", "--patch", "vertical")
    argv.remove("--quiet")
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"skipped {music_dir / 'broken.wav'}: unreadable" in err and "Traceback" not in err
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["skipped_files"] == 1 and config["resolved"]["num_tracks"] == 6
    assert config["resolved"]["num_items"] == 12 and config["resolved"]["tokens_per_view"] == [48]
    final = json.loads((out / "metrics.json").read_text())
    assert final["skipped_files"] == 1 and final["steps"] == 3 and np.isfinite(final["train_objective"])
    assert "train_surrogate" in final and config["resolved"]["loss_class"] == "GlobalContrastiveLoss"
    assert [r["epoch"] for r in _history(out)] == [1, 2]


def test_myna_resume_is_bit_identical(music_dir, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(_run_args(music_dir, full, "--epochs", "4")) == 0
    assert main(_run_args(music_dir, part, "--epochs", "2")) == 0
    assert main(_run_args(music_dir, part, "--epochs", "4", "--resume")) == 0
    assert _history(part) == _history(full)
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    for key in ("model", "loss", "optimizer"):
        flat_a, flat_b = a[key], b[key]
        if key == "optimizer":
            flat_a, flat_b = flat_a["state"], flat_b["state"]
            flat_a = {f"{i}.{k}": v for i, s in flat_a.items() for k, v in s.items()}
            flat_b = {f"{i}.{k}": v for i, s in flat_b.items() for k, v in s.items()}
        assert flat_a.keys() == flat_b.keys()
        for k in flat_a:
            assert torch.equal(torch.as_tensor(flat_a[k]), torch.as_tensor(flat_b[k])), (key, k)


class _Crash(Exception):
    pass


def test_resume_from_inside_an_epoch_equals_uninterrupted(tone_tracks, tmp_path, monkeypatch):
    """Checkpoints every step; the process dies in step 5 of 6 (epoch 2 of 2, hybrid: the loss state is
    written twice per step); the resumed run restores the crop/mask generator, running sums, model, loss
    and optimizer and ends bit-identical."""
    from xrisk.recipes.runner import RunContext

    config = MynaConfig(data=".", patch="hybrid", preset="tiny", batch_size=8, epochs=2, segment_seconds=None,
                        probe="none", log_mel=True)

    def ctx(folder, **kw):
        return RunContext(tmp_path / folder, recipe="myna", args={"m": 1}, quiet=True, plot=False, **kw)

    full = train_myna(config, ctx("a", checkpoint_every=0), tracks=tone_tracks, probe_tasks=[])
    real, calls = CropPairs.batch, [0]

    def dies_in_step_5(self, index, generator=None):
        calls[0] += 1
        if calls[0] > 4:
            raise _Crash
        return real(self, index, generator)

    monkeypatch.setattr(CropPairs, "batch", dies_in_step_5)
    with pytest.raises(_Crash), ctx("b", checkpoint_every=1) as c:
        train_myna(config, c, tracks=tone_tracks, probe_tasks=[])
    monkeypatch.setattr(CropPairs, "batch", real)
    extra = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["extra"]
    assert (extra["epoch"], extra["step"]) == (1, 1)  # 3 steps per epoch
    resumed = train_myna(config, ctx("b", resume=True), tracks=tone_tracks, probe_tasks=[])
    drop = ("epoch_seconds", "cpu_seconds", "total_steps")
    assert {k: v for k, v in resumed.metrics.items() if k not in drop} == {
        k: v for k, v in full.metrics.items() if k not in drop}
    for (name, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name
    for (name, p), q in zip(full.loss.state_dict().items(), resumed.loss.state_dict().values()):
        assert torch.equal(p, q) or (p.isnan().all() and q.isnan().all()), name


def test_myna_flags_and_cross_flag_rules_fail_with_one_line(music_dir, tmp_path, capsys):
    for bad in (["--mask", "1"], ["--mask", "nan"], ["--batch-size", "1"], ["--patch", "round"],
                ["--data", "/nonexistent/xrisk-music"], ["--gamma", "0"]):
        with pytest.raises(SystemExit) as e:
            main(_run_args(music_dir, tmp_path / "bad", *bad))
        assert e.value.code == 2
        assert bad[0] in capsys.readouterr().err
    assert main(_run_args(music_dir, tmp_path / "crop", "--patch", "square", "--crop-frames", "90")) == 2
    err = capsys.readouterr().err
    assert "--crop-frames 90 must be a positive multiple of 16" in err and "Traceback" not in err
    assert main(_run_args(music_dir, tmp_path / "big", "--batch-size", "64")) == 2
    assert "--batch-size 64 exceeds the 12 training items" in capsys.readouterr().err
    only_bad = tmp_path / "bad-music"
    only_bad.mkdir()
    (only_bad / "x.flac").write_bytes(b"fLaC junk")
    assert main(_run_args(only_bad, tmp_path / "none")) == 2
    err = capsys.readouterr().err
    assert "no usable audio file" in err and "x.flac" in err and "Traceback" not in err


def test_myna_probe_recipe_reads_a_run_folder(music_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(_run_args(music_dir, out, "--epochs", "1", "--patch", "hybrid")) == 0
    rng, mel = np.random.default_rng(3), MelSpectrogram()
    labels = torch.arange(30) % 3
    task = ProbeTask("keys", "score", [mel(tone_track(4 * int(c), 3.2, rng)) for c in labels], 2 * labels, 24,
                     torch.arange(30) % 5 // 2 % 3, lambda y, p: float((y == p).double().mean()))
    monkeypatch.setattr(myna, "load_probe_task", lambda name, **kw: task)
    probe_out = tmp_path / "probe"
    argv = ["run", "myna-probe", "--ckpt", str(out), "--task", "keys", "--probe-epochs", "5", "--quiet", "--no-plot",
            "--out", str(probe_out)]
    assert main(argv) == 0
    final = json.loads((probe_out / "metrics.json").read_text())
    assert set(final) == {"key_valid_score", "key_test_score", "trained_epochs"} and final["trained_epochs"] == 1
    assert 0.0 <= final["key_test_score"] <= 1.0
    config = json.loads((probe_out / "config.json").read_text())
    assert config["resolved"]["patch"] == "hybrid"
    assert main([*argv[:3], str(tmp_path), *argv[4:-1], str(tmp_path / "probe2")]) == 2
    assert "holds no myna run" in capsys.readouterr().err
