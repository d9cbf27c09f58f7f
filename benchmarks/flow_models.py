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

The ``qwenimage``, ``wan-1.3b`` and ``wan-14b`` architectures serve the FLOP benchmark only
(:mod:`flow_flops`, on the ``meta`` device): no random-weight folder is built for them (the
sampling and training benchmarks' stock and bare contenders are SD3's and FLUX.1's). Their
configs are the published ones as diffusers' and transformers' classes take them (Wan2.1's as in
diffusers' ``scripts/convert_wan_to_diffusers.py``); the parameter counts below are computed
from them on the ``meta`` device, asserted in ``tests/benchmarks/test_flow_presets.py``, and
agree with the published figures:

- Qwen-Image (``Qwen/Qwen-Image``): ``QwenImageTransformer2DModel`` of 60 dual-stream MMDiT
  blocks, 24 heads of 128 (width 3072), 64 input channels (2x2 packed patches of 16 latent
  channels), 16 output channels, patch 2, joint attention width 3584 (Qwen2.5-VL's), rotary
  axes (16, 56, 56), no guidance embedding (these are also the class defaults):
  **20,430,401,088** parameters (published: a 20 B MMDiT, about 20.4 B). Its VAE
  ``AutoencoderKLQwenImage``, a causal video VAE run on one frame (Wan2.1's layout: base 96,
  z 16, multipliers (1, 2, 4, 4), 2 residual blocks, temporal downsampling (False, True, True),
  8x in space; the class defaults, whose ``latents_mean`` and ``latents_std`` are
  Qwen-Image's): **126,892,531**. The text encoder is the whole
  ``Qwen2_5_VLForConditionalGeneration`` of Qwen2.5-VL-7B-Instruct, as the folder ships and
  loads it: **8,292,166,656** parameters, of which the language model (embeddings, 28 decoder
  layers of width 3584, 28 query and 4 key/value heads, SwiGLU 18944, vocabulary 152,064) is
  **7,070,619,136** (published: about 7.07 B without the vision tower), the untied LM head
  544,997,376 and the vision tower (32 blocks of width 1280 and its merger) 676,550,144. The
  vision tower is counted in the parameters (it is loaded: 1.35 GB in bf16) but not in the
  FLOPs: text-to-image encoding runs the language model and the LM head (``QwenImagePipeline``
  calls the whole model, which computes logits it discards, and takes ``hidden_states[-1]``),
  and the FLOP count makes exactly that call.
- Wan2.1 text-to-video (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``, ``-14B-Diffusers``):
  ``WanTransformer3DModel`` with patch (1, 2, 2), 16 in/out channels, text width 4096 (UMT5's),
  frequency embedding 256, cross-attention norm, RMS query/key norm across heads, no image
  input. 1.3B: width 1536 (12 heads of 128), 30 blocks, feed-forward 8960:
  **1,418,996,800** parameters (published: "1.3B", about 1.42 B); 14B: width 5120 (40 heads of
  128), 40 blocks, feed-forward 13824: **14,288,491,584** ("14B", about 14.3 B). The causal
  video VAE ``AutoencoderKLWan`` (the class defaults: base 96, z 16, 8x in space, 4x in time):
  **126,892,531** (the same layout as Qwen-Image's). The text encoder, UMT5-XXL's encoder
  (``google/umt5-xxl``: width 4096, 24 layers, 64 heads of 64, gated-GELU 10240, vocabulary
  256,384, relative attention in every layer): **5,680,910,336** (published: about 5.7 B).
  Wan2.1 pads every prompt to 512 tokens.

Stated rather than guessed: the released Qwen-Image transformer config may list keys this class
does not take (they would change nothing here); the text encoders' special token ids are left
at the config classes' defaults (they change no shape and no FLOP); and how many tokens
Qwen2.5-VL reads depends on the prompt: the count takes the longest prompt the policy keeps
(:data:`QWEN_TEXT_TOKENS`).
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

QWEN_IMAGE_TRANSFORMER: dict[str, Any] = {  # Qwen/Qwen-Image's transformer/config.json
    "patch_size": 2,
    "in_channels": 64,  # 2x2 packed patches of 16 latent channels
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,  # Qwen2.5-VL-7B's width
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}

_CAUSAL_VIDEO_VAE: dict[str, Any] = {  # Wan2.1's VAE layout (AutoencoderKLWan's defaults)
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],  # lists: the classes concatenate them to lists
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],  # diffusers' spelling; 8x in space, 4x in time
    "dropout": 0.0,
}
QWEN_IMAGE_VAE: dict[str, Any] = {**_CAUSAL_VIDEO_VAE}
"""``AutoencoderKLQwenImage`` (its default ``latents_mean`` and ``latents_std``: Qwen-Image's)."""
WAN_VAE: dict[str, Any] = {**_CAUSAL_VIDEO_VAE}
"""``AutoencoderKLWan`` (its default ``latents_mean`` and ``latents_std``: Wan2.1's)."""

QWEN25_VL_7B: dict[str, Any] = {  # Qwen2.5-VL-7B-Instruct (Qwen-Image's text_encoder)
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [16, 24, 24],
        },
    },
    "vision_config": {  # loaded with the encoder, never run for text-to-image
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "hidden_act": "silu",
    },
    "tie_word_embeddings": False,
}

QWEN_TEMPLATE_TOKENS = 39
"""Tokens of ``QwenImagePipeline``'s prompt template around the prompt: its system turn (34,
``prompt_template_encode_start_idx``, dropped after encoding) and the 5 that close the user turn
and open the assistant's (``<|im_end|>``, a line break, ``<|im_start|>``, ``assistant``, a line
break)."""
QWEN_PROMPT_TOKENS = 512
"""Prompt tokens the FLOP count gives Qwen2.5-VL: ``max_sequence_length`` (512, the policy's and
the stock pipeline's default), the longest prompt the policy keeps whole. The pipeline pads a
batch only to its longest prompt, so shorter prompts cost less: this is an upper bound for them
(the text encoder is well under 1 % of an epoch either way)."""
QWEN_TEXT_TOKENS = QWEN_TEMPLATE_TOKENS + QWEN_PROMPT_TOKENS
"""Tokens Qwen2.5-VL reads per prompt in the FLOP count (551)."""

WAN_TEXT_TOKENS = 512
"""UMT5 tokens per prompt: ``WanPipeline`` pads every prompt to ``max_sequence_length`` 512."""

_WAN_TRANSFORMER: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,  # UMT5-XXL's width
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,  # text-to-video: no image embedding
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
WAN21_T2V_1_3B_TRANSFORMER: dict[str, Any] = {
    **_WAN_TRANSFORMER,
    "num_attention_heads": 12,  # width 1536
    "ffn_dim": 8960,
    "num_layers": 30,
}
WAN21_T2V_14B_TRANSFORMER: dict[str, Any] = {
    **_WAN_TRANSFORMER,
    "num_attention_heads": 40,  # width 5120
    "ffn_dim": 13824,
    "num_layers": 40,
}

UMT5_XXL_ENCODER: dict[str, Any] = {  # google/umt5-xxl's encoder (Wan2.1's text encoder)
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
    "tie_word_embeddings": False,
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
    "qwenimage": "qwenimage",
    "wan-1.3b": "wan",
    "wan-14b": "wan",
    "ddpo-tiny-qwenimage-random": "qwenimage",
    "ddpo-tiny-wan-random": "wan",
}
"""The family of each preset's model, known without building it (other folders and built-in
names: ``ddpo.adapters.model_family``)."""


def family(model: str) -> str:
    """The family name (``sd``, ``sdxl``, ``sd3``, ``flux``, ``qwenimage``, ``wan``) of a preset's
    model; for built-in
    names and folders from their ``model_index.json`` (a built-in tiny model is built first)."""
    if model in FAMILY_OF_MODEL:
        return FAMILY_OF_MODEL[model]
    from ddpo.adapters import model_family

    name: str = model_family(model).name
    return name


class FlowArchitecture(NamedTuple):
    """One full-size flow model: its family, transformer and VAE configs, its text encoders
    (``(kind, config, tokens)``: kind ``clip``, ``clip_projection``, ``t5``, ``umt5`` or
    ``qwen2_5_vl``; the tokens each encodes per prompt), and the diffusers pipeline class its
    folder declares."""

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
    "qwenimage": FlowArchitecture(
        "qwenimage",
        QWEN_IMAGE_TRANSFORMER,
        QWEN_IMAGE_VAE,
        (("qwen2_5_vl", QWEN25_VL_7B, QWEN_TEXT_TOKENS),),
        "QwenImagePipeline",
    ),
    "wan-1.3b": FlowArchitecture(
        "wan",
        WAN21_T2V_1_3B_TRANSFORMER,
        WAN_VAE,
        (("umt5", UMT5_XXL_ENCODER, WAN_TEXT_TOKENS),),
        "WanPipeline",
    ),
    "wan-14b": FlowArchitecture(
        "wan",
        WAN21_T2V_14B_TRANSFORMER,
        WAN_VAE,
        (("umt5", UMT5_XXL_ENCODER, WAN_TEXT_TOKENS),),
        "WanPipeline",
    ),
}
"""Preset model name -> its architecture (the FLOP benchmark's; the builders' for ``sd3`` and
``flux``, :data:`MODEL_FOLDERS`)."""


def text_encoder(kind: str, sizes: dict[str, Any], tokenizer: Any = None) -> torch.nn.Module:
    """A random text encoder of ``kind`` and ``sizes`` on the current default device
    (``qwen2_5_vl``: the whole ``Qwen2_5_VLForConditionalGeneration``, as Qwen-Image loads it)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    if kind == "t5":
        return T5EncoderModel(T5Config(**sizes))
    if kind == "umt5":
        from transformers import UMT5Config, UMT5EncoderModel

        return UMT5EncoderModel(UMT5Config(**sizes))
    if kind == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        model: torch.nn.Module = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**sizes))
        return model
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
    raise ValueError(
        f"kind must be one of 'clip', 'clip_projection', 't5', 'umt5', 'qwen2_5_vl', got {kind!r}"
    )


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

    if name not in ("sd3", "flux"):
        raise ValueError(f"name must be 'sd3' or 'flux', got {name!r}")
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
"""Preset model name -> the function returning (building on first use) its folder (none for the
FLOP-only architectures, :data:`FLOP_ONLY`)."""

FLOP_ONLY: tuple[str, ...] = tuple(name for name in ARCHITECTURES if name not in MODEL_FOLDERS)
"""The architectures counted by the FLOP benchmark only (``qwenimage``, ``wan-1.3b``,
``wan-14b``): no random-weight folder is built for them."""
