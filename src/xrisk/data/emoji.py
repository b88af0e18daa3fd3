"""Emoji image-caption pairs: a real, offline image-text data set for tiny CLIP experiments.

Each pair is one emoji rendered from the Noto Color Emoji font (Debian ``fonts-noto-color-emoji``)
with Pillow at the font's bitmap size (109 px), padded to a square on a white background and
resized to ``size x size`` RGB, captioned by its English CLDR name from the ``emoji`` package
(``emoji.EMOJI_DATA[e]["en"]``, e.g. ``"zipper-mouth face"``, ``"thumbs up medium skin tone"``,
``"France"``). Only fully-qualified emoji are used; sequences the font lacks (Pillow then draws
several glyphs side by side, so the advance width differs from a single glyph's) are skipped.
With ``emoji==2.16.0`` and the Debian 2.042 font this gives 3,812 pairs.

``groups`` assigns every pair the id of its name without skin-tone words, so the five skin-tone
variants of "thumbs up" share a group: near-duplicate images with different captions, i.e. known
false negatives for one another.

Rendered tensors are cached in ``$XRISK_CACHE`` (default ``~/.cache/xrisk``) as a ``.pt`` file
whose name carries the versions of ``emoji`` and Pillow, the font file size and the image size,
so a change of any of them re-renders.

Example:
    >>> from xrisk.data import load_emoji            # doctest: +SKIP
    >>> pairs = load_emoji()                          # doctest: +SKIP
    >>> pairs.images.shape, pairs.captions[0]         # doctest: +SKIP
    (torch.Size([3812, 3, 32, 32]), '1st place medal')

Licences: font SIL OFL 1.1 / Apache-2.0 (images); CLDR names under the Unicode licence.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["EmojiPairs", "load_emoji", "render_emoji", "emoji_names", "cache_dir", "EMOJI_FONT"]

#: Where Debian's ``fonts-noto-color-emoji`` installs the font.
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
_BITMAP_SIZE = 109  # the only size the CBDT colour font carries
_CACHE_FORMAT = 1
_SKIN = re.compile(r"\s*(medium-light|medium-dark|light|medium|dark) skin tone,?")


def cache_dir() -> Path:
    """The xrisk cache folder: ``$XRISK_CACHE`` or ``~/.cache/xrisk`` (created)."""
    path = Path(os.environ.get("XRISK_CACHE") or Path.home() / ".cache" / "xrisk")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _not_installed(message: str) -> Exception:
    from xrisk.data import DataNotInstalledError  # late import: defined by the data package

    return DataNotInstalledError(message)


def _require_pillow() -> Any:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as e:
        raise _not_installed("the emoji data needs Pillow: pip install 'xrisk[vision]'") from e
    return Image, ImageDraw, ImageFont


def _require_emoji() -> Any:
    try:
        import emoji
    except ImportError as e:
        raise _not_installed("the emoji captions need the emoji package: pip install 'xrisk[vision]'") from e
    return emoji


def _font(font_path: str | os.PathLike[str]) -> Any:
    _, _, ImageFont = _require_pillow()
    if not Path(font_path).is_file():
        raise _not_installed(
            f"emoji font not found at {font_path}; install it with: apt-get install fonts-noto-color-emoji"
        )
    return ImageFont.truetype(str(font_path), _BITMAP_SIZE)


def emoji_names() -> tuple[list[str], list[str]]:
    """All fully-qualified emoji of the ``emoji`` package and their English captions.

    Returns ``(chars, captions)`` in the package's order; a caption is the CLDR name with the
    package's ``:snake_case:`` markup removed (``":thumbs_up:"`` -> ``"thumbs up"``).
    """
    emoji = _require_emoji()
    chars, captions = [], []
    for ch, info in emoji.EMOJI_DATA.items():
        if info.get("status") == emoji.STATUS["fully_qualified"]:
            chars.append(ch)
            captions.append(info["en"].strip(":").replace("_", " "))
    return chars, captions


def render_emoji(
    chars: Sequence[str], *, size: int = 32, font_path: str | os.PathLike[str] = EMOJI_FONT
) -> tuple[Tensor, Tensor]:
    """Render emoji strings to ``size x size`` RGB images.

    Each string is drawn at 109 px in colour on a white square canvas (centred) and resized with
    Lanczos filtering. A string counts as missing from the font when its advance width differs
    from that of a single glyph (Pillow then draws the parts of the sequence separately) or when
    nothing is drawn.

    Args:
        chars: emoji strings.
        size: output side in pixels.
        font_path: the Noto Color Emoji font file.

    Returns:
        ``images`` ``[N, 3, size, size]`` uint8 (all white where missing) and ``ok`` ``[N]`` bool.

    Raises:
        DataNotInstalledError: the font or Pillow is missing.
    """
    Image, ImageDraw, _ = _require_pillow()
    font = _font(font_path)
    single = font.getlength("\U0001F600")  # the advance width of one glyph (grinning face)
    side = int(round(single))
    images = np.full((len(chars), size, size, 3), 255, dtype=np.uint8)
    ok = np.zeros(len(chars), dtype=bool)
    for i, ch in enumerate(chars):
        if abs(font.getlength(ch) - single) > 0.5:
            continue
        canvas = Image.new("RGB", (side, side), "white")
        draw = ImageDraw.Draw(canvas)
        left, top, right, bottom = draw.textbbox((0, 0), ch, font=font, embedded_color=True)
        draw.text(((side - (right - left)) / 2 - left, (side - (bottom - top)) / 2 - top), ch,
                  font=font, embedded_color=True)
        arr = np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS))
        if (arr < 250).any():
            images[i] = arr
            ok[i] = True
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(ok)


@dataclass(frozen=True)
class EmojiPairs:
    """Emoji image-caption pairs.

    Attributes:
        images: ``[N, 3, size, size]`` float32 in ``[0, 1]``.
        captions: ``N`` English names.
        chars: the ``N`` emoji strings.
        groups: ``[N]`` int64 id of the caption without skin-tone words (skin-tone variants share it).
        group_names: the name of every group id.
    """

    images: Tensor
    captions: list[str]
    chars: list[str]
    groups: Tensor
    group_names: list[str]

    def __len__(self) -> int:
        """Number of pairs ``N``."""
        return len(self.captions)


def _group_of(caption: str) -> str:
    return re.sub(r"\s+", " ", _SKIN.sub("", caption)).strip() or caption


def _versions_key(size: int, font_path: str | os.PathLike[str], limit: int | None) -> str:
    import PIL

    emoji = _require_emoji()
    font_bytes = Path(font_path).stat().st_size
    lim = "all" if limit is None else str(limit)
    return f"emoji_{size}px_n{lim}_emoji{emoji.__version__}_pil{PIL.__version__}_font{font_bytes}_v{_CACHE_FORMAT}"


def load_emoji(
    *,
    size: int = 32,
    limit: int | None = None,
    font_path: str | os.PathLike[str] = EMOJI_FONT,
    cache: bool = True,
) -> EmojiPairs:
    """Load (render once, then read from the cache) the emoji image-caption pairs.

    Args:
        size: image side in pixels.
        limit: use only the first ``limit`` emoji of the ``emoji`` package order (before skipping
            missing ones); ``None`` = all.
        font_path: the Noto Color Emoji font.
        cache: read and write the rendered tensors in :func:`cache_dir`.

    Raises:
        DataNotInstalledError: the font (``apt-get install fonts-noto-color-emoji``) or the Python
            packages (``pip install 'xrisk[vision]'``) are missing.
    """
    if not isinstance(size, int) or size < 4:
        raise ValueError(f"size must be an int >= 4, got {size!r}")
    _require_pillow()
    _font(font_path)  # fail early with the install hint
    path = cache_dir() / f"{_versions_key(size, font_path, limit)}.pt" if cache else None
    if path is not None and path.is_file():
        blob = torch.load(path, weights_only=True)
        images_u8, captions, chars = blob["images"], list(blob["captions"]), list(blob["chars"])
    else:
        chars, captions = emoji_names()
        if limit is not None:
            chars, captions = chars[:limit], captions[:limit]
        images_u8, ok = render_emoji(chars, size=size, font_path=font_path)
        keep = ok.nonzero().flatten().tolist()
        images_u8 = images_u8[ok]
        chars, captions = [chars[i] for i in keep], [captions[i] for i in keep]
        if path is not None:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"images": images_u8, "captions": captions, "chars": chars}, tmp)
            tmp.replace(path)
    group_names: list[str] = []
    ids: dict[str, int] = {}
    groups = []
    for c in captions:
        g = _group_of(c)
        if g not in ids:
            ids[g] = len(group_names)
            group_names.append(g)
        groups.append(ids[g])
    return EmojiPairs(
        images=images_u8.float() / 255.0,
        captions=captions,
        chars=chars,
        groups=torch.tensor(groups, dtype=torch.long),
        group_names=group_names,
    )
