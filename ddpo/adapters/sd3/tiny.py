"""A tiny, random Stable-Diffusion-3-architecture model, built from config (the SD3 test model).

The components of ``StableDiffusion3Pipeline``: an ``SD3Transformer2DModel`` (MMDiT; here with
one SD3.5-style dual-attention block and RMS query/key norm), two ``CLIPTextModelWithProjection``
encoders whose penultimate hidden states are concatenated, a ``T5EncoderModel``, the 16-channel
``AutoencoderKL`` with SD3's ``scaling_factor``/``shift_factor``, and a
``FlowMatchEulerDiscreteScheduler`` with SD3's ``shift=3.0``; only very small. Nothing is
downloaded: the CLIP tokenizers are written by :mod:`ddpo.adapters.common.tokenizer`, the T5
tokenizer is a ``tokenizers`` Unigram model over :data:`ddpo.adapters.common.tiny.TINY_WORDS`.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    T5EncoderModel,
)

from ddpo.adapters.common.tiny import (
    TINY_WORDS,
    build_pipeline_folder,
    default_cache_dir,
    tiny_t5_config,
    tiny_t5_tokenizer,
    tiny_tokenizer,
)

TINY_SD3_NAME = "ddpo-tiny-sd3-random"
"""Built-in name of the random tiny SD3 model (to be registered in ``registry.py``)."""

_FORMAT_VERSION = 1  # bump when the architecture or vocabulary changes, to rebuild caches

SD3_SCALING_FACTOR = 1.5305
SD3_SHIFT_FACTOR = 0.0609
SD3_SHIFT = 3.0

_SD3_PARTS = (
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


@dataclass(frozen=True)
class TinySD3Config:
    """Sizes of a tiny SD3 model.

    Attributes:
        image_size: image side in pixels (a multiple of 16: the 8x VAE times the patch size 2).
        heads, head_dim: the transformer's attention heads and their width.
        layers: transformer blocks (the first has SD3.5's second self-attention).
        clip_dim: width of each CLIP encoder (their concatenation is padded to the T5 width).
        clip_projection_dim: each CLIP encoder's pooled projection (pooled width is twice it).
        t5_dim: the T5 encoder's width, the transformer's ``joint_attention_dim``.
        max_prompt_tokens: the CLIP tokenizers' padded length (77 as in SD3).
    """

    image_size: int = 64
    heads: int = 2
    head_dim: int = 16
    layers: int = 2
    clip_dim: int = 16
    clip_projection_dim: int = 16
    t5_dim: int = 32
    max_prompt_tokens: int = 77

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.image_size % 16:
            raise ValueError(f"image_size must be a positive multiple of 16, got {self.image_size}")


def tiny_sd3_transformer(config: TinySD3Config) -> Any:
    """A random ``SD3Transformer2DModel`` of ``config``, from the global torch RNG."""
    return SD3Transformer2DModel(
        sample_size=config.image_size // 8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=config.layers,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.heads,
        joint_attention_dim=config.t5_dim,
        caption_projection_dim=config.heads * config.head_dim,
        pooled_projection_dim=2 * config.clip_projection_dim,
        pos_embed_max_size=32,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )


def tiny_sd3_vae(config: TinySD3Config) -> Any:
    """A random 16-channel ``AutoencoderKL`` (8x) with SD3's latent scaling and shift."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        latent_channels=16,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=config.image_size,
        scaling_factor=SD3_SCALING_FACTOR,
        shift_factor=SD3_SHIFT_FACTOR,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def tiny_clip_config(
    tokenizer: Any,
    *,
    width: int,
    projection_dim: int,
    max_positions: int,
    layers: int = 2,
    mlp_ratio: int = 2,
) -> CLIPTextConfig:
    """A 2-head ``CLIPTextConfig`` of ``width`` over ``tokenizer``'s vocabulary (SD3's encoders
    are ``CLIPTextModelWithProjection``; ``projection_dim`` is the pooled width)."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=mlp_ratio * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection_dim,
        hidden_act="gelu",
    )


def _clip_config(config: TinySD3Config, tokenizer: Any) -> CLIPTextConfig:
    return tiny_clip_config(
        tokenizer,
        width=config.clip_dim,
        projection_dim=config.clip_projection_dim,
        max_positions=config.max_prompt_tokens,
    )


def tiny_sd3_components(
    seed: int = 0, *, config: TinySD3Config | None = None, words: tuple[str, ...] = TINY_WORDS
) -> dict[str, Any]:
    """The components of a tiny SD3 pipeline, seeded (``fork_rng``: the caller's RNG is kept).

    Returns:
        Keyword arguments for ``StableDiffusion3Pipeline``: ``transformer``, ``vae``, the three
        text encoders and tokenizers, and ``scheduler`` (flow-match Euler, ``shift=3.0``).
    """
    cfg = config or TinySD3Config()
    tokenizer = tiny_tokenizer(words, model_max_length=cfg.max_prompt_tokens)
    tokenizer_2 = tiny_tokenizer(words, model_max_length=cfg.max_prompt_tokens)
    tokenizer_3 = tiny_t5_tokenizer(words)
    t5 = tiny_t5_config(len(tokenizer_3), cfg.t5_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = tiny_sd3_transformer(cfg)
        torch.manual_seed(seed + 1)
        vae = tiny_sd3_vae(cfg)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModelWithProjection(_clip_config(cfg, tokenizer))
        torch.manual_seed(seed + 3)
        text_encoder_2 = CLIPTextModelWithProjection(_clip_config(cfg, tokenizer_2))
        torch.manual_seed(seed + 4)
        text_encoder_3 = T5EncoderModel(t5)
    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "text_encoder_2": text_encoder_2.eval(),
        "text_encoder_3": text_encoder_3.eval(),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "tokenizer_3": tokenizer_3,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=SD3_SHIFT),
    }


def save_sd3_pipeline(components: Mapping[str, Any], folder: str | Path) -> None:
    """Save a ``StableDiffusion3Pipeline`` of ``components`` into ``folder`` (safetensors)."""
    pipeline: Any = StableDiffusion3Pipeline(**{name: components[name] for name in _SD3_PARTS})
    pipeline.save_pretrained(folder, safe_serialization=True)


def tiny_sd3_path(cache_dir: str | Path | None = None, *, seed: int = 0) -> Path:
    """The folder of the tiny SD3 model (``save_pretrained`` layout), built on first use
    (written to a temporary sibling and renamed into place, as :func:`tiny_pipeline_path`)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / f"{TINY_SD3_NAME}-v{_FORMAT_VERSION}-seed{seed}"
    return build_pipeline_folder(target, lambda: tiny_sd3_components(seed), save_sd3_pipeline)


__all__ = [
    "SD3_SCALING_FACTOR",
    "SD3_SHIFT",
    "SD3_SHIFT_FACTOR",
    "TINY_SD3_NAME",
    "TinySD3Config",
    "save_sd3_pipeline",
    "tiny_clip_config",
    "tiny_sd3_components",
    "tiny_sd3_path",
    "tiny_sd3_transformer",
    "tiny_sd3_vae",
]
