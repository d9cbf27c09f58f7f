"""Qwen-Image's model-folder checks (from its JSON files only, before any weights load), its image
resolution check and its sampling schedule.

A DDPO flow policy for Qwen-Image needs ``QwenImagePipeline``'s components: a
``QwenImageTransformer2DModel``, the video-style ``AutoencoderKLQwenImage`` (one frame), the
Qwen2.5-VL text encoder with its tokenizer, and a ``FlowMatchEulerDiscreteScheduler``. Other
families' folders are refused with the class found; widths that do not fit are named. The
latents are packed in 2x2 patches as FLUX.1's (:func:`ddpo.adapters.flow.packing.pack_latents`,
the same layout as ``QwenImagePipeline._pack_latents``).
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpo.adapters.common.args import Size
from ddpo.adapters.flow.checks import check_flow_pipeline, folder_config
from ddpo.adapters.flow.packing import check_packed_resolution
from ddpo.adapters.flow.sampling import FlowSchedule, flow_schedule

QWENIMAGE_FAMILY = "Qwen-Image"

QWENIMAGE_COMPONENTS: tuple[str, ...] = (
    "transformer",
    "vae",
    "text_encoder",
    "tokenizer",
    "scheduler",
)
"""Components a Qwen-Image folder's ``model_index.json`` must list."""

QWENIMAGE_DEFAULT_SAMPLE_SIZE = 128
"""``QwenImagePipeline.default_sample_size``: the default image side is this times the VAE
factor (1024 px)."""

NATIVE_SIDE_KEY = "_ddpo_sample_size"
"""The key of a VAE config that records a model's native image side where it is not
``QwenImagePipeline``'s 1024 px (the tiny model's 64): Qwen-Image's VAE config has no
``sample_size``, and diffusers ignores private (``_``) keys silently, keeping them when it saves
the VAE again."""


def _text_width(config: dict[str, Any]) -> Any:
    """The Qwen2.5-VL text model's ``hidden_size`` (under ``text_config`` since transformers 4.5x,
    top-level in older folders)."""
    text = config.get("text_config")
    if isinstance(text, dict) and "hidden_size" in text:
        return text["hidden_size"]
    return config.get("hidden_size")


def check_qwenimage_folder(folder: Path) -> dict[str, Any]:
    """Check that ``folder`` holds a Qwen-Image text-to-image model whose parts fit together.

    Returns:
        The transformer's ``config.json``.

    Raises:
        ValueError: naming the folder and what is wrong: another family (the class found), a
            transformer that is not ``QwenImageTransformer2DModel``, a VAE that is not
            ``AutoencoderKLQwenImage``, a scheduler that is not flow-matching Euler, or widths of
            text encoder, transformer and VAE that disagree.
    """
    index = check_flow_pipeline(
        folder,
        pipeline_class="QwenImagePipeline",
        components=QWENIMAGE_COMPONENTS,
        family=QWENIMAGE_FAMILY,
        transformer_class="QwenImageTransformer2DModel",
    )
    if index["vae"][1] != "AutoencoderKLQwenImage":
        raise ValueError(
            f"{folder}: vae is {index['vae'][1]!r}, expected 'AutoencoderKLQwenImage' (Qwen-Image's"
            " one-frame video VAE with latents_mean and latents_std)"
        )
    transformer = folder_config(folder, "transformer", QWENIMAGE_FAMILY)
    vae = folder_config(folder, "vae", QWENIMAGE_FAMILY)
    width = _text_width(folder_config(folder, "text_encoder", QWENIMAGE_FAMILY))
    if transformer.get("joint_attention_dim") != width:
        raise ValueError(
            f"{folder}: the transformer's joint_attention_dim="
            f"{transformer.get('joint_attention_dim')} is not the text encoder's (Qwen2.5-VL) "
            f"hidden_size={width}"
        )
    channels = vae.get("z_dim")
    if not isinstance(channels, int) or transformer.get("in_channels") != 4 * channels:
        raise ValueError(
            f"{folder}: the transformer takes in_channels={transformer.get('in_channels')}, not "
            f"4 x the VAE's z_dim={channels} (Qwen-Image packs 2x2 latent patches)"
        )
    if transformer.get("out_channels", 16) != channels:
        raise ValueError(
            f"{folder}: the transformer's out_channels={transformer.get('out_channels', 16)} is "
            f"not the VAE's z_dim={channels}"
        )
    for name in ("latents_mean", "latents_std"):
        values = vae.get(name)
        if not isinstance(values, list) or len(values) != channels:
            raise ValueError(
                f"{folder}: the VAE's {name} must hold z_dim={channels} numbers, got {values!r}"
            )
    return transformer


def qwenimage_latent_factor(folder: Path) -> int:
    """Pixels per latent along a side: ``2 ** len(vae.temperal_downsample)``, as the stock
    pipeline's ``vae_scale_factor`` (8 for Qwen-Image)."""
    vae = folder_config(folder, "vae", QWENIMAGE_FAMILY)
    return int(2 ** len(vae.get("temperal_downsample", [False, True, True])))


def qwenimage_native_side(folder: Path) -> int:
    """The image side ``folder``'s model samples by default: its VAE config's
    :data:`NATIVE_SIDE_KEY`, else the stock pipeline's 128 x the VAE factor (1024 px)."""
    side = folder_config(folder, "vae", QWENIMAGE_FAMILY).get(NATIVE_SIDE_KEY)
    if isinstance(side, int) and not isinstance(side, bool):
        return side
    return QWENIMAGE_DEFAULT_SAMPLE_SIZE * qwenimage_latent_factor(folder)


def check_qwenimage_resolution(resolution: Size, *, latent_factor: int) -> Size:
    """`ddpo.adapters.flow.packing.check_packed_resolution` for Qwen-Image."""
    return check_packed_resolution(resolution, latent_factor=latent_factor, family="Qwen-Image")


def qwenimage_schedule(
    scheduler: Any, num_steps: int, device: torch.device | None = None, mu: float | None = None
) -> FlowSchedule:
    """``scheduler.set_timesteps`` as ``QwenImagePipeline`` calls it: the sigmas
    ``linspace(1, 1/num_steps, num_steps)`` before the shift ``mu`` (and the scheduler's own
    ``shift_terminal``, Qwen-Image's 0.02), and its table, as
    :func:`ddpo.adapters.flow.sampling.flow_schedule`."""
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    return flow_schedule(scheduler, num_steps, device, mu, sigmas)


__all__ = [
    "NATIVE_SIDE_KEY",
    "QWENIMAGE_COMPONENTS",
    "QWENIMAGE_DEFAULT_SAMPLE_SIZE",
    "QWENIMAGE_FAMILY",
    "check_qwenimage_folder",
    "check_qwenimage_resolution",
    "qwenimage_latent_factor",
    "qwenimage_native_side",
    "qwenimage_schedule",
]
