"""Shared jaxtyping aliases for tensor shapes used across the package.

One-dimensional shapes carry a leading space (``" batch"``) as jaxtyping requires for a single
named axis. Checked at run time only when the jaxtyping import hook is installed (the test suite,
or ``DDPO_TYPECHECK=1`` for users).
"""

from collections.abc import Callable
from typing import Any, TypeVar

from jaxtyping import Bool, Float, Int
from torch import Tensor

_F = TypeVar("_F", bound=Callable[..., Any])


def no_type_check(fn: _F) -> _F:
    """Mark ``fn`` as checking its own arguments, with errors that name the argument and the
    value (e.g. ``DDPOTrainer``'s pipeline and objective): the runtime shape checker
    (jaxtyping's import hook, on in the tests and with ``DDPO_TYPECHECK=1``) skips a function
    with a decorator of this name, so that those errors reach the user. Unlike
    ``typing.no_type_check``, static type checkers still check ``fn`` and its callers."""
    return fn


Latents = Float[Tensor, "batch channels *spatial"]
"""A batch of latents or model outputs, ``(batch, channels, height, width)`` for an image family,
``(batch, channels, frames, height, width)`` for a video family (Wan2.1); the same shape for
every argument so annotated."""

Images = Float[Tensor, "batch 3 height width"]
"""A batch of decoded images, float ``(batch, 3, H, W)`` in ``[0, 1]``."""

Videos = Float[Tensor, "batch frames 3 height width"]
"""A batch of decoded videos, float ``(batch, frames, 3, H, W)`` in ``[0, 1]``."""

ImagesOrVideos = Images | Videos
"""What a policy decodes and a reward receives: `Images` or, for a video family, `Videos`."""

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
    "Images",
    "ImagesOrVideos",
    "Latents",
    "PerSample",
    "PerSampleBool",
    "PerSampleInt",
    "PromptEmbeds",
    "Scalar",
    "StepIndices",
    "Trajectory",
    "Videos",
    "no_type_check",
]
