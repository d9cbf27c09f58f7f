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

PerSampleInt = Int[Tensor, " batch"]
"""One integer per sample, ``(batch,)`` (e.g. a group id)."""

AnyBatch = Float[Tensor, "*batch"]
"""Floats of any shape, the same for every argument annotated with it (e.g. per-sample log-probs
``(batch,)`` or per-sample-and-step ``(batch, steps)``)."""

Scalar = Float[Tensor, ""]
"""A zero-dimensional float tensor."""

Trajectory = Float[Tensor, "batch steps"]
"""One float per sample and denoising step, ``(batch, steps)``."""

StepIndices = Int[Tensor, "batch steps"]
"""Integer step indices per sample, ``(batch, steps)``."""

PromptEmbeds = Float[Tensor, "batch tokens dim"]
"""Text-encoder hidden states, ``(batch, tokens, dim)``."""

__all__ = [
    "AnyBatch",
    "Latents",
    "PerSample",
    "PerSampleBool",
    "PerSampleInt",
    "PromptEmbeds",
    "Scalar",
    "StepIndices",
    "Trajectory",
]
