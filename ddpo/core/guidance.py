"""Classifier-free guidance."""

from ddpo._typing import Latents


def classifier_free_guidance(uncond: Latents, cond: Latents, guidance_scale: float) -> Latents:
    """Combine unconditional and conditional predictions with classifier-free guidance.

    ``out = uncond + w * (cond - uncond)`` (Ho & Salimans, 2022, Eq. 6, written as diffusers
    does); ``w = 1`` returns ``cond``.

    Args:
        uncond: prediction for the empty or negative prompt, ``(batch, channels, height, width)``.
        cond: prediction for the prompt, same shape.
        guidance_scale: the weight ``w``.

    Returns:
        The guided prediction, same shape and dtype as ``cond``.
    """
    return uncond + guidance_scale * (cond - uncond)
