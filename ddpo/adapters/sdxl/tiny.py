"""A tiny, random Stable-Diffusion-XL-architecture model, built from config (the SDXL test model).

The components of SDXL base (``StableDiffusionXLPipeline``): a ``UNet2DConditionModel`` with
``addition_embed_type="text_time"`` (the pooled text embedding and the six micro-conditioning
time ids added to the timestep embedding), cross-attention over both text encoders' hidden states
concatenated, a ``CLIPTextModel`` and a ``CLIPTextModelWithProjection`` with their tokenizers,
the 8x ``AutoencoderKL`` and SDXL's Euler scheduler config; only very small. Nothing is
downloaded: the tokenizers' vocabulary files are written by :mod:`ddpo.adapters.common.tokenizer`.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ddpo.adapters.common.tiny import (
    TINY_WORDS,
    build_pipeline_folder,
    default_cache_dir,
    tiny_tokenizer,
)
from ddpo.adapters.sd.tiny import TinyModelConfig, sd_v1_schedule, tiny_vae

TINY_SDXL_NAME = "ddpo-tiny-sdxl-random"
"""Built-in name of the random tiny SDXL model (`ddpo.adapters.resolve_pretrained`)."""

_FORMAT_VERSION = 1  # bump when the architecture or vocabulary changes, to rebuild caches

_SDXL_PARTS = (
    "unet",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
)


@dataclass(frozen=True)
class TinySDXLConfig:
    """Sizes of a tiny SDXL model.

    Attributes:
        image_size: image side in pixels (a multiple of 8: the VAE has four levels).
        unet_channels: channels of the UNet's two levels (the lower one has cross-attention,
            as SDXL's first level has none).
        text_dim: width of each text encoder (cross-attention width is twice it).
        text_projection_dim: the second encoder's pooled projection width.
        time_embed_dim: width of each micro-conditioning time id's embedding
            (``addition_time_embed_dim``; SDXL: 256).
        max_prompt_tokens: both tokenizers' padded length (77 as in SDXL).
        force_zeros_for_empty_prompt: the pipeline's flag (SDXL base: True).
    """

    image_size: int = 64
    unet_channels: tuple[int, int] = (32, 64)
    text_dim: int = 32
    text_projection_dim: int = 32
    time_embed_dim: int = 8
    max_prompt_tokens: int = 77
    force_zeros_for_empty_prompt: bool = True

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.image_size % 8:
            raise ValueError(f"image_size must be a positive multiple of 8, got {self.image_size}")


def sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL base's scheduler: Euler on SD's noise schedule, "leading" timesteps, offset 1."""
    schedule = {k: v for k, v in sd_v1_schedule().items() if k != "clip_sample"}
    return EulerDiscreteScheduler(
        **schedule, steps_offset=1, timestep_spacing="leading", interpolation_type="linear"
    )


def tiny_sdxl_unet(config: TinySDXLConfig) -> Any:
    """A random SDXL-style ``UNet2DConditionModel`` of ``config``, from the global torch RNG."""
    return UNet2DConditionModel(
        sample_size=config.image_size // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=config.unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        use_linear_projection=True,
        transformer_layers_per_block=1,
        cross_attention_dim=2 * config.text_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=config.time_embed_dim,
        projection_class_embeddings_input_dim=6 * config.time_embed_dim
        + config.text_projection_dim,
        norm_num_groups=8,
    )


def _text_config(config: TinySDXLConfig, tokenizer: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_dim,
        intermediate_size=2 * config.text_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=config.max_prompt_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=config.text_projection_dim,
        hidden_act="gelu",
    )


def tiny_sdxl_components(
    seed: int = 0, *, config: TinySDXLConfig | None = None, words: tuple[str, ...] = TINY_WORDS
) -> dict[str, Any]:
    """The components of a tiny SDXL pipeline, seeded (``fork_rng``: the caller's RNG is kept).

    Returns:
        Keyword arguments for ``StableDiffusionXLPipeline``: ``unet``, ``vae``,
        ``text_encoder``, ``text_encoder_2``, ``tokenizer``, ``tokenizer_2``, ``scheduler``
        (Euler, as SDXL ships) and ``force_zeros_for_empty_prompt``.
    """
    cfg = config or TinySDXLConfig()
    tokenizer = tiny_tokenizer(words, model_max_length=cfg.max_prompt_tokens)
    tokenizer_2 = tiny_tokenizer(words, model_max_length=cfg.max_prompt_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = tiny_sdxl_unet(cfg)
        torch.manual_seed(seed + 1)
        vae = tiny_vae(TinyModelConfig(image_size=cfg.image_size))
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(_text_config(cfg, tokenizer))
        torch.manual_seed(seed + 3)
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(cfg, tokenizer_2))
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": sdxl_scheduler(),
        "force_zeros_for_empty_prompt": cfg.force_zeros_for_empty_prompt,
    }


def save_sdxl_pipeline(components: Mapping[str, Any], folder: str | Path) -> None:
    """Save a ``StableDiffusionXLPipeline`` of ``components`` into ``folder`` (safetensors)."""
    pipeline: Any = StableDiffusionXLPipeline(
        **{name: components[name] for name in _SDXL_PARTS},
        force_zeros_for_empty_prompt=components.get("force_zeros_for_empty_prompt", True),
        add_watermarker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)


def tiny_sdxl_path(cache_dir: str | Path | None = None, *, seed: int = 0) -> Path:
    """The folder of the tiny SDXL model (``save_pretrained`` layout), built on first use
    (written to a temporary sibling and renamed into place, as :func:`tiny_pipeline_path`)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / f"{TINY_SDXL_NAME}-v{_FORMAT_VERSION}-seed{seed}"
    return build_pipeline_folder(target, lambda: tiny_sdxl_components(seed), save_sdxl_pipeline)


__all__ = [
    "TINY_SDXL_NAME",
    "TinySDXLConfig",
    "save_sdxl_pipeline",
    "sdxl_scheduler",
    "tiny_sdxl_components",
    "tiny_sdxl_path",
    "tiny_sdxl_unet",
]
