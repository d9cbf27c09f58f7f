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
- ``tiny-sd3`` / ``tiny-flux``: the built-in tiny SD3 and FLUX.1 models
  (``ddpo-tiny-sd3-random``, ``ddpo-tiny-flux-random``; 64x64) at the ``tiny`` preset's sizes
  with the flow presets' sampler and loss settings below: the flow families' CPU runs.
- ``sd3``: SD3.5 Medium's architecture (:mod:`flow_models`) at 1024x1024, bf16, LoRA rank 4 on
  the adapter's default joint-attention projections; Flow-GRPO's (Liu et al., 2025) settings:
  10 sampling steps, noise level 0.7, every step stochastic and trained (``--sde-window-size``
  narrows the window), CFG 4.5 when sampling and when re-scoring (``train_cfg=True``, Flow-GRPO's
  ``train.cfg``: the policy that sampled), with a KL term to the reference (one more
  transformer forward per trained transition), group-normalised advantages over 24 images per
  prompt. The epoch is 8 prompts x 24 images = 192 samples (sample batch 8 x 24 calls), train
  batch 4. For a GPU only.
- ``flux``: FLUX.1-dev's architecture at 1024x1024 with the same settings except guidance 3.5,
  which goes to the guidance embedding (one transformer call per step, no CFG doubling;
  :data:`FLUX`), train batch 2.
- ``qwenimage``, ``wan-1.3b``, ``wan-14b``: Qwen-Image (20 B) at 1024x1024 and Wan2.1
  text-to-video 1.3B and 14B at 480x832 and 81 frames (their stock sizes; :mod:`flow_models`),
  bf16, LoRA rank 4, the same Flow-GRPO sampler, loss and epoch (8 prompts x 24 samples, 10
  steps, noise level 0.7, every step trained, ``train_cfg``, a KL term) with each model's stock
  guidance: true CFG 4.0 (Qwen-Image's ``true_cfg_scale``) and CFG 5.0 (Wan2.1's), each a second
  transformer pass per step (:data:`QWEN_IMAGE`, :data:`WAN`). For the ``flops`` benchmark only:
  no random-weight folder is built for them (:data:`flow_models.FLOP_ONLY`). ``--resolution``
  takes ``HxW`` (``240x416``) and ``--num-frames`` a Wan frame count ``4 k + 1``.
- ``tiny-qwenimage`` / ``tiny-wan``: the built-in tiny Qwen-Image and Wan2.1 models (64x64;
  Wan: 5 frames) with those settings at the ``tiny`` preset's sizes: the FLOP count of a real
  folder on CPU (the sampling and training benchmarks' stock and bare contenders are SD3's and
  FLUX.1's only, so ``prepare`` refuses these families).

Every preset's pipeline is built by ``ddpo.adapters.load_policy``, which picks the family (SD,
SDXL, SD3, FLUX, Qwen-Image or Wan2.1) from the model folder, so the same benchmark code measures
every family.
"""

import argparse
from dataclasses import dataclass, replace
from typing import Any

import flow_models
import harness
import random_models as models
import torch
from flow_models import family as family  # re-exported: benchmarks ask presets


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
        lora_rank: LoRA rank of the trained UNet (transformer).
        resolution: image side in pixels, or ``(height, width)`` (``None``: the model's native
            size).
        num_frames: video families (Wan2.1) only: frames per video, ``4 k + 1`` (``None``: the
            model's native count, 81).
        noise_level: flow families only: Flow-GRPO's SDE noise level ``a``.
        sde_window_size: flow families only: stochastic (recorded, trained) steps per rollout;
            ``None``: every step.
        train_cfg: re-score with classifier-free guidance when training (as when sampling).
        kl_coef: weight of the KL term to the reference policy (> 0: one more forward per
            trained transition).
        group_size: images per prompt in an epoch (> 1: group-normalised advantages).
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
    resolution: int | tuple[int, int] | None = None
    num_frames: int | None = None
    noise_level: float | None = None
    sde_window_size: int | None = None
    train_cfg: bool = True
    kl_coef: float = 0.0
    group_size: int = 1


FLOW_GRPO: dict[str, Any] = {
    "num_steps": 10,  # Flow-GRPO trains SD3.5-M with 10 sampling steps
    "noise_level": 0.7,  # Flow-GRPO's a
    "train_cfg": True,  # Flow-GRPO's train.cfg: re-score with the sampling CFG (on-policy)
    "kl_coef": 0.04,
    "guidance_scale": 4.5,
}
"""The flow presets' sampler and loss settings (Flow-GRPO's, as documented above)."""
FLUX: dict[str, Any] = {"guidance_scale": 3.5}
"""FLUX.1-dev's difference: its guidance-embedding default 3.5 (one transformer row per step,
with or without ``train_cfg``)."""
QWEN_IMAGE: dict[str, Any] = {"guidance_scale": 4.0}
"""Qwen-Image's difference: ``QwenImagePipeline``'s ``true_cfg_scale`` 4.0, true classifier-free
guidance (a second transformer pass for the negative prompt, as SD3's doubled batch)."""
WAN: dict[str, Any] = {"guidance_scale": 5.0}
"""Wan2.1's difference: ``WanPipeline``'s guidance 5.0 (classifier-free: a second pass)."""
TINY_FLOW: dict[str, Any] = {
    **FLOW_GRPO,
    "sample_batch_size": 2,
    "train_batch_size": 2,
    "sample_num_batches_per_epoch": 2,
    "group_size": 2,
}


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
    "tiny-sd3": Preset(name="tiny-sd3", model="ddpo-tiny-sd3-random", **TINY_FLOW),
    "tiny-flux": Preset(name="tiny-flux", model="ddpo-tiny-flux-random", **{**TINY_FLOW, **FLUX}),
    # 8 prompts x 24 images (Flow-GRPO's group size) at 1024x1024, 10 steps.
    "sd3": Preset(
        name="sd3",
        model="sd3",
        sample_batch_size=8,
        train_batch_size=4,
        sample_num_batches_per_epoch=24,
        repeats=3,
        warmup=1,
        dtype="bf16",
        group_size=24,
        **FLOW_GRPO,
    ),
    "flux": Preset(
        name="flux",
        model="flux",
        sample_batch_size=8,
        train_batch_size=2,
        sample_num_batches_per_epoch=24,
        repeats=3,
        warmup=1,
        dtype="bf16",
        group_size=24,
        **{**FLOW_GRPO, **FLUX},
    ),
    # The sd3/flux epoch (8 prompts x 24 samples, 10 steps) at each model's stock size, so that
    # the epochs compare; smaller sampling batches for the larger activations.
    "qwenimage": Preset(
        name="qwenimage",
        model="qwenimage",
        sample_batch_size=4,
        train_batch_size=1,
        sample_num_batches_per_epoch=48,
        repeats=3,
        warmup=1,
        dtype="bf16",
        group_size=24,
        **{**FLOW_GRPO, **QWEN_IMAGE},
    ),
    "wan-1.3b": Preset(
        name="wan-1.3b",
        model="wan-1.3b",
        sample_batch_size=2,
        train_batch_size=1,
        sample_num_batches_per_epoch=96,
        repeats=3,
        warmup=1,
        dtype="bf16",
        group_size=24,
        **{**FLOW_GRPO, **WAN},
    ),
    "wan-14b": Preset(
        name="wan-14b",
        model="wan-14b",
        sample_batch_size=1,
        train_batch_size=1,
        sample_num_batches_per_epoch=192,
        repeats=3,
        warmup=1,
        dtype="bf16",
        group_size=24,
        **{**FLOW_GRPO, **WAN},
    ),
    "tiny-qwenimage": Preset(
        name="tiny-qwenimage", model="ddpo-tiny-qwenimage-random", **{**TINY_FLOW, **QWEN_IMAGE}
    ),
    "tiny-wan": Preset(name="tiny-wan", model="ddpo-tiny-wan-random", **{**TINY_FLOW, **WAN}),
}

FLOW_FAMILIES: tuple[str, ...] = ("sd3", "flux", "qwenimage", "wan")
"""The flow-matching families (Flow-GRPO's sampler: ``--sde-window-size``, ``--noise-level``)."""
VIDEO_FAMILIES: tuple[str, ...] = ("wan",)
"""The families whose samples are videos (``--num-frames``)."""
NO_CONTENDER_FAMILIES: tuple[str, ...] = ("qwenimage", "wan")
"""Families without the sampling and training benchmarks' stock and bare contenders (written
for SD 1.x, SDXL, SD3 and FLUX.1): their presets run the ``flops`` benchmark."""


def parse_size(text: str) -> int | tuple[int, int]:
    """``--resolution``: one side (``"512"``) or ``HxW`` (``"480x832"``), positive.

    Raises:
        ValueError: naming the value.
    """
    parts = text.lower().split("x")
    try:
        sides = [int(part) for part in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) <= 0:
        raise ValueError(f"resolution must be a side or HxW in pixels, got {text!r}")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


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
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="epoch: DDPOConfig.sample_cuda_graphs (implies --compile)",
    )
    parser.add_argument(
        "--prompt-cache",
        type=int,
        default=0,
        help="epoch: DDPOConfig.prompt_embedding_cache_size (0: off)",
    )
    parser.add_argument(
        "--async-reward", action="store_true", help="epoch: DDPOConfig.async_reward_computation"
    )
    parser.add_argument("--no-mfu", action="store_true", help="skip FLOP counting and MFU")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="flops benchmark: peak to compare with"
    )
    parser.add_argument(
        "--resolution", type=parse_size, default=None, help="image side or HxW in pixels"
    )
    parser.add_argument(
        "--num-frames", type=int, default=None, help="video presets (Wan2.1): frames, 4 k + 1"
    )
    parser.add_argument(
        "--sde-window-size",
        type=int,
        default=None,
        help="flow presets: stochastic (trained) steps per rollout; 0: every step",
    )
    parser.add_argument("--noise-level", type=float, default=None, help="flow presets: SDE a")
    parser.add_argument("--kl-coef", type=float, default=None, help="KL weight (0: no KL)")


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
        ("resolution", "resolution"),
        ("num_frames", "num_frames"),
        ("noise_level", "noise_level"),
        ("kl_coef", "kl_coef"),
    ):
        value = getattr(args, arg, None)
        if value is not None:
            overrides[field_name] = value
    window = getattr(args, "sde_window_size", None)
    if window is not None:
        if window < 0:
            raise ValueError(f"sde_window_size must be >= 0 (0: every step), got {window}")
        overrides["sde_window_size"] = window or None
    model_family = family(preset.model)
    if model_family not in FLOW_FAMILIES and (
        window is not None or getattr(args, "noise_level", None) is not None
    ):
        raise ValueError(
            f"--sde-window-size and --noise-level apply to the flow presets (sd3, flux, "
            f"qwenimage, wan), not to preset {name!r}"
        )
    frames = getattr(args, "num_frames", None)
    if frames is not None and model_family not in VIDEO_FAMILIES:
        raise ValueError(f"--num-frames applies to the video presets (wan), not to {name!r}")
    if frames is not None and (frames < 1 or (frames - 1) % 4):
        raise ValueError(f"num_frames must be 4 k + 1 (1, 5, ..., 81), got {frames}")
    preset = replace(preset, **overrides)
    if preset.sde_window_size is not None and not 1 <= preset.sde_window_size <= preset.num_steps:
        raise ValueError(
            f"sde_window_size must be in [1, num_steps={preset.num_steps}], got "
            f"{preset.sde_window_size}"
        )
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
        "resolution": preset.resolution,
        "num_frames": preset.num_frames,
        "family": family(preset.model),
        "noise_level": preset.noise_level,
        "sde_window_size": preset.sde_window_size,
        "train_cfg": preset.train_cfg,
        "kl_coef": preset.kl_coef,
        "group_size": preset.group_size,
        "threads": torch.get_num_threads(),
        **options(args),
    }


# ------------------------------------------------------------------------------------------------
# Models


def is_flow(preset: Preset) -> bool:
    """Whether the preset's model is a flow-matching family (SD3, FLUX, Qwen-Image, Wan2.1)."""
    return family(preset.model) in FLOW_FAMILIES


def model_location(preset: Preset) -> str:
    """The preset's model as ``load_policy`` takes it: the folder of a full-size random-weight
    model (built on first use), or the built-in name / folder as given.

    Raises:
        ValueError: for a FLOP-only architecture (``qwenimage``, ``wan-*``: no folder is built).
    """
    if preset.model in flow_models.FLOP_ONLY:
        raise ValueError(
            f"preset {preset.name!r}: no random-weight {preset.model!r} folder is built (it "
            f"serves the flops benchmark, counted on the meta device: --only flops)"
        )
    folders = {**models.MODEL_FOLDERS, **flow_models.MODEL_FOLDERS}
    if preset.model in folders:
        return str(folders[preset.model]())
    return preset.model


def prepare(args: argparse.Namespace) -> tuple[Preset, torch.device, torch.dtype, Any, bool]:
    """Preset, device (threads set), dtype, and the pipeline with the UNet options applied.

    Returns ``(preset, device, dtype, pipeline, compile_unet)``; compiling is left to the caller
    (after its FLOP count, which must see the eager UNet).
    """
    preset = resolve(args)
    if family(preset.model) in NO_CONTENDER_FAMILIES:
        raise ValueError(
            f"preset {preset.name!r}: the sampling and training benchmarks compare against stock "
            f"and bare loops written for SD 1.x, SDXL, SD3 and FLUX.1, not "
            f"{family(preset.model)!r}; its preset runs the flops benchmark (--only flops)"
        )
    device = harness.resolve_device(getattr(args, "device", "auto"))
    harness.set_threads(device, getattr(args, "threads", None))
    dtype = harness.resolve_dtype(preset.dtype)
    pipeline = load_pipeline(preset, device)
    unet_options = options(args)
    compile_unet = unet_options.pop("compile")
    harness.apply_unet_options(pipeline.denoiser, **unet_options)
    return preset, device, dtype, pipeline, compile_unet


def load_pipeline(
    preset: Preset,
    device: torch.device,
    *,
    use_lora: bool = True,
    sde_window_size: int | str | None = "preset",
    **flow_options: Any,
) -> Any:
    """Our DDPO pipeline for the preset, on ``device``: ``ddpo.adapters.load_policy`` picks
    ``DefaultDDPOStableDiffusionPipeline``, ``...XLPipeline``, ``...3Pipeline`` or
    ``DefaultDDPOFluxPipeline`` (or Qwen-Image's, Wan2.1's) from the model folder, at the
    preset's resolution (and Wan2.1's frame count); a flow policy gets the preset's noise
    level and stochastic window (``sde_window_size`` overrides the window; ``None``: every
    step; ``flow_options``: other options of the flow families, e.g. ``post_window_solver``).

    Frozen weights in the preset's dtype; the trainable (LoRA) weights are kept in float32, as a
    mixed-precision trainer keeps them. A DDIM policy samples at the preset's ``eta`` (its
    ``eta`` attribute, as the trainer sets it from ``DDPOConfig.sample_eta``).
    """
    from ddpo.adapters import load_policy

    dtype = harness.resolve_dtype(preset.dtype)
    family_options = None
    sizes: dict[str, Any] = {}
    if preset.resolution is not None:
        sizes["resolution"] = preset.resolution
    if preset.num_frames is not None:
        sizes["num_frames"] = preset.num_frames
    if is_flow(preset):
        window = preset.sde_window_size if sde_window_size == "preset" else sde_window_size
        family_options = {
            "noise_level": preset.noise_level,
            "sde_window_size": window,
            **flow_options,
        }
    pipeline = load_policy(
        model_location(preset),
        family_options=family_options,
        use_lora=use_lora,
        lora_rank=preset.lora_rank,
        lora_alpha=preset.lora_rank,
        torch_dtype=dtype,
        device=device,
        **sizes,
    )
    pipeline.set_progress_bar_config(disable=True)
    if getattr(pipeline, "uses_sample_eta", True):
        pipeline.eta = preset.eta
    for parameter in harness.trainable_parameters(pipeline.denoiser):
        parameter.data = parameter.data.float()
    return pipeline


def sample(
    pipeline: Any,
    preset: Preset,
    conditioning: Any,
    device: torch.device,
    dtype: torch.dtype,
) -> Any:
    """One seeded ``pipeline.rollout`` of ``conditioning`` at the preset's steps and guidance
    (and the policy's sampler: the preset's eta, set by `load_pipeline`), without gradients,
    under the preset's autocast."""
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad(), harness.autocast(device, dtype):
        return pipeline.rollout(
            conditioning,
            num_steps=preset.num_steps,
            guidance_scale=preset.guidance_scale,
            generator=generator,
        )


def prompts(count: int) -> list[str]:
    """``count`` short prompts whose words are single tokens in every preset's vocabulary."""
    animals = ("cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider")
    return [f"a photo of a {animals[i % len(animals)]}" for i in range(count)]
