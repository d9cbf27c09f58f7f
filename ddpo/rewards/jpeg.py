"""JPEG (in)compressibility rewards, the DDPO paper's first two tasks (Black et al. 2023, §6.1).

The reward is the size of the image saved as a JPEG at quality 95, in kilobytes (1 kB = 1000
bytes): ``jpeg_incompressibility`` returns ``+size`` and ``jpeg_compressibility`` ``-size``,
as the reference implementation measured them.
"""

import io
from typing import Any

import torch
from jaxtyping import Float
from PIL import Image

from ddpo.rewards._images import to_uint8_nhwc

__all__ = ["jpeg_compressibility", "jpeg_incompressibility", "jpeg_size_kb"]


def jpeg_size_kb(images: Any, *, quality: int = 95) -> Float[torch.Tensor, " batch"]:
    """Size of each image saved as a JPEG at ``quality``, in kB (1000 bytes).

    Args:
        images: a float tensor ``(batch, 3, H, W)`` in [0, 1], a uint8 tensor of that shape, a
            uint8 array ``(batch, H, W, 3)`` or a list of PIL images.
        quality: JPEG quality, 1 to 100 (the paper used 95).

    Returns:
        float32 tensor ``(batch,)``.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality}")
    sizes = []
    for array in to_uint8_nhwc(images):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


def jpeg_incompressibility(
    images: Any, prompts: Any = None, prompt_metadata: Any = None
) -> tuple[Float[torch.Tensor, " batch"], dict[str, Any]]:
    """Reward ``+`` JPEG size in kB: larger (more detailed) images score higher."""
    del prompts, prompt_metadata
    return jpeg_size_kb(images), {}


def jpeg_compressibility(
    images: Any, prompts: Any = None, prompt_metadata: Any = None
) -> tuple[Float[torch.Tensor, " batch"], dict[str, Any]]:
    """Reward ``-`` JPEG size in kB: smaller (simpler) images score higher."""
    del prompts, prompt_metadata
    return -jpeg_size_kb(images), {}
