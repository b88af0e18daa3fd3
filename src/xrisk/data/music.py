"""Real music from Debian packages, read with :func:`xrisk.data.audio.load_audio_folder`.

* :func:`load_singularity_music`: Debian ``singularity-music`` (16 OGG Vorbis tracks of the game
  Endgame: Singularity, 48 kHz stereo, 64 minutes in all; CC BY-SA 3.0), for contrastive pretraining
  on random crops.
* :func:`load_sonic_pi_samples`: Debian ``sonic-pi-samples`` (165 FLAC clips, 44.1 kHz, 0.1-11 s,
  median 0.9 s; CC0 / MIT / CC-BY-SA parts), labelled by the file-name prefix: ``ambi`` 11, ``bass`` 9,
  ``bd`` 13, ``drum`` 20, ``elec`` 25, ``glitch`` 8, ``guit`` 4, ``loop`` 17, ``mehackit`` 11, ``misc`` 3,
  ``perc`` 10, ``sn`` 4, ``tabla`` 26, ``vinyl`` 4 (14 categories), for a category probe.

Both raise :class:`~xrisk.data.DataNotInstalledError` naming the Debian package when it is missing.
Nothing is downloaded.

Example:
    >>> from xrisk.data.music import load_sonic_pi_samples      # doctest: +SKIP
    >>> clips = load_sonic_pi_samples()                          # doctest: +SKIP
    >>> len(clips), clips.label_names[:3]                        # doctest: +SKIP
    (165, ['ambi', 'bass', 'bd'])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from xrisk.data.audio import AudioSet, SkippedFile, load_audio_folder
from xrisk.data.errors import DataNotInstalledError

__all__ = ["SINGULARITY_MUSIC", "SONIC_PI_SAMPLES", "load_singularity_music", "load_sonic_pi_samples", "sample_category"]

#: Where Debian's ``singularity-music`` installs its tracks.
SINGULARITY_MUSIC = Path("/usr/share/games/singularity/music")
#: Where Debian's ``sonic-pi-samples`` installs its clips.
SONIC_PI_SAMPLES = Path("/usr/share/sonic-pi/samples")


def _folder(path: Path, package: str) -> Path:
    if not path.is_dir():
        raise DataNotInstalledError(
            f"{path} not found: install the Debian package {package} (apt-get install {package})"
        )
    return path


def load_singularity_music(
    *,
    front_end: torch.nn.Module | None = None,
    min_frames: int = 1,
    keep_waveforms: bool = False,
    on_skip: Callable[[SkippedFile], None] | None = None,
    folder: Path = SINGULARITY_MUSIC,
) -> AudioSet:
    """The 16 ``singularity-music`` tracks (``music/``, ``win/``, ``lose/``) with cached mel spectrograms.

    Arguments as in :func:`~xrisk.data.audio.load_audio_folder`. Decoding and resampling 64 minutes of
    48 kHz audio takes about half a minute on one core.
    """
    return load_audio_folder(_folder(Path(folder), "singularity-music"), front_end=front_end, min_frames=min_frames,
                             keep_waveforms=keep_waveforms, on_skip=on_skip)


def sample_category(path: Path) -> str:
    """The category of a Sonic Pi sample: its file-name prefix before the first ``_`` (``bd_haus.flac`` -> ``bd``)."""
    return Path(path).stem.split("_", 1)[0]


def load_sonic_pi_samples(
    *,
    front_end: torch.nn.Module | None = None,
    on_skip: Callable[[SkippedFile], None] | None = None,
    folder: Path = SONIC_PI_SAMPLES,
) -> AudioSet:
    """The 165 labelled ``sonic-pi-samples`` clips; ``labels`` index ``label_names`` (the 14 prefixes, sorted).

    Clips of any length are kept: waveforms shorter than 2048 samples (three clicks of 20-45 ms) are
    zero-padded to 2048 so the front end can frame them, and a probe zero-pads spectrograms shorter than a
    crop (:func:`~xrisk.data.audio.chunk_spectrogram`), as the reference's evaluation does.
    """
    return load_audio_folder(_folder(Path(folder), "sonic-pi-samples"), front_end=front_end,
                             label_fn=sample_category, on_skip=on_skip, pad_to_samples=2048)
