"""A trivial reward for smoke tests and demos: the mean pixel value of each image."""

from typing import Any

import torch
from jaxtyping import Float

from ddpo.rewards._images import to_float_nchw

__all__ = ["brightness"]


def brightness(
    images: Any, prompts: Any = None, prompt_metadata: Any = None
) -> tuple[Float[torch.Tensor, " batch"], dict[str, Any]]:
    """Reward = mean of all pixel values in [0, 1] (brighter images score higher).

    Differentiable: a float tensor ``(batch, 3, H, W)`` is clamped to [0, 1] and averaged with
    its gradients, on its device (float32, or float64 for float64 images); other batches go
    through ``to_float_nchw``.
    """
    del prompts, prompt_metadata
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (batch, 3, H, W), got shape {tuple(images.shape)}")
        pixels = images.to(torch.promote_types(images.dtype, torch.float32)).clamp(0, 1)
        return pixels.mean(dim=(1, 2, 3)), {}
    return to_float_nchw(images).mean(dim=(1, 2, 3)), {}
