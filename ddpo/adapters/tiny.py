"""A tiny, random Stable-Diffusion-architecture model, built from config: the test model.

Same components as Stable Diffusion (``UNet2DConditionModel``, ``AutoencoderKL`` with 8x spatial
compression, ``CLIPTextModel`` and a ``CLIPTokenizer``), only very small, so a full sampling pass
runs on a laptop CPU in about a second. It is seeded and deterministic, written once with
``save_pretrained`` into a cache folder and afterwards loaded from there like any other model.
Nothing is downloaded.
"""

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ddpo.adapters.tokenizer import write_clip_tokenizer

TINY_MODEL_NAME = "ddpo-tiny-random"
"""Registry name of the random tiny model (:func:`ddpo.adapters.registry.resolve_pretrained`)."""

_FORMAT_VERSION = 2  # bump when the architecture or vocabulary changes, to rebuild caches

TINY_WORDS: tuple[str, ...] = (
    # articles, prepositions and glue words of simple prompts
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "picture", "painting", "image",
    "drawing", "background", "small", "large", "big", "tiny", "one", "two", "three", "four",
    # colours
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "black", "white", "gray",
    "brown", "cyan",
    # shapes
    "circle", "square", "triangle", "star", "cross", "ring", "disk", "ball", "box", "shape",
    "shapes",
    # animals
    "cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird", "sheep", "deer", "cow",
    "goat", "lion", "tiger", "bear", "raccoon", "fox", "wolf", "lizard", "beetle", "ant",
    "butterfly", "fish", "shark", "whale", "dolphin", "squirrel", "mouse", "rat", "snake",
    "turtle", "frog", "chicken", "duck", "goose", "bee", "pig", "turkey", "fly", "llama",
    "camel", "bat", "gorilla", "hedgehog", "kangaroo",
)  # fmt: skip
"""The words the tiny tokenizer holds as single tokens (any other text still tokenizes)."""


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes of the tiny model; the defaults are the cached ``ddpo-tiny-random``.

    Attributes:
        image_size: image side in pixels (the latent side is ``image_size // 8``).
        unet_channels: channels of the UNet's two resolution levels.
        vae_channels: channels of the VAE's four levels (three 2x down-samplings).
        text_dim: width of the text encoder and of the UNet's cross-attention.
        text_layers: transformer layers of the text encoder.
        max_prompt_tokens: the tokenizer's padded length (77 as in Stable Diffusion).
    """

    image_size: int = 64
    unet_channels: tuple[int, int] = (32, 64)
    vae_channels: tuple[int, int, int, int] = (8, 16, 32, 32)
    text_dim: int = 32
    text_layers: int = 2
    max_prompt_tokens: int = 77


def sd_v1_ddim_scheduler() -> DDIMScheduler:
    """Stable Diffusion v1's noise schedule as a DDIM scheduler (as SD 1.x checkpoints ship it)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def tiny_model_components(
    seed: int = 0,
    *,
    config: TinyModelConfig | None = None,
    tokenizer_dir: str | Path | None = None,
    words: tuple[str, ...] = TINY_WORDS,
) -> dict[str, Any]:
    """Build the components of a tiny Stable Diffusion pipeline from config, seeded.

    Args:
        seed: seeds the random initialisation; the same seed gives the same weights.
        config: sizes; defaults to :class:`TinyModelConfig`.
        tokenizer_dir: where to write the tokenizer files (a temporary folder if ``None``).
        words: the tokenizer's single-token words.

    Returns:
        Keyword arguments for ``StableDiffusionPipeline``: ``unet``, ``vae``, ``text_encoder``,
        ``tokenizer``, ``scheduler`` (DDIM), ``safety_checker=None``,
        ``feature_extractor=None``, ``requires_safety_checker=False``.
    """
    cfg = config or TinyModelConfig()
    if cfg.image_size % 8 != 0 or cfg.image_size <= 0:
        raise ValueError(f"image_size must be a positive multiple of 8, got {cfg.image_size}")
    if tokenizer_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            write_clip_tokenizer(tmp, words, model_max_length=cfg.max_prompt_tokens)
            tokenizer = CLIPTokenizer.from_pretrained(tmp)
    else:
        write_clip_tokenizer(tokenizer_dir, words, model_max_length=cfg.max_prompt_tokens)
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)

    # Seeded from the global generator inside fork_rng: building a model (e.g. the first use of
    # the cache) must not move the caller's RNG, or what the caller draws next would depend
    # on whether the model was already on disk.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet: Any = UNet2DConditionModel(
            sample_size=cfg.image_size // 8,
            in_channels=4,
            out_channels=4,
            block_out_channels=cfg.unet_channels,
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cfg.text_dim,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        torch.manual_seed(seed + 1)
        vae: Any = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
            block_out_channels=cfg.vae_channels,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=cfg.image_size,
        )
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=cfg.text_dim,
                intermediate_size=2 * cfg.text_dim,
                num_hidden_layers=cfg.text_layers,
                num_attention_heads=4,
                max_position_embeddings=cfg.max_prompt_tokens,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                projection_dim=cfg.text_dim,
            )
        )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": sd_v1_ddim_scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def default_cache_dir() -> Path:
    """``$DDPO_CACHE_DIR`` if set, else ``~/.cache/ddpo``."""
    env = os.environ.get("DDPO_CACHE_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddpo"


def tiny_pipeline_path(cache_dir: str | Path | None = None, *, seed: int = 0) -> Path:
    """The folder of the tiny model (``save_pretrained`` layout), building it on first use.

    The folder is written into a temporary sibling and renamed into place, so concurrent
    processes never see a half-written model; the loser of a race discards its copy.

    Args:
        cache_dir: parent folder; defaults to :func:`default_cache_dir`.
        seed: the weights' seed (``0`` for ``ddpo-tiny-random``).

    Returns:
        Path of a folder that ``StableDiffusionPipeline.from_pretrained`` loads.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / f"{TINY_MODEL_NAME}-v{_FORMAT_VERSION}-seed{seed}"
    return build_pipeline_folder(target, lambda: tiny_model_components(seed))


def build_pipeline_folder(target: Path, make_components: Callable[[], dict[str, Any]]) -> Path:
    """Save ``StableDiffusionPipeline(**make_components())`` to ``target`` unless it is there.

    The folder is written into a temporary sibling and renamed into place, so concurrent
    processes never see a half-written model; the loser of a race discards its copy.

    Returns:
        ``target``, a folder that ``StableDiffusionPipeline.from_pretrained`` loads.
    """
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        pipeline: Any = StableDiffusionPipeline(**make_components())
        pipeline.save_pretrained(staging, safe_serialization=True)
        del pipeline
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


__all__ = [
    "TINY_MODEL_NAME",
    "TINY_WORDS",
    "TinyModelConfig",
    "build_pipeline_folder",
    "default_cache_dir",
    "sd_v1_ddim_scheduler",
    "tiny_model_components",
    "tiny_pipeline_path",
]
