"""JPEG rewards, image conversion and the weighted sum of rewards."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddpo.rewards import (
    jpeg_compressibility,
    jpeg_incompressibility,
    jpeg_size_kb,
    weighted_sum,
)
from ddpo.rewards._images import to_float_nchw, to_uint8_nhwc


def _flat_and_noisy(size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    flat = torch.full((3, size, size), 0.5)
    noisy = torch.rand(3, size, size, generator=generator)
    return torch.stack([flat, noisy])


def test_flat_image_is_more_compressible_than_noise() -> None:
    images = _flat_and_noisy()
    sizes = jpeg_size_kb(images)
    assert sizes.shape == (2,)
    assert sizes[0] < sizes[1] / 4
    comp, comp_meta = jpeg_compressibility(images, ("a", "b"), ({}, {}))
    incomp, _ = jpeg_incompressibility(images, ("a", "b"), ({}, {}))
    assert comp_meta == {}
    assert comp[0] > comp[1]
    assert incomp[1] > incomp[0]
    torch.testing.assert_close(comp, -incomp)


def test_jpeg_size_matches_a_direct_pil_save() -> None:
    import io

    images = _flat_and_noisy(32)
    array = (images[1] * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    assert jpeg_size_kb(images)[1].item() == pytest.approx(buffer.tell() / 1000)


def test_image_formats_agree() -> None:
    images = _flat_and_noisy(16)
    as_uint8 = to_uint8_nhwc(images)
    assert as_uint8.dtype == np.uint8 and as_uint8.shape == (2, 16, 16, 3)
    pil = [Image.fromarray(a) for a in as_uint8]
    np.testing.assert_array_equal(to_uint8_nhwc(pil), as_uint8)
    np.testing.assert_array_equal(
        to_uint8_nhwc(torch.from_numpy(as_uint8).permute(0, 3, 1, 2)), as_uint8
    )
    torch.testing.assert_close(to_float_nchw(as_uint8), images, atol=1 / 255, rtol=0)
    with pytest.raises(ValueError, match="images"):
        to_uint8_nhwc(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="quality"):
        jpeg_size_kb(images, quality=0)


def test_images_without_pixels_or_with_non_finite_values_are_refused() -> None:
    """Not cast silently: NaN would become some 8-bit level, an empty image a ZeroDivisionError."""
    from ddpo.rewards._preprocess import quantised_float_nchw

    nan = torch.full((1, 3, 8, 8), float("nan"))
    for convert in (jpeg_size_kb, quantised_float_nchw):
        with pytest.raises(ValueError, match="NaN or infinite"):
            convert(nan)
        with pytest.raises(ValueError, match=r"got shape \(1, 3, 0, 8\)"):
            convert(torch.zeros(1, 3, 0, 8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        jpeg_size_kb(np.full((1, 8, 8, 3), np.inf))


def _brightness(images, prompts, metadata):  # type: ignore[no-untyped-def]
    return images.mean(dim=(1, 2, 3)), {"note": ["x"] * len(prompts)}


def test_weighted_sum_adds_terms_and_reports_each() -> None:
    images = _flat_and_noisy(32)
    reward = weighted_sum({"brightness": (_brightness, 2.0), "jpeg": (jpeg_compressibility, 0.5)})
    total, metadata = reward(images, ("a", "b"), ({}, {}))
    bright = images.mean(dim=(1, 2, 3))
    jpeg = jpeg_compressibility(images, None, None)[0]
    torch.testing.assert_close(total, 2.0 * bright + 0.5 * jpeg)
    torch.testing.assert_close(metadata["brightness"], bright)
    torch.testing.assert_close(metadata["jpeg"], jpeg)
    assert metadata["brightness/note"] == ["x", "x"]


def test_weighted_sum_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        weighted_sum({})
    with pytest.raises(ValueError, match="weight"):
        weighted_sum({"b": (_brightness, float("nan"))})
    # (with runtime type checks on, beartype rejects it first with a TypeError)
    with pytest.raises((ValueError, TypeError), match=r"reward_fn, weight|rewards"):
        weighted_sum({"b": _brightness})  # type: ignore[dict-item]

    def short(images, prompts, metadata):  # type: ignore[no-untyped-def]
        return [1.0], {}

    def nan(images, prompts, metadata):  # type: ignore[no-untyped-def]
        return [1.0, float("nan")], {}

    images = _flat_and_noisy(8)
    with pytest.raises(ValueError, match="'short' returned 1 values"):
        weighted_sum({"short": (short, 1.0)})(images, ("a", "b"), ({}, {}))
    with pytest.raises(
        ValueError, match=r"'nan' returned non-finite values at sample indices \[1\]"
    ):
        weighted_sum({"nan": (nan, 1.0)})(images, ("a", "b"), ({}, {}))
