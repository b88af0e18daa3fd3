"""Batched augmentations: shapes, value range, determinism under a seeded generator, and the geometry."""

import pytest
import torch

from xrisk.data import ContrastiveAugment
from xrisk.data.augment import (
    gaussian_noise,
    random_brightness_contrast,
    random_erasing,
    random_horizontal_flip,
    random_resized_crop,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (3, 3, 32, 32)])
def test_pipeline_shape_range_and_determinism(shape):
    x = torch.rand(shape)
    aug = ContrastiveAugment()
    a, b = aug(x, _gen(1)), aug(x, _gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    g = _gen(1)
    v1, v2 = aug(x, g), aug(x, g)  # two views from one generator differ
    assert not torch.allclose(v1, v2)
    assert not torch.allclose(aug(x, _gen(2)), a)


def test_full_scale_crop_is_identity():
    x = torch.rand(4, 1, 8, 8)
    y = random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=_gen())
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_crop_of_quarter_area_zooms_into_a_quadrant():
    # a 2x-zoom crop (area 1/4) of a horizontal ramp spans half the ramp's range
    ramp = torch.linspace(0, 1, 16).expand(2, 1, 16, 16).contiguous()
    y = random_resized_crop(ramp, scale=(0.25, 0.25), ratio=(1.0, 1.0), generator=_gen())
    span = y[:, 0, 8, -1] - y[:, 0, 8, 0]
    assert torch.all((span > 0.4) & (span < 0.55))
    assert random_resized_crop(ramp, size=(8, 8), generator=_gen()).shape == (2, 1, 8, 8)


def test_flip_probability_extremes():
    x = torch.rand(3, 1, 4, 5)
    assert torch.equal(random_horizontal_flip(x, p=1.0, generator=_gen()), x.flip(-1))
    assert torch.equal(random_horizontal_flip(x, p=0.0, generator=_gen()), x)


def test_brightness_contrast_identity_at_zero_strength():
    x = torch.rand(3, 3, 6, 6)
    torch.testing.assert_close(random_brightness_contrast(x, brightness=0.0, contrast=0.0, p=1.0, generator=_gen()), x)
    y = random_brightness_contrast(x, brightness=0.5, contrast=0.5, p=1.0, generator=_gen())
    assert not torch.allclose(y, x) and y.min() >= 0 and y.max() <= 1


def test_erasing_sets_one_box_to_value():
    x = torch.ones(6, 1, 20, 20)
    y = random_erasing(x, p=1.0, scale=(0.1, 0.1), value=0.0, generator=_gen())
    for img in y[:, 0]:
        zeros = (img == 0).nonzero()
        assert len(zeros) > 0
        r0, c0 = zeros.min(0).values
        r1, c1 = zeros.max(0).values
        assert (img[r0 : r1 + 1, c0 : c1 + 1] == 0).all()  # a filled rectangle
        assert 0.03 < len(zeros) / 400 < 0.2


def test_noise_statistics_and_bad_inputs():
    x = torch.full((2, 1, 64, 64), 0.5)
    y = gaussian_noise(x, std=0.1, generator=_gen())
    assert abs(float((y - x).std()) - 0.1) < 0.01
    with pytest.raises(ValueError, match="shape"):
        ContrastiveAugment()(torch.rand(28, 28))
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop(torch.rand(1, 1, 4, 4), scale=(0.0, 1.0))
