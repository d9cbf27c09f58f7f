"""Memory: peak memory per phase of DDPO, and LoRA training at train batch 1 with checkpointing.

Phases, each measured on its own (CUDA: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``; CPU: the process's peak resident set, its mark reset through
``/proc/self/clear_refs`` at the start of each phase):

- ``load``: loading the pipeline with LoRA onto the device;
- ``sampling``: one rollout of ``sample_batch_size`` images with log-probs;
- ``train_step``: one training step (re-score with guidance + PPO + backward + AdamW) at train
  batch 1, without gradient checkpointing;
- ``train_step_checkpointed``: the same with the UNet's gradient checkpointing on: the issue's
  target figure for ``sd15`` (10 GB or less on one GPU).

``peak_mib`` is the phase's peak, ``model_mib`` what was resident when it started (weights,
optimizer state of earlier phases), ``phase_delta_mib`` their difference (what the phase itself
needs on top); on CPU the first two include the Python process itself (about 0.4 GB with torch,
diffusers and transformers imported).
"""

import argparse
from dataclasses import replace
from typing import Any

import bench_training
import harness
import presets
import torch

NAME = "memory"
TARGET_SD15_TRAIN_MIB = 10 * 1000**3 / 2**20  # 10 GB


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure each phase's peak memory; return one row per phase."""
    preset = presets.resolve(args)
    device = harness.resolve_device(getattr(args, "device", "auto"))
    harness.set_threads(device, getattr(args, "threads", None))
    dtype = harness.resolve_dtype(preset.dtype)
    opts = presets.options(args)
    opts["gradient_checkpointing"] = False  # measured both ways below
    rows = []

    def record(phase: str, peak: harness.PeakMemory, **extra: Any) -> None:
        rows.append(
            {
                "phase": phase,
                "peak_mib": peak.peak_mib,
                "model_mib": peak.start_mib,
                "phase_delta_mib": peak.peak_mib - peak.start_mib,
                "memory_kind": peak.kind,
                **extra,
            }
        )

    with harness.measure_peak(device) as peak:
        pipeline = presets.load_pipeline(preset, device)
        harness.apply_unet_options(pipeline.unet, **opts)
    record("load", peak)

    pipeline.unet.eval()
    with harness.measure_peak(device) as peak, torch.no_grad(), harness.autocast(device, dtype):
        pipeline(
            presets.prompts(preset.sample_batch_size),
            num_inference_steps=preset.num_steps,
            guidance_scale=preset.guidance_scale,
            eta=preset.eta,
            generator=torch.Generator(device=device).manual_seed(0),
            output_type="pt",
        )
    record("sampling", peak, batch=preset.sample_batch_size)

    one = replace(preset, train_batch_size=1)
    inputs = bench_training.training_inputs(pipeline, 1, one.num_steps, device)
    for phase, checkpointing in (("train_step", False), ("train_step_checkpointed", True)):
        if checkpointing:
            harness.apply_unet_options(pipeline.unet, gradient_checkpointing=True)
        steps = bench_training.make_steps(
            pipeline,
            inputs,
            guidance_scale=one.guidance_scale,
            eta=one.eta,
            device=device,
            dtype=dtype,
        )
        steps["ddpo"]()  # optimizer state allocated outside the measured step
        with harness.measure_peak(device) as peak:
            steps["ddpo"]()
        record(phase, peak, batch=1, gradient_checkpointing=checkpointing)
        del steps

    summary: dict[str, Any] = {
        "memory_kind": rows[0]["memory_kind"],
        "peak_mib_by_phase": {row["phase"]: row["peak_mib"] for row in rows},
    }
    if preset.name == "sd15" and device.type == "cuda":
        summary["target_train_checkpointed_mib"] = TARGET_SD15_TRAIN_MIB
        summary["meets_target"] = rows[-1]["peak_mib"] <= TARGET_SD15_TRAIN_MIB
    return harness.result(
        NAME,
        settings=presets.describe(preset, args, device),
        environment=harness.environment(device),
        rows=rows,
        summary=summary,
    )
