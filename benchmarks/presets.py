"""Benchmark presets (model, sizes, repeats) and the command-line options shared by benchmarks.

Presets:

- ``tiny``: the random tiny model ``ddpo-tiny-random`` (64x64 images), float32, made for CPU;
  the runner's ``default`` preset maps to it, so it is what ``nox -s bench`` runs.
- ``sd15``: the Stable Diffusion 1.5 architecture (UNet, VAE and CLIP ViT-L/14 text encoder) at
  512x512 built from config with random weights: throughput and memory do not depend on the
  weights, and nothing is downloaded. Built once into ``<cache>/bench-sd15-random-v1`` and loaded
  from there through the same code path as any model folder. Made for a GPU (bf16); on CPU use
  ``--steps 2 --batch-size 1 --repeats 1`` or expect minutes per call.
- ``sdxl``: not offered: ``DefaultDDPOStableDiffusionPipeline`` wraps Stable Diffusion 1.x/2.x
  pipelines only (one text encoder, no added time/text embeddings), so there is nothing to run.
"""

import argparse
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import harness
import torch

SD15_FORMAT = "bench-sd15-random-v1"


@dataclass(frozen=True)
class Preset:
    """Sizes of one benchmark setting; every field can be overridden from the command line.

    Attributes:
        name: preset name.
        model: model name or folder given to ``DefaultDDPOStableDiffusionPipeline``.
        num_steps: DDIM steps per sample.
        sample_batch_size: images per sampling call.
        train_batch_size: samples per training step (each contributes one transition per step).
        guidance_scale: classifier-free guidance scale (sampling and training, as TRL).
        eta: DDIM eta (1.0: the stochastic policy DDPO trains).
        sample_num_batches_per_epoch: sampling calls per epoch (epoch benchmark).
        repeats: timed repeats per contender, or timed epochs (the median is reported).
        warmup: untimed rounds (epochs, for the epoch benchmark) before timing.
        dtype: ``fp32``, ``bf16`` or ``fp16``.
        lora_rank: LoRA rank of the trained UNet.
    """

    name: str
    model: str
    num_steps: int
    sample_batch_size: int
    train_batch_size: int
    guidance_scale: float = 5.0
    eta: float = 1.0
    sample_num_batches_per_epoch: int = 2
    repeats: int = 5
    warmup: int = 1
    dtype: str = "fp32"
    lora_rank: int = 4


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        model="ddpo-tiny-random",
        num_steps=10,
        sample_batch_size=2,
        train_batch_size=2,
        sample_num_batches_per_epoch=2,
        repeats=5,
        warmup=1,
    ),
    # On one H100: the epoch is 256 samples x 50 steps (16 calls of 16 images); the
    # reference code (ddpo-pytorch) trained SD 1.5 LoRA with train batches of 4 at 50 steps.
    "sd15": Preset(
        name="sd15",
        model="sd15",
        num_steps=50,
        sample_batch_size=16,
        train_batch_size=4,
        sample_num_batches_per_epoch=16,
        repeats=3,
        warmup=1,
        dtype="bf16",
    ),
}

UNSUPPORTED_PRESETS = {
    "sdxl": "DefaultDDPOStableDiffusionPipeline wraps Stable Diffusion 1.x/2.x pipelines only",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model benchmarks' options (defaults: from the preset); ``run.py`` adds ``--preset``,
    ``--device``, ``--only`` and ``--out``."""
    parser.add_argument("--dtype", choices=sorted(harness.DTYPES), default=None)
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (override)")
    parser.add_argument("--batch-size", type=int, default=None, help="sample and train batch")
    parser.add_argument("--train-batch-size", type=int, default=None)
    parser.add_argument("--num-batches", type=int, default=None, help="sampling calls/epoch")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default on CPU: 1)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--channels-last", action="store_true", help="channels-last UNet")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="UNet gradient checkpointing"
    )
    parser.add_argument("--no-mfu", action="store_true", help="skip FLOP counting and MFU")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="flops benchmark: peak to compare with"
    )


def resolve(args: argparse.Namespace) -> Preset:
    """The preset named by ``args.preset`` with the command-line overrides applied."""
    name = getattr(args, "preset", "tiny")
    if name == "default":  # the runner's default: the model benchmarks' CPU preset
        name = "tiny"
    if name in UNSUPPORTED_PRESETS:
        raise ValueError(f"preset={name!r} is not supported: {UNSUPPORTED_PRESETS[name]}")
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    preset = PRESETS[name]
    overrides: dict[str, Any] = {}
    batch = getattr(args, "batch_size", None)
    if batch is not None:
        overrides["sample_batch_size"] = batch
        overrides["train_batch_size"] = batch
    for arg, field_name in (
        ("steps", "num_steps"),
        ("train_batch_size", "train_batch_size"),
        ("num_batches", "sample_num_batches_per_epoch"),
        ("repeats", "repeats"),
        ("warmup", "warmup"),
        ("dtype", "dtype"),
    ):
        value = getattr(args, arg, None)
        if value is not None:
            overrides[field_name] = value
    preset = replace(preset, **overrides)
    for field_name in ("num_steps", "sample_batch_size", "train_batch_size", "repeats"):
        if getattr(preset, field_name) < 1:
            raise ValueError(f"{field_name} must be >= 1, got {getattr(preset, field_name)}")
    if preset.warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {preset.warmup}")
    harness.resolve_dtype(preset.dtype)
    return preset


def options(args: argparse.Namespace) -> dict[str, bool]:
    """The UNet options asked for on the command line."""
    return {
        "compile": bool(getattr(args, "compile", False)),
        "channels_last": bool(getattr(args, "channels_last", False)),
        "gradient_checkpointing": bool(getattr(args, "gradient_checkpointing", False)),
    }


def describe(preset: Preset, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The settings of a run, for its JSON."""
    return {
        "preset": preset.name,
        "model": preset.model,
        "device": str(device),
        "dtype": preset.dtype,
        "num_steps": preset.num_steps,
        "sample_batch_size": preset.sample_batch_size,
        "train_batch_size": preset.train_batch_size,
        "sample_num_batches_per_epoch": preset.sample_num_batches_per_epoch,
        "guidance_scale": preset.guidance_scale,
        "eta": preset.eta,
        "repeats": preset.repeats,
        "warmup": preset.warmup,
        "lora_rank": preset.lora_rank,
        "threads": torch.get_num_threads(),
        **options(args),
    }


# ------------------------------------------------------------------------------------------------
# Models


def _cache_dir() -> Path:
    env = os.environ.get("DDPO_CACHE_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddpo"


def sd15_components(seed: int = 0, *, tokenizer_dir: str | Path) -> dict[str, Any]:
    """Stable Diffusion 1.5's components built from config, with random weights.

    UNet: ``UNet2DConditionModel`` with blocks (320, 640, 1280, 1280), 2 layers per block,
    cross-attention width 768, 8 attention heads, 64x64 latents (512x512 images).
    VAE: ``AutoencoderKL`` with blocks (128, 256, 512, 512), 4 latent channels.
    Text: CLIP ViT-L/14's text tower (width 768, 12 layers, 12 heads, MLP 3072, 49408 tokens,
    77 positions, quick-GELU). Scheduler: SD 1.5's noise schedule as DDIM.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ddpo.adapters.tiny import sd_v1_ddim_scheduler
    from ddpo.adapters.tokenizer import write_clip_tokenizer

    words = ("a", "photo", "of", "cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider")
    write_clip_tokenizer(tokenizer_dir, words, model_max_length=77)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = sd_v1_ddim_scheduler()
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


def sd15_path(cache_dir: str | Path | None = None) -> Path:
    """Folder of the random-weight SD 1.5 model (``save_pretrained`` layout), built on first use.

    Written to a temporary sibling and renamed into place, so a half-written model is never seen.
    About 4 GB on disk (float32 weights); building takes a minute or so on a CPU.
    """
    from ddpo.adapters.tiny import build_pipeline_folder

    root = Path(cache_dir) if cache_dir is not None else _cache_dir()
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        return build_pipeline_folder(
            root / SD15_FORMAT, lambda: sd15_components(tokenizer_dir=tokenizer_dir)
        )


def model_location(preset: Preset) -> str:
    """What to give ``DefaultDDPOStableDiffusionPipeline`` for this preset's model."""
    if preset.model == "sd15":
        return str(sd15_path())
    return preset.model


def prepare(args: argparse.Namespace) -> tuple[Preset, torch.device, torch.dtype, Any, bool]:
    """Preset, device (threads set), dtype, and the pipeline with the UNet options applied.

    Returns ``(preset, device, dtype, pipeline, compile_unet)``; compiling is left to the caller
    (after its FLOP count, which must see the eager UNet).
    """
    preset = resolve(args)
    device = harness.resolve_device(getattr(args, "device", "auto"))
    harness.set_threads(device, getattr(args, "threads", None))
    dtype = harness.resolve_dtype(preset.dtype)
    pipeline = load_pipeline(preset, device)
    unet_options = options(args)
    compile_unet = unet_options.pop("compile")
    harness.apply_unet_options(pipeline.unet, **unet_options)
    return preset, device, dtype, pipeline, compile_unet


def load_pipeline(preset: Preset, device: torch.device, *, use_lora: bool = True) -> Any:
    """Our ``DefaultDDPOStableDiffusionPipeline`` for the preset, on ``device``.

    Frozen weights in the preset's dtype; the trainable (LoRA) weights are kept in float32, as a
    mixed-precision trainer keeps them.
    """
    from ddpo import DefaultDDPOStableDiffusionPipeline

    dtype = harness.resolve_dtype(preset.dtype)
    pipeline = DefaultDDPOStableDiffusionPipeline(
        model_location(preset),
        use_lora=use_lora,
        lora_rank=preset.lora_rank,
        lora_alpha=preset.lora_rank,
        torch_dtype=dtype,
        device=device,
    )
    pipeline.set_progress_bar_config(disable=True)
    for parameter in harness.trainable_parameters(pipeline.unet):
        parameter.data = parameter.data.float()
    return pipeline


def prompts(count: int) -> list[str]:
    """``count`` short prompts whose words are single tokens in every preset's vocabulary."""
    animals = ("cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider")
    return [f"a photo of a {animals[i % len(animals)]}" for i in range(count)]
