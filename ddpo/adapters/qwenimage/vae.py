"""Qwen-Image's VAE as the policy uses it: ``AutoencoderKLQwenImage`` is a causal video VAE,
here on one frame, whose latents are normalised per channel by its config's ``latents_mean`` and
``latents_std`` (no ``scaling_factor`` or ``shift_factor``, unlike SD3's and FLUX.1's).

The policy's final latents are ``(batch, z_dim, h, w)`` (the frame axis dropped); decoding is
``QwenImagePipeline``'s (``z std + mean`` on one frame, the VAE, the image processor) and
encoding its inverse, the posterior mean normalised as diffusers' Qwen-Image LoRA training
script normalises (``(z - mean) / std``).
"""

from typing import Any, cast

import torch
from diffusers.image_processor import VaeImageProcessor
from jaxtyping import Float
from torch import Tensor

from ddpo._typing import Latents
from ddpo.adapters.flow.denoiser import vae_channel_stats

Images = Float[Tensor, "batch 3 image_height image_width"]


def qwenimage_vae_decode(vae: Any, latents: Latents) -> Images:
    """The VAE's decoding of final latents as ``QwenImagePipeline`` decodes: one frame of
    ``latents std + mean`` (written, as the pipeline, as a division by ``1 / std``), in the
    VAE's dtype, in ``[-1, 1]``, differentiable."""
    z = latents.to(vae.dtype).unsqueeze(2)
    mean, std = vae_channel_stats(vae, z)
    decoded: Tensor = vae.decode(z / (1.0 / std) + mean, return_dict=False)[0]
    return decoded[:, :, 0]


def qwenimage_decode_images(
    vae: Any, latents: Latents, image_processor: VaeImageProcessor
) -> Images:
    """Final latents as images in ``[0, 1]``, float32, differentiable: :func:`qwenimage_vae_decode`,
    then the pipeline's ``image_processor.postprocess(..., output_type="pt")``."""
    decoded = qwenimage_vae_decode(vae, latents)
    images = cast(Tensor, image_processor.postprocess(decoded, output_type="pt"))
    return images.to(torch.float32)


def qwenimage_decode_output(pipe: Any, latents: Latents, output_type: str) -> Any:
    """Decode with ``pipe.vae`` into ``output_type`` (``"latent"``: ``latents`` themselves;
    ``"pt"``: :func:`qwenimage_decode_images`; ``"pil"`` and ``"np"``: the image processor's)."""
    if output_type == "latent":
        return latents
    if output_type == "pt":
        return qwenimage_decode_images(pipe.vae, latents, pipe.image_processor)
    decoded = qwenimage_vae_decode(pipe.vae, latents)
    return pipe.image_processor.postprocess(decoded.float(), output_type=output_type)


def qwenimage_vae_encode(vae: Any, images: Images) -> Latents:
    """The final latents of images in ``[0, 1]`` that :func:`qwenimage_vae_decode` takes back:
    the VAE's posterior mean ``z`` of ``2 x - 1`` on one frame (deterministic), ``(z - mean) /
    std`` (written, as diffusers' training script, as a product with ``1 / std``); float32, on
    the VAE's device. The caller checks the images."""
    pixels = (images * 2 - 1).to(device=vae.device, dtype=vae.dtype).unsqueeze(2)
    z = vae.encode(pixels, return_dict=False)[0].mean.to(torch.float32)
    mean, std = vae_channel_stats(vae, z)
    latents: Tensor = ((z - mean) * (1.0 / std))[:, :, 0]
    return latents


__all__ = [
    "qwenimage_decode_images",
    "qwenimage_decode_output",
    "qwenimage_vae_decode",
    "qwenimage_vae_encode",
]
