"""The full-size benchmark models: Stable Diffusion 1.5 and SDXL base built from config.

Throughput and memory do not depend on the weights, so the ``sd15`` and ``sdxl`` presets build
the published architectures with random weights (nothing is downloaded), save them once with
``save_pretrained`` into ``<cache>/bench-<name>-random-v1`` and load them from there through the
same code path as any model folder (``ddpo.adapters.load_policy``). The architectures are plain
dictionaries here so that the FLOP benchmark can build the same modules on the ``meta`` device.

Parameter counts (checked by ``tests/benchmarks/test_random_models.py`` on the ``meta`` device):
SD 1.5 UNet 859,520,964, VAE 83,653,863, CLIP ViT-L/14 text 123,060,480; SDXL base UNet
2,567,463,684, its VAE 83,653,863 (SD's layout, ``scaling_factor`` 0.13025, ``force_upcast``),
CLIP ViT-L/14 text 123,060,480 and OpenCLIP ViT-bigG/14 text with projection 694,659,840.
"""

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

SD15_FORMAT = "bench-sd15-random-v1"
SDXL_FORMAT = "bench-sdxl-random-v1"
TOKENIZER_WORDS = ("a", "photo", "of", "cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider")

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,  # 512x512 images
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,  # 1024x1024 images
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),  # diffusers' name for the head count: 64 channels/head
    "use_linear_projection": True,
    "cross_attention_dim": 2048,  # 768 (CLIP-L) + 1280 (bigG) hidden states, concatenated
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + bigG's 1280 pooled
    "norm_num_groups": 32,
}

_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
}
SD15_VAE: dict[str, Any] = {**_VAE, "sample_size": 512}
SDXL_VAE: dict[str, Any] = {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025}
SDXL_VAE["force_upcast"] = True  # decodes in float32: SDXL's VAE overflows in float16

CLIP_L_TEXT: dict[str, Any] = {  # CLIP ViT-L/14's text tower (SD 1.5, SDXL's first encoder)
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
OPENCLIP_BIGG_TEXT: dict[str, Any] = {  # OpenCLIP ViT-bigG/14's text tower (SDXL's second)
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

ARCHITECTURES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "sd15": (SD15_UNET, SD15_VAE),
    "sdxl": (SDXL_UNET, SDXL_VAE),
}
"""Model name -> (UNet config, VAE config) of the full-size presets (the FLOP benchmark's)."""


def cache_dir() -> Path:
    """``$DDPO_CACHE_DIR`` or ``~/.cache/ddpo``: where the random-weight models are written."""
    env = os.environ.get("DDPO_CACHE_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddpo"


def _tokenizer(folder: str | Path) -> Any:
    """A CLIP tokenizer padding to 77 tokens, in which each benchmark prompt word is one token."""
    from transformers import CLIPTokenizer

    from ddpo.adapters.common.tokenizer import write_clip_tokenizer

    write_clip_tokenizer(folder, TOKENIZER_WORDS, model_max_length=77)
    return CLIPTokenizer.from_pretrained(folder)


def _text_config(sizes: dict[str, Any], tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **sizes,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def sd15_components(seed: int = 0, *, tokenizer_dir: str | Path) -> dict[str, Any]:
    """Stable Diffusion 1.5's components built from config, with random weights.

    UNet :data:`SD15_UNET`, VAE :data:`SD15_VAE`, text :data:`CLIP_L_TEXT`; SD 1.5's noise
    schedule as DDIM. The tokenizer is written to ``tokenizer_dir`` (a small vocabulary; the
    encoder keeps CLIP's 49,408-row embedding).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from ddpo.adapters.sd.tiny import sd_v1_ddim_scheduler

    tokenizer = _tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    return {
        "unet": UNet2DConditionModel(**SD15_UNET).eval(),
        "vae": AutoencoderKL(**SD15_VAE).eval(),
        "text_encoder": CLIPTextModel(_text_config(CLIP_L_TEXT, tokenizer)).eval(),
        "tokenizer": tokenizer,
        "scheduler": sd_v1_ddim_scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def sdxl_components(
    seed: int = 0, *, tokenizer_dir: str | Path, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """SDXL base's components built from config, with random weights, in ``dtype``.

    UNet :data:`SDXL_UNET` (1024x1024 images), VAE :data:`SDXL_VAE`, text encoders
    :data:`CLIP_L_TEXT` and :data:`OPENCLIP_BIGG_TEXT` (with its 1280-wide pooled projection),
    both tokenizers written to ``tokenizer_dir``, and SDXL's Euler scheduler (the policy swaps in
    DDIM from its config). Returns ``save_sdxl_pipeline``'s keyword arguments.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from ddpo.adapters.sdxl.tiny import sdxl_scheduler

    tokenizer = _tokenizer(Path(tokenizer_dir) / "tokenizer")
    tokenizer_2 = _tokenizer(Path(tokenizer_dir) / "tokenizer_2")
    torch.manual_seed(seed)
    modules = {
        "unet": UNet2DConditionModel(**SDXL_UNET),
        "vae": AutoencoderKL(**SDXL_VAE),
        "text_encoder": CLIPTextModel(_text_config(CLIP_L_TEXT, tokenizer)),
        "text_encoder_2": CLIPTextModelWithProjection(
            _text_config(OPENCLIP_BIGG_TEXT, tokenizer_2)
        ),
    }
    return {
        **{name: module.to(dtype).eval() for name, module in modules.items()},
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": sdxl_scheduler(),
        "force_zeros_for_empty_prompt": True,
    }


def sd15_path(root: str | Path | None = None) -> Path:
    """Folder of the random-weight SD 1.5 model (``save_pretrained`` layout), built on first use.

    Written to a temporary sibling and renamed into place, so a half-written model is never seen.
    About 4 GB on disk (float32 weights); building takes a minute or so on a CPU.
    """
    from ddpo.adapters.common.tiny import build_pipeline_folder

    base = Path(root) if root is not None else cache_dir()
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        return build_pipeline_folder(
            base / SD15_FORMAT, lambda: sd15_components(tokenizer_dir=tokenizer_dir)
        )


def sdxl_path(root: str | Path | None = None) -> Path:
    """Folder of the random-weight SDXL base model, built on first use (as :func:`sd15_path`).

    Saved in bfloat16 (the preset's dtype; about 7 GB on disk instead of 14 GB in float32; a
    run with ``--dtype fp32`` upcasts on load). Building needs about 20 GB of host memory (the
    modules are initialised in float32) and a few minutes on a CPU.
    """
    from ddpo.adapters.common.tiny import build_pipeline_folder
    from ddpo.adapters.sdxl.tiny import save_sdxl_pipeline

    base = Path(root) if root is not None else cache_dir()
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        return build_pipeline_folder(
            base / SDXL_FORMAT,
            lambda: sdxl_components(tokenizer_dir=tokenizer_dir, dtype=torch.bfloat16),
            save_sdxl_pipeline,
        )


MODEL_FOLDERS = {"sd15": sd15_path, "sdxl": sdxl_path}
"""Preset model name -> the function returning (building on first use) its folder."""
