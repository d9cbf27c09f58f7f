"""Benchmark presets (model, sizes, repeats) and the command-line options shared by benchmarks.

Presets:

- ``tiny``: the random tiny model ``ddpo-tiny-random`` (64x64 images), float32, made for CPU;
  the runner's ``default`` preset maps to it, so it is what ``nox -s bench`` runs.
- ``tiny-sdxl``: the random tiny SDXL model ``ddpo-tiny-sdxl-random`` (SDXL's layout: two text
  encoders, pooled-text and time-id conditioning; 64x64 images) at the ``tiny`` preset's sizes:
  the SDXL family's CPU run.
- ``sd15``: the Stable Diffusion 1.5 architecture (UNet, VAE and CLIP ViT-L/14 text encoder) at
  512x512 built from config with random weights: throughput and memory do not depend on the
  weights, and nothing is downloaded. Built once into ``<cache>/bench-sd15-random-v1``
  (:mod:`random_models`) and loaded from there through the same code path as any model
  folder. Made for a GPU (bf16); on CPU use ``--steps 2 --batch-size 1 --repeats 1`` or expect
  minutes per call.
- ``sdxl``: the SDXL base architecture (2.57 B-parameter UNet, CLIP ViT-L/14 and OpenCLIP
  ViT-bigG/14 text encoders, SDXL's VAE) at 1024x1024 from config with random weights, built
  once into ``<cache>/bench-sdxl-random-v1`` (bf16, about 7 GB). The epoch is the ``sd15``
  preset's, 256 samples x 50 DDIM steps, in half the images per call (sample batch 8 x 32
  calls, train batch 2): SDXL's latents have four times SD 1.5's positions. For a GPU only.

Every preset's pipeline is built by ``ddpo.adapters.load_policy``, which picks the family (SD or
SDXL) from the model folder, so the same benchmark code measures both families.
"""

import argparse
from dataclasses import dataclass, replace
from typing import Any

import harness
import random_models as models
import torch


@dataclass(frozen=True)
class Preset:
    """Sizes of one benchmark setting; every field can be overridden from the command line.

    Attributes:
        name: preset name.
        model: built-in model name, folder, or a key of ``random_models.MODEL_FOLDERS``.
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
    "tiny-sdxl": Preset(
        name="tiny-sdxl",
        model="ddpo-tiny-sdxl-random",
        num_steps=10,
        sample_batch_size=2,
        train_batch_size=2,
        sample_num_batches_per_epoch=2,
        repeats=5,
        warmup=1,
    ),
    # The sd15 epoch (256 samples x 50 steps) at 1024x1024: 32 calls of 8 images, train batch 2
    # (SDXL's 128x128 latents hold 4x the positions of SD 1.5's 64x64).
    "sdxl": Preset(
        name="sdxl",
        model="sdxl",
        num_steps=50,
        sample_batch_size=8,
        train_batch_size=2,
        sample_num_batches_per_epoch=32,
        repeats=3,
        warmup=1,
        dtype="bf16",
    ),
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


def model_location(preset: Preset) -> str:
    """The preset's model as ``load_policy`` takes it: the folder of a full-size random-weight
    model (built on first use), or the built-in name / folder as given."""
    if preset.model in models.MODEL_FOLDERS:
        return str(models.MODEL_FOLDERS[preset.model]())
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
    """Our DDPO pipeline for the preset, on ``device``: ``ddpo.adapters.load_policy`` picks
    ``DefaultDDPOStableDiffusionPipeline`` or ``DefaultDDPOStableDiffusionXLPipeline`` from the
    model folder.

    Frozen weights in the preset's dtype; the trainable (LoRA) weights are kept in float32, as a
    mixed-precision trainer keeps them.
    """
    from ddpo.adapters import load_policy

    dtype = harness.resolve_dtype(preset.dtype)
    pipeline = load_policy(
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
