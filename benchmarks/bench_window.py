"""Window: the measured effect of a flow policy's stochastic window on an epoch's phases.

Flow-GRPO's SDE window (``sde_window_size`` = ``K`` of the ``T`` steps) records and trains only
``K`` transitions per sample; the other steps take the ODE step. Sampling still makes all ``T``
transformer calls, so the window should leave the sampling time as it is and scale the
training time by about ``K / T``. This benchmark measures that with the real trainer: one
`DDPOTrainer` per window (every step, 2, 1, and 2 with MixGRPO-Flash's DPM-Solver++ and 0.4
of the steps after it, which is where its sampling saves; the preset's policy otherwise, loaded
once per trainer) over the preset's sizes and the JPEG-compressibility reward, ``warmup`` untimed
epochs each, then ``repeats`` timed epochs taken round-robin across the trainers (the order
alternating each round, so the drift of a shared machine is spread over all of them). The phase
times are the trainer's own ``time_sample_s`` and ``time_train_s`` (``metrics.jsonl``); the
figures are their medians per window and the ratios to every-step training.

Flow presets only (``tiny-sd3``, ``tiny-flux`` on CPU; ``sd3``, ``flux`` on a GPU); on another
preset it reports that it does not apply.
"""

import argparse
import contextlib
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import bench_epoch
import harness
import presets
import torch

NAME = "window"


def windows(num_steps: int) -> list[int]:
    """The window sizes compared: every step, 2 and 1 (those that fit in ``num_steps``)."""
    return [k for k in dict.fromkeys((num_steps, 2, 1)) if k <= num_steps]


FLASH = {"post_window_solver": "dpmsolver++", "post_window_step_ratio": 0.4}
"""MixGRPO-Flash's steps after the window (its script's DPM-Solver++ and compression 0.4)."""


def arms(num_steps: int) -> dict[str, tuple[int, dict[str, Any]]]:
    """Label -> (window size, the policy's window options): every window of `windows`, and
    the window of 2 with MixGRPO-Flash's steps after it (where 2 is a window)."""
    found: dict[str, tuple[int, dict[str, Any]]] = {}
    for k in windows(num_steps):
        found[str(k)] = (k, {"sde_window_size": None if k == num_steps else k})
    if "2" in found and num_steps > 2:
        found["2_flash"] = (2, {"sde_window_size": 2, **FLASH})
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time epochs of one trainer per window size, interleaved; report phases per window."""
    from ddpo.rewards.jpeg import jpeg_compressibility
    from ddpo.trainer import DDPOTrainer
    from ddpo.trainer.trainer import METRICS_FILENAME

    preset = presets.resolve(args)
    device = harness.resolve_device(getattr(args, "device", "auto"))
    harness.set_threads(device, getattr(args, "threads", None))
    settings = presets.describe(preset, args, device)
    if not presets.is_flow(preset):
        note = f"preset {preset.name!r} is not a flow-matching model: no stochastic window"
        return harness.result(
            NAME,
            settings=settings,
            environment=harness.environment(device),
            rows=[{"window": "-", "note": note}],
            summary={"applies": False},
        )
    compared = arms(preset.num_steps)
    sizes = list(compared)
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as root:
        trainers: dict[str, Any] = {}
        for k in sizes:
            policy = presets.load_pipeline(replace(preset), device, **compared[k][1])
            out_dir = str(Path(root) / f"window-{k}")
            config = bench_epoch.trainer_config(preset, device, out_dir, checkpointing=False)
            prompts = bench_epoch.PresetPrompts(group_size=preset.group_size)
            trainer = DDPOTrainer(config, jpeg_compressibility, prompts, policy)
            trainers[k] = stack.enter_context(trainer)
        global_steps = dict.fromkeys(sizes, 0)
        epoch_calls: dict[str, list[tuple[float, float]]] = {k: [] for k in sizes}
        for epoch in range(preset.warmup + preset.repeats):
            order = sizes if epoch % 2 == 0 else sizes[::-1]
            for k in order:

                def step(k: str = k, epoch: int = epoch) -> None:
                    global_steps[k] = trainers[k].step(epoch, global_steps[k])

                call = harness.time_call(step, device)
                if epoch >= preset.warmup:
                    epoch_calls[k].append(call)
        metrics = {}
        for k in sizes:
            lines = (Path(trainers[k].output_dir) / METRICS_FILENAME).read_text().splitlines()
            rows = [json.loads(line) for line in lines]
            metrics[k] = [row for row in rows if row["epoch"] >= preset.warmup]

    def median(k: str, key: str) -> float:
        return statistics.median(float(row[key]) for row in metrics[k])

    full = str(preset.num_steps)
    rows = []
    for k in sizes:
        size = compared[k][0]
        flash = " + MixGRPO-Flash after it" if k.endswith("_flash") else ""
        rows.append(
            {
                "window": f"{size} of {full}{flash}",
                "arm": k,
                "sampling_s": median(k, "time_sample_s"),
                "training_s": median(k, "time_train_s"),
                "epoch_s": median(k, "time_epoch_s"),
                "training_over_all_steps": median(k, "time_train_s") / median(full, "time_train_s"),
                "expected_k_over_t": size / int(full),
                "sampling_over_all_steps": median(k, "time_sample_s")
                / median(full, "time_sample_s"),
                "step_call_cpu_s": statistics.median(cpu for _, cpu in epoch_calls[k]),
            }
        )
    summary = {
        "applies": True,
        "timed_epochs_per_window": preset.repeats,
        "samples_per_epoch": preset.sample_batch_size * preset.sample_num_batches_per_epoch,
        **{f"training_ratio_window_{r['arm']}": r["training_over_all_steps"] for r in rows},
        **{f"sampling_ratio_window_{r['arm']}": r["sampling_over_all_steps"] for r in rows},
    }
    return harness.result(
        NAME,
        settings=settings,
        environment=harness.environment(device),
        rows=rows,
        summary=summary,
        epoch_metrics={str(k): metrics[k] for k in sizes},
        torch_threads=torch.get_num_threads(),
    )
