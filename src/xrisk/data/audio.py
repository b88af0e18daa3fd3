"""Audio tracks for Myna: a folder reader, a documented resampler, mel caching and random crop pairs.

* :func:`read_audio` reads one file with ``soundfile`` (FLAC, OGG/Vorbis, WAV, MP3, AIFF), averages
  the channels to mono and resamples to ``sample_rate`` (16 kHz) with :func:`resample`. A file it
  cannot use raises :class:`AudioReadError` naming the file and the reason: unreadable, empty,
  non-finite samples, silent (peak below ``silence_peak``, default 1e-4 = -80 dBFS), or a sample rate
  the resampler refuses (see :func:`resample`).
* :func:`load_audio_folder` reads every audio file under a folder (sorted by path), computes each
  track's mel spectrogram **once** with the given front end and keeps it in memory
  (:class:`AudioSet`). A file that fails, or that is shorter than ``min_frames``, is **skipped and
  recorded** (:attr:`AudioSet.skipped`: path and reason); ``on_skip`` is called for each (the recipes
  print it and count it in the run log). No usable file at all raises :class:`AudioReadError` listing
  the first reasons.
* :class:`CropPairs` turns the cached spectrograms into a contrastive data set: item ``i`` is a track
  (or a fixed-length segment of one, ``segment_frames``), and each draw returns two random crops of
  ``crop_frames`` frames from it with the dataset index ``i`` -- the positive pair of Myna. Crops are
  slices of the cached spectrogram, so the front end runs once per track, never per crop.

Resampler: :func:`resample` is ``scipy.signal.resample_poly`` -- upsample by ``L``, low-pass FIR,
downsample by ``M`` with ``L / M`` the target/source rate ratio reduced by their gcd (48 kHz -> 16 kHz:
``1 / 3``; 44.1 kHz -> 16 kHz: ``160 / 441``); the anti-aliasing filter is scipy's default Kaiser-windowed
sinc (beta 5.0, ``20 max(L, M) + 1`` taps, cutoff at the lower of the two Nyquist frequencies). Ratios
with ``max(L, M) > 1000`` (e.g. 44,099 Hz) are refused: the filter would have tens of thousands of taps
per phase.

Example:
    >>> from xrisk.data.audio import CropPairs, load_audio_folder       # doctest: +SKIP
    >>> tracks = load_audio_folder("/usr/share/games/singularity/music", min_frames=96)  # doctest: +SKIP
    >>> pairs = CropPairs(tracks.mels, crop_frames=96, segment_frames=640)               # doctest: +SKIP
    >>> a, b, index = pairs.batch(torch.arange(8), generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AUDIO_EXTENSIONS", "AudioReadError", "AudioSet", "CropPairs", "SkippedFile", "chunk_spectrogram",
    "list_audio_files", "load_audio_folder", "read_audio", "resample",
]

#: File name endings :func:`list_audio_files` picks up (lower case).
AUDIO_EXTENSIONS: tuple[str, ...] = (".flac", ".ogg", ".wav", ".mp3", ".aiff", ".aif")
_MAX_RESAMPLE_FACTOR = 1000


class AudioReadError(ValueError):
    """An audio file cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class SkippedFile:
    """A file :func:`load_audio_folder` skipped, and why."""

    path: str
    reason: str


def _soundfile() -> Any:
    try:
        import soundfile
    except ImportError as e:  # pragma: no cover - depends on the environment
        from xrisk.data.errors import DataNotInstalledError

        raise DataNotInstalledError("reading audio files needs soundfile: pip install 'xrisk[audio]'") from e
    return soundfile


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample ``wave [..., T]`` (float) from ``orig_sr`` to ``target_sr`` Hz along the last axis.

    Polyphase filtering (``scipy.signal.resample_poly``, Kaiser window beta 5.0) by the gcd-reduced
    ratio ``L / M``; output length ``ceil(T L / M)``. Identity when the rates are equal.

    Raises:
        ValueError: a rate that is not a positive integer, or ``max(L, M) > 1000``.
    """
    for name, sr in (("orig_sr", orig_sr), ("target_sr", target_sr)):
        if not isinstance(sr, (int, np.integer)) or isinstance(sr, bool) or sr < 1:
            raise ValueError(f"{name} must be a positive integer number of Hz, got {sr!r}")
    if orig_sr == target_sr:
        return wave
    g = math.gcd(int(orig_sr), int(target_sr))
    up, down = int(target_sr) // g, int(orig_sr) // g
    if max(up, down) > _MAX_RESAMPLE_FACTOR:
        raise ValueError(
            f"sample rate {orig_sr} Hz -> {target_sr} Hz needs the polyphase ratio {up}/{down}; the resampler "
            f"accepts ratios with terms up to {_MAX_RESAMPLE_FACTOR} (e.g. 8, 11.025, 22.05, 32, 44.1, 48, 96 kHz)"
        )
    from scipy.signal import resample_poly

    return resample_poly(wave, up, down, axis=-1).astype(wave.dtype, copy=False)


def read_audio(path: str | os.PathLike[str], *, sample_rate: int = 16_000, silence_peak: float = 1e-4) -> Tensor:
    """One audio file as a mono float32 waveform ``[T]`` at ``sample_rate`` Hz.

    Channels are averaged; the waveform is resampled with :func:`resample`.

    Raises:
        AudioReadError: unreadable or empty file, non-finite samples, silent (``max |x| < silence_peak``),
            or an unsupported sample rate; the message starts with the path.
    """
    sf = _soundfile()
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError, EOFError) as e:
        raise AudioReadError(path, f"unreadable ({type(e).__name__}: {e})") from None
    if data.size == 0:
        raise AudioReadError(path, "no samples")
    wave = data.mean(axis=1)
    if not np.isfinite(wave).all():
        raise AudioReadError(path, "non-finite samples (NaN/inf)")
    peak = float(np.abs(wave).max())
    if peak < silence_peak:
        raise AudioReadError(path, f"silent (peak {peak:.2e} < {silence_peak:g})")
    try:
        wave = resample(wave, int(sr), int(sample_rate))
    except ValueError as e:
        raise AudioReadError(path, str(e)) from None
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))


def list_audio_files(folder: str | os.PathLike[str], *, extensions: Sequence[str] = AUDIO_EXTENSIONS,
                     recursive: bool = True) -> list[Path]:
    """Audio files under ``folder`` (by extension, case-insensitive), sorted by path.

    Raises:
        FileNotFoundError: ``folder`` is not an existing folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} does not exist or is not a folder")
    exts = tuple(e.lower() for e in extensions)
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in exts)


@dataclass
class AudioSet:
    """Tracks read by :func:`load_audio_folder`, each with its cached mel spectrogram.

    Attributes:
        paths: the files used, in order (item ``i`` of every list below is ``paths[i]``).
        mels: ``[n_mels, frames_i]`` float32 per track (the front end's output, computed once).
        skipped: files left out, with the reason.
        sample_rate: rate of the waveforms fed to the front end.
        labels: optional integer label per track (``label_fn``); ``label_names[labels[i]]`` is its name.
        waves: ``[T_i]`` float32 waveforms when ``keep_waveforms=True`` (else None).
    """

    paths: list[Path]
    mels: list[Tensor]
    skipped: list[SkippedFile] = field(default_factory=list)
    sample_rate: int = 16_000
    labels: list[int] | None = None
    label_names: list[str] | None = None
    waves: list[Tensor] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def total_frames(self) -> int:
        """Frames over all tracks."""
        return sum(int(m.shape[-1]) for m in self.mels)


def load_audio_folder(
    folder: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    front_end: torch.nn.Module | None = None,
    min_frames: int = 1,
    label_fn: Callable[[Path], str] | None = None,
    keep_waveforms: bool = False,
    on_skip: Callable[[SkippedFile], None] | None = None,
    sample_rate: int = 16_000,
    pad_to_samples: int = 0,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
) -> AudioSet:
    """Read the audio files of ``folder`` (or the given list of files) and cache one mel per track.

    Args:
        folder: a folder (searched recursively, :func:`list_audio_files`) or a list of files.
        front_end: waveform ``[T]`` -> spectrogram ``[n_mels, frames]`` (default:
            :class:`~xrisk.models.audio.MelSpectrogram` ``()``, the reference's 128-band power mel).
        min_frames: tracks with fewer frames are skipped ("shorter than a crop").
        label_fn: ``path -> label name``; labels are numbered in sorted name order.
        keep_waveforms: also keep the resampled waveforms (:attr:`AudioSet.waves`).
        on_skip: called with each :class:`SkippedFile` as it happens.
        sample_rate: rate the waveforms are resampled to (the front end's rate).
        pad_to_samples: zero-pad shorter waveforms at the end to this length (probe clips; 0: no padding).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        AudioReadError: no file could be used (the message lists the first reasons).
    """
    if front_end is None:
        from xrisk.models.audio.mel import MelSpectrogram

        front_end = MelSpectrogram(sample_rate=sample_rate)
    if isinstance(folder, (str, os.PathLike)):
        files = list_audio_files(folder, extensions=extensions)
        where = str(folder)
    else:
        files = [Path(f) for f in folder]
        where = f"{len(files)} given files"
    paths: list[Path] = []
    mels: list[Tensor] = []
    waves: list[Tensor] = []
    names: list[str] = []
    skipped: list[SkippedFile] = []

    def skip(path: Path, reason: str) -> None:
        item = SkippedFile(str(path), reason)
        skipped.append(item)
        if on_skip is not None:
            on_skip(item)

    for path in files:
        try:
            wave = read_audio(path, sample_rate=sample_rate)
            if wave.numel() < pad_to_samples:
                wave = torch.nn.functional.pad(wave, (0, pad_to_samples - wave.numel()))
            if wave.numel() <= getattr(front_end, "n_fft", 0) // 2:
                raise AudioReadError(path, f"shorter than the front end's window ({wave.numel()} samples)")
            with torch.no_grad():
                mel = front_end(wave).float()
        except AudioReadError as e:
            skip(path, e.reason)
            continue
        if mel.dim() != 2 or not torch.isfinite(mel).all():
            skip(path, "the front end gave a non-finite spectrogram")
            continue
        if mel.shape[-1] < min_frames:
            skip(path, f"shorter than a crop ({mel.shape[-1]} frames < {min_frames})")
            continue
        paths.append(path)
        mels.append(mel.contiguous())
        if keep_waveforms:
            waves.append(wave)
        if label_fn is not None:
            names.append(str(label_fn(path)))
    if not paths:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3]) or "no audio files found"
        raise AudioReadError(where, f"no usable audio file ({len(skipped)} skipped: {reasons})")
    label_names = sorted(set(names)) if label_fn is not None else None
    labels = [label_names.index(n) for n in names] if label_names is not None else None
    return AudioSet(paths, mels, skipped, sample_rate, labels, label_names, waves if keep_waveforms else None)


def chunk_spectrogram(mel: Tensor, frames: int, hop: int | None = None) -> Tensor:
    """Chunks ``[C, n_mels, frames]`` of a spectrogram ``[n_mels, T]``, starting every ``hop`` frames
    (default ``frames``: non-overlapping); a spectrogram shorter than ``frames`` is zero-padded at the end
    to one chunk (the reference's evaluation)."""
    if frames < 1 or (hop is not None and hop < 1):
        raise ValueError(f"frames and hop must be >= 1, got {frames}, {hop}")
    hop = frames if hop is None else hop
    t = mel.shape[-1]
    if t < frames:
        return torch.nn.functional.pad(mel, (0, frames - t))[None]
    return mel.unfold(-1, frames, hop).permute(1, 0, 2).contiguous()


class CropPairs(torch.utils.data.Dataset):
    """Pairs of random crops of cached spectrograms (Myna's positive pairs), with dataset indices.

    Item ``i`` is a span ``[start_i, stop_i)`` of track ``track_i``: the whole track, or with
    ``segment_frames`` the track cut into consecutive segments of that many frames (the last one takes
    the rest; segments shorter than a crop are dropped). A draw picks two crop starts uniformly in the
    span -- independently, or the second within ``max_frame_distance`` frames of the first (clipped to
    the span), the reference's option -- and returns the two ``[n_mels, crop_frames]`` slices.

    Args:
        mels: ``[n_mels, T_j]`` per track (e.g. :attr:`AudioSet.mels`).
        crop_frames: frames per crop (96 in the reference).
        segment_frames: split tracks into items of this many frames (``None``: one item per track).
        max_frame_distance: bound on the distance between the two starts (``None``: independent).

    Attributes:
        items: ``[num_samples, 3]`` long tensor of ``(track, start, stop)``.
    """

    def __init__(
        self,
        mels: Sequence[Tensor],
        crop_frames: int,
        *,
        segment_frames: int | None = None,
        max_frame_distance: int | None = None,
    ) -> None:
        if not isinstance(crop_frames, int) or crop_frames < 1:
            raise ValueError(f"crop_frames must be a positive int, got {crop_frames!r}")
        if segment_frames is not None and segment_frames < crop_frames:
            raise ValueError(f"segment_frames={segment_frames} must be >= crop_frames={crop_frames}")
        if max_frame_distance is not None and max_frame_distance < 0:
            raise ValueError(f"max_frame_distance must be >= 0, got {max_frame_distance}")
        self.mels = list(mels)
        if not self.mels or len({int(m.shape[0]) for m in self.mels}) != 1:
            raise ValueError("mels must be a non-empty list of [n_mels, T] spectrograms with one n_mels")
        self.crop_frames, self.max_frame_distance = crop_frames, max_frame_distance
        rows = []
        for j, m in enumerate(self.mels):
            t = int(m.shape[-1])
            if t < crop_frames:
                continue
            if segment_frames is None:
                rows.append((j, 0, t))
                continue
            n_seg = max(1, t // segment_frames)
            for s in range(n_seg):
                stop = t if s == n_seg - 1 else (s + 1) * segment_frames
                if stop - s * segment_frames >= crop_frames:
                    rows.append((j, s * segment_frames, stop))
        if len(rows) < 2:
            raise ValueError(f"need at least 2 items of >= {crop_frames} frames, got {len(rows)}")
        self.items = torch.tensor(rows, dtype=torch.long)
        self.n_mels = int(self.mels[0].shape[0])

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @property
    def num_samples(self) -> int:
        """Number of items (the ``num_samples`` of the contrastive loss)."""
        return len(self)

    def crop_starts(self, index: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Start frames ``(starts_a [B], starts_b [B])`` (absolute in each item's track) for items ``index``."""
        rows = self.items[index]
        lo, room = rows[:, 1], rows[:, 2] - rows[:, 1] - self.crop_frames + 1
        a = lo + (torch.rand(len(index), generator=generator) * room).long().clamp(max=room - 1)
        if self.max_frame_distance is None:
            b = lo + (torch.rand(len(index), generator=generator) * room).long().clamp(max=room - 1)
        else:
            d = self.max_frame_distance
            offset = (torch.rand(len(index), generator=generator) * (2 * d + 1)).long().clamp(max=2 * d) - d
            b = torch.minimum(torch.maximum(a + offset, lo), lo + room - 1)
        return a, b

    def crops(self, index: Tensor, starts: Tensor) -> Tensor:
        """``[B, n_mels, crop_frames]``: the crops of items ``index`` starting at ``starts``."""
        tracks = self.items[index, 0].tolist()
        f = self.crop_frames
        return torch.stack([self.mels[j][:, s : s + f] for j, s in zip(tracks, starts.tolist())])

    def batch(self, index: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(view_a, view_b, index)`` for the items ``index`` (``[B]`` long): two ``[B, n_mels, crop_frames]``
        crops per item, drawn with ``generator``."""
        index = torch.as_tensor(index, dtype=torch.long)
        if index.dim() != 1:
            raise ValueError(f"index must be 1-d, got shape {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(f"index out of range [0, {len(self)})")
        a, b = self.crop_starts(index, generator)
        return self.crops(index, a), self.crops(index, b), index

    def __getitem__(self, i: int) -> tuple[int, Tensor, Tensor]:
        """``(i, view_a, view_b)`` drawn with the global torch RNG (for ``DataLoader`` use)."""
        a, b, _ = self.batch(torch.tensor([int(i)]))
        return int(i), a[0], b[0]
