"""A trivial reward for smoke tests and demos: the mean pixel value of each image."""

from typing import Any

import torch
from jaxtyping import Float

from ddpo.rewards._images import to_float_nchw

__all__ = ["brightness"]


def brightness(
    images: Any, prompts: Any = None, prompt_metadata: Any = None
) -> tuple[Float[torch.Tensor, " batch"], dict[str, Any]]:
    """Reward = mean of all pixel values in [0, 1] (brighter images score higher)."""
    del prompts, prompt_metadata
    return to_float_nchw(images).mean(dim=(1, 2, 3)), {}
