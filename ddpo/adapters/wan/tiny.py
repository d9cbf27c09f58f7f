"""A tiny, random Wan2.1-architecture text-to-video model, built from config (the Wan test model).

The components of diffusers' ``WanPipeline``: a ``WanTransformer3DModel`` (two blocks of
self-attention with 3D rotary positions over ``(frame, row, column)``, cross-attention to the text
and a feed-forward layer), a ``UMT5EncoderModel`` whose last hidden states are the text tokens,
the causal video VAE ``AutoencoderKLWan`` (8x in space, 4x in time, per-channel ``latents_mean``
and ``latents_std``) and, as the stock Wan2.1 folders ship, a ``UniPCMultistepScheduler`` with
flow sigmas and ``flow_shift`` (the policy samples with a flow-matching Euler schedule of that
shift, :func:`ddpo.adapters.wan.checks.wan_euler_scheduler`); only very small. Nothing is
downloaded: the T5 tokenizer is :func:`ddpo.adapters.common.tiny.tiny_t5_tokenizer`. The VAE's
config records the model's default video size (``sample_size`` and ``sample_frames``, read by
the policy where it is given no ``resolution`` or ``num_frames``).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import UMT5Config, UMT5EncoderModel

from ddpo.adapters.common.tiny import (
    TINY_WORDS,
    build_pipeline_folder,
    default_cache_dir,
    tiny_t5_config,
    tiny_t5_tokenizer,
)

TINY_WAN_NAME = "ddpo-tiny-wan-random"
"""Built-in name of the random tiny Wan2.1 model (registered in ``families.py``)."""

_FORMAT_VERSION = 1  # bump when the architecture or vocabulary changes, to rebuild caches

WAN_SCHEDULER_CONFIG: Mapping[str, Any] = {
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
}
"""The scheduler settings of the stock Wan2.1 folders (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``: UniPC
on flow sigmas with ``flow_shift=3.0``, the 480p shift)."""

WAN_LATENTS_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN_LATENTS_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
"""Wan2.1's VAE latent statistics per channel (``AutoencoderKLWan``'s defaults); the tiny VAE
takes the first ``latent_channels``."""

_WAN_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass(frozen=True)
class TinyWanConfig:
    """Sizes of a tiny Wan2.1 model.

    Attributes:
        image_size: frame side in pixels (a multiple of 16: the 8x VAE times the transformer's
            2x2 patches), recorded as the VAE config's ``sample_size``.
        num_frames: frames of a video (``4 k + 1``: the VAE keeps the first frame and packs
            every 4 after it into one latent frame), recorded as the VAE config's
            ``sample_frames``.
        latent_channels: the VAE's ``z_dim``, the transformer's ``in_channels``.
        heads, head_dim: the transformer's attention heads and their width (a multiple of 6 or
            more, split over the rotary axes ``(frame, row, column)``).
        layers: transformer blocks.
        text_dim: the UMT5 encoder's width, the transformer's ``text_dim``.
        vae_dim: the VAE's ``base_dim``.
    """

    image_size: int = 64
    num_frames: int = 5
    latent_channels: int = 4
    heads: int = 2
    head_dim: int = 16
    layers: int = 2
    text_dim: int = 32
    vae_dim: int = 8

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.image_size % 16:
            raise ValueError(f"image_size must be a positive multiple of 16, got {self.image_size}")
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4 k + 1 (k >= 0), got {self.num_frames}")
        if not 1 <= self.latent_channels <= len(WAN_LATENTS_MEAN):
            raise ValueError(f"latent_channels must be in [1, 16], got {self.latent_channels}")


def tiny_wan_transformer(config: TinyWanConfig) -> Any:
    """A random ``WanTransformer3DModel`` of ``config``, from the global torch RNG."""
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=config.heads,
        attention_head_dim=config.head_dim,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        text_dim=config.text_dim,
        freq_dim=32,
        ffn_dim=2 * config.heads * config.head_dim,
        num_layers=config.layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )


def tiny_wan_vae(config: TinyWanConfig) -> Any:
    """A random ``AutoencoderKLWan`` (8x in space: three downsamplings; 4x in time: the last
    two) with per-channel latent statistics (Wan2.1's first ``latent_channels`` values), its
    default video size recorded."""
    vae: Any = AutoencoderKLWan(
        base_dim=config.vae_dim,
        z_dim=config.latent_channels,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=list(WAN_LATENTS_MEAN[: config.latent_channels]),
        latents_std=list(WAN_LATENTS_STD[: config.latent_channels]),
    )
    vae.register_to_config(sample_size=config.image_size, sample_frames=config.num_frames)
    return vae


def tiny_umt5_config(vocab_size: int, width: int) -> UMT5Config:
    """A tiny UMT5 encoder's config: `ddpo.adapters.common.tiny.tiny_t5_config`'s sizes, with
    UMT5's gated-GELU feed-forward and its relative attention bias in every layer."""
    config: UMT5Config = tiny_t5_config(vocab_size, width, UMT5Config)
    return config


def tiny_wan_components(
    seed: int = 0, *, config: TinyWanConfig | None = None, words: tuple[str, ...] = TINY_WORDS
) -> dict[str, Any]:
    """The components of a tiny Wan2.1 pipeline, seeded (``fork_rng``: the caller's RNG kept).

    Returns:
        Keyword arguments for ``WanPipeline``: ``transformer``, ``vae``, ``text_encoder``
        (UMT5), ``tokenizer`` (T5) and ``scheduler`` (UniPC on flow sigmas).
    """
    cfg = config or TinyWanConfig()
    tokenizer = tiny_t5_tokenizer(words, model_max_length=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = tiny_wan_transformer(cfg)
        torch.manual_seed(seed + 1)
        vae = tiny_wan_vae(cfg)
        torch.manual_seed(seed + 2)
        text_encoder = UMT5EncoderModel(tiny_umt5_config(len(tokenizer), cfg.text_dim))
    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": UniPCMultistepScheduler(**WAN_SCHEDULER_CONFIG),
    }


def save_wan_pipeline(components: Mapping[str, Any], folder: str | Path) -> None:
    """Save a ``WanPipeline`` of ``components`` into ``folder`` (safetensors)."""
    pipeline: Any = WanPipeline(**{name: components[name] for name in _WAN_PARTS})
    pipeline.save_pretrained(folder, safe_serialization=True)


def tiny_wan_path(cache_dir: str | Path | None = None, *, seed: int = 0) -> Path:
    """The folder of the tiny Wan2.1 model (``save_pretrained`` layout), built on first use
    (written to a temporary sibling and renamed into place)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / f"{TINY_WAN_NAME}-v{_FORMAT_VERSION}-seed{seed}"
    return build_pipeline_folder(target, lambda: tiny_wan_components(seed), save_wan_pipeline)


__all__ = [
    "TINY_WAN_NAME",
    "WAN_LATENTS_MEAN",
    "WAN_LATENTS_STD",
    "WAN_SCHEDULER_CONFIG",
    "TinyWanConfig",
    "save_wan_pipeline",
    "tiny_umt5_config",
    "tiny_wan_components",
    "tiny_wan_path",
    "tiny_wan_transformer",
    "tiny_wan_vae",
]
