"""What a sampling call of any family returns."""

from dataclasses import dataclass
from typing import Any

from jaxtyping import Float
from torch import Tensor


@dataclass
class DDPOPipelineOutput:
    """What a DDPO pipeline call returns.

    Attributes:
        images: the decoded images: a list of PIL images (``output_type="pil"``, the default), a
            float tensor ``(batch, 3, H, W)`` in ``[0, 1]`` (``"pt"``) or a numpy array
            ``(batch, H, W, 3)`` in ``[0, 1]`` (``"np"``); for a video family videos:
            ``(batch, frames, 3, H, W)`` (``"pt"``), ``(batch, frames, H, W, 3)`` (``"np"``) or
            a list of lists of PIL frames.
        latents: every latent of the trajectory, ``x_T`` first, ``(batch, T + 1, C, h, w)``
            (``(batch, T + 1, C, frames, h, w)`` for video).
        log_probs: the log-density of each denoising step, ``(batch, T)``.
    """

    images: Any
    latents: Float[Tensor, "batch steps_plus_one channels *spatial"]
    log_probs: Float[Tensor, "batch steps"]
