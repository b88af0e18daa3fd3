"""Key-detection clips: real compositions from the ``music21`` score corpus, rendered to audio.

The ``music21`` wheel bundles its score corpus (433 Bach works among 3,194). Each usable score is
turned into a list of notes (onset, duration, MIDI pitch; tied notes merged, at ``tempo_qpm`` quarter
notes per minute, cut at ``max_seconds``) and rendered by additive synthesis with one of a few
**synthetic timbres** (:data:`TIMBRES`) at one of a few **transpositions**: real compositions,
synthetic sound.

Key labels are exact by construction:

* a score is used when every key signature in it is the same (no encoded modulation) and exactly one
  of the keys it encodes -- a ``Key`` object's tonic and mode, or for a bare key signature its major
  key and the relative minor -- has the **final bass note** as its tonic (Bach's chorales end on the
  tonic; the encoded mode alone is unreliable: some files mark the soprano "d minor" and the other parts
  "F major");
* transposing the notes by ``t`` semitones moves the tonic by ``t``: label ``((tonic + t) mod 12, mode)``.

Labels are indices into :data:`~xrisk.metrics.key.KEY_NAMES` (``2 * pitch_class + (mode == "minor")``; names in
``mir_eval``'s format, e.g. ``"Eb minor"``). With the defaults (Bach, tempo 100, 15 s, two transpositions
per piece drawn from -5..+6 semitones, timbres cycled) this gives 688 clips of 344 pieces (of 433).

Parsing the corpus takes about a minute of CPU time, so the note lists are cached in ``$XRISK_CACHE``
(``~/.cache/xrisk``) under a name carrying the ``music21`` version and the settings.

Example:
    >>> from xrisk.data.key_corpus import render_key_corpus      # doctest: +SKIP
    >>> clips = render_key_corpus(max_pieces=20)                  # doctest: +SKIP
    >>> clips.waves[0].shape, KEY_NAMES[clips.keys[0]]            # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xrisk.metrics.key import KEY_NAMES, key_index

__all__ = ["TIMBRES", "KeyClips", "render_key_corpus", "score_key", "score_notes", "synthesize"]

_TABLE = 4096  # samples per period of the wavetables of synthesize()
#: Synthetic timbres: harmonic amplitudes (harmonic ``k`` at ``k f0``) and an amplitude decay time in
#: seconds (``None``: sustained). ``organ``: all harmonics ``1/k``; ``clarinet``: odd harmonics ``1/k``;
#: ``plucked``: all harmonics ``1/k^1.5`` decaying with ``exp(-t / 0.5 s)``; ``sine``: the fundamental.
TIMBRES: dict[str, tuple[tuple[float, ...], float | None]] = {
    "organ": (tuple(1.0 / k for k in range(1, 9)), None),
    "clarinet": (tuple(1.0 / k if k % 2 else 0.0 for k in range(1, 10)), None),
    "plucked": (tuple(1.0 / k**1.5 for k in range(1, 9)), 0.5),
    "sine": ((1.0,), None),
}


def _music21() -> Any:
    try:
        import music21
    except ImportError as e:  # pragma: no cover - depends on the environment
        from xrisk.data.errors import DataNotInstalledError

        raise DataNotInstalledError("the key-detection corpus needs music21: pip install 'xrisk[audio]'") from e
    return music21


def score_notes(score: Any, *, tempo_qpm: float = 100.0, max_seconds: float | None = 15.0) -> np.ndarray:
    """Notes of a ``music21`` score as ``[n, 3]`` float64 rows ``(onset s, duration s, MIDI pitch)``.

    Ties are merged per part; chords give one row per pitch; grace notes (no duration) are dropped;
    notes starting at or after ``max_seconds`` are dropped and the others cut there.
    """
    spq = 60.0 / float(tempo_qpm)
    rows = []
    parts = list(score.parts) or [score]
    for part in parts:
        for n in part.stripTies().flatten().notes:
            dur = float(n.quarterLength) * spq
            if dur <= 0:
                continue
            onset = float(n.offset) * spq
            for p in n.pitches:
                rows.append((onset, dur, float(p.midi)))
    notes = np.array(sorted(rows), dtype=np.float64).reshape(-1, 3)
    if max_seconds is not None:
        notes = notes[notes[:, 0] < max_seconds]
        notes[:, 1] = np.minimum(notes[:, 1], max_seconds - notes[:, 0])
    return notes


def score_key(score: Any) -> tuple[int, str] | None:
    """``(tonic pitch class, mode)`` of a score, or None when it is not certain (see the module docstring)."""
    m21 = _music21()
    signatures = list(score.flatten().getElementsByClass(m21.key.KeySignature))
    if not signatures or len({ks.sharps for ks in signatures}) != 1:
        return None
    candidates = set()
    for ks in signatures:
        if isinstance(ks, m21.key.Key):
            candidates.add((ks.tonic.pitchClass, ks.mode))
        else:
            major = ks.asKey("major")
            candidates.add((major.tonic.pitchClass, "major"))
            candidates.add(((major.tonic.pitchClass + 9) % 12, "minor"))
    candidates = {c for c in candidates if c[1] in ("major", "minor")}
    notes = score_notes(score, max_seconds=None)
    if not len(notes):
        return None
    last_onset = notes[:, 0].max()
    bass_pc = int(round(notes[notes[:, 0] == last_onset, 2].min())) % 12
    matches = [c for c in candidates if c[0] == bass_pc]
    return matches[0] if len(matches) == 1 else None


def synthesize(
    notes: np.ndarray, *, timbre: str = "organ", sample_rate: int = 16_000, transpose: int = 0,
    seconds: float | None = None,
) -> np.ndarray:
    """Render ``notes`` (rows ``(onset s, duration s, MIDI pitch)``) with a :data:`TIMBRES` timbre.

    Each note is ``sum_k a_k sin(2 pi k f t)`` over the timbre's harmonics below the Nyquist frequency
    (read from a 4096-point wavetable of one period, linear interpolation),
    ``f = 440 * 2^((pitch + transpose - 69) / 12)``, with 10 ms linear attack and release ramps (and the
    timbre's exponential decay); notes are summed and the result scaled to peak 0.5. Returns float32
    ``[ceil(seconds * sample_rate)]`` (default length: the end of the last note).
    """
    if timbre not in TIMBRES:
        raise ValueError(f"timbre must be one of {tuple(TIMBRES)}, got {timbre!r}")
    amps, decay = TIMBRES[timbre]
    end = float((notes[:, 0] + notes[:, 1]).max()) if len(notes) else 0.0
    total = int(np.ceil((end if seconds is None else seconds) * sample_rate))
    out = np.zeros(max(total, 1), dtype=np.float64)
    ramp = max(1, int(0.01 * sample_rate))
    grid = np.linspace(0.0, 1.0, _TABLE + 1)
    tables: dict[int, np.ndarray] = {}
    for onset, dur, pitch in notes:
        start, n = int(round(onset * sample_rate)), int(round(dur * sample_rate))
        n = min(n, total - start)
        if n <= 0:
            continue
        f0 = 440.0 * 2.0 ** ((pitch + transpose - 69.0) / 12.0)
        k_max = min(len(amps), int(np.ceil(sample_rate / 2 / f0)) - 1)  # harmonics below Nyquist
        if k_max < 1:
            continue
        if k_max not in tables:  # one period of the band-limited waveform, sampled on `grid`
            tables[k_max] = sum(a * np.sin(2 * np.pi * k * grid) for k, a in enumerate(amps[:k_max], start=1))
        t = np.arange(n) / sample_rate
        wave = np.interp((f0 * t) % 1.0, grid, tables[k_max])
        env = np.minimum(1.0, np.minimum(np.arange(n) + 1, n - np.arange(n)) / ramp)
        if decay is not None:
            env = env * np.exp(-t / decay)
        out[start : start + n] += wave * env
    peak = np.abs(out).max()
    return (out * (0.5 / peak) if peak > 0 else out).astype(np.float32)


@dataclass
class KeyClips:
    """Rendered key-detection clips (item ``i`` of each list belongs to clip ``i``).

    Attributes:
        waves: ``[T_i]`` float32 waveforms at ``sample_rate``.
        keys: label per clip (index into :data:`KEY_NAMES`).
        pieces: index of the piece (``piece_names``) each clip renders; split by piece, not by clip.
        piece_names: corpus path of each piece (relative to the corpus).
        timbres, transpositions: how each clip was rendered.
        sample_rate: Hz.
    """

    waves: list[Tensor]
    keys: list[int]
    pieces: list[int]
    piece_names: list[str]
    timbres: list[str]
    transpositions: list[int]
    sample_rate: int

    def __len__(self) -> int:
        return len(self.waves)


def _corpus_notes(composer: str, tempo_qpm: float, max_seconds: float) -> list[tuple[str, int, str, np.ndarray]]:
    """``(name, tonic, mode, notes)`` of every usable score of ``composer`` (cached on disk)."""
    m21 = _music21()
    from xrisk.data.emoji import cache_dir

    tag = json.dumps([m21.__version__, composer, tempo_qpm, max_seconds, 1])
    path = cache_dir() / f"music21-keys-{hashlib.sha1(tag.encode()).hexdigest()[:12]}.pt"
    if path.exists():
        data = torch.load(path, weights_only=True)
        return [(n, int(t), m, x.numpy()) for n, t, m, x in zip(data["names"], data["tonics"].tolist(),
                                                                 data["modes"], data["notes"])]
    out = []
    for p in m21.corpus.getComposer(composer):
        try:
            score = m21.corpus.parse(p)
        except Exception:  # noqa: BLE001 - a corpus file music21 itself cannot parse is left out
            continue
        k = score_key(score)
        notes = score_notes(score, tempo_qpm=tempo_qpm, max_seconds=max_seconds)
        if k is None or len(notes) == 0:
            continue
        out.append((f"{composer}/{p.name}", k[0], k[1], notes))
    torch.save({"names": [o[0] for o in out], "tonics": torch.tensor([o[1] for o in out]),
                "modes": [o[2] for o in out], "notes": [torch.from_numpy(o[3]) for o in out]}, path)
    return out


def render_key_corpus(
    *,
    composer: str = "bach",
    max_pieces: int | None = None,
    timbres: Sequence[str] = ("organ", "clarinet", "plucked"),
    transpositions_per_piece: int = 2,
    seed: int = 0,
    sample_rate: int = 16_000,
    tempo_qpm: float = 100.0,
    max_seconds: float = 15.0,
) -> KeyClips:
    """Render the usable scores of ``composer`` in the ``music21`` corpus (see the module docstring).

    Each piece gets ``transpositions_per_piece`` distinct transpositions drawn from -5..+6 semitones
    (so every tonic occurs), each rendered with the next timbre of ``timbres`` (cycled from a random
    start). Deterministic given ``seed``.
    """
    for t in timbres:
        if t not in TIMBRES:
            raise ValueError(f"timbre must be one of {tuple(TIMBRES)}, got {t!r}")
    if not 1 <= transpositions_per_piece <= 12:
        raise ValueError(f"transpositions_per_piece must be in 1..12, got {transpositions_per_piece}")
    pieces = _corpus_notes(composer, tempo_qpm, max_seconds)
    if max_pieces is not None:
        pieces = pieces[: int(max_pieces)]
    rng = np.random.default_rng(seed)
    clips = KeyClips([], [], [], [], [], [], sample_rate)
    for i, (name, tonic, mode, notes) in enumerate(pieces):
        clips.piece_names.append(name)
        shifts = rng.choice(np.arange(-5, 7), size=transpositions_per_piece, replace=False)
        first = int(rng.integers(len(timbres)))
        for j, shift in enumerate(shifts.tolist()):
            timbre = timbres[(first + j) % len(timbres)]
            clips.waves.append(torch.from_numpy(synthesize(notes, timbre=timbre, sample_rate=sample_rate,
                                                           transpose=shift)))
            clips.keys.append(key_index(tonic + shift, mode))
            clips.pieces.append(i)
            clips.timbres.append(timbre)
            clips.transpositions.append(shift)
    return clips
