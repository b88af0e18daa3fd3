"""Emoji image-caption pairs: rendering a handful, missing-glyph detection, captions, groups and the cache."""

import os

import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("emoji")

from xrisk.data.emoji import EMOJI_FONT, emoji_names, load_emoji, render_emoji  # noqa: E402

needs_font = pytest.mark.skipif(not os.path.isfile(EMOJI_FONT), reason="apt-get install fonts-noto-color-emoji")


@needs_font
def test_render_handful_and_detect_missing():
    chars = ["\U0001F600", "\U0001F431", "\U0001F1EB\U0001F1F7", "\U0001F44D\U0001F3FD",  # grinning, cat, France, thumbs up
             "\U0001FAC6",  # fingerprint (Unicode 16, not in the Debian 2.042 font: draws nothing)
             "\U0001F9D1\u200D\U0001F384\u200D\U0001F9D1"]  # an invented ZWJ sequence: drawn as several glyphs
    images, ok = render_emoji(chars, size=32)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
    assert ok.tolist() == [True, True, True, True, False, False]
    drawn = images[:4].float()
    assert ((drawn < 200).float().mean(dim=(1, 2, 3)) > 0.1).all()      # real content, not blank
    assert (images[4:] == 255).all()                                    # missing ones stay white
    # colour: the grinning face is yellow (red and green well above blue in its centre)
    centre = drawn[0, :, 12:20, 12:20].mean(dim=(1, 2))
    assert centre[0] > 150 and centre[1] > 120 and centre[2] < 100
    # distinct images
    assert (drawn[0] - drawn[1]).abs().mean() > 10


def test_captions_are_cldr_names():
    chars, captions = emoji_names()
    assert len(chars) == len(captions) > 3800
    names = dict(zip(chars, captions))
    assert names["\U0001F600"] == "grinning face"
    assert names["\U0001F1EB\U0001F1F7"] == "France"
    assert names["\U0001F44D\U0001F3FD"] == "thumbs up medium skin tone"


@needs_font
def test_load_emoji_cache_and_groups(tmp_path, monkeypatch):
    monkeypatch.setenv("XRISK_CACHE", str(tmp_path))
    pairs = load_emoji(limit=40)
    assert 0 < len(pairs) <= 40
    assert pairs.images.shape == (len(pairs), 3, 32, 32) and pairs.images.dtype == torch.float32
    assert 0 <= float(pairs.images.min()) and float(pairs.images.max()) <= 1
    files = list(tmp_path.glob("emoji_32px_n40_*.pt"))
    assert len(files) == 1
    again = load_emoji(limit=40)
    assert torch.equal(again.images, pairs.images) and again.captions == pairs.captions
    # skin-tone variants share a group named after the base emoji
    chars, captions = emoji_names()
    idx = [i for i, c in enumerate(captions) if c.startswith("thumbs up")][:3]
    sub = load_emoji(limit=max(idx) + 1, cache=False)
    g = {sub.captions[i]: int(sub.groups[i]) for i in range(len(sub))}
    assert g["thumbs up"] == g["thumbs up light skin tone"] == g["thumbs up dark skin tone"]
    assert sub.group_names[g["thumbs up"]] == "thumbs up"


def test_missing_font_names_debian_package(tmp_path):
    from xrisk.data import DataNotInstalledError

    with pytest.raises(DataNotInstalledError, match="apt-get install fonts-noto-color-emoji"):
        load_emoji(font_path=tmp_path / "missing.ttf")
