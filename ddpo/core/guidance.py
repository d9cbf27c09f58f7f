"""Classifier-free guidance, and the rescaling of guided predictions for zero-SNR models."""

import torch
from torch import Tensor

from ddpo._typing import Latents, PerSample
from ddpo.core._broadcast import per_sample


def classifier_free_guidance(
    uncond: Latents, cond: Latents, guidance_scale: float | PerSample
) -> Latents:
    """Combine unconditional and conditional predictions with classifier-free guidance.

    ``out = uncond + w * (cond - uncond)`` (Ho & Salimans, 2022, Eq. 6, written as diffusers
    does); ``w = 1`` returns ``cond``.

    A per-sample ``w`` gives the same bits as the same number given as a Python float: the
    product is taken in float32 (or wider) and rounded to ``cond``'s dtype, as PyTorch does
    with a Python number.

    Args:
        uncond: prediction for the empty or negative prompt, ``(batch, channels, height, width)``.
        cond: prediction for the prompt, same shape.
        guidance_scale: the weight ``w``, one number or one per sample ``(batch,)``.

    Returns:
        The guided prediction, same shape and dtype as ``cond``.
    """
    if isinstance(guidance_scale, Tensor):
        opmath = torch.promote_types(cond.dtype, torch.float32)
        weight = per_sample(guidance_scale.to(device=cond.device, dtype=opmath), cond)
        return uncond + (weight * (cond - uncond)).to(cond.dtype)
    return uncond + guidance_scale * (cond - uncond)


def rescale_guidance(guided: Latents, cond: Latents, *, guidance_rescale: float) -> Latents:
    """Rescale a guided prediction towards the conditional prediction's standard deviation.

    ``x_rescaled = x_cfg * std(x_pos) / std(x_cfg)`` and
    ``out = phi * x_rescaled + (1 - phi) * x_cfg`` (Lin et al., 2023, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", Sec. 3.4, Eqs. 15-16), with the standard deviations
    taken per sample over all non-batch dimensions (Bessel-corrected, as diffusers'
    ``rescale_noise_cfg``). It counters the over-exposure that strong guidance causes with
    zero-terminal-SNR schedules; ``phi = 0`` returns ``guided`` unchanged.

    Args:
        guided: the classifier-free-guided prediction ``x_cfg``, ``(batch, channels, h, w)``.
        cond: the conditional prediction ``x_pos``, same shape.
        guidance_rescale: ``phi`` in ``[0, 1]``.

    Returns:
        The rescaled prediction, same shape and dtype as ``guided``.

    Raises:
        ValueError: if ``guidance_rescale`` is outside ``[0, 1]``.
    """
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale!r}")
    if guidance_rescale == 0.0:
        return guided
    # 1. Per-sample standard deviations over the non-batch dimensions (float32 statistics).
    dims = tuple(range(1, guided.ndim))
    std_cond = cond.float().std(dim=dims, keepdim=True)
    std_guided = guided.float().std(dim=dims, keepdim=True)
    # 2. Rescale, then mix with the unrescaled prediction.
    rescaled = guided.float() * (std_cond / std_guided)
    out = guidance_rescale * rescaled + (1.0 - guidance_rescale) * guided.float()
    return out.to(guided.dtype)


__all__ = ["classifier_free_guidance", "rescale_guidance"]
