"""Epoch: DDPO epochs run by the real trainer, ``DDPOTrainer.step``, timed by phase.

A `DDPOTrainer` is built over the preset's pipeline (``ddpo-tiny-random`` or
``ddpo-tiny-sdxl-random`` on CPU, the ``sd15`` or ``sdxl`` architecture on a GPU: the same code,
the family picked by ``ddpo.adapters.load_policy``) with the library's JPEG-compressibility reward
(``ddpo.rewards.jpeg``, the paper's cheapest task) and the preset's sizes: sample batch, sampling
batches per epoch, DDIM steps, guidance, eta, train batch; every timestep trained, one inner
epoch, TRL's defaults otherwise. ``warmup`` epochs run first and are not reported; then
``repeats`` epochs are timed. Nothing here samples, shuffles or trains: the phase times are the
ones the trainer itself logs to ``<output_dir>/metrics.jsonl`` (``ddpo.trainer.timing``):

- ``sampling``: ``time_sample_s``: prompts encoded, DDIM sampling with log-probs, VAE decode
  (`Rollout.run`);
- ``reward``: ``time_reward_s``: the reward function (or, when asynchronous, submitting it and
  waiting for it);
- ``advantages``: ``time_advantages_s``;
- ``training``: ``time_train_s``: shuffling and the PPO updates (``train_inner_epoch``);
- ``other``: the rest of ``time_epoch_s`` (gathering rewards, progress bars); the metrics row
  is written after ``time_epoch_s`` stops.

Each row is the median over the timed epochs (and the fastest); ``total`` is the median
``time_epoch_s``. The summary adds the median wall and process CPU time of the whole ``step``
call (the CPU time does not count waiting for a core on a shared machine). Peak memory is that
of the timed epochs as a whole (CUDA max allocated, or the CPU peak resident set).

On CUDA the trainer's phase clocks do not synchronise the device; each phase ends on a host read
of its results (rewards need the images on the host, training checks the gradient norm per
optimizer step), so little device work crosses a phase boundary, and the ``step`` call's time
is taken with the device synchronised.

The throughput flags set the trainer's own `DDPOConfig` switches: ``--compile``
(``compile_denoiser``: regional compilation), ``--cuda-graphs`` (``sample_cuda_graphs``, with
compilation), ``--channels-last``, ``--prompt-cache N`` (``prompt_embedding_cache_size``) and
``--async-reward`` (``async_reward_computation``); the JSON's settings record them.
"""

import argparse
import dataclasses
import functools
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import harness
import presets
import torch

NAME = "epoch"

#: Report row -> the trainer's metric (``PhaseTimer`` phase ``x`` is logged as ``time_x_s``).
PHASES = {
    "sampling": "time_sample_s",
    "reward": "time_reward_s",
    "advantages": "time_advantages_s",
    "training": "time_train_s",
}
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


class PresetPrompts:
    """Prompt function cycling through `presets.prompts` (single tokens in every preset's
    vocabulary, so the ``sd15`` preset's small tokenizer has each word), each prompt
    ``group_size`` times in a row (the images of one prompt that group advantages compare)."""

    def __init__(self, count: int = 7, *, group_size: int = 1) -> None:
        self.prompts = presets.prompts(count)
        self.group_size = group_size
        self.index = 0

    def __call__(self) -> tuple[str, dict[str, Any]]:
        prompt = self.prompts[(self.index // self.group_size) % len(self.prompts)]
        self.index += 1
        return prompt, {}


def trainer_config(
    preset: presets.Preset, device: torch.device, output_dir: str, *, checkpointing: bool
) -> Any:
    """The `DDPOConfig` of the benchmark's run: the preset's sizes, guidance, ``train_cfg``,
    ``kl_coef`` and (group size > 1) group-normalised advantages; no checkpoints."""
    from ddpo.trainer import DDPOConfig

    return DDPOConfig(
        train_cfg=preset.train_cfg,
        kl_coef=preset.kl_coef,
        advantage_mode="group" if preset.group_size > 1 else "auto",
        num_epochs=preset.warmup + preset.repeats,
        save_freq=0,
        output_dir=output_dir,
        mixed_precision=MIXED_PRECISION[preset.dtype],
        sample_num_steps=preset.num_steps,
        sample_eta=preset.eta,
        sample_guidance_scale=preset.guidance_scale,
        sample_batch_size=preset.sample_batch_size,
        sample_num_batches_per_epoch=preset.sample_num_batches_per_epoch,
        train_batch_size=preset.train_batch_size,
        gradient_checkpointing=checkpointing,
        accelerator_kwargs={"cpu": True} if device.type == "cpu" else {},
    )


def run_epochs(
    pipeline: Any, config: Any, *, warmup: int, device: torch.device, group_size: int = 1
) -> tuple[list[dict[str, Any]], list[tuple[float, float]], harness.PeakMemory]:
    """``warmup`` untimed epochs, then the rest of ``config.num_epochs``, through
    ``DDPOTrainer.step``.

    Returns:
        The timed epochs' ``metrics.jsonl`` rows, the wall and process CPU seconds of each timed
        ``step`` call (``harness.time_call``: logging included, device synchronised), and the
        timed epochs' peak memory.
    """
    from ddpo.rewards.jpeg import jpeg_compressibility
    from ddpo.trainer import DDPOTrainer
    from ddpo.trainer.trainer import METRICS_FILENAME

    prompts = PresetPrompts(group_size=group_size)
    with DDPOTrainer(config, jpeg_compressibility, prompts, pipeline) as trainer:
        global_step = [0]

        def step(epoch: int) -> None:
            global_step[0] = trainer.step(epoch, global_step[0])

        for epoch in range(warmup):
            step(epoch)
        calls = []
        with harness.measure_peak(device) as peak:
            for epoch in range(warmup, config.num_epochs):
                calls.append(harness.time_call(functools.partial(step, epoch), device))
        lines = (Path(trainer.output_dir) / METRICS_FILENAME).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    timed = [row for row in rows if row["epoch"] >= warmup]
    if len(timed) != config.num_epochs - warmup:
        raise RuntimeError(f"expected {config.num_epochs - warmup} timed epochs, got {len(timed)}")
    return timed, calls, peak


def phase_seconds(metrics: dict[str, Any]) -> dict[str, float]:
    """One epoch's phases (report names) from its metrics row, ``other`` the remainder."""
    seconds = {name: float(metrics[key]) for name, key in PHASES.items()}
    seconds["other"] = max(float(metrics["time_epoch_s"]) - sum(seconds.values()), 0.0)
    return seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``repeats`` epochs of ``DDPOTrainer.step`` after ``warmup``; report the phases."""
    preset = presets.resolve(args)
    device = harness.resolve_device(getattr(args, "device", "auto"))
    harness.set_threads(device, getattr(args, "threads", None))
    pipeline = presets.load_pipeline(preset, device)
    options = presets.options(args)
    cuda_graphs = bool(getattr(args, "cuda_graphs", False))
    with tempfile.TemporaryDirectory() as out_dir:
        # The switches are the trainer's own (`DDPOConfig`, applied by `DDPOTrainer`).
        config = dataclasses.replace(
            trainer_config(
                preset, device, out_dir, checkpointing=options["gradient_checkpointing"]
            ),
            compile_denoiser=options["compile"] or cuda_graphs,
            sample_cuda_graphs=cuda_graphs,
            channels_last=options["channels_last"],
            prompt_embedding_cache_size=int(getattr(args, "prompt_cache", 0)),
            async_reward_computation=bool(getattr(args, "async_reward", False)),
        )
        epochs, calls, peak = run_epochs(
            pipeline, config, warmup=preset.warmup, device=device, group_size=preset.group_size
        )

    per_epoch = [phase_seconds(metrics) for metrics in epochs]
    epoch_seconds = [float(metrics["time_epoch_s"]) for metrics in epochs]
    total = statistics.median(epoch_seconds)
    rows: list[dict[str, Any]] = []
    for name in per_epoch[0]:
        values = [epoch[name] for epoch in per_epoch]
        median = statistics.median(values)
        rows.append(
            {
                "phase": name,
                "seconds": median,
                "min_s": min(values),
                "share": median / total,
                "peak_mib": float("nan"),
            }
        )
    rows.append(
        {
            "phase": "total",
            "seconds": total,
            "min_s": min(epoch_seconds),
            "share": 1.0,
            "peak_mib": peak.peak_mib,
        }
    )
    samples = preset.sample_num_batches_per_epoch * preset.sample_batch_size
    summary: dict[str, Any] = {
        "mode": "trainer",
        "epoch_seconds": total,
        "timed_epochs": len(epochs),
        "warmup_epochs": preset.warmup,
        "samples": samples,
        "transitions": samples * pipeline.transitions_per_rollout(preset.num_steps),
        "samples_per_s": samples / total,
        "step_call_wall_s": statistics.median(wall for wall, _ in calls),
        "step_call_cpu_s": statistics.median(cpu for _, cpu in calls),
        "memory_kind": peak.kind,
        "peak_mib": peak.peak_mib,
    }
    if preset.name == "sd15":
        summary["target_epoch_seconds_256_samples_h100"] = 150.0
    settings = presets.describe(preset, args, device) | {
        name: getattr(config, name)
        for name in (
            "compile_denoiser",
            "sample_cuda_graphs",
            "channels_last",
            "prompt_embedding_cache_size",
            "async_reward_computation",
        )
    }
    return harness.result(
        NAME,
        settings=settings,
        environment=harness.environment(device),
        rows=rows,
        summary=summary,
        epoch_metrics=epochs,
        step_call_seconds=[{"wall_s": wall, "cpu_s": cpu} for wall, cpu in calls],
    )
