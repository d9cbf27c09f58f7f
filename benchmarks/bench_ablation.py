"""Ablation: DDPO epochs of the real trainer with each throughput switch added in turn.

Each row builds a fresh pipeline of the preset (``torch.compile`` changes the denoiser in place)
and a `DDPOTrainer` as :mod:`bench_epoch` does (the library's JPEG-compressibility reward, the
preset's sizes), with the switches of every row above it and its own, cumulatively:

- ``baseline``: eager, the preset's dtype and mixed precision;
- ``+ channels_last``: ``DDPOConfig.channels_last``;
- ``+ prompt_embedding_cache``: ``prompt_embedding_cache_size`` = the number of distinct prompts;
- ``+ async_reward``: ``async_reward_computation``: the reward runs in a thread while the next
  batch samples;
- ``+ compile_denoiser``: regional ``torch.compile`` of the denoiser's repeated blocks;
- ``+ sample_cuda_graphs``: the compiled blocks run as CUDA graphs without gradients (on a CPU
  there is nothing to capture: the row repeats the compiled one).

``warmup`` epochs (at least one: compilation happens there; ``first_epoch_s`` is the first one)
then ``repeats`` timed epochs (default: the preset's, at most 3); the phase columns are medians
of the trainer's own ``metrics.jsonl`` times (:func:`bench_epoch.phase_seconds`); ``speedup`` is
the baseline's ``epoch_s`` over the row's. ``mfu_sampling`` / ``mfu_training``: the epoch's FLOPs
as :mod:`bench_flops` (or :mod:`flow_flops`) counts them, per phase second, over the dense matmul
peak measured in the same run (``harness.matmul_peak_flops``: the preset's dtype on CUDA,
float32 1024x1024 on CPU).

The summary adds, on a separate eager pipeline, the graph breaks ``torch._dynamo.explain`` finds
in a guided sampling step (``policy.score`` without gradients) and in a training step (score, PPO
loss and a Gaussian KL term), and the host reads (device synchronisations on a GPU) that
`ddpo.trainer.speed.HostSyncCounter` counts per sampling step (one ``rollout``), per training
step (forward and backward) and per epoch (one extra ``trainer.step`` of the baseline).
"""

import argparse
import dataclasses
import gc
import json
import math
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_epoch
import harness
import presets
import torch

NAME = "ablation"
MAX_DEFAULT_REPEATS = 3

#: Row name -> the `DDPOConfig` switches it adds (cumulative: each row keeps those above it).
#: ``None`` stands for the number of distinct prompts of `bench_epoch.PresetPrompts`.
SWITCHES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("baseline", {}),
    ("+ channels_last", {"channels_last": True}),
    ("+ prompt_embedding_cache", {"prompt_embedding_cache_size": None}),
    ("+ async_reward", {"async_reward_computation": True}),
    ("+ compile_denoiser", {"compile_denoiser": True}),
    ("+ sample_cuda_graphs", {"sample_cuda_graphs": True}),
)
NOTES = (
    "channels_last: the denoiser's convolution weights in channels-last memory format",
    "prompt_embedding_cache: seen prompts' text embeddings reused (size: the distinct prompts)",
    "async_reward: the reward computed in a thread while the next batch samples",
    "compile_denoiser: regional torch.compile of the denoiser's repeated blocks (compile time is "
    "in first_epoch_s)",
    "sample_cuda_graphs: compiled blocks as CUDA graphs (reduce-overhead) without gradients; a CPU "
    "has no CUDA graphs, so there this row runs the compile row's configuration again",
)


def cumulative_switches(distinct_prompts: int) -> list[tuple[str, dict[str, Any]]]:
    """Each row's full set of switches: its own and those of every row above it."""
    rows: list[tuple[str, dict[str, Any]]] = []
    current: dict[str, Any] = {}
    for name, added in SWITCHES:
        current = {**current, **{k: distinct_prompts if v is None else v for k, v in added.items()}}
        rows.append((name, dict(current)))
    return rows


def epoch_flops(preset: presets.Preset) -> tuple[float, float]:
    """The epoch's sampling and training FLOPs, counted as ``bench_flops`` / ``flow_flops`` do."""
    samples = preset.sample_num_batches_per_epoch * preset.sample_batch_size
    if presets.is_flow(preset):
        import flow_flops

        window = preset.sde_window_size or preset.num_steps
        counts = flow_flops.flow_flops(preset)
        budget = flow_flops.epoch_budget(counts, samples, preset.num_steps, window)
        return budget["sampling"], budget["training"]
    import bench_flops

    per_sample = bench_flops.unet_flops(preset, 1)
    sampling = samples * (preset.num_steps * per_sample["forward"] + per_sample["vae_decode"])
    training = samples * preset.num_steps * per_sample["forward_backward"]
    return float(sampling), float(training)


def _release(device: torch.device) -> None:
    """Forget compiled graphs and free the last row's memory before the next row."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# Probes on an eager pipeline: graph breaks and host reads


def make_steps(
    pipeline: Any, preset: presets.Preset, device: torch.device
) -> tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any]]:
    """A rollout, one guided sampling step (``score`` without gradients) and one training step
    (score, PPO loss and a Gaussian KL term) on a batch of the preset's sample batch size."""
    from ddpo.core import gaussian_kl, ppo_clip_loss

    batch = preset.sample_batch_size
    dtype = harness.resolve_dtype(preset.dtype)
    with torch.no_grad(), harness.autocast(device, dtype):
        cond = pipeline.encode(presets.prompts(batch), "")

    def rollout() -> Any:
        return presets.sample(pipeline, preset, cond, device, dtype)

    out = rollout()
    latents, schedule = out.latents, out.schedule
    old_log_prob = out.log_probs[:, 0].float()
    advantages = torch.ones(batch, device=device)

    def score(guided: bool) -> Any:
        with harness.autocast(device, dtype):
            return pipeline.score(
                cond, latents[:, 0], latents[:, 1], schedule[:1].repeat(batch, 1), cfg=guided
            )

    def sampling_step() -> Any:
        with torch.no_grad():
            return score(True)

    def train_step() -> torch.Tensor:
        s = score(preset.train_cfg)
        loss = ppo_clip_loss(s.log_prob.float(), old_log_prob, advantages, clip_range=1e-4).loss
        kl = gaussian_kl(s.mean.float(), s.mean.detach().float(), s.std_dev.float())
        return loss + kl.mean()

    return rollout, sampling_step, train_step


def probe(preset: presets.Preset, device: torch.device) -> dict[str, Any]:
    """Graph breaks of a sampling and a training step, host reads per step, on a fresh eager
    pipeline."""
    from ddpo.trainer.speed import HostSyncCounter

    pipeline = presets.load_pipeline(preset, device)
    rollout, sampling_step, train_step = make_steps(pipeline, preset, device)
    found: dict[str, Any] = {}
    reasons: list[str] = []
    for name, fn in (("sampling_step", sampling_step), ("training_step", train_step)):
        explained = torch._dynamo.explain(fn)()
        found[f"graph_breaks_{name}"] = int(explained.graph_break_count)
        found[f"graphs_{name}"] = int(explained.graph_count)
        reasons.extend(f"{name}: {reason}" for reason in explained.break_reasons)
        del explained  # its graphs hold the pipeline's modules
        torch._dynamo.reset()
    found["graph_break_reasons"] = reasons
    with HostSyncCounter(accelerator_only=device.type != "cpu") as counter:
        rollout()
    found["host_syncs_per_sampling_step"] = counter.total / preset.num_steps
    found["host_syncs_sampling_by_kind"] = dict(counter.counts)
    with HostSyncCounter(accelerator_only=device.type != "cpu") as counter:
        train_step().backward()
    found["host_syncs_per_training_step"] = float(counter.total)
    found["host_syncs_training_by_kind"] = dict(counter.counts)
    del pipeline, rollout, sampling_step, train_step
    _release(device)
    return found


# ------------------------------------------------------------------------------------------------
# One row


def run_row(
    preset: presets.Preset,
    device: torch.device,
    switches: dict[str, Any],
    *,
    checkpointing: bool,
    count_syncs: bool,
) -> tuple[list[dict[str, Any]], int | None]:
    """``preset.warmup`` + ``preset.repeats`` epochs of a fresh pipeline's trainer with
    ``switches``; with ``count_syncs`` one more epoch under `HostSyncCounter`.

    Returns:
        Every epoch's ``metrics.jsonl`` row (the counted epoch left out), and the host reads of
        the counted epoch (None without ``count_syncs``).
    """
    from ddpo.rewards.jpeg import jpeg_compressibility
    from ddpo.trainer import DDPOTrainer
    from ddpo.trainer.speed import HostSyncCounter
    from ddpo.trainer.trainer import METRICS_FILENAME

    pipeline = presets.load_pipeline(preset, device)
    epochs = preset.warmup + preset.repeats
    syncs = None
    with tempfile.TemporaryDirectory() as out_dir:
        base = bench_epoch.trainer_config(preset, device, out_dir, checkpointing=checkpointing)
        config = dataclasses.replace(base, num_epochs=epochs + int(count_syncs), **switches)
        prompts = bench_epoch.PresetPrompts(group_size=preset.group_size)
        with DDPOTrainer(config, jpeg_compressibility, prompts, pipeline) as trainer:
            global_step = 0
            for epoch in range(epochs):
                global_step = trainer.step(epoch, global_step)
            if count_syncs:
                with HostSyncCounter(accelerator_only=device.type != "cpu") as counter:
                    trainer.step(epochs, global_step)
                syncs = counter.total
            lines = (Path(trainer.output_dir) / METRICS_FILENAME).read_text().splitlines()
    del pipeline
    _release(device)
    rows = [json.loads(line) for line in lines]
    rows = [row for row in rows if row["epoch"] < epochs]
    if len(rows) != epochs:
        raise RuntimeError(f"expected {epochs} epochs of metrics, got {len(rows)}")
    return rows, syncs


def row_result(
    name: str,
    epochs: list[dict[str, Any]],
    *,
    warmup: int,
    flops: tuple[float, float] | None,
    peak_flops: float | None,
) -> dict[str, Any]:
    """One table row: median phase times of the timed epochs, the first epoch, MFU."""
    timed = [bench_epoch.phase_seconds(m) for m in epochs if m["epoch"] >= warmup]
    first = next(m for m in epochs if m["epoch"] == 0)
    row: dict[str, Any] = {"configuration": name}
    for phase in ("sampling", "reward", "training"):
        row[f"{phase}_s"] = statistics.median(epoch[phase] for epoch in timed)
    row["epoch_s"] = statistics.median(
        float(m["time_epoch_s"]) for m in epochs if m["epoch"] >= warmup
    )
    row["first_epoch_s"] = float(first["time_epoch_s"])
    row["speedup"] = math.nan  # filled in against the baseline
    if flops is not None and peak_flops is not None:
        row["mfu_sampling"] = flops[0] / row["sampling_s"] / peak_flops
        row["mfu_training"] = flops[1] / row["training_s"] / peak_flops
    else:
        row["mfu_sampling"] = row["mfu_training"] = math.nan
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time the trainer's epochs with each switch added in turn; probe graph breaks and syncs."""
    preset = presets.resolve(args)
    if getattr(args, "repeats", None) is None:
        preset = dataclasses.replace(preset, repeats=min(preset.repeats, MAX_DEFAULT_REPEATS))
    preset = dataclasses.replace(preset, warmup=max(preset.warmup, 1))  # compilation happens there
    device = harness.resolve_device(getattr(args, "device", "auto"))
    harness.set_threads(device, getattr(args, "threads", None))
    dtype = harness.resolve_dtype(preset.dtype)
    checkpointing = bool(getattr(args, "gradient_checkpointing", False))

    flops = peak_flops = None
    peak_source = "not measured (--no-mfu)"
    if not getattr(args, "no_mfu", False):
        flops = epoch_flops(preset)
        if device.type == "cuda":
            peak_flops = harness.matmul_peak_flops(device, dtype)
            peak_source = f"measured {dtype} matmul"
        else:
            peak_flops = harness.matmul_peak_flops(device, torch.float32, size=1024, repeats=5)
            peak_source = "measured float32 1024x1024 matmul"

    probes = probe(preset, device)
    distinct = len(set(bench_epoch.PresetPrompts().prompts))
    rows: list[dict[str, Any]] = []
    syncs_per_epoch = None
    all_epochs: dict[str, list[dict[str, Any]]] = {}
    for index, (name, switches) in enumerate(cumulative_switches(distinct)):
        epochs, syncs = run_row(
            preset, device, switches, checkpointing=checkpointing, count_syncs=index == 0
        )
        if index == 0:
            syncs_per_epoch = syncs
        all_epochs[name] = epochs
        rows.append(
            row_result(name, epochs, warmup=preset.warmup, flops=flops, peak_flops=peak_flops)
        )
    baseline = rows[0]["epoch_s"]
    for row in rows:
        row["speedup"] = baseline / row["epoch_s"]
    best = min(rows, key=lambda row: row["epoch_s"])

    summary: dict[str, Any] = {
        "graph_breaks_sampling_step": probes["graph_breaks_sampling_step"],
        "graph_breaks_training_step": probes["graph_breaks_training_step"],
        "graph_break_reasons": probes["graph_break_reasons"],
        "host_syncs_per_sampling_step": probes["host_syncs_per_sampling_step"],
        "host_syncs_per_training_step": probes["host_syncs_per_training_step"],
        "host_syncs_per_epoch": syncs_per_epoch,
        "best": best["configuration"],
        "best_speedup": best["speedup"],
        "speedups": {row["configuration"]: row["speedup"] for row in rows},
        "timed_epochs": preset.repeats,
        "warmup_epochs": preset.warmup,
        "mfu_peak_source": peak_source,
    }
    if peak_flops is not None:
        summary["matmul_peak_tflop_per_s"] = peak_flops / 1e12
    if flops is not None:
        summary["epoch_sampling_tflop"] = flops[0] / 1e12
        summary["epoch_training_tflop"] = flops[1] / 1e12
    result = harness.result(
        NAME,
        settings=presets.describe(preset, args, device),
        environment=harness.environment(device),
        rows=rows,
        summary=summary,
        switches={name: switches for name, switches in cumulative_switches(distinct)},
        host_syncs_by_kind={
            "sampling_rollout": probes["host_syncs_sampling_by_kind"],
            "training_step": probes["host_syncs_training_by_kind"],
        },
        epoch_metrics=all_epochs,
    )
    result["notes"].extend(NOTES)
    if device.type == "cpu":
        result["notes"].append(
            "CPU: MFU against a float32 1024x1024 matmul on the same threads; no CUDA graphs"
        )
        result["notes"].append(
            "CPU: host reads include value checks done on CPU tensors only (e.g. the DDIM "
            "timestep range check), which a GPU run skips, and reads of values that stay on the "
            "host on a GPU too (AdamW's per-parameter step counters); on CUDA only reads of "
            "device tensors are counted"
        )
    return result
