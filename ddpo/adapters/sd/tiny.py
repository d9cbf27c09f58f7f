"""A tiny, random Stable-Diffusion-architecture model, built from config: the test model.

Same components as Stable Diffusion (``UNet2DConditionModel``, ``AutoencoderKL`` with 8x spatial
compression, ``CLIPTextModel`` and a ``CLIPTokenizer``), only very small, so a full sampling pass
runs on a laptop CPU in about a second. It is seeded and deterministic, written once with
``save_pretrained`` into a cache folder and afterwards loaded from there like any other model.
Nothing is downloaded.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ddpo.adapters.common.tiny import (
    TINY_WORDS,
    build_pipeline_folder,
    default_cache_dir,
    tiny_tokenizer,
)

TINY_MODEL_NAME = "ddpo-tiny-random"
"""Built-in name of the random tiny model (:func:`ddpo.adapters.resolve_pretrained`)."""

_FORMAT_VERSION = 2  # bump when the architecture or vocabulary changes, to rebuild caches

_PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass(frozen=True)
class TinyModelConfig:
    """Architecture and noise schedule of a tiny model; the defaults are ``ddpo-tiny-random``.

    The same builders make ``ddpo-tiny-random`` (defaults) and the trained ``ddpo-tiny-shapes``
    (:mod:`ddpo.models.train_tiny_shapes` sets its sizes, a pooled-caption embedding and a
    v-prediction, zero-terminal-SNR schedule).

    Attributes:
        image_size: image side in pixels (the latent side is ``image_size // 2 ** (levels - 1)``
            for the VAE's ``levels = len(vae_channels)``).
        unet_channels: channels of the UNet's resolution levels (at least two; every level but
            the lowest has cross-attention).
        vae_channels: channels of the VAE's levels (a 2x down-sampling between two levels).
        text_dim: width of the text encoder and of the UNet's cross-attention.
        text_layers: transformer layers of the text encoder.
        text_heads: attention heads of the text encoder.
        text_projection_dim: the text config's ``projection_dim`` (recorded only: a
            ``CLIPTextModel`` has no projection); ``None`` means ``text_dim``.
        token_embedding_std: if set, the token embeddings are redrawn from N(0, std^2) so that
            word identity dominates a random encoder's output; ``None`` keeps transformers' init.
        pooled_text_heads: if set, the UNet adds a pooled-caption embedding with this many heads
            to its timestep embedding (diffusers' ``addition_embed_type="text"``).
        max_prompt_tokens: the tokenizer's padded length (77 as in Stable Diffusion).
        prediction_type: what the UNet predicts, ``"epsilon"`` or ``"v_prediction"``.
        zero_terminal_snr: rescale the betas so that the last timestep is pure noise (Lin et al.
            2023) and sample with ``"trailing"`` timesteps that start there.
    """

    image_size: int = 64
    unet_channels: tuple[int, ...] = (32, 64)
    vae_channels: tuple[int, ...] = (8, 16, 32, 32)
    text_dim: int = 32
    text_layers: int = 2
    text_heads: int = 4
    text_projection_dim: int | None = None
    token_embedding_std: float | None = None
    pooled_text_heads: int | None = None
    max_prompt_tokens: int = 77
    prediction_type: str = "epsilon"
    zero_terminal_snr: bool = False

    def __post_init__(self) -> None:
        if len(self.unet_channels) < 2:
            raise ValueError(f"unet_channels needs at least two levels, got {self.unet_channels}")
        if not self.vae_channels:
            raise ValueError(f"vae_channels needs at least one level, got {self.vae_channels}")
        factor = self.latent_factor
        if self.image_size <= 0 or self.image_size % factor != 0:
            raise ValueError(
                f"image_size must be a positive multiple of {factor} (the VAE's down-sampling), "
                f"got {self.image_size}"
            )
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}"
            )
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ValueError(
                "zero_terminal_snr=True needs prediction_type='v_prediction' (the noise cannot be "
                f"predicted from pure noise), got prediction_type={self.prediction_type!r}"
            )

    @property
    def latent_factor(self) -> int:
        """How many pixels one latent holds along a side: ``2 ** (len(vae_channels) - 1)``."""
        return int(2 ** (len(self.vae_channels) - 1))


def sd_v1_schedule(
    *, prediction_type: str = "epsilon", zero_terminal_snr: bool = False
) -> dict[str, Any]:
    """Stable Diffusion v1's noise schedule: keyword arguments of a diffusers scheduler.

    Args:
        prediction_type: ``"epsilon"`` (as SD 1.x) or ``"v_prediction"``.
        zero_terminal_snr: rescale the betas to a zero terminal SNR (Lin et al. 2023).

    Returns:
        ``num_train_timesteps``, the ``scaled_linear`` betas, ``clip_sample=False``,
        ``prediction_type`` and ``rescale_betas_zero_snr``, for ``DDIMScheduler`` or
        ``DDPMScheduler``.
    """
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "prediction_type": prediction_type,
        "rescale_betas_zero_snr": zero_terminal_snr,
    }


def sd_v1_ddim_scheduler(
    *, prediction_type: str = "epsilon", zero_terminal_snr: bool = False
) -> DDIMScheduler:
    """Stable Diffusion v1's noise schedule as a DDIM scheduler (as SD 1.x checkpoints ship it).

    With ``zero_terminal_snr`` the sampling timesteps are ``"trailing"`` (they start at the
    pure-noise step), else ``"leading"`` as in SD 1.x; arguments as :func:`sd_v1_schedule`.
    """
    return DDIMScheduler(
        **sd_v1_schedule(prediction_type=prediction_type, zero_terminal_snr=zero_terminal_snr),
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing" if zero_terminal_snr else "leading",
    )


def tiny_unet(config: TinyModelConfig) -> Any:
    """A random ``UNet2DConditionModel`` of ``config``, drawn from the global torch RNG."""
    levels = len(config.unet_channels)
    extra: dict[str, Any] = {}
    if config.pooled_text_heads is not None:
        # a pooled-caption embedding added to the timestep embedding: a global conditioning
        # path (colour, background) besides cross-attention, which a tiny model learns fast
        extra = {
            "addition_embed_type": "text",
            "addition_embed_type_num_heads": config.pooled_text_heads,
        }
    return UNet2DConditionModel(
        sample_size=config.image_size // config.latent_factor,
        in_channels=4,
        out_channels=4,
        block_out_channels=config.unet_channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=config.text_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    )


def tiny_vae(config: TinyModelConfig) -> Any:
    """A random ``AutoencoderKL`` (4 latent channels) of ``config``, from the global torch RNG."""
    levels = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.vae_channels,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=config.image_size,
    )


def tiny_text_encoder(config: TinyModelConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A random ``CLIPTextModel`` of ``config`` for ``tokenizer``, from the global torch RNG."""
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_dim,
            intermediate_size=2 * config.text_dim,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_prompt_tokens,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=config.text_projection_dim or config.text_dim,
        )
    )
    if config.token_embedding_std is not None:
        embeddings: Any = text_encoder.get_input_embeddings()
        with torch.no_grad():
            embeddings.weight.normal_(std=config.token_embedding_std)
    return text_encoder


def tiny_model_components(
    seed: int = 0,
    *,
    config: TinyModelConfig | None = None,
    tokenizer_dir: str | Path | None = None,
    words: tuple[str, ...] = TINY_WORDS,
) -> dict[str, Any]:
    """Build the components of a tiny Stable Diffusion pipeline from config, seeded.

    The UNet, the VAE and the text encoder are drawn after ``torch.manual_seed`` of ``seed``,
    ``seed + 1`` and ``seed + 2``, inside ``fork_rng``: building a model (e.g. the first use of
    the cache) does not move the caller's RNG, so what the caller draws next does not depend on
    whether the model was already on disk.

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
    tokenizer = tiny_tokenizer(words, model_max_length=cfg.max_prompt_tokens, folder=tokenizer_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = tiny_unet(cfg)
        torch.manual_seed(seed + 1)
        vae = tiny_vae(cfg)
        torch.manual_seed(seed + 2)
        text_encoder = tiny_text_encoder(cfg, tokenizer)
    scheduler = sd_v1_ddim_scheduler(
        prediction_type=cfg.prediction_type, zero_terminal_snr=cfg.zero_terminal_snr
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


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
    return build_pipeline_folder(target, lambda: tiny_model_components(seed), save_pipeline)


def save_pipeline(components: Mapping[str, Any], folder: str | Path) -> None:
    """Save a ``StableDiffusionPipeline`` of ``components`` into ``folder`` (safetensors).

    Args:
        components: ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler`` (other
            keys, such as those :func:`tiny_model_components` adds, are ignored); the pipeline
            has no safety checker and no feature extractor.
    """
    pipeline: Any = StableDiffusionPipeline(
        **{name: components[name] for name in _PIPELINE_PARTS},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)


__all__ = [
    "TINY_MODEL_NAME",
    "TINY_WORDS",
    "TinyModelConfig",
    "build_pipeline_folder",
    "default_cache_dir",
    "save_pipeline",
    "sd_v1_ddim_scheduler",
    "sd_v1_schedule",
    "tiny_model_components",
    "tiny_pipeline_path",
    "tiny_text_encoder",
    "tiny_tokenizer",
    "tiny_unet",
    "tiny_vae",
]
