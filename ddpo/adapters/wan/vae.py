"""Wan2.1's VAE as the policy uses it: ``AutoencoderKLWan`` is a causal video VAE whose latents
``(batch, z_dim, frames, h, w)`` are normalised per channel by its config's ``latents_mean`` and
``latents_std`` (no ``scaling_factor`` or ``shift_factor``, unlike SD3's and FLUX.1's).

Decoding is ``WanPipeline``'s (``z std + mean``, the VAE, the video processor), giving videos
``(batch, frames, 3, H, W)`` in ``[0, 1]``; encoding is its inverse, the posterior mean
normalised as diffusers' Wan LoRA training normalises (``(z - mean) / std``).
"""

from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

from ddpo._typing import Latents, Videos
from ddpo.adapters.flow.denoiser import vae_channel_stats

DecodedVideos = Float[Tensor, "batch 3 frames image_height image_width"]
"""The VAE's output: channels before frames, in ``[-1, 1]``."""


def wan_vae_decode(vae: Any, latents: Latents) -> DecodedVideos:
    """The VAE's decoding of final latents as ``WanPipeline`` decodes: ``latents std + mean``
    (written, as the pipeline, as a division by ``1 / std``), in the VAE's dtype; the video
    ``(batch, 3, frames, H, W)`` in ``[-1, 1]``, differentiable."""
    z = latents.to(vae.dtype)
    mean, std = vae_channel_stats(vae, z)
    decoded: Tensor = vae.decode(z / (1.0 / std) + mean, return_dict=False)[0]
    return decoded


def wan_decode_videos(vae: Any, latents: Latents, video_processor: Any) -> Videos:
    """Final latents as videos ``(batch, frames, 3, H, W)`` in ``[0, 1]``, float32,
    differentiable: :func:`wan_vae_decode`, then each frame through the pipeline's
    ``video_processor.postprocess(..., output_type="pt")`` (what its ``postprocess_video``
    does per video)."""
    decoded = wan_vae_decode(vae, latents).transpose(1, 2)  # (batch, frames, 3, H, W)
    frames = cast(Tensor, video_processor.postprocess(decoded.flatten(0, 1), output_type="pt"))
    videos: Videos = frames.reshape(decoded.shape).to(torch.float32)
    return videos


def wan_decode_output(pipe: Any, latents: Latents, output_type: str) -> Any:
    """Decode with ``pipe.vae`` into ``output_type``: ``"latent"``, the latents themselves;
    ``"pt"``, :func:`wan_decode_videos`; ``"np"`` (``(batch, frames, H, W, 3)``) and ``"pil"``
    (a list of lists of frames), the video processor's ``postprocess_video``."""
    if output_type == "latent":
        return latents
    if output_type == "pt":
        return wan_decode_videos(pipe.vae, latents, pipe.video_processor)
    decoded = wan_vae_decode(pipe.vae, latents)
    return pipe.video_processor.postprocess_video(decoded.float(), output_type=output_type)


def wan_vae_encode(vae: Any, videos: Videos) -> Latents:
    """The final latents of videos ``(batch, frames, 3, H, W)`` in ``[0, 1]`` that
    :func:`wan_vae_decode` takes back: the VAE's posterior mean ``z`` of ``2 x - 1``
    (deterministic), ``(z - mean) / std`` (written, as diffusers' training scripts, as a
    product with ``1 / std``); float32, on the VAE's device. The caller checks the videos."""
    pixels = (videos * 2 - 1).transpose(1, 2).to(device=vae.device, dtype=vae.dtype)
    z = vae.encode(pixels, return_dict=False)[0].mean.to(torch.float32)
    mean, std = vae_channel_stats(vae, z)
    latents: Tensor = (z - mean) * (1.0 / std)
    return latents


__all__ = ["wan_decode_output", "wan_decode_videos", "wan_vae_decode", "wan_vae_encode"]
