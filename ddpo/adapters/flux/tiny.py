"""A tiny, random FLUX.1-architecture model, built from config (the FLUX test model).

The components of diffusers' ``FluxPipeline``: a ``FluxTransformer2DModel`` (one double-stream
and one single-stream block, rotary position ids over ``(text, row, column)``, the guidance
embedding of guidance-distilled FLUX.1-dev unless ``guidance_embeds=False`` as FLUX.1-schnell),
a ``CLIPTextModel`` whose pooled output conditions the modulation, a ``T5EncoderModel`` whose
hidden states are the text tokens, an ``AutoencoderKL`` with FLUX's ``scaling_factor`` and
``shift_factor`` and the latent channels the transformer's packed ``in_channels / 4`` imply, and
a ``FlowMatchEulerDiscreteScheduler`` with FLUX's resolution-dependent shift; only very small.
Nothing is downloaded: the CLIP tokenizer is written by :mod:`ddpo.adapters.common.tokenizer`,
the T5 tokenizer by :func:`ddpo.adapters.common.tiny.tiny_t5_tokenizer`.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, T5EncoderModel

from ddpo.adapters.common.tiny import (
    TINY_WORDS,
    build_pipeline_folder,
    default_cache_dir,
    tiny_t5_config,
    tiny_t5_tokenizer,
    tiny_tokenizer,
)

TINY_FLUX_NAME = "ddpo-tiny-flux-random"
"""Built-in name of the random tiny FLUX.1 model (to be registered in ``registry.py``)."""

_FORMAT_VERSION = 1  # bump when the architecture or vocabulary changes, to rebuild caches

FLUX_SCALING_FACTOR = 0.3611
FLUX_SHIFT_FACTOR = 0.1159
FLUX_SCHEDULER_CONFIG: Mapping[str, Any] = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
"""FLUX.1's flow-match scheduler settings: ``mu`` linear in the image's token count."""

_FLUX_PARTS = (
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
)


@dataclass(frozen=True)
class TinyFluxConfig:
    """Sizes of a tiny FLUX.1 model.

    Attributes:
        image_size: image side in pixels (a multiple of 16: the 8x VAE times FLUX's 2x2 packing).
        latent_channels: the VAE's latent channels (the transformer takes four times as many).
        heads, head_dim: the transformer's attention heads and their width (``head_dim`` is
            split over the rotary axes ``(text, row, column)`` as ``head_dim / 4, / 4, / 2``).
        layers, single_layers: double-stream and single-stream blocks.
        clip_dim: the CLIP encoder's width, the transformer's ``pooled_projection_dim``.
        t5_dim: the T5 encoder's width, the transformer's ``joint_attention_dim``.
        max_prompt_tokens: the CLIP tokenizer's padded length (77 as in FLUX.1).
        guidance_embeds: the guidance embedding of FLUX.1-dev (``False``: schnell-like).
    """

    image_size: int = 64
    latent_channels: int = 4
    heads: int = 2
    head_dim: int = 16
    layers: int = 1
    single_layers: int = 1
    clip_dim: int = 32
    t5_dim: int = 32
    max_prompt_tokens: int = 77
    guidance_embeds: bool = True

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.image_size % 16:
            raise ValueError(f"image_size must be a positive multiple of 16, got {self.image_size}")
        if self.head_dim <= 0 or self.head_dim % 4:
            raise ValueError(f"head_dim must be a positive multiple of 4, got {self.head_dim}")


def tiny_flux_transformer(config: TinyFluxConfig) -> Any:
    """A random ``FluxTransformer2DModel`` of ``config``, from the global torch RNG."""
    quarter = config.head_dim // 4
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * config.latent_channels,
        num_layers=config.layers,
        num_single_layers=config.single_layers,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.heads,
        joint_attention_dim=config.t5_dim,
        pooled_projection_dim=config.clip_dim,
        guidance_embeds=config.guidance_embeds,
        axes_dims_rope=(quarter, quarter, config.head_dim - 2 * quarter),
    )


def tiny_flux_vae(config: TinyFluxConfig) -> Any:
    """A random ``AutoencoderKL`` (8x) with FLUX's latent scaling and shift."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        latent_channels=config.latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=config.image_size,
        scaling_factor=FLUX_SCALING_FACTOR,
        shift_factor=FLUX_SHIFT_FACTOR,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def tiny_flux_components(
    seed: int = 0, *, config: TinyFluxConfig | None = None, words: tuple[str, ...] = TINY_WORDS
) -> dict[str, Any]:
    """The components of a tiny FLUX.1 pipeline, seeded (``fork_rng``: the caller's RNG kept).

    Returns:
        Keyword arguments for ``FluxPipeline``: ``transformer``, ``vae``, ``text_encoder``
        (CLIP), ``text_encoder_2`` (T5), their tokenizers and ``scheduler``.
    """
    cfg = config or TinyFluxConfig()
    tokenizer = tiny_tokenizer(words, model_max_length=cfg.max_prompt_tokens)
    tokenizer_2 = tiny_t5_tokenizer(words, model_max_length=512)
    clip = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.clip_dim,
        intermediate_size=2 * cfg.clip_dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=cfg.max_prompt_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    t5 = tiny_t5_config(len(tokenizer_2), cfg.t5_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = tiny_flux_transformer(cfg)
        torch.manual_seed(seed + 1)
        vae = tiny_flux_vae(cfg)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(clip)
        torch.manual_seed(seed + 3)
        text_encoder_2 = T5EncoderModel(t5)
    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
    }


def save_flux_pipeline(components: Mapping[str, Any], folder: str | Path) -> None:
    """Save a ``FluxPipeline`` of ``components`` into ``folder`` (safetensors)."""
    pipeline: Any = FluxPipeline(**{name: components[name] for name in _FLUX_PARTS})
    pipeline.save_pretrained(folder, safe_serialization=True)


def tiny_flux_path(cache_dir: str | Path | None = None, *, seed: int = 0) -> Path:
    """The folder of the tiny FLUX.1 model (``save_pretrained`` layout, guidance-embedding), built
    on first use (written to a temporary sibling and renamed into place)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / f"{TINY_FLUX_NAME}-v{_FORMAT_VERSION}-seed{seed}"
    return build_pipeline_folder(target, lambda: tiny_flux_components(seed), save_flux_pipeline)


__all__ = [
    "FLUX_SCALING_FACTOR",
    "FLUX_SCHEDULER_CONFIG",
    "FLUX_SHIFT_FACTOR",
    "TINY_FLUX_NAME",
    "TinyFluxConfig",
    "save_flux_pipeline",
    "tiny_flux_components",
    "tiny_flux_path",
    "tiny_flux_transformer",
    "tiny_flux_vae",
]
