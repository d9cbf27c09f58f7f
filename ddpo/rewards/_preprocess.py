"""The image preprocessing of the original reward models, reproduced exactly.

The originals take PIL images, so they see 8-bit pixels. The reward contract's float images are
first quantised as saving them would (``round(255 x)``, clipped to [0, 255]; diffusers'
``numpy_to_pil`` does the same), then each original's own steps follow:

- OpenCLIP's ``ResizeMaxSize`` (HPS v2, ``light_augmentation=True``): ``ToTensor`` (``x / 255``
  in float32), then on the float tensor a bicubic antialiased resize of the longest side to
  ``size`` (the other side ``round(side * size / longest)``), zero padding to ``size x size``
  (the floor half on the left and top), normalisation. No clamp after the resize. Done here on
  the model's device, batched (the same torch kernel as torchvision's tensor resize).
- transformers' CLIP image processor (PickScore, CLIPScore, the aesthetic predictor), PIL
  backend: a PIL bicubic resize of the 8-bit image so that the shortest side is ``size`` and the
  other ``int(size * long / short)`` (truncated), a centre crop at ``((h - crop_h) // 2,
  (w - crop_w) // 2)``, ``x * (1 / 255)`` in float64 cast to float32, normalisation.
- torchvision's ``Resize(size, BICUBIC)``, ``CenterCrop(size)``, ``ToTensor()``, ``Normalize``
  on a PIL image (ImageReward, OpenAI CLIP): the same PIL resize; the crop at
  ``int(round((h - crop_h) / 2))`` (Python's round, half to even); ``x / 255`` in float32.

The PIL steps run per image on the CPU; the caller moves the stacked result to its device.

Differentiable counterparts (for reward backpropagation) take the float images themselves, with
their gradients, and run in torch on their device, in their dtype: no quantisation, no PIL.
:func:`resize_crop` resizes the shortest side with ``F.interpolate(mode="bicubic",
antialias=True)`` (Keys' cubic with ``a = -0.75``, where PIL's bicubic has ``a = -0.5``) to the
sizes the exact path computes, then crops at the convention's offsets and normalises; where the
image already has the resized size nothing is resampled, so on 8-bit images it matches the exact
path to float rounding. OpenCLIP's convention already runs in torch: :func:`resize_longest_and_pad`
on the images without :func:`quantised_float_nchw` is its differentiable form.
"""

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image

from ddpo.rewards._images import to_uint8_nhwc

__all__ = [
    "Convention",
    "check_float_images",
    "pil_resize_crop",
    "quantised_float_nchw",
    "resize_crop",
    "resize_longest_and_pad",
]

Convention = Literal["transformers", "torchvision"]
"""Whose centre crop and 8-bit-to-float conversion to follow (see the module docstring)."""


def quantised_float_nchw(images: Any) -> Float[torch.Tensor, "batch 3 height width"]:
    """Images as float32 ``(batch, 3, H, W)`` holding 8-bit values ``k / 255``.

    A float tensor ``(batch, 3, H, W)`` in [0, 1] is quantised on its own device
    (``round(255 x)``, clipped); other inputs go through ``to_uint8_nhwc``.
    """
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        if images.ndim != 4 or images.shape[1] != 3 or 0 in images.shape[2:]:
            raise ValueError(f"images must be (batch, 3, H, W), got shape {tuple(images.shape)}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images hold NaN or infinite values; they must be in [0, 1]")
        levels = (images.detach().float() * 255).round().clamp(0, 255)
    else:
        levels = torch.from_numpy(to_uint8_nhwc(images)).permute(0, 3, 1, 2).float()
    return levels / 255


def check_float_images(images: Any) -> Float[torch.Tensor, "batch 3 height width"]:
    """``images`` if it is a float tensor ``(batch, 3, H, W)`` (a differentiable reward's input).

    Raises:
        ValueError: naming ``images`` and its type, dtype or shape otherwise.
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        what = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"images of a differentiable reward must be a float tensor (batch, 3, H, W) in "
            f"[0, 1], got {what}"
        )
    if images.ndim != 4 or images.shape[1] != 3 or 0 in images.shape[2:]:
        raise ValueError(f"images must be (batch, 3, H, W), got shape {tuple(images.shape)}")
    return images


def _normalise(
    pixels: Float[torch.Tensor, "batch 3 height width"],
    mean: Sequence[float],
    std: Sequence[float],
) -> Float[torch.Tensor, "batch 3 height width"]:
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


def resize_longest_and_pad(
    pixels: Float[torch.Tensor, "batch 3 height width"],
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Float[torch.Tensor, "batch 3 size size"]:
    """OpenCLIP's ``ResizeMaxSize(size)`` then ``Normalize(mean, std)`` on float pixels.

    The longest side becomes ``size`` and the other ``round(side * size / longest)`` (bicubic,
    antialiased, no clamp); zeros pad the result to ``size x size``, ``pad // 2`` of them on the
    left and top. Where the longest side already is ``size``, OpenCLIP neither resizes nor pads
    (a non-square image then fails in the ViT); this pads it.
    """
    height, width = pixels.shape[-2:]
    scale = size / max(height, width)
    new_size = (round(height * scale), round(width * scale))
    if new_size != (height, width):
        pixels = F.interpolate(pixels, size=new_size, mode="bicubic", antialias=True)
    pad_h, pad_w = size - new_size[0], size - new_size[1]
    if pad_h or pad_w:
        pixels = F.pad(pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return _normalise(pixels, mean, std)


def _shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """``(new_height, new_width)``: the shortest side ``shortest_edge``, the other truncated."""
    if height <= width:
        return shortest_edge, int(shortest_edge * width / height)
    return int(shortest_edge * height / width), shortest_edge


def _crop_start(side: int, crop: int, convention: Convention) -> int:
    if convention == "torchvision":
        return round((side - crop) / 2.0)  # Python round: half to even
    return (side - crop) // 2


def _centre_crop(image: np.ndarray, crop: tuple[int, int], convention: Convention) -> np.ndarray:
    """The centre ``crop`` of an ``(H, W, 3)`` image; zero-padded around it where it is larger."""
    crop_h, crop_w = crop
    height, width = image.shape[:2]
    if height < crop_h or width < crop_w:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        padding = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
        image = np.pad(image, padding)
        height, width = image.shape[:2]
    top = _crop_start(height, crop_h, convention)
    left = _crop_start(width, crop_w, convention)
    return image[top : top + crop_h, left : left + crop_w]


_TORCH_MODES: dict[int, Literal["bilinear", "bicubic"]] = {
    int(Image.Resampling.BILINEAR): "bilinear",
    int(Image.Resampling.BICUBIC): "bicubic",
}


def resize_crop(
    images: Float[torch.Tensor, "batch 3 height width"],
    *,
    shortest_edge: int,
    crop: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    convention: Convention,
    resample: int = Image.Resampling.BICUBIC,
) -> Float[torch.Tensor, "batch 3 crop_h crop_w"]:
    """The differentiable form of :func:`pil_resize_crop`: resize, centre crop, normalise in
    torch, on the images' device and in their dtype, without quantisation.

    The shortest side becomes ``shortest_edge`` and the other ``int(shortest_edge * long /
    short)`` (``F.interpolate``, antialiased, ``align_corners=False``; skipped where the size
    does not change); the crop is taken at the convention's offsets (zero padding first where
    the image is smaller than the crop); then ``(x - mean) / std``.

    Args:
        images: float ``(batch, 3, H, W)`` in [0, 1], gradients kept.
        shortest_edge, crop, mean, std, convention: as :func:`pil_resize_crop`.
        resample: PIL filter of the original: bicubic (3) or bilinear (2).

    Raises:
        ValueError: naming ``images`` (see :func:`check_float_images`) or ``resample``.
    """
    images = check_float_images(images)
    mode = _TORCH_MODES.get(int(resample))
    if mode is None:
        raise ValueError(f"resample must be PIL's bicubic (3) or bilinear (2), got {resample!r}")
    height, width = images.shape[-2:]
    new_size = _shortest_edge_size(height, width, shortest_edge)
    pixels = images
    if new_size != (height, width):
        pixels = F.interpolate(
            pixels, size=new_size, mode=mode, antialias=True, align_corners=False
        )
    crop_h, crop_w = crop
    pad_h, pad_w = max(crop_h - new_size[0], 0), max(crop_w - new_size[1], 0)
    if pad_h or pad_w:
        pixels = F.pad(pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    top = _crop_start(pixels.shape[-2], crop_h, convention)
    left = _crop_start(pixels.shape[-1], crop_w, convention)
    return _normalise(pixels[..., top : top + crop_h, left : left + crop_w], mean, std)


def pil_resize_crop(
    images: Any,
    *,
    shortest_edge: int,
    crop: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    convention: Convention,
    resample: int = Image.Resampling.BICUBIC,
) -> Float[torch.Tensor, "batch 3 crop_h crop_w"]:
    """PIL resize of each 8-bit image (shortest side ``shortest_edge``), centre crop, float
    conversion and normalisation, as ``convention`` does them; float32 on the CPU.

    Args:
        images: a batch as ``to_uint8_nhwc`` takes it (float images are quantised first).
        shortest_edge: the resized shortest side; the other is truncated to an int.
        crop: ``(height, width)`` of the centre crop.
        mean, std: per-channel normalisation.
        convention: ``"transformers"`` (CLIP image processor) or ``"torchvision"``.
        resample: PIL resampling filter (bicubic).
    """
    arrays = to_uint8_nhwc(images)
    if arrays.shape[0] == 0:
        return torch.zeros(0, 3, *crop)
    crops = []
    for array in arrays:
        height, width = array.shape[:2]
        new_h, new_w = _shortest_edge_size(height, width, shortest_edge)
        resized = np.asarray(Image.fromarray(array).resize((new_w, new_h), resample=resample))
        crops.append(_centre_crop(resized, crop, convention))
    levels = np.stack(crops).transpose(0, 3, 1, 2)
    if convention == "transformers":
        pixels = torch.from_numpy((levels.astype(np.float64) * (1 / 255)).astype(np.float32))
    else:
        pixels = torch.from_numpy(np.ascontiguousarray(levels)).float().div(255)
    return _normalise(pixels, mean, std)
