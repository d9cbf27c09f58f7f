"""Sampling: images/s of our rollout with log-probs against stock diffusers, same process.

Contenders, on the SAME components (UNet with the same LoRA layers, VAE, text encoder, tokenizer;
a fresh DDIM scheduler from the same config), prompts, steps, batch, guidance scale, eta and
seeded generator, both decoding to a float tensor (``output_type="pt"``):

- ``ddpo``: our pipeline's ``__call__`` (keeps every latent and log-prob):
  ``DefaultDDPOStableDiffusionPipeline`` or, for an SDXL preset,
  ``DefaultDDPOStableDiffusionXLPipeline``;
- ``diffusers``: ``diffusers.StableDiffusionPipeline.__call__`` or
  ``diffusers.StableDiffusionXLPipeline.__call__`` (no negative prompt: zeros, as SDXL base's
  ``force_zeros_for_empty_prompt``, which ours gives for the empty negative prompt).

For a flow preset (SD3, FLUX.1; :func:`run_flow`) the contenders are our policy's ``__call__``
in the ODE limit (``noise_level=0``: the Euler ODE at every step, images equal to stock's for
the same generator), ``ddpo_sde`` (our rollout as the trainer samples it: Flow-GRPO's SDE step
in the preset's stochastic window, keeping the window's latents and log-probs; the same
generator), and stock ``StableDiffusion3Pipeline`` / ``FluxPipeline`` over the same components
with a fresh ``FlowMatchEulerDiscreteScheduler`` from the same config.

They run interleaved after a warm-up; the figure is the ratio of medians (ours / stock: 1.05
means 5 % slower). With ``--no-mfu`` unset, FLOPs of one call are counted with
``FlopCounterMode``; on CUDA the model FLOP utilisation is that over time and over the measured
dense matmul peak in the run's dtype.
"""

import argparse
from typing import Any

import harness
import presets
import torch

NAME = "sampling"


def stock_pipeline(pipeline: Any) -> Any:
    """A stock diffusers pipeline of our pipeline's family over its components (shared, not
    copied), with a fresh DDIM scheduler from the same config."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    wrapped = pipeline.pipeline
    components = dict(wrapped.components)
    components["scheduler"] = DDIMScheduler.from_config(pipeline.scheduler.config)
    stock: Any
    if isinstance(wrapped, StableDiffusionXLPipeline):
        stock = StableDiffusionXLPipeline(
            **components,
            force_zeros_for_empty_prompt=wrapped.config.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
    else:
        components.update(safety_checker=None, feature_extractor=None)
        stock = StableDiffusionPipeline(**components, requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    return stock


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time both samplers; return settings, one row per contender and the summary figures."""
    preset, device, dtype, pipeline, compile_unet = presets.prepare(args)
    if presets.is_flow(preset):
        return run_flow(args, preset, device, dtype, pipeline, compile_unet)
    pipeline.unet.eval()
    stock = stock_pipeline(pipeline)
    batch_prompts = presets.prompts(preset.sample_batch_size)
    common: dict[str, Any] = {
        "num_inference_steps": preset.num_steps,
        "guidance_scale": preset.guidance_scale,
        "eta": preset.eta,
        "output_type": "pt",
    }

    def generator() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(0)

    def ours() -> Any:
        with torch.no_grad(), harness.autocast(device, dtype):
            return pipeline(batch_prompts, generator=generator(), **common)

    def theirs() -> Any:
        with torch.no_grad(), harness.autocast(device, dtype):
            return stock(batch_prompts, generator=generator(), **common)

    contenders = {"ddpo": ours, "diffusers": theirs}
    # FLOPs are counted on the eager module (compiling does not change the model's FLOPs, and
    # FlopCounterMode does not see inside compiled graphs); then compile if asked.
    flops: dict[str, int] = {}
    if not getattr(args, "no_mfu", False):
        flops = {name: harness.count_flops(fn) for name, fn in contenders.items()}
    if compile_unet:
        harness.apply_unet_options(pipeline.unet, compile=True)
    timings = harness.time_interleaved(
        contenders, device, repeats=preset.repeats, warmup=preset.warmup
    )
    memory, outputs = {}, {}
    for name, fn in contenders.items():
        with harness.measure_peak(device) as peak:
            outputs[name] = fn()
        memory[name] = peak
    # Both did the same work: same images from the same generator (the difference is recorded;
    # 0 when our noise draws match diffusers'), and ours also kept the log-probs.
    ours_images = torch.as_tensor(outputs["ddpo"].images)
    theirs_images = torch.as_tensor(outputs["diffusers"].images)
    if ours_images.shape != theirs_images.shape:
        raise RuntimeError(f"image shapes differ: {ours_images.shape} vs {theirs_images.shape}")
    max_image_diff = float((ours_images.float() - theirs_images.float()).abs().max())
    log_probs_shape = tuple(outputs["ddpo"].log_probs.shape)
    if log_probs_shape != (preset.sample_batch_size, preset.num_steps):
        raise RuntimeError(f"log_probs shape {log_probs_shape} unexpected")
    del outputs

    peak_flops = None
    if flops and device.type == "cuda":
        peak_flops = harness.matmul_peak_flops(device, dtype)

    steps_per_call = preset.sample_batch_size * preset.num_steps
    rows = harness.contender_rows(
        list(contenders),
        timings,
        memory,
        flops,
        peak_flops,
        work=preset.sample_batch_size,
        work_key="images_per_s",
        flop_key="gflop_per_call",
        extra=lambda seconds: {"denoise_steps_per_s": steps_per_call / seconds},
    )
    ratios = timings.ratios("ddpo", "diffusers")
    summary: dict[str, Any] = {
        "time_ratio_ours_over_stock": ratios["median"],
        "overhead_pct": 100.0 * (ratios["median"] - 1.0),
        "overhead_pct_min": 100.0 * (ratios["min"] - 1.0),
        "overhead_pct_cpu_time": 100.0 * (ratios["cpu_median"] - 1.0),
        "target_overhead_pct": 5.0,
        "ddpo_images_per_s": rows[0]["images_per_s"],
        "max_abs_image_diff": max_image_diff,
        "diffusers_images_per_s": rows[1]["images_per_s"],
        "ours": type(pipeline).__name__,
        "stock": type(stock).__name__,
    }
    if peak_flops is not None:
        summary["matmul_peak_tflop_per_s"] = peak_flops / 1e12
    return harness.result(
        NAME,
        settings=presets.describe(preset, args, device),
        environment=harness.environment(device),
        timings_s=timings.seconds,
        cpu_timings_s=timings.cpu_seconds,
        rows=rows,
        summary=summary,
    )


def stock_flow_pipeline(pipeline: Any) -> Any:
    """Stock ``StableDiffusion3Pipeline`` or ``FluxPipeline`` over our flow policy's components
    (shared, not copied: the same transformer with the same LoRA layers), with a fresh
    flow-match Euler scheduler from the same config."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    wrapped = pipeline.pipeline
    components = dict(wrapped.components)
    components["scheduler"] = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    stock = type(wrapped)(**components)
    stock.set_progress_bar_config(disable=True)
    return stock


def run_flow(
    args: argparse.Namespace,
    preset: presets.Preset,
    device: torch.device,
    dtype: torch.dtype,
    pipeline: Any,
    compile_unet: bool,
) -> dict[str, Any]:
    """Time our flow policy (ODE limit and SDE rollout) against the stock flow pipeline."""
    pipeline.denoiser.eval()
    stock = stock_flow_pipeline(pipeline)
    batch_prompts = presets.prompts(preset.sample_batch_size)
    height, width = pipeline.resolution
    common: dict[str, Any] = {
        "num_inference_steps": preset.num_steps,
        "guidance_scale": preset.guidance_scale,
        "output_type": "pt",
    }
    stock_extra: dict[str, Any] = {
        "height": height,
        "width": width,
        "max_sequence_length": pipeline.max_sequence_length,
    }
    if presets.family(preset.model) == "sd3":
        stock_extra["negative_prompt"] = ""  # what ours encodes for the default negative prompt

    def generator() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(0)

    def ours_ode() -> Any:
        with torch.no_grad(), harness.autocast(device, dtype):
            return pipeline(batch_prompts, generator=generator(), noise_level=0, **common)

    def ours_sde() -> Any:
        with torch.no_grad(), harness.autocast(device, dtype):
            return pipeline(batch_prompts, generator=generator(), **common)

    def theirs() -> Any:
        with torch.no_grad(), harness.autocast(device, dtype):
            return stock(batch_prompts, generator=generator(), **common, **stock_extra)

    contenders = {"ddpo_ode": ours_ode, "ddpo_sde": ours_sde, "diffusers": theirs}
    flops: dict[str, int] = {}
    if not getattr(args, "no_mfu", False):
        flops = {name: harness.count_flops(fn) for name, fn in contenders.items()}
    if compile_unet:
        harness.apply_unet_options(pipeline.denoiser, compile=True)
    timings = harness.time_interleaved(
        contenders, device, repeats=preset.repeats, warmup=preset.warmup
    )
    memory, outputs = {}, {}
    for name, fn in contenders.items():
        with harness.measure_peak(device) as peak:
            outputs[name] = fn()
        memory[name] = peak
    ode = torch.as_tensor(outputs["ddpo_ode"].images).float()
    sde = torch.as_tensor(outputs["ddpo_sde"].images).float()
    stock_images = torch.as_tensor(outputs["diffusers"].images).float()
    if ode.shape != stock_images.shape:
        raise RuntimeError(f"image shapes differ: {ode.shape} vs {stock_images.shape}")
    window = pipeline.transitions_per_rollout(preset.num_steps)
    log_probs_shape = tuple(outputs["ddpo_sde"].log_probs.shape)
    if log_probs_shape != (preset.sample_batch_size, window):
        raise RuntimeError(f"SDE log_probs shape {log_probs_shape}, expected (batch, {window})")
    del outputs

    peak_flops = (
        harness.matmul_peak_flops(device, dtype) if flops and device.type == "cuda" else None
    )
    rows = harness.contender_rows(
        list(contenders),
        timings,
        memory,
        flops,
        peak_flops,
        work=preset.sample_batch_size,
        work_key="images_per_s",
        flop_key="gflop_per_call",
        extra=lambda seconds: {
            "denoise_steps_per_s": preset.sample_batch_size * preset.num_steps / seconds
        },
    )
    ode_ratio = timings.ratios("ddpo_ode", "diffusers")
    sde_ratio = timings.ratios("ddpo_sde", "diffusers")
    summary: dict[str, Any] = {
        "time_ratio_ode_over_stock": ode_ratio["median"],
        "overhead_pct": 100.0 * (ode_ratio["median"] - 1.0),
        "overhead_pct_min": 100.0 * (ode_ratio["min"] - 1.0),
        "overhead_pct_cpu_time": 100.0 * (ode_ratio["cpu_median"] - 1.0),
        "time_ratio_sde_over_stock": sde_ratio["median"],
        "sde_overhead_pct": 100.0 * (sde_ratio["median"] - 1.0),
        "sde_overhead_pct_cpu_time": 100.0 * (sde_ratio["cpu_median"] - 1.0),
        "target_overhead_pct": 5.0,
        "max_abs_image_diff": float((ode - stock_images).abs().max()),
        "sde_vs_stock_max_abs_image_diff": float((sde - stock_images).abs().max()),
        "sde_transitions_per_rollout": window,
        "ours": type(pipeline).__name__,
        "stock": type(stock).__name__,
    }
    if peak_flops is not None:
        summary["matmul_peak_tflop_per_s"] = peak_flops / 1e12
    return harness.result(
        NAME,
        settings=presets.describe(preset, args, device),
        environment=harness.environment(device),
        timings_s=timings.seconds,
        cpu_timings_s=timings.cpu_seconds,
        rows=rows,
        summary=summary,
    )
