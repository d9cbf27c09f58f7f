"""FLUX.1's model-folder checks (from its JSON files only, before any weights load), its image
resolution check, and its latent layout: 2x2 packing into tokens, and the tokens' position ids.

A DDPO flow policy for FLUX.1 needs ``FluxPipeline``'s components: a ``FluxTransformer2DModel``,
the VAE, the CLIP and T5 encoders with their tokenizers, and a ``FlowMatchEulerDiscreteScheduler``.
Other families' folders are refused with the class found; widths that do not fit are named.
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ddpo.adapters.common.args import Size
from ddpo.adapters.flow.checks import check_flow_pipeline, folder_config
from ddpo.adapters.flow.packing import (
    PackedLatents,
    check_packed_resolution,
    pack_latents,
    unpack_latents,
)
from ddpo.adapters.flow.sampling import FlowSchedule, flow_schedule

FLUX_COMPONENTS: tuple[str, ...] = (
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
)
"""Components a FLUX.1 folder's ``model_index.json`` must list."""


def check_flux_folder(folder: Path) -> dict[str, Any]:
    """Check that ``folder`` holds a FLUX.1 text-to-image model whose parts fit together.

    Returns:
        The transformer's ``config.json`` (``guidance_embeds`` tells dev from schnell).

    Raises:
        ValueError: naming the folder and what is wrong: another family (the class found), a
            transformer that is not ``FluxTransformer2DModel``, a scheduler that is not
            flow-matching Euler, or widths of encoders, transformer and VAE that disagree.
    """
    check_flow_pipeline(
        folder,
        pipeline_class="FluxPipeline",
        components=FLUX_COMPONENTS,
        family="FLUX.1",
        transformer_class="FluxTransformer2DModel",
    )
    transformer = folder_config(folder, "transformer", "FLUX.1")
    vae = folder_config(folder, "vae", "FLUX.1")
    clip_width = folder_config(folder, "text_encoder", "FLUX.1").get("hidden_size")
    if transformer.get("pooled_projection_dim") != clip_width:
        raise ValueError(
            f"{folder}: the transformer's pooled_projection_dim="
            f"{transformer.get('pooled_projection_dim')} is not text_encoder's (CLIP) "
            f"hidden_size={clip_width}"
        )
    t5_width = folder_config(folder, "text_encoder_2", "FLUX.1").get("d_model")
    if transformer.get("joint_attention_dim") != t5_width:
        raise ValueError(
            f"{folder}: the transformer's joint_attention_dim="
            f"{transformer.get('joint_attention_dim')} is not text_encoder_2's (T5) "
            f"d_model={t5_width}"
        )
    channels = vae.get("latent_channels")
    if not isinstance(channels, int) or transformer.get("in_channels") != 4 * channels:
        raise ValueError(
            f"{folder}: the transformer takes in_channels={transformer.get('in_channels')}, not "
            f"4 x the VAE's latent_channels={channels} (FLUX packs 2x2 latent patches)"
        )
    return transformer


def flux_latent_factor(folder: Path) -> int:
    """Pixels per latent along a side: ``2 ** (len(vae.block_out_channels) - 1)``, as the stock
    pipeline's ``vae_scale_factor`` (``AutoencoderKL``'s one block, factor 1, where the config
    lacks the key)."""
    vae = folder_config(folder, "vae", "FLUX.1")
    return int(2 ** (len(vae.get("block_out_channels", [64])) - 1))


def check_flux_resolution(resolution: Size, *, latent_factor: int) -> Size:
    """`ddpo.adapters.flow.packing.check_packed_resolution` for FLUX.1."""
    return check_packed_resolution(resolution, latent_factor=latent_factor, family="FLUX.1")


def latent_image_ids(
    rows: int, columns: int, *, device: torch.device, dtype: torch.dtype
) -> Float[Tensor, "tokens 3"]:
    """The rotary position ids of the packed tokens: ``(0, row, column)`` per patch, row-major."""
    row = torch.arange(rows, dtype=torch.float32).repeat_interleave(columns)
    column = torch.arange(columns, dtype=torch.float32).repeat(rows)
    ids = torch.stack([torch.zeros_like(row), row, column], dim=-1)
    return ids.to(device=device, dtype=dtype)


def flux_schedule(
    scheduler: Any, num_steps: int, device: torch.device | None = None, mu: float | None = None
) -> FlowSchedule:
    """``scheduler.set_timesteps`` as diffusers' ``FluxPipeline`` calls it (the sigmas
    ``linspace(1, 1/num_steps, num_steps)`` before the shift ``mu``, unless the scheduler makes
    flow sigmas itself) and its table, as :func:`ddpo.adapters.flow.sampling.flow_schedule`."""
    sigmas = None
    if not scheduler.config.get("use_flow_sigmas", False):
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    return flow_schedule(scheduler, num_steps, device, mu, sigmas)


__all__ = [
    "FLUX_COMPONENTS",
    "PackedLatents",
    "check_flux_folder",
    "check_flux_resolution",
    "flux_latent_factor",
    "flux_schedule",
    "latent_image_ids",
    "pack_latents",
    "unpack_latents",
]
