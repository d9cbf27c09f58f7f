"""Memory: peak memory per phase of DDPO, and LoRA training at train batch 1 with checkpointing.

Phases, each measured on its own (CUDA: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``; CPU: the process's peak resident set, its mark reset through
``/proc/self/clear_refs`` at the start of each phase):

- ``load``: loading the pipeline with LoRA onto the device;
- ``sampling``: one rollout of ``sample_batch_size`` images with log-probs;
- ``train_step``: one optimizer step of the trainer's own pass (``bench_training``'s ``ddpo``
  contender: ``train_inner_epoch``, re-score with guidance + PPO + backward + AdamW) at train
  batch 1, without gradient checkpointing;
- ``train_step_checkpointed``: the same with the UNet's gradient checkpointing on: the issue's
  target figure for ``sd15`` (10 GB or less on one GPU) and ``sdxl`` (24 GB or less: a 24 GB
  card).

On CPU each phase runs in its own process (the model loaded first, then only that phase
measured). ``peak_mib`` is the phase's peak, ``model_mib`` what was resident when it started
(weights, optimizer state of earlier phases), ``phase_delta_mib`` their difference (what the
phase itself needs on top); on CPU the first two include the Python process itself (about
0.4 GB with torch, diffusers and transformers imported), and the training step measured there is
the first one (its delta includes the AdamW state), since the resident set does not shrink when
a step frees its activations, so a second step would show no growth; on CUDA it is the second.
"""

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import bench_training
import harness
import presets
import torch

NAME = "memory"
TARGET_TRAIN_MIB = {  # train batch 1 with gradient checkpointing, CUDA max allocated
    "sd15": 10 * 1000**3 / 2**20,  # 10 GB
    "sdxl": 24 * 1000**3 / 2**20,  # 24 GB: SDXL DDPO on a 24 GB card
}


PHASES = ("load", "sampling", "train_step", "train_step_checkpointed")


def _row(phase: str, peak: harness.PeakMemory, **extra: Any) -> dict[str, Any]:
    return {
        "phase": phase,
        "peak_mib": peak.peak_mib,
        "model_mib": peak.start_mib,
        "phase_delta_mib": peak.peak_mib - peak.start_mib,
        "memory_kind": peak.kind,
        **extra,
    }


def measure_phases(args: argparse.Namespace, phases: tuple[str, ...]) -> list[dict[str, Any]]:
    """Measure ``phases`` (a subset of :data:`PHASES`, in order) in this process."""
    preset = presets.resolve(args)
    device = harness.resolve_device(getattr(args, "device", "auto"))
    harness.set_threads(device, getattr(args, "threads", None))
    dtype = harness.resolve_dtype(preset.dtype)
    opts = presets.options(args)
    opts["gradient_checkpointing"] = False  # measured both ways below
    rows = []

    import ddpo.adapters  # noqa: F401  # imported outside the measured load

    with harness.measure_peak(device) as peak:
        pipeline = presets.load_pipeline(preset, device)
        harness.apply_unet_options(pipeline.denoiser, **opts)
    if "load" in phases:
        rows.append(_row("load", peak))

    if "sampling" in phases:
        pipeline.denoiser.eval()
        # a flow policy samples with its SDE window (the rollout the trainer makes); DDIM: eta
        sampler = {} if presets.is_flow(preset) else {"eta": preset.eta}
        with (
            harness.measure_peak(device) as peak,
            torch.no_grad(),
            harness.autocast(device, dtype),
        ):
            pipeline(
                presets.prompts(preset.sample_batch_size),
                num_inference_steps=preset.num_steps,
                guidance_scale=preset.guidance_scale,
                generator=torch.Generator(device=device).manual_seed(0),
                **sampler,
                output_type="pt",
            )
        rows.append(_row("sampling", peak, batch=preset.sample_batch_size))

    one = replace(preset, train_batch_size=1)
    for phase, checkpointing in (("train_step", False), ("train_step_checkpointed", True)):
        if phase not in phases:
            continue
        if checkpointing:
            harness.apply_unet_options(pipeline.denoiser, gradient_checkpointing=True)
        steps = bench_training.steps_for(pipeline, one, 1, device, dtype)
        if device.type == "cuda":
            steps["ddpo"]()  # optimizer state allocated outside the measured step
        with harness.measure_peak(device) as peak:
            steps["ddpo"]()
        rows.append(_row(phase, peak, batch=1, gradient_checkpointing=checkpointing))
        del steps
    return rows


def _phase_in_subprocess(args: argparse.Namespace, phase: str) -> dict[str, Any]:
    encoded = json.dumps({k: v for k, v in vars(args).items() if k not in ("out", "only")})
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--args", encoded],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory phase {phase!r} failed:\n{done.stderr[-3000:]}")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure each phase's peak memory; return one row per phase.

    On CPU each phase runs in a fresh process (load the model, then measure only that phase), so
    that memory an earlier phase freed but the allocator kept resident does not count; on CUDA
    all phases run in this process (the allocator's peak counter is reset per phase).
    """
    preset = presets.resolve(args)
    device = harness.resolve_device(getattr(args, "device", "auto"))
    harness.set_threads(device, getattr(args, "threads", None))
    if device.type == "cpu":
        rows = [_phase_in_subprocess(args, phase) for phase in PHASES]
    else:
        rows = measure_phases(args, PHASES)
    summary: dict[str, Any] = {
        "memory_kind": rows[0]["memory_kind"],
        "isolation": "process per phase" if device.type == "cpu" else "one process",
        "peak_mib_by_phase": {row["phase"]: row["peak_mib"] for row in rows},
    }
    target = TARGET_TRAIN_MIB.get(preset.name)
    if target is not None and device.type == "cuda":
        summary["target_train_checkpointed_mib"] = target
        summary["meets_target"] = rows[-1]["peak_mib"] <= target
    return harness.result(
        NAME,
        settings=presets.describe(preset, args, device),
        environment=harness.environment(device),
        rows=rows,
        summary=summary,
    )


if __name__ == "__main__":  # one phase in a fresh process: run() calls this on CPU
    parser = argparse.ArgumentParser(description="measure one memory phase, print its JSON row")
    parser.add_argument("--phase", choices=PHASES, required=True)
    parser.add_argument("--args", required=True, help="the benchmark options as JSON")
    cli = parser.parse_args()
    (row,) = measure_phases(argparse.Namespace(**json.loads(cli.args)), (cli.phase,))
    print(json.dumps(row))
