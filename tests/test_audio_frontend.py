"""Audio front end and reader: mel vs librosa, resampler, track folders with bad files, crop pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xrisk.data.audio import (
    AudioReadError, CropPairs, chunk_spectrogram, list_audio_files, load_audio_folder, read_audio, resample,
)
from xrisk.data.errors import DataNotInstalledError
from xrisk.models.audio import MelSpectrogram, hz_to_mel, mel_to_hz, slaney_mel_filterbank

sf = pytest.importorskip("soundfile", reason="the audio extra (soundfile) is not installed")


def _tone(freq: float, seconds: float, sr: int = 16_000, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def test_mel_front_end_matches_librosa():
    """The one test that imports librosa (its first call JIT-compiles for ~30 s in a fresh venv)."""
    librosa = pytest.importorskip("librosa", reason="the audio extra (librosa==0.11.0) is not installed")
    rng = np.random.default_rng(0)
    y = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(20_000) / 16_000) + 0.05 * rng.standard_normal(20_000)
    fb = librosa.filters.mel(sr=16_000, n_fft=2048, n_mels=128, dtype=np.float64)
    np.testing.assert_allclose(slaney_mel_filterbank(16_000, 2048, 128).numpy(), fb, rtol=1e-5, atol=1e-12)
    for dtype in (np.float64, np.float32):
        ref = librosa.feature.melspectrogram(y=y.astype(dtype), sr=16_000, n_fft=2048, hop_length=512, n_mels=128,
                                             pad_mode="reflect", power=2.0)
        mel = MelSpectrogram()
        if dtype == np.float64:
            mel = mel.double()
            mel.filterbank = slaney_mel_filterbank(16_000, 2048, 128)
        out = mel(torch.from_numpy(y.astype(dtype))).numpy()
        assert out.shape == ref.shape == (128, 1 + 20_000 // 512)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=0)
    # other settings go through the same code: 64 bands, 8 kHz band edge, magnitude, constant padding
    ref = librosa.feature.melspectrogram(y=y, sr=16_000, n_fft=1024, hop_length=256, n_mels=64, fmax=6000.0,
                                         power=1.0, pad_mode="constant")
    mel = MelSpectrogram(n_fft=1024, hop_length=256, n_mels=64, f_max=6000.0, power=1.0, pad_mode="constant").double()
    mel.filterbank = slaney_mel_filterbank(16_000, 1024, 64, 0.0, 6000.0)
    np.testing.assert_allclose(mel(torch.from_numpy(y)).numpy(), ref, rtol=1e-5, atol=0)


def test_mel_scale_round_trip_and_filters():
    hz = torch.tensor([0.0, 100.0, 999.0, 1000.0, 4000.0, 8000.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(hz)), hz)
    assert float(hz_to_mel(torch.tensor(1000.0, dtype=torch.float64))) == pytest.approx(15.0)
    fb = slaney_mel_filterbank(16_000, 2048, 128)
    assert fb.shape == (128, 1025) and (fb >= 0).all() and (fb.sum(1) > 0).all()
    with pytest.raises(ValueError, match="f_min"):
        slaney_mel_filterbank(16_000, 2048, 128, f_min=9000.0)


def test_mel_front_end_is_batched_differentiable_and_validates():
    mel = MelSpectrogram()
    x = torch.randn(2, 3, 8000, requires_grad=True)
    out = mel(x)
    assert out.shape == (2, 3, 128, 16)
    torch.testing.assert_close(out[1, 2], mel(x[1, 2].detach()), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert mel.num_frames(50_000) == 98
    torch.testing.assert_close(MelSpectrogram(log=True)(x.detach()), torch.log1p(out.detach()))
    with pytest.raises(ValueError, match="too short"):
        mel(torch.randn(1000))
    with pytest.raises(ValueError, match="floating"):
        mel(torch.ones(5000, dtype=torch.long))
    with pytest.raises(ValueError, match="n_mels"):
        MelSpectrogram(n_mels=0)
    assert "filterbank" not in mel.state_dict()


def test_pitch_shift_moves_a_tone_by_the_given_semitones():
    mel = MelSpectrogram(n_mels=128)
    spec = mel(torch.from_numpy(_tone(440.0, 1.0))).expand(4, -1, -1)
    shifted = mel.shift_pitch(spec, torch.tensor([0, 12, -12, 7]))
    torch.testing.assert_close(shifted[0], spec[0])
    peaks = shifted.mean(-1).argmax(-1).tolist()
    for i, f in ((1, 880.0), (2, 220.0), (3, 440.0 * 2 ** (7 / 12))):
        assert abs(peaks[i] - int(mel(torch.from_numpy(_tone(f, 1.0))).mean(-1).argmax())) <= 1
    down = mel.shift_pitch(spec, torch.full((4,), -40.0))  # / 10: bands above ~800 Hz read beyond 8 kHz -> 0
    assert (down[:, 40:] == 0).all() and (down[:, :30] > 0).all()
    up = mel.shift_pitch(spec, torch.full((4,), 40.0))  # x 10: the lowest bands read below the first band -> 0
    assert (up[:, :3] == 0).all() and (up[:, 10:] > 0).all()
    with pytest.raises(ValueError, match="one value per spectrogram"):
        mel.shift_pitch(spec, torch.zeros(2))


def test_resampler_keeps_the_band_and_removes_aliases():
    sr_in = 44_100
    t = np.arange(sr_in) / sr_in
    low = resample(np.sin(2 * np.pi * 1000.0 * t), sr_in, 16_000)
    assert low.shape == (16_000,)
    spec = np.abs(np.fft.rfft(low))
    assert abs(np.argmax(spec) - 1000) <= 1  # 1 Hz bins
    high = resample(np.sin(2 * np.pi * 12_000.0 * t), sr_in, 16_000)  # above the new Nyquist (8 kHz)
    assert np.sqrt(np.mean(high[1000:-1000] ** 2)) < 0.01 * np.sqrt(0.5)
    assert resample(low, 16_000, 16_000) is low
    assert resample(np.ones(4800), 48_000, 16_000).shape == (1600,)
    with pytest.raises(ValueError, match="16000/44099"):
        resample(np.ones(100), 44_099, 16_000)
    with pytest.raises(ValueError, match="positive integer"):
        resample(np.ones(100), 0, 16_000)


@pytest.fixture()
def audio_folder(tmp_path):
    """Four good tracks (WAV/FLAC/OGG at 16/44.1/48 kHz, one stereo) and one file of each bad kind."""
    good = tmp_path / "music"
    (good / "sub").mkdir(parents=True)
    sf.write(good / "a.wav", _tone(220.0, 4.0), 16_000)
    sf.write(good / "b.flac", _tone(330.0, 4.0, sr=44_100), 44_100)
    sf.write(good / "sub" / "c.ogg", np.stack([_tone(440.0, 4.0, sr=48_000)] * 2, 1), 48_000)
    sf.write(good / "d.WAV", _tone(550.0, 4.0), 16_000)
    sf.write(good / "silent.wav", np.zeros(32_000, np.float32), 16_000)
    sf.write(good / "short.flac", _tone(220.0, 0.5), 16_000)
    sf.write(good / "tiny.wav", _tone(220.0, 0.02), 16_000)
    sf.write(good / "odd_rate.wav", _tone(220.0, 1.0, sr=44_099), 44_099)
    (good / "broken.ogg").write_text("not audio")
    (good / "notes.txt").write_text("ignored")
    return good


def test_reader_skips_bad_files_and_names_each(audio_folder):
    seen = []
    tracks = load_audio_folder(audio_folder, min_frames=96, on_skip=seen.append)
    assert [p.name for p in tracks.paths] == ["a.wav", "b.flac", "d.WAV", "c.ogg"]
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in tracks.skipped}
    assert seen == tracks.skipped and len(tracks.skipped) == 5
    assert reasons["broken.ogg"].startswith("unreadable")
    assert reasons["silent.wav"].startswith("silent")
    assert reasons["short.flac"] == "shorter than a crop (16 frames < 96)"
    assert "window" in reasons["tiny.wav"]
    assert "44099" in reasons["odd_rate.wav"]
    for mel in tracks.mels:  # 4 s at 16 kHz: 1 + 64000 // 512 frames, whatever the file's rate
        assert mel.shape == (128, 126) and torch.isfinite(mel).all()
    with pytest.raises(AudioReadError) as e:
        read_audio(audio_folder / "broken.ogg")
    assert str(audio_folder / "broken.ogg") in str(e.value)


def test_reader_errors_name_the_folder_when_nothing_is_usable(tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(32_000, np.float32), 16_000)
    with pytest.raises(AudioReadError, match="no usable audio file.*silent.wav"):
        load_audio_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_audio_files(tmp_path / "missing")


def test_reader_labels_and_waveforms(audio_folder):
    tracks = load_audio_folder([audio_folder / "a.wav", audio_folder / "sub" / "c.ogg", audio_folder / "d.WAV"],
                               label_fn=lambda p: p.suffix.lower(), keep_waveforms=True)
    assert tracks.label_names == [".ogg", ".wav"] and tracks.labels == [1, 0, 1]
    assert [w.shape[0] for w in tracks.waves] == [64_000, 64_000, 64_000]
    mel = MelSpectrogram()
    torch.testing.assert_close(tracks.mels[0], mel(tracks.waves[0]))


def test_music_sources_name_the_debian_package(tmp_path):
    from xrisk.data.music import load_singularity_music, load_sonic_pi_samples, sample_category

    with pytest.raises(DataNotInstalledError, match="apt-get install singularity-music"):
        load_singularity_music(folder=tmp_path / "none")
    with pytest.raises(DataNotInstalledError, match="apt-get install sonic-pi-samples"):
        load_sonic_pi_samples(folder=tmp_path / "none")
    assert sample_category("/x/bd_haus.flac") == "bd" and sample_category("loop_amen_full.flac") == "loop"


@pytest.mark.skipif(not __import__("os").path.isdir("/usr/share/sonic-pi/samples"),
                    reason="apt-get install sonic-pi-samples")
def test_sonic_pi_samples_have_fourteen_categories():
    from xrisk.data.music import load_sonic_pi_samples

    clips = load_sonic_pi_samples()
    counts = dict(zip(clips.label_names, np.bincount(clips.labels).tolist()))
    assert counts == {"ambi": 11, "bass": 9, "bd": 13, "drum": 20, "elec": 25, "glitch": 8, "guit": 4, "loop": 17,
                      "mehackit": 11, "misc": 3, "perc": 10, "sn": 4, "tabla": 26, "vinyl": 4}
    assert not clips.skipped and all(m.shape[0] == 128 for m in clips.mels)


def test_crop_pairs_items_indices_and_spans():
    mels = [torch.arange(128 * t, dtype=torch.float32).view(128, t) for t in (300, 50, 700)]
    pairs = CropPairs(mels, 96, segment_frames=200)
    # track 0: one segment [0, 300) (300 // 200 = 1, the last takes the rest); track 1 too short;
    # track 2: [0, 200), [200, 400), [400, 700)
    assert pairs.items.tolist() == [[0, 0, 300], [2, 0, 200], [2, 200, 400], [2, 400, 700]]
    assert pairs.num_samples == len(pairs) == 4
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        index = torch.tensor([3, 1, 0])
        a, b, idx = pairs.batch(index, g)
        assert a.shape == b.shape == (3, 128, 96) and idx.tolist() == [3, 1, 0]
        for view in (a, b):
            for row, (track, lo, hi) in zip(view, pairs.items[index].tolist()):
                start = int(row[0, 0]) % mels[track].shape[1]
                assert lo <= start and start + 96 <= hi
                torch.testing.assert_close(row, mels[track][:, start : start + 96])
    near = CropPairs(mels, 96, max_frame_distance=5)
    sa, sb = near.crop_starts(torch.tensor([0, 1] * 50), torch.Generator().manual_seed(1))
    assert (sa - sb).abs().max() <= 5
    i, va, vb = near[1]
    assert i == 1 and va.shape == (128, 96)
    with pytest.raises(IndexError):
        pairs.batch(torch.tensor([4]))
    with pytest.raises(ValueError, match="segment_frames"):
        CropPairs(mels, 96, segment_frames=50)
    with pytest.raises(ValueError, match="at least 2 items"):
        CropPairs(mels[1:2], 96)


def test_chunks_pad_short_spectrograms():
    mel = torch.arange(4 * 10, dtype=torch.float32).view(4, 10)
    chunks = chunk_spectrogram(mel, 4)
    assert chunks.shape == (2, 4, 4)
    torch.testing.assert_close(chunks[1], mel[:, 4:8])
    assert chunk_spectrogram(mel, 4, hop=2).shape == (4, 4, 4)
    short = chunk_spectrogram(mel[:, :3], 4)
    assert short.shape == (1, 4, 4) and (short[0, :, 3] == 0).all()
    assert math.isclose(float(short[0, :, :3].sum()), float(mel[:, :3].sum()))
