"""Sweep: time per image of sampling and per transition of training against the batch size.

On the preset's pipeline (eager, its dtype, under ``harness.autocast`` as the training
benchmark), for each batch size ``b``:

- ``sampling``: one ``pipeline.rollout`` of ``b`` images without gradients (the preset's steps,
  guidance and eta; VAE decode included): seconds per image and images per second, at sample
  batch sizes 1, 2, 4, 8 and (CUDA) 16;
- ``training``: one training step on ``b`` transitions of a real rollout: ``pipeline.score``
  (guided when the preset's ``train_cfg``), the PPO clipped loss (plus the KL term's reference
  forward when the preset's ``kl_coef > 0``) and the backward pass: seconds per transition, at
  train batch sizes 1, 2, 4 and 8.

Each size: one untimed call (its peak memory is the row's ``peak_mib``), then ``repeats`` timed
calls; the median is reported. On CUDA a size that runs out of memory is recorded and the
larger ones are skipped. The summary names the fastest size per image (per transition) and
recommends the largest size within 5 % of that best time that fits in memory.
"""

import argparse
import gc
import math
import statistics
from collections.abc import Callable
from typing import Any

import harness
import presets
import torch

NAME = "sweep"
SAMPLE_SIZES = {"cpu": (1, 2, 4, 8), "cuda": (1, 2, 4, 8, 16)}
TRAIN_SIZES = (1, 2, 4, 8)
TOLERANCE = 0.05  # "as fast": within 5 % of the best time per item
CLIP_RANGE = 1e-4  # TRL's default train_clip_range
COLUMNS = (
    "phase",
    "batch_size",
    "median_s",
    "s_per_image",
    "images_per_s",
    "s_per_transition",
    "transitions_per_s",
    "peak_mib",
    "memory_kind",
    "status",
)


def recommend(per_item: dict[int, float], *, tolerance: float = TOLERANCE) -> int:
    """The largest batch size whose time per item is within ``tolerance`` of the best.

    Raises:
        ValueError: if ``per_item`` is empty (no size fitted).
    """
    if not per_item:
        raise ValueError("per_item must hold at least one measured batch size, got {}")
    best = min(per_item.values())
    return max(size for size, seconds in per_item.items() if seconds <= best * (1 + tolerance))


def measure(
    make: Callable[[int], Callable[[], Any]],
    sizes: tuple[int, ...],
    device: torch.device,
    *,
    repeats: int,
) -> dict[int, tuple[float, harness.PeakMemory] | str]:
    """``size -> (median seconds, peak memory of the first call)`` of the calls ``make(size)``
    returns, or ``"out of memory"``; the sizes after one that ran out of memory are not tried."""
    found: dict[int, tuple[float, harness.PeakMemory] | str] = {}
    for size in sizes:
        try:
            fn = make(size)
            with harness.measure_peak(device) as peak:
                fn()
            seconds = statistics.median(harness.time_call(fn, device)[0] for _ in range(repeats))
            del fn  # its inputs are not held while the next size is measured
            found[size] = (seconds, peak)
        except torch.cuda.OutOfMemoryError:
            found[size] = "out of memory"
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if isinstance(found[size], str):
            break
    return found


def sweep_steps(
    pipeline: Any, preset: presets.Preset, device: torch.device, dtype: torch.dtype
) -> tuple[Callable[[int], Callable[[], Any]], Callable[[int], Callable[[], Any]]]:
    """Makers of the sampling call and the training step for a batch size."""
    from ddpo.core import gaussian_kl, ppo_clip_loss

    def rollout(conditioning: Any) -> Any:
        return presets.sample(pipeline, preset, conditioning, device, dtype)

    def encode(size: int) -> Any:
        with torch.no_grad(), harness.autocast(device, dtype):
            return pipeline.encode(presets.prompts(size), "")

    def sampling(size: int) -> Callable[[], Any]:
        conditioning = encode(size)
        return lambda: rollout(conditioning)

    params = harness.trainable_parameters(pipeline.denoiser)

    def training(size: int) -> Callable[[], Any]:
        conditioning = encode(size)
        out = rollout(conditioning)
        latents, next_latents = out.latents[:, 0], out.latents[:, 1]
        schedule = out.schedule[:1].repeat(size, 1)
        old_log_prob = out.log_probs[:, 0].float()
        advantages = torch.linspace(-1.0, 1.0, size, device=device)
        del out

        def score() -> Any:
            with harness.autocast(device, dtype):
                return pipeline.score(
                    conditioning, latents, next_latents, schedule, cfg=preset.train_cfg
                )

        def step() -> None:
            s = score()
            log_prob = s.log_prob.float()
            loss = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range=CLIP_RANGE).loss
            if preset.kl_coef > 0:
                with torch.no_grad(), pipeline.reference_policy():
                    ref = score()
                kl = gaussian_kl(s.mean.float(), ref.mean.float(), s.std_dev.float()).mean()
                loss = loss + preset.kl_coef * kl
            loss.backward()
            for p in params:
                p.grad = None

        return step

    return sampling, training


def phase_rows(
    phase: str, found: dict[int, tuple[float, harness.PeakMemory] | str], unit: str
) -> tuple[list[dict[str, Any]], dict[int, float]]:
    """Table rows of one phase and its measured ``size -> seconds per item``."""
    rows: list[dict[str, Any]] = []
    per_item: dict[int, float] = {}
    for size, value in found.items():
        row: dict[str, Any] = {"phase": phase, "batch_size": size}
        if isinstance(value, str):
            row.update({"median_s": math.nan, f"s_per_{unit}": math.nan, "status": value})
        else:
            seconds, peak = value
            per_item[size] = seconds / size
            row.update(
                {
                    "median_s": seconds,
                    f"s_per_{unit}": seconds / size,
                    f"{unit}s_per_s": size / seconds,
                    "peak_mib": peak.peak_mib,
                    "memory_kind": peak.kind,
                    "status": "ok",
                }
            )
        rows.append(row)
    return rows, per_item


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time sampling and training at each batch size; recommend the sizes to use."""
    preset = presets.resolve(args)
    device = harness.resolve_device(getattr(args, "device", "auto"))
    harness.set_threads(device, getattr(args, "threads", None))
    dtype = harness.resolve_dtype(preset.dtype)
    pipeline = presets.load_pipeline(preset, device)
    sampling, training = sweep_steps(pipeline, preset, device, dtype)
    sample_sizes = SAMPLE_SIZES["cuda" if device.type == "cuda" else "cpu"]

    sampled = measure(sampling, sample_sizes, device, repeats=preset.repeats)
    trained = measure(training, TRAIN_SIZES, device, repeats=preset.repeats)
    sample_rows, per_image = phase_rows("sampling", sampled, "image")
    train_rows, per_transition = phase_rows("training", trained, "transition")
    if not per_image or not per_transition:
        raise RuntimeError(f"no batch size fitted: sampling {sampled}, training {trained}")

    best_sample = min(per_image, key=per_image.__getitem__)
    best_train = min(per_transition, key=per_transition.__getitem__)
    sample_pick = recommend(per_image)
    train_pick = recommend(per_transition)
    summary: dict[str, Any] = {
        "fastest_sample_batch": best_sample,
        "fastest_train_batch": best_train,
        "recommended_sample_batch": sample_pick,
        "recommended_train_batch": train_pick,
        "recommendation": (
            f"sample_batch_size={sample_pick}, train_batch_size={train_pick} (the largest "
            f"sizes within {TOLERANCE:.0%} of the best time per image / per transition)"
        ),
        "out_of_memory": [
            f"{phase} batch {size}"
            for phase, found in (("sampling", sampled), ("training", trained))
            for size, value in found.items()
            if isinstance(value, str)
        ],
    }
    result = harness.result(
        NAME,
        settings=presets.describe(preset, args, device),
        environment=harness.environment(device),
        rows=sample_rows + train_rows,
        summary=summary,
    )
    result["columns"] = [c for c in COLUMNS if c in result["columns"]]
    result["notes"].append(
        "training: one score + PPO loss (+ KL reference forward when kl_coef > 0) + backward on "
        "transitions of a real rollout; no optimizer step"
    )
    return result
