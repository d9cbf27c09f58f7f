"""Convert the image batches that reward functions receive into one canonical form."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image


def to_uint8_nhwc(images: Any) -> np.ndarray:
    """An image batch as a ``(batch, height, width, 3)`` uint8 array.

    Accepts what DDPOTrainer passes (a float tensor ``(batch, 3, H, W)`` in [0, 1]), a uint8
    tensor ``(batch, 3, H, W)``, a numpy array ``(batch, H, W, 3)`` (uint8, or float in [0, 1]),
    or a sequence of PIL images. Floats are scaled by 255, rounded and clipped.

    Raises:
        ValueError: if ``images`` has another layout, no pixels, or non-finite values.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3 or 0 in images.shape[2:]:
            raise ValueError(f"images must be (batch, 3, H, W), got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            if not bool(torch.isfinite(images).all()):
                raise ValueError("images hold NaN or infinite values; they must be in [0, 1]")
            images = (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape[1:3]:
            raise ValueError(f"images must be (batch, H, W, 3), got shape {images.shape}")
        if images.dtype != np.uint8:
            if not np.isfinite(images).all():
                raise ValueError("images hold NaN or infinite values; they must be in [0, 1]")
            images = np.clip(np.round(images.astype(np.float64) * 255), 0, 255).astype(np.uint8)
        return images
    if isinstance(images, Sequence) and all(isinstance(im, Image.Image) for im in images):
        return np.stack([np.asarray(im.convert("RGB")) for im in images])
    raise ValueError(
        f"images must be a tensor, an array or a list of PIL images, got {type(images).__name__}"
    )


def to_float_nchw(images: Any) -> torch.Tensor:
    """An image batch as a float32 ``(batch, 3, H, W)`` tensor in [0, 1] (see `to_uint8_nhwc`)."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (batch, 3, H, W), got shape {tuple(images.shape)}")
        return images.detach().float().clamp(0, 1)
    return torch.from_numpy(to_uint8_nhwc(images)).permute(0, 3, 1, 2).float() / 255
