"""Shared jaxtyping aliases for tensor shapes used across the package.

One-dimensional shapes carry a leading space (``" batch"``) as jaxtyping requires for a single
named axis. Checked at run time only when the jaxtyping import hook is installed (the test suite,
or ``DDPO_TYPECHECK=1`` for users).
"""

from jaxtyping import Bool, Float, Int
from torch import Tensor

Latents = Float[Tensor, "batch channels height width"]
"""A batch of latents or model outputs, ``(batch, channels, height, width)``."""

PerSample = Float[Tensor, " batch"]
"""One float per sample, ``(batch,)``."""

PerSampleBool = Bool[Tensor, " batch"]
"""One flag per sample, ``(batch,)``."""

Scalar = Float[Tensor, ""]
"""A zero-dimensional float tensor."""

Trajectory = Float[Tensor, "batch steps"]
"""One float per sample and denoising step, ``(batch, steps)``."""

StepIndices = Int[Tensor, "batch steps"]
"""Integer step indices per sample, ``(batch, steps)``."""

PromptEmbeds = Float[Tensor, "batch tokens dim"]
"""Text-encoder hidden states, ``(batch, tokens, dim)``."""

__all__ = [
    "Latents",
    "PerSample",
    "PerSampleBool",
    "PromptEmbeds",
    "Scalar",
    "StepIndices",
    "Trajectory",
]
