"""The full-size flow-matching benchmark models: SD3.5 Medium and FLUX.1-dev built from config.

As for ``sd15`` and ``sdxl`` (:mod:`random_models`), the ``sd3`` and ``flux`` presets build the
published architectures with random weights (throughput and memory do not depend on the
weights; nothing is downloaded), save them once with ``save_pretrained`` into
``<cache>/bench-<name>-random-v1`` and load them from there through ``ddpo.adapters.load_policy``.
The architectures are plain dictionaries so that the FLOP benchmark can build the very same
modules on the ``meta`` device (shapes only: T5-XXL is never materialised for a FLOP count).

- SD3.5 Medium (``stabilityai/stable-diffusion-3.5-medium``): ``SD3Transformer2DModel`` of 24
  MMDiT blocks, 24 heads of 64, patch 2, 16 latent channels, joint attention width 4096 (T5),
  pooled projection 2048 (CLIP-L 768 + CLIP-G 1280), caption projection 1536, SD3.5's second
  (image-only) attention in blocks 0 to 12, RMS query/key norm, ``pos_embed_max_size`` 384,
  ``sample_size`` 128 (1024x1024 images); CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text towers with
  projection, T5 v1.1 XXL's encoder (4096 wide, 24 layers, 64 heads, gated-GELU 10240); the
  16-channel VAE (``scaling_factor`` 1.5305, ``shift_factor`` 0.0609); flow-match Euler with
  ``shift`` 3.0.
- FLUX.1-dev (``black-forest-labs/FLUX.1-dev``): ``FluxTransformer2DModel`` of 19 double- and 38
  single-stream blocks, 24 heads of 128, 64 input channels (2x2 patches of 16 latent channels),
  joint attention width 4096 (T5), pooled projection 768 (CLIP-L), the guidance embedding,
  rotary axes (16, 56, 56); CLIP ViT-L/14 text (no projection) and T5-XXL's encoder; the
  16-channel VAE (0.3611, 0.1159); flow-match Euler with FLUX's resolution-dependent shift.
"""

import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import random_models as models
import torch

SD3_FORMAT = "bench-sd3-random-v1"
FLUX_FORMAT = "bench-flux-random-v1"

SD35_MEDIUM_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128,  # 1024x1024 images (8x VAE)
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,  # T5-XXL's width
    "caption_projection_dim": 1536,  # = 24 heads x 64
    "pooled_projection_dim": 2048,  # CLIP-L's 768 + CLIP-G's 1280 projections
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),  # SD3.5 Medium: blocks 0..12
    "qk_norm": "rms_norm",
}

FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,  # 2x2 packed patches of 16 latent channels
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}

_FLOW_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
SD3_VAE: dict[str, Any] = {**_FLOW_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}
FLUX_VAE: dict[str, Any] = {**_FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}

T5_XXL_ENCODER: dict[str, Any] = {  # google/t5-v1_1-xxl's encoder (SD3's and FLUX's third text)
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
    "pad_token_id": 0,
    "eos_token_id": 1,
}


FAMILY_OF_MODEL = {
    "sd15": "sd",
    "sdxl": "sdxl",
    "sd3": "sd3",
    "flux": "flux",
    "ddpo-tiny-random": "sd",
    "ddpo-tiny-sdxl-random": "sdxl",
    "ddpo-tiny-sd3-random": "sd3",
    "ddpo-tiny-flux-random": "flux",
}
"""The family of each preset's model, known without building it (other folders and built-in
names: ``ddpo.adapters.model_family``)."""


def family(model: str) -> str:
    """The family name (``sd``, ``sdxl``, ``sd3``, ``flux``) of a preset's model; for built-in
    names and folders from their ``model_index.json`` (a built-in tiny model is built first)."""
    if model in FAMILY_OF_MODEL:
        return FAMILY_OF_MODEL[model]
    from ddpo.adapters import model_family

    name: str = model_family(model).name
    return name


class FlowArchitecture(NamedTuple):
    """One full-size flow model: its family, transformer and VAE configs, its text encoders
    (``(kind, config, tokens)``: kind ``clip``, ``clip_projection`` or ``t5``; the tokens each
    encodes per prompt), and the diffusers pipeline class its folder declares."""

    family: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoders: tuple[tuple[str, dict[str, Any], int], ...]
    pipeline_class: str


ARCHITECTURES: dict[str, FlowArchitecture] = {
    "sd3": FlowArchitecture(
        "sd3",
        SD35_MEDIUM_TRANSFORMER,
        SD3_VAE,
        (
            ("clip_projection", models.CLIP_L_TEXT, 77),
            ("clip_projection", models.OPENCLIP_BIGG_TEXT, 77),
            ("t5", T5_XXL_ENCODER, 256),  # the policy's (and diffusers') max_sequence_length
        ),
        "StableDiffusion3Pipeline",
    ),
    "flux": FlowArchitecture(
        "flux",
        FLUX_DEV_TRANSFORMER,
        FLUX_VAE,
        (("clip", models.CLIP_L_TEXT, 77), ("t5", T5_XXL_ENCODER, 512)),
        "FluxPipeline",
    ),
}
"""Preset model name -> its architecture (the FLOP benchmark's and the builders')."""


def text_encoder(kind: str, sizes: dict[str, Any], tokenizer: Any = None) -> torch.nn.Module:
    """A random text encoder of ``kind`` and ``sizes`` on the current default device."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    if kind == "t5":
        return T5EncoderModel(T5Config(**sizes))
    special: dict[str, Any] = {}
    if tokenizer is not None:
        special = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    from transformers import CLIPTextConfig

    config = CLIPTextConfig(**sizes, **special)
    if kind == "clip_projection":
        return CLIPTextModelWithProjection(config)
    if kind == "clip":
        return CLIPTextModel(config)
    raise ValueError(f"kind must be 'clip', 'clip_projection' or 't5', got {kind!r}")


def flow_components(
    name: str, *, tokenizer_dir: str | Path, dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> dict[str, Any]:
    """The components of full-size model ``name`` (``sd3`` or ``flux``) with random weights.

    Each module is cast to ``dtype`` as soon as it is built, so the host holds at most one
    float32 module at a time (FLUX.1-dev's transformer: 48 GB in float32, 24 GB in bf16). The
    tokenizers (small vocabularies holding the benchmark prompts' words; the encoders keep
    CLIP's 49,408 and T5's 32,128 embedding rows) are written under ``tokenizer_dir``.

    Returns:
        The keyword arguments of ``StableDiffusion3Pipeline`` or ``FluxPipeline``.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
    )

    from ddpo.adapters.common.tiny import tiny_t5_tokenizer
    from ddpo.adapters.flux.tiny import FLUX_SCHEDULER_CONFIG
    from ddpo.adapters.sd3.tiny import SD3_SHIFT

    if name not in ARCHITECTURES:
        raise ValueError(f"name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    arch = ARCHITECTURES[name]
    torch.manual_seed(seed)
    out: dict[str, Any] = {}
    transformer_class: Any = SD3Transformer2DModel
    if arch.family == "flux":
        transformer_class = FluxTransformer2DModel
    vae: Any = AutoencoderKL(**arch.vae)
    out["transformer"] = transformer_class(**arch.transformer).to(dtype).eval()
    out["vae"] = vae.to(dtype).eval()
    for index, (kind, sizes, tokens) in enumerate(arch.text_encoders):
        suffix = "" if index == 0 else f"_{index + 1}"
        if kind == "t5":
            tokenizer = tiny_t5_tokenizer(models.TOKENIZER_WORDS, model_max_length=tokens)
        else:
            tokenizer = models._tokenizer(Path(tokenizer_dir) / f"tokenizer{suffix}")
        out[f"tokenizer{suffix}"] = tokenizer
        out[f"text_encoder{suffix}"] = text_encoder(kind, sizes, tokenizer).to(dtype).eval()
    if arch.family == "sd3":
        out["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=SD3_SHIFT)
    else:
        out["scheduler"] = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)
    return out


def _path(name: str, folder_name: str, root: str | Path | None) -> Path:
    from ddpo.adapters.common.tiny import build_pipeline_folder
    from ddpo.adapters.flux.tiny import save_flux_pipeline
    from ddpo.adapters.sd3.tiny import save_sd3_pipeline

    save = save_sd3_pipeline if name == "sd3" else save_flux_pipeline
    base = Path(root) if root is not None else models.cache_dir()
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        return build_pipeline_folder(
            base / folder_name,
            lambda: flow_components(name, tokenizer_dir=tokenizer_dir),
            save,
        )


def sd3_path(root: str | Path | None = None) -> Path:
    """Folder of the random-weight SD3.5 Medium model (bf16, about 16 GB on disk: transformer
    2.5 B, T5-XXL 4.8 B, CLIP-G 0.7 B parameters), built on first use (about 35 GB of host
    memory at the peak, a few minutes on a CPU); written to a sibling and renamed into place."""
    return _path("sd3", SD3_FORMAT, root)


def flux_path(root: str | Path | None = None) -> Path:
    """Folder of the random-weight FLUX.1-dev model (bf16, about 34 GB on disk: transformer
    11.9 B, T5-XXL 4.8 B parameters), built on first use (about 75 GB of host memory at the
    peak, several minutes on a CPU); written to a sibling and renamed into place."""
    return _path("flux", FLUX_FORMAT, root)


MODEL_FOLDERS = {"sd3": sd3_path, "flux": flux_path}
"""Preset model name -> the function returning (building on first use) its folder."""
