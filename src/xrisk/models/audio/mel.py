"""Mel-spectrogram front end in torch: ``torch.stft`` and a Slaney mel filter bank.

The defaults are the front end of the Myna reference (nnAudio's ``MelSpectrogram(sr=16000,
n_mels=128)``): 16 kHz mono input, ``n_fft = 2048`` with a periodic Hann window of the same length,
hop 512, centred frames (the signal is reflect-padded by ``n_fft // 2`` on both sides), power 2,
128 mel bands from 0 Hz to the Nyquist frequency on the Slaney mel scale with Slaney (area)
normalisation -- the same numbers as ``librosa.feature.melspectrogram(y, sr=16000, n_fft=2048,
hop_length=512, n_mels=128, pad_mode="reflect")`` (the test suite checks 1e-5 relative agreement
with librosa 0.11.0). No torchaudio: its wheels do not load beside the torch this project pins.

Everything is differentiable, batched over any leading dimensions, and runs on the input's
device and dtype (float32 or float64).

Example:
    >>> import torch
    >>> from xrisk.models.audio import MelSpectrogram
    >>> mel = MelSpectrogram()
    >>> wave = torch.sin(2 * torch.pi * 440.0 * torch.arange(50_000) / 16_000)
    >>> mel(wave).shape                      # 1 + 50000 // 512 frames
    torch.Size([128, 98])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from xrisk.models.encoders import _positive_int

__all__ = ["MelSpectrogram", "hz_to_mel", "mel_to_hz", "slaney_mel_filterbank"]

_F_SP = 200.0 / 3.0  # Hz per mel below 1 kHz (Slaney)
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: Tensor) -> Tensor:
    """Slaney's mel scale (Auditory Toolbox): linear ``hz / (200/3)`` below 1 kHz, then logarithmic,
    ``15 + log(hz / 1000) / (log(6.4) / 27)``."""
    lin = hz / _F_SP
    log = _MIN_LOG_MEL + torch.log(torch.clamp(hz, min=_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(hz >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(mel: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    lin = mel * _F_SP
    log = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (torch.clamp(mel, min=_MIN_LOG_MEL) - _MIN_LOG_MEL))
    return torch.where(mel >= _MIN_LOG_MEL, log, lin)


def slaney_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> Tensor:
    """Triangular mel filters ``[n_mels, 1 + n_fft // 2]`` (float64), Slaney scale and normalisation.

    Band ``m`` rises linearly from mel point ``m`` to ``m + 1`` and falls to ``m + 2`` of ``n_mels + 2``
    points spaced evenly in mel between ``f_min`` and ``f_max`` (default ``sample_rate / 2``), evaluated
    at the FFT bin frequencies ``k * sample_rate / n_fft``, and scaled by ``2 / (f_{m+2} - f_m)`` (Hz) so
    every band has unit area (librosa's ``norm="slaney"``).
    """
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}")
    fft_hz = torch.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2, dtype=torch.float64)
    lo, hi = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64))
    points = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64))
    width = points.diff()
    ramps = points[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / width[:-1, None]
    falling = ramps[2:] / width[1:, None]
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return weights * (2.0 / (points[2:] - points[:-2]))[:, None]


class MelSpectrogram(nn.Module):
    """Power mel spectrogram of waveforms: ``M = W |STFT(x)|^p``.

    ``STFT`` uses a periodic Hann window of ``n_fft`` samples, hop ``hop_length`` and centred frames
    (``pad_mode`` padding of ``n_fft // 2`` on both sides), so a waveform of ``T`` samples gives
    ``1 + T // hop_length`` frames; ``W`` is :func:`slaney_mel_filterbank` (buffer ``filterbank``, not
    saved in ``state_dict``: it follows from the arguments); ``p = power``. With ``log=True`` the output is
    ``log(1 + M)`` (the reference's ``--log_mel``).

    :meth:`shift_pitch` moves a mel spectrogram by a number of semitones along the frequency axis (the
    pitch-shift augmentation the Myna benchmark compares masking with).

    Args:
        sample_rate: input sample rate (Hz).
        n_fft: FFT size and window length.
        hop_length: hop between frames (samples).
        n_mels: mel bands.
        f_min, f_max: band edges in Hz (``f_max=None``: ``sample_rate / 2``).
        power: exponent of the magnitude (2: power, 1: magnitude).
        pad_mode: ``torch.nn.functional.pad`` mode of the centring (``"reflect"`` as nnAudio;
            librosa >= 0.10 defaults to ``"constant"``).
        log: return ``log1p`` of the mel power.

    Shapes: ``[..., T]`` -> ``[..., n_mels, 1 + T // hop_length]``; needs ``T > n_fft // 2`` for reflect padding.
    """

    filterbank: Tensor
    window: Tensor

    def __init__(
        self,
        sample_rate: int = 16_000,
        n_fft: int = 2048,
        hop_length: int = 512,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
        power: float = 2.0,
        pad_mode: str = "reflect",
        log: bool = False,
    ) -> None:
        super().__init__()
        for name, v in (("sample_rate", sample_rate), ("n_fft", n_fft), ("hop_length", hop_length), ("n_mels", n_mels)):
            _positive_int(name, v)
        if not (isinstance(power, (int, float)) and power > 0):
            raise ValueError(f"power must be > 0, got {power!r}")
        if pad_mode not in ("reflect", "constant", "replicate", "circular"):
            raise ValueError(f"pad_mode must be reflect, constant, replicate or circular, got {pad_mode!r}")
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = sample_rate, n_fft, hop_length, n_mels
        self.f_min, self.f_max = float(f_min), sample_rate / 2.0 if f_max is None else float(f_max)
        self.power, self.pad_mode, self.log = float(power), pad_mode, bool(log)
        self.register_buffer(
            "filterbank", slaney_mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max).float(), persistent=False
        )
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames of a waveform of ``num_samples`` samples (centred STFT)."""
        return 1 + int(num_samples) // self.hop_length

    def forward(self, x: Tensor) -> Tensor:
        """``[..., T]`` waveforms -> ``[..., n_mels, frames]`` (mel power, or ``log1p`` of it)."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
            raise ValueError(f"expected a floating waveform tensor [..., T], got {getattr(x, 'shape', type(x))}")
        lead, t = x.shape[:-1], x.shape[-1]
        if t <= self.n_fft // 2:
            raise ValueError(f"waveform of {t} samples is too short for n_fft={self.n_fft} (needs > {self.n_fft // 2})")
        flat = x.reshape(-1, t)
        spec = torch.stft(
            flat, self.n_fft, self.hop_length, window=self.window.to(x.dtype), center=True, pad_mode=self.pad_mode,
            return_complex=True,
        ).abs()
        spec = spec.square() if self.power == 2.0 else spec.pow(self.power)
        mel = torch.matmul(self.filterbank.to(spec.dtype), spec)
        if self.log:
            mel = torch.log1p(mel)
        return mel.reshape(*lead, self.n_mels, mel.shape[-1])

    def shift_pitch(self, mel: Tensor, semitones: Tensor) -> Tensor:
        """Pitch-shift mel spectrograms ``[B, n_mels, T]`` (power or ``log1p``) by ``semitones [B]``.

        Band ``k`` (centre frequency ``f_k``) takes the value the input has at ``f_k / 2^(s/12)``: linear
        interpolation between the band centres on the mel axis, 0 outside the bands. This approximates
        resampling the spectrum's frequency axis by ``2^(s/12)`` (a harmonic at ``f`` moves to ``f 2^(s/12)``)
        without recomputing the STFT, so it works on cached spectrograms; time is unchanged.
        """
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"expected mel spectrograms [B, {self.n_mels}, T], got {tuple(mel.shape)}")
        semitones = semitones.reshape(-1).to(torch.float64)
        if semitones.numel() != mel.shape[0]:
            raise ValueError(f"semitones must hold one value per spectrogram ({mel.shape[0]}), got {semitones.numel()}")
        lo, hi = hz_to_mel(torch.tensor([self.f_min, self.f_max], dtype=torch.float64))
        step = (hi - lo) / (self.n_mels + 1)
        centres = lo + step * torch.arange(1, self.n_mels + 1, dtype=torch.float64)  # band centres (mel)
        source = hz_to_mel(mel_to_hz(centres)[None, :] / torch.pow(2.0, semitones / 12.0)[:, None])
        pos = ((source - centres[0]) / step).to(mel.device)  # fractional band index [B, n_mels]
        inside = ((pos >= 0) & (pos <= self.n_mels - 1)).to(mel.dtype).unsqueeze(-1)
        pos = pos.clamp(0, self.n_mels - 1)
        left = pos.floor().long().clamp(max=self.n_mels - 2)
        frac = (pos - left).to(mel.dtype).unsqueeze(-1)

        def rows(idx: Tensor) -> Tensor:
            return mel.gather(1, idx.unsqueeze(-1).expand(-1, -1, mel.shape[-1]))

        return ((1 - frac) * rows(left) + frac * rows(left + 1)) * inside

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
                f"n_mels={self.n_mels}, power={self.power}, pad_mode={self.pad_mode!r}, log={self.log}")
