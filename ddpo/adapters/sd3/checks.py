"""Checks of a Stable Diffusion 3 / 3.5 model folder, from its JSON files only (before any weights
load), and of an image resolution against the transformer's patch grid.

A DDPO flow policy for SD3 needs ``StableDiffusion3Pipeline``'s components: an
``SD3Transformer2DModel``, the VAE, both CLIP encoders and the T5 encoder with their
tokenizers, and a ``FlowMatchEulerDiscreteScheduler``. Other families' folders are refused with
the class found; widths that do not fit together are named.
"""

from pathlib import Path
from typing import Any

from ddpo.adapters.common.args import Size
from ddpo.adapters.flow.checks import check_flow_pipeline, folder_config

SD3_COMPONENTS: tuple[str, ...] = (
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
    "scheduler",
)
"""Components an SD3 folder's ``model_index.json`` must list."""


def check_sd3_folder(folder: Path) -> dict[str, Any]:
    """Check that ``folder`` holds an SD3/SD3.5 text-to-image model whose parts fit together.

    Returns:
        The transformer's ``config.json`` (read again later for the patch size).

    Raises:
        ValueError: naming the folder and what is wrong: another family (the class found), a
            transformer that is not ``SD3Transformer2DModel``, a scheduler that is not
            flow-matching Euler, or widths of encoders, transformer and VAE that disagree.
    """
    check_flow_pipeline(
        folder,
        pipeline_class="StableDiffusion3Pipeline",
        components=SD3_COMPONENTS,
        family="Stable Diffusion 3",
        transformer_class="SD3Transformer2DModel",
    )
    transformer = folder_config(folder, "transformer", "Stable Diffusion 3")
    vae = folder_config(folder, "vae", "Stable Diffusion 3")
    clip_1, clip_2 = (
        folder_config(folder, "text_encoder", "Stable Diffusion 3"),
        folder_config(folder, "text_encoder_2", "Stable Diffusion 3"),
    )
    pooled = int(clip_1.get("projection_dim", 0)) + int(clip_2.get("projection_dim", 0))
    if transformer.get("pooled_projection_dim") != pooled:
        raise ValueError(
            f"{folder}: the transformer's pooled_projection_dim="
            f"{transformer.get('pooled_projection_dim')} is not the two CLIP encoders' "
            f"projection_dim added ({clip_1.get('projection_dim')} + "
            f"{clip_2.get('projection_dim')} = {pooled})"
        )
    width = folder_config(folder, "text_encoder_3", "Stable Diffusion 3").get("d_model")
    if transformer.get("joint_attention_dim") != width:
        raise ValueError(
            f"{folder}: the transformer's joint_attention_dim="
            f"{transformer.get('joint_attention_dim')} is not text_encoder_3's d_model={width}"
        )
    if vae.get("latent_channels") != transformer.get("in_channels"):
        raise ValueError(
            f"{folder}: the VAE has latent_channels={vae.get('latent_channels')}, the transformer "
            f"takes in_channels={transformer.get('in_channels')}"
        )
    return transformer


def sd3_latent_factor(folder: Path) -> int:
    """Pixels per latent along a side: ``2 ** (len(vae.block_out_channels) - 1)``, as the stock
    pipeline's ``vae_scale_factor`` (``AutoencoderKL``'s one block, factor 1, where the config
    lacks the key)."""
    vae = folder_config(folder, "vae", "Stable Diffusion 3")
    return int(2 ** (len(vae.get("block_out_channels", [64])) - 1))


def check_sd3_resolution(resolution: Size, *, latent_factor: int, patch_size: int) -> Size:
    """``resolution`` checked to be a positive multiple of ``latent_factor * patch_size`` per
    side (the transformer splits the latents into ``patch_size`` squares).

    Raises:
        ValueError: naming ``resolution``, its value and the multiple needed.
    """
    step = latent_factor * patch_size
    if min(resolution) <= 0 or resolution[0] % step or resolution[1] % step:
        raise ValueError(
            f"resolution must be positive multiples of {step} per side for this SD3 model (the "
            f"VAE's {latent_factor}x times the transformer's patch_size={patch_size}), got "
            f"resolution={resolution!r}"
        )
    return resolution


__all__ = ["SD3_COMPONENTS", "check_sd3_folder", "check_sd3_resolution", "sd3_latent_factor"]
